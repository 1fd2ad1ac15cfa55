"""Scenarios of load over time: light load, a ramp, SIGTERM restarts under a backlog, and the
budget backlog spread over six endpoints.

Each produces live (or pre-produces a backlog) while sampling, once a second, the group's lag
(log end minus committed offsets, read from Kafka, so it spans connector restarts) and the
connector's CPU; afterwards the emulator's request log gives requests per rolling minute,
records per request and 429s. Every scenario writes `<name>.svg` (requests per rolling minute
against the budget, lag over time) beside the report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.chart import rolling_counts, write_chart
from bench.scenarios import BUDGET_TARGET, Result, _emulator, budget_use
from bench.services import ConnectorProcess, connector_settings
from connector.samples import sample_events

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.scenarios import Context
    from bench.services import EmulatorProcess, LoggedRequest

__all__ = ["LOAD_SCENARIOS"]

# Six endpoints whose records need no field besides their ID (and no parent to wait for).
SIX = (
    ("Building", "buildingId"), ("Certificate", "certificateId"),
    ("EnergyRating", "energyRatingId"), ("Valuation", "valuationId"),
    ("AreaMeasurement", "areaMeasurementId"), ("RentalContract", "rentalContractId"),
)  # fmt: skip
MAX_RECORDS = 500
BUDGET = (100, 60.0)


def event(n: int, id_number: int, endpoints: int) -> tuple[bytes, bytes]:
    """Event `n` for ID `id_number` of endpoint `n % endpoints`: (key, value)."""
    entity, id_field = SIX[n % endpoints]
    external = f"{entity[:3].lower()}-{id_number}"
    value = {id_field: external, "eventType": f"{entity}Updated", "revision": n}
    return external.encode(), orjson.dumps(value)


@dataclass
class Timeline:
    """What the sampler saw, once a second: (seconds since start, value)."""

    lag: list[tuple[float, float]] = field(default_factory=list)
    produced: int = 0
    cpu_before: float = 0.0  # CPU seconds of connector processes that have ended


class LagProbe:
    """The group's lag from Kafka: log end minus committed, summed over the partitions."""

    def __init__(self, ctx: Context, topic: str, group: str) -> None:
        self.partitions = ctx.kafka.partitions_of(topic)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=ctx.bootstrap, group_id=group, enable_auto_commit=False
        )

    async def __aenter__(self) -> LagProbe:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def lag(self) -> int:
        ends = await self.consumer.end_offsets(self.partitions)
        total = 0
        for tp in self.partitions:
            committed = await self.consumer.committed(tp)
            total += ends[tp] - (committed or 0)
        return total


@dataclass
class Load:
    """One live-load scenario's shape."""

    name: str
    seconds: float  # how long load is produced
    rate: Callable[[float], float]  # events/s at t seconds since the start of the load
    endpoints: int = 6
    hot_ids: int | None = None  # IDs per endpoint (None: every event its own ID)
    backlog: int = 0  # events produced before the connector starts (unique IDs)
    restart_every: float | None = None
    processing_delay: float = 2.0  # the demo's emulator
    demo: bool = False  # the events of `make demo` (connector.samples, 2,000 IDs, parents)
    settle: float = 180.0  # after the load, how long lag may take to come back to 0


async def _produce(ctx: Context, topic: str, load: Load, t0: float, line: Timeline) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, linger_ms=5, acks=1)
    await producer.start()
    parts = ctx.kafka.partitions
    try:
        n = line.produced
        samples = sample_events(
            10**9, building_topic=topic, meter_topic=topic, ids=2000, invalid_share=0.01, seed=1
        )  # fmt: skip
        sent_at = 0.0  # events due by now, integrated from the rate
        last = time.monotonic()
        while (now := time.monotonic()) < t0 + load.seconds:
            sent_at += load.rate(now - t0) * (now - last)
            last = now
            while n - line.produced < int(sent_at):
                i = n
                ident = i // load.endpoints if load.hot_ids is None else (
                    (i // load.endpoints) % load.hot_ids
                )  # fmt: skip
                offset = 10**9 if load.hot_ids is None else 0  # apart from a backlog's IDs
                key: bytes | None
                value: bytes | None
                key, value = event(i, ident + offset, load.endpoints)
                if load.demo:
                    sample = next(samples)
                    key, value = sample.key, sample.value
                await producer.send(topic, value=value, key=key, partition=i % parts)
                n += 1
            await anyio.sleep(0.02)
        await producer.flush()
        line.produced = n
    finally:
        await producer.stop()


def _settings(ctx: Context, topic: str, group: str, emu: EmulatorProcess) -> dict[str, Any]:
    return connector_settings(
        bootstrap=ctx.bootstrap, topic=topic, group=group, emulator=emu,
        overrides=ctx.overrides, rate_limit=BUDGET,
    )  # fmt: skip


async def run_load(ctx: Context, load: Load) -> Result:
    """Produce `load`, sample lag and CPU, restart the connector if asked, then report."""
    name = load.name
    result = Result(name)
    topic, group = ctx.names(name)
    await ctx.kafka.create_topics(topic, f"{topic}.dlq")
    line = Timeline()
    if load.backlog:
        ctx.say(f"[{name}] producing a backlog of {load.backlog:,} events ...")

        def make(i: int) -> tuple[int, bytes, bytes]:
            key, value = event(i, i // load.endpoints, load.endpoints)
            return i % ctx.kafka.partitions, key, value

        await ctx.kafka.produce(topic, load.backlog, make)
        line.produced = load.backlog
    async with _emulator(ctx, name, BUDGET, processing_delay=load.processing_delay) as emu:
        run = _Run(ctx, load, line, _settings(ctx, topic, group, emu))
        run.start_connector()
        await run.conn.wait_ready()
        t0, wall0 = time.monotonic(), time.time()
        ctx.say(f"[{name}] connector ready; load for {load.seconds:.0f} s")
        try:
            async with LagProbe(ctx, topic, group) as probe, anyio.create_task_group() as tg:
                tg.start_soon(_produce, ctx, topic, load, t0, line)
                await run.sample(probe, t0, result)
            usage = run.conn.child.usage() or run.conn.child.last_usage
            scrape = await run.conn.scrape()
        finally:
            with anyio.CancelScope(shield=True):
                stop = await run.conn.stop(second_sigterm_after=ctx.drain_wait)
        seconds = time.monotonic() - t0
        api = await emu.api_requests()
    cpu = line.cpu_before + (usage.cpu_seconds if usage is not None else 0.0)
    _report(ctx, result, load, line, api, wall0=wall0, seconds=seconds, cpu=cpu)
    result.metrics.update(
        restarts=run.restarts, restart_stops=run.stops,
        terminal_total=scrape.total("connector_records_terminal_total"),
    )  # fmt: skip
    result.check(
        "connector stop (SIGTERM, drain)", stop.describe(), "exit 0", ok=stop.exit_code == 0
    )
    return result


class _Run:
    """The connector process of a load scenario (a new one after each restart)."""

    def __init__(self, ctx: Context, load: Load, line: Timeline, settings: dict[str, Any]) -> None:
        self.ctx, self.load, self.line, self.settings = ctx, load, line, settings
        self.restarts = 0
        self.stops: list[str] = []
        self.conn: ConnectorProcess

    def start_connector(self) -> None:
        name = f"{self.load.name}-{self.restarts}"
        self.conn = ConnectorProcess(
            self.ctx.workdir, name, self.ctx.http, self.settings, profile=self.ctx.profile
        )
        self.conn.start()

    async def restart(self) -> None:
        self.conn.child.usage()
        stop = await self.conn.stop(second_sigterm_after=self.ctx.drain_wait)
        self.stops.append(stop.describe())
        if self.conn.child.last_usage is not None:
            self.line.cpu_before += self.conn.child.last_usage.cpu_seconds
        self.restarts += 1
        self.start_connector()
        self.ctx.say(f"[{self.load.name}] restart {self.restarts} ({stop.describe()})")

    async def sample(self, probe: LagProbe, t0: float, result: Result) -> None:
        """Once a second: lag; restart when due; until the lag is 0 after the load (or the
        settle time ran out)."""
        load = self.load
        end = t0 + load.seconds
        next_restart = t0 + (load.restart_every or math.inf)
        zero_since: float | None = None
        while True:
            await anyio.sleep(1.0)
            now = time.monotonic()
            lag = await probe.lag()
            self.line.lag.append((now - t0, float(lag)))
            if next_restart <= now < end:
                await self.restart()
                next_restart = time.monotonic() + (load.restart_every or math.inf)
                continue
            self.conn.check_alive()
            if int(now - t0) % 10 == 0:
                self.ctx.say(f"[{load.name}] {now - t0:5.0f} s: lag {lag:,}")
            if now <= end:
                continue
            zero_since = (zero_since or now) if lag == 0 else None
            if zero_since is not None and now - zero_since >= 3:
                return
            if now > end + load.settle:
                if load.settle:
                    result.notes.append(f"lag still {lag:,} {load.settle:.0f} s after the load")
                return


def _report(
    ctx: Context,
    result: Result,
    load: Load,
    line: Timeline,
    api: list[LoggedRequest],
    *,
    wall0: float,
    seconds: float,
    cpu: float,
) -> None:
    capacity, per = BUDGET
    throttled = sum(p.status == 429 for p in api)  # in the whole log, drain included
    # a backlog is measured while it lasts: the final drain closes partial requests
    end = wall0 + load.seconds if load.backlog else math.inf
    api = [p for p in api if p.time < end]
    posts = [p for p in api if p.is_submission and p.status == 200]
    sizes = [p.record_count or 0 for p in posts]
    counted = [p.time for p in api if p.status not in (429, None)]
    use = budget_use(counted, capacity, per)
    rolling = rolling_counts(counted, per, start=wall0)
    peak_minute = max((c for _, c in rolling), default=0)
    lags = [lag for _, lag in line.lag]
    after = [lag for t, lag in line.lag if t > load.seconds]
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    full = sum(s == MAX_RECORDS for s in sizes)
    events = line.produced
    done = events - int(lags[-1]) if lags else events  # committed by the end
    per_million = cpu * 1e6 / done if done > 0 else 0.0
    charts = ctx.charts or ctx.workdir
    charts.mkdir(parents=True, exist_ok=True)
    chart = charts / f"{load.name}.svg"
    write_chart(chart, f"{load.name}: requests per rolling minute and lag",
                requests=rolling, budget=capacity * 60 / per, lag=line.lag)  # fmt: skip
    result.metrics.update(
        events=events, events_committed=done, seconds=round(seconds, 1),
        events_per_second=round(events / seconds, 1),
        connector_cpu_seconds=round(cpu, 2), cpu_seconds_per_million_events=round(per_million, 1),
        requests=len(counted), submissions=len(posts), requests_429=throttled,
        mean_records_per_request=round(mean, 1), full_requests=full,
        most_requests_in_a_rolling_minute=peak_minute,
        budget_utilisation=round(use.utilisation, 4) if use else None,
        lag_max=max(lags, default=0), lag_end=lags[-1] if lags else None,
        lag_series=[(round(t, 1), int(v)) for t, v in line.lag], chart=str(chart),
    )  # fmt: skip
    result.check("events produced / committed", f"{events:,} / {done:,} in {seconds:.0f} s")
    result.check("connector CPU s per 1M events committed", f"{per_million:.1f}")
    result.check("records per request (mean)", f"{mean:.1f} ({full}/{len(sizes)} full)")
    result.check(
        "requests in any rolling minute (most)", str(peak_minute), f"<= {capacity}",
        ok=peak_minute <= capacity,
    )  # fmt: skip
    backlog = bool(load.backlog)
    utilisation = use.utilisation if use else 0.0
    result.check(
        "budget used (request n - request n-100)", f"{utilisation:.2%}",
        f">= {BUDGET_TARGET:.1%}" if backlog else "",
        ok=utilisation >= BUDGET_TARGET if backlog else None,
    )  # fmt: skip
    result.check("429 responses", str(throttled), "0", ok=throttled == 0)
    if backlog and not load.restart_every:
        result.check("every submission full", f"{full}/{len(sizes)}", "all",
                     ok=full == len(sizes))  # fmt: skip
    if not backlog:
        result.check("lag max / after the load, last", f"{max(lags, default=0):,.0f} / "
                     f"{after[-1] if after else float('nan'):,.0f}", "returns to 0",
                     ok=bool(after) and after[-1] == 0)  # fmt: skip
    result.notes.append(f"chart: {chart}")
    result.summary = (
        f"{events:,} events, {mean:.1f} records/request, {len(counted)} requests "
        f"(most {peak_minute} in a minute), {throttled} x 429, lag max {max(lags, default=0):,.0f},"
        f" {per_million:.1f} CPU s/1M events"
    )


def _scaled(ctx: Context, seconds: float) -> float:
    return seconds * ctx.scale


async def light_many(ctx: Context) -> Result:
    """40 events/s over six endpoints, every event its own ID."""
    return await run_load(ctx, Load("light-many", _scaled(ctx, 180), lambda _: 40.0))


async def light_hot(ctx: Context) -> Result:
    """40 events/s over six endpoints and few IDs (10 per endpoint): the demo's shape."""
    return await run_load(ctx, Load("light-hot", _scaled(ctx, 180), lambda _: 40.0, hot_ids=10))


async def demo(ctx: Context) -> Result:
    """`make demo`'s load: its sample events (2,000 IDs, parents and children, 1 % invalid)
    at 40 events/s, the example window, the demo emulator's 2 s processing."""
    return await run_load(ctx, Load("demo", _scaled(ctx, 180), lambda _: 40.0, demo=True))


async def ramp(ctx: Context) -> Result:
    """10 % -> 150 % -> 10 % of what 100 full requests a minute carry, on one endpoint."""
    full = BUDGET[0] * MAX_RECORDS / BUDGET[1]
    span = _scaled(ctx, 360)

    def rate(t: float) -> float:
        third = span / 3
        if t < third:
            return full * (0.1 + 1.4 * t / third)
        if t < 2 * third:
            return full * (1.5 - 1.4 * (t - third) / third)
        return full * 0.1

    return await run_load(ctx, Load("ramp", span, rate, endpoints=1, processing_delay=0.2))


async def restarts(ctx: Context) -> Result:
    """A budget backlog with a SIGTERM restart every 2 minutes: no 429 of our own."""
    span = _scaled(ctx, 390)  # three restarts at the full size
    return await run_load(
        ctx,
        Load("restarts", span, lambda _: 0.0, endpoints=1, backlog=int(400_000 * ctx.scale),
             restart_every=120.0,
             processing_delay=0.2, settle=0.0),
    )  # fmt: skip


async def budget_six(ctx: Context) -> Result:
    """A unique-ID backlog over six endpoints against the budget, for 150 s."""
    span = _scaled(ctx, 150)
    return await run_load(
        ctx,
        Load("budget-six", span, lambda _: 0.0, endpoints=6, backlog=150_000,
             processing_delay=0.0, settle=0.0),
    )  # fmt: skip


LOAD_SCENARIOS: dict[str, Callable[[Context], Any]] = {
    "budget-six": budget_six,
    "light-many": light_many,
    "light-hot": light_hot,
    "demo": demo,
    "ramp": ramp,
    "restarts": restarts,
}
