"""The four scenarios of docs/design.md §5: throughput, budget, latency, memory.

Each scenario gets a fresh emulator process, fresh topics and a fresh consumer group, starts
the connector as a process of its own, measures, stops it with SIGTERM, and returns a
`Result`: the numbers (`metrics`, for the JSON report), the rows of the final table
(`checks`, each PASS/FAIL against a target or INFO) and one summary line.
"""

from __future__ import annotations

import contextlib
import io
import math
import pstats
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
from aiokafka import AIOKafkaProducer

from bench.services import (
    BenchError,
    ConnectorProcess,
    EmulatorProcess,
    connector_settings,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from pathlib import Path

    from bench.procs import StopOutcome, Usage
    from bench.services import Event, Kafka, LoggedRequest, Scrape

__all__ = ["SCENARIOS", "Check", "Context", "Result"]

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the final table."""

    metric: str
    value: str
    target: str = ""
    verdict: str = "INFO"  # PASS | FAIL | INFO


@dataclass
class Result:
    scenario: str
    summary: str = ""
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        verdicts = {c.verdict for c in self.checks}
        return "FAIL" if "FAIL" in verdicts else "PASS" if "PASS" in verdicts else "INFO"

    def check(self, metric: str, value: str, target: str = "", *, ok: bool | None = None) -> None:
        verdict = "INFO" if ok is None else "PASS" if ok else "FAIL"
        self.checks.append(Check(metric, value, target, verdict))

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "summary": self.summary,
            "error": self.error,
            "checks": [
                {"metric": c.metric, "value": c.value, "target": c.target, "verdict": c.verdict}
                for c in self.checks
            ],
            "metrics": self.metrics,
            "notes": self.notes,
        }


@dataclass
class Context:
    """What every scenario shares."""

    bootstrap: str
    workdir: Path
    kafka: Kafka
    http: aiohttp.ClientSession
    say: Callable[[str], None]
    quick: bool = False
    profile: bool = False
    overrides: list[tuple[str, Any]] = field(default_factory=list)  # --set KEY=VALUE
    drain_wait: float = 45.0  # after SIGTERM, before the second one (budget-bound backlogs)
    scale: float = 1.0  # sizes and durations of a run (--scale), for quicker iterations
    charts: Path | None = None  # where load scenarios write their SVG (None: the workdir)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def names(self, scenario: str) -> tuple[str, str]:
        """A fresh topic and consumer group for one scenario."""
        return f"bench-{scenario}-{self.run_id}", f"bench-{scenario}-{self.run_id}"


class Ticker:
    """True once every `interval` seconds: paces progress lines."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next = time.monotonic() + interval

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.interval
        return True


# -- shared steps ------------------------------------------------------------------------------


def _building(n: int, revision: int, partitions: int) -> Event:
    """A native building record without parent references (no dependency waits)."""
    bid = f"b-{n}"
    value = orjson.dumps(
        {"buildingId": bid, "eventType": "BuildingUpdated", "name": f"Building {n}",
         "revision": revision}
    )  # fmt: skip
    return n % partitions, bid.encode(), value


def _debezium_building(n: int, revision: int, partitions: int) -> Event:
    """A Debezium change envelope (JsonConverter without schemas) of a CAFM buildings row."""
    bid = f"b-{n}"
    row = {
        "bldg_no": bid, "bldg_name": f"Building {n}", "site_no": f"s-{n % 50}",
        "street": f"{n} Main Street", "city": "Berlin", "zip": f"{10000 + n % 9000}",
        "built_at": 946_684_799_123_456 + n * 86_400_000_000, "floors_above": n % 40,
        "gross_area": 1000.0 + n / 4, "owner": "Portfolio Fund I", "revision": revision,
    }  # fmt: skip
    source = {
        "version": "3.6.1.Final", "connector": "postgresql", "name": "cafm",
        "snapshot": "false", "db": "cafm", "schema": "public", "table": "buildings",
    }  # fmt: skip
    value = orjson.dumps({"before": None, "after": row, "source": source, "op": "u",
                          "ts_ms": 1_796_170_321_696})  # fmt: skip
    return n % partitions, orjson.dumps({"bldg_no": bid}), value


# a budget-bound backlog uses at least this share of the budget (docs/design.md §5)
BUDGET_TARGET = 0.995

# The mapping of the mapped scenario: ten platform fields, one a date conversion.
BUILDING_MAPPING = {
    "entity": "building",
    "id": "bldg_no",
    "fields": {
        "name": "bldg_name", "street": "street", "city": "city", "postalCode": "zip",
        "constructionDate": {"expr": "built_at", "convert": "micro_timestamp"},
        "floorsAboveGround": "floors_above", "grossArea": "gross_area", "owner": "owner",
        "externalCode": "join('/', [site_no, bldg_no])", "revision": "revision",
    },
}  # fmt: skip


async def _backlog(
    ctx: Context, name: str, topic: str, count: int, ids: int | None, *, debezium: bool = False
) -> None:
    """Pre-produce `count` events over `ids` IDs (None: every event its own ID)."""
    parts = ctx.kafka.partitions
    shape = _debezium_building if debezium else _building

    def make(i: int) -> Event:
        return shape(i if ids is None else i % ids, i, parts)

    ctx.say(f"[{name}] producing {count:,} events to {topic} ...")
    seconds = await ctx.kafka.produce(
        topic, count, make, progress=lambda n: ctx.say(f"[{name}]   {n:,}/{count:,} produced")
    )
    ctx.say(f"[{name}] produced {count:,} events in {seconds:.1f} s ({count / seconds:,.0f}/s)")


@contextlib.asynccontextmanager
async def _emulator(
    ctx: Context, name: str, rate_limit: tuple[int, float], *, processing_delay: float = 0.0
) -> AsyncIterator[EmulatorProcess]:
    emu = EmulatorProcess(
        ctx.workdir, name, ctx.http, rate_limit=rate_limit, processing_delay=processing_delay
    )
    try:
        await emu.start()
        ctx.say(f"[{name}] emulator at {emu.url} (rate limit {rate_limit[0]}/{rate_limit[1]:g} s)")
        yield emu
    finally:
        with anyio.CancelScope(shield=True):
            if emu.url:  # keep the request log beside the process logs
                with contextlib.suppress(OSError, aiohttp.ClientError, ValueError):
                    await emu.save_requests(ctx.workdir / f"{name}-emulator-requests.json")
            await emu.stop()


@contextlib.asynccontextmanager
async def _connector(
    ctx: Context, name: str, settings: dict[str, Any]
) -> AsyncIterator[ConnectorProcess]:
    conn = ConnectorProcess(ctx.workdir, name, ctx.http, settings, profile=ctx.profile)
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
            await conn.stop(second_sigterm_after=5)


def _usage_now(conn: ConnectorProcess) -> Usage:
    usage = conn.child.usage() or conn.child.last_usage
    if usage is None:
        raise BenchError(f"no /proc sample of the connector:\n{conn.child.log_tail()}")
    return usage


def _exit_row(result: Result, stop: StopOutcome) -> None:
    result.metrics["connector_exit"] = {
        "exit_code": stop.exit_code, "seconds": round(stop.seconds, 2), "signals": stop.signals,
    }  # fmt: skip
    clean = stop.exit_code == 0 and stop.signals == ("SIGTERM",)
    result.check(
        "connector stop (SIGTERM, drain)", stop.describe(), "exit 0 on one SIGTERM", ok=clean
    )


def _profile_notes(ctx: Context, conn: ConnectorProcess, result: Result) -> None:
    path = conn.profile_path
    if path is None or not path.exists():
        return
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(20)
    text = out.getvalue()
    result.metrics["profile"] = str(path)
    result.notes.append(f"cProfile of the connector: {path} (top 20 by own time in the log)")
    ctx.say(f"[{result.scenario}] connector hotspots (cProfile, by own time):\n{text}")


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[rank - 1]


async def _wait_for(
    what: str, predicate: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {within:.0f} s waiting for {what}")
        await anyio.sleep(interval)


# -- throughput --------------------------------------------------------------------------------


@dataclass
class _Measured:
    """What a backlog run observed: the connector's end state and the emulator's log."""

    seconds: float  # connector start -> the moment measured (all committed, or period end)
    finished_wall: float
    usage: Usage
    scrape: Scrape
    stop: StopOutcome
    posts: list[LoggedRequest]
    started_wall: float = 0.0
    stored: dict[str, int] = field(default_factory=dict)


async def _run_to_committed(
    ctx: Context, name: str, emu: EmulatorProcess, conn: ConnectorProcess, *, topic: str, end: int
) -> _Measured:
    """Start the connector and wait until its group has committed `end` offsets."""
    async with ctx.kafka.committed_reader(topic, conn.group) as committed:
        conn.start()
        ctx.say(f"[{name}] connector started (pid {conn.child.pid}); waiting for commits")
        started = conn.child.started_at
        deadline = started + (120 if ctx.quick else 600)
        ticker = Ticker(5)
        done = 0
        while done < end:
            await anyio.sleep(0.1)
            done = await committed.total()
            usage = _usage_now(conn)
            conn.check_alive()
            elapsed = time.monotonic() - started
            if time.monotonic() > deadline:
                raise BenchError(f"only {done:,}/{end:,} committed after {elapsed:.0f} s")
            if ticker.due():
                ctx.say(
                    f"[{name}] {elapsed:5.1f} s: committed {done:,}/{end:,} "
                    f"({done / elapsed:,.0f} events/s), connector CPU "
                    f"{usage.cpu_seconds:.1f} s, RSS {usage.rss_bytes / MB:.0f} MB"
                )
    finished, finished_wall = time.monotonic(), time.time()
    usage = _usage_now(conn)
    scrape = await conn.scrape()
    stop = await conn.stop()
    await emu.wait_settled()  # (measured up to the last commit; the check needs what was applied)
    stored = {e["buildingId"]: e["revision"] for e in await emu.entities("building")}
    return _Measured(
        finished - started, finished_wall, usage, scrape, stop, await emu.api_requests(),
        conn.child.started_wall, stored,
    )  # fmt: skip


async def throughput(ctx: Context) -> Result:
    """decode -> coalesce -> submit -> commit: status tracking off (records finish on the 200)."""
    return await _throughput(ctx, "throughput", tracked=False)


async def throughput_tracked(ctx: Context) -> Result:
    """The same backlog with status tracking at its defaults (records finish when Completed)."""
    return await _throughput(ctx, "throughput-tracked", tracked=True)


async def throughput_accepted(ctx: Context) -> Result:
    """The same backlog with tracking on and `commit_on: accepted` (records finish on the 200;
    an ID still stays in flight until its batch is terminal)."""
    return await _throughput(ctx, "throughput-accepted", tracked=True, commit_on="accepted")


async def throughput_mapped(ctx: Context) -> Result:
    """The same backlog as Debezium envelopes of a CAFM table, mapped to Buildings (ten
    fields, one date conversion) by a config mapping: the cost of mapping beside `throughput`."""
    return await _throughput(ctx, "throughput-mapped", tracked=False, mapped=True)


async def _throughput(
    ctx: Context, name: str, *, tracked: bool, mapped: bool = False, commit_on: str | None = None
) -> Result:
    """A coalescing backlog against an unconstrained budget: events/s, CPU, memory. The
    platform takes 0.2 s to process a batch (`--processing-delay`)."""
    events, ids = (100_000, 2_000) if ctx.quick else (1_000_000, 20_000)
    events, ids = max(int(events * ctx.scale), 1000), max(int(ids * ctx.scale), 100)
    processing = 0.2
    result = Result(name)
    result.metrics.update(
        events=events, ids=ids, max_records=500, commit_interval_seconds=0.5,
        tracking=f"enabled, commit_on {commit_on or 'completed'}" if tracked else "disabled",
        input="Debezium envelopes + a 10-field mapping" if mapped else "native records",
        platform_processing_seconds=processing,
    )  # fmt: skip
    topic, group = ctx.names(name)
    await ctx.kafka.create_topics(topic, f"{topic}.dlq")
    await _backlog(ctx, name, topic, events, ids, debezium=mapped)
    extra: dict[str, Any] = {} if tracked else {"tracking": {"enabled": False}}
    if commit_on is not None:
        extra["tracking"] = {"commit_on": commit_on}
    if mapped:
        extra["mappings"] = [{"topic": topic, **BUILDING_MAPPING}]
    end = await ctx.kafka.end_offsets(topic)
    unlimited = (1_000_000, 1.0)
    async with _emulator(ctx, name, unlimited, processing_delay=processing) as emu:
        settings = connector_settings(
            bootstrap=ctx.bootstrap, topic=topic, group=group, emulator=emu,
            overrides=ctx.overrides,
            rate_limit=unlimited, pipeline={"commit_interval_seconds": 0.5}, extra=extra,
        )  # fmt: skip
        async with _connector(ctx, name, settings) as conn:
            run = await _run_to_committed(ctx, name, emu, conn, topic=topic, end=end)
    _profile_notes(ctx, conn, result)
    # A quick run is too short to judge: start-up, the last window's max_wait and one
    # commit interval are most of it. Only the full run is held to the target.
    _throughput_report(result, run, events, ids, target=not tracked, judge=not ctx.quick)
    if tracked:
        result.notes.append(
            "With tracking, a record stays pending (and its ID in flight) until a status poll "
            "sees its batch terminal, so throughput is bounded by about "
            "pipeline.max_pending_records / tracking.poll_interval_seconds."
        )
    return result


def _throughput_report(
    result: Result, run: _Measured, events: int, ids: int, *, target: bool, judge: bool
) -> None:
    usage, posts = run.usage, [p for p in run.posts if p.is_submission]
    rate = events / run.seconds
    accepted = [p for p in posts if p.status == 200]
    sent = sum(p.record_count or 0 for p in accepted)
    first = min((p.time for p in posts), default=run.finished_wall)
    steady = events / max(run.finished_wall - first, 1e-9)
    newest = {f"b-{n}": ((events - 1 - n) // ids) * ids + n for n in range(ids)}
    correct = run.stored == newest
    cpu = usage.cpu_seconds
    per_cpu = events / cpu if cpu else 0.0
    mean_size = round(sent / len(accepted), 1) if accepted else 0
    result.metrics.update(
        seconds_to_all_committed=round(run.seconds, 2), events_per_second=round(rate),
        events_per_second_from_first_request=round(steady),
        first_request_after_seconds=round(first - run.started_wall, 2),
        connector_cpu_seconds=round(cpu, 2),
        cpu_seconds_per_million_events=round(cpu * 1e6 / events, 2),
        events_per_cpu_second=round(per_cpu), cpu_utilisation=round(cpu / run.seconds, 2),
        peak_rss_mb=round(usage.peak_rss_bytes / MB, 1),
        requests=len(posts), requests_accepted=len(accepted), records_sent=sent,
        mean_records_per_request=mean_size,
        coalesced=int(run.scrape.total("connector_records_coalesced_total")),
        delivered=int(run.scrape.total("connector_records_delivered_total")),
        stored_ids=len(run.stored), all_ids_at_newest_revision=correct,
    )  # fmt: skip
    result.check(
        "events/s, connector start -> all committed", f"{rate:,.0f}",
        (">= 50,000" if judge else ">= 50,000 (full run only)") if target else "",
        ok=rate >= 50_000 if target and judge else None,
    )  # fmt: skip
    result.check("events/s, first API request -> all committed", f"{steady:,.0f}")
    result.check(
        "events per connector CPU-second", f"{per_cpu:,.0f}",
        f"(CPU use {cpu / run.seconds:.0%} of one core)",
    )  # fmt: skip
    result.check("connector CPU s per 1M events", f"{cpu * 1e6 / events:.1f}")
    result.check("connector peak RSS", f"{usage.peak_rss_bytes / MB:.0f} MB")
    result.check(
        "API requests / mean records per request", f"{len(posts):,} / {mean_size}",
        f"({events - sent:,} of {events:,} coalesced away)",
    )  # fmt: skip
    result.check(
        "every ID stored at its newest revision", f"{len(run.stored):,}/{ids:,} IDs", "all",
        ok=correct,
    )  # fmt: skip
    _exit_row(result, run.stop)
    result.summary = (
        f"{rate:,.0f} events/s ({run.seconds:.1f} s for {events:,}), "
        f"{cpu * 1e6 / events:.1f} CPU s/1M events, peak RSS {usage.peak_rss_bytes / MB:.0f} MB, "
        f"{len(posts):,} requests of {mean_size} records"
        + (
            " (no target: INFO)"
            if not target
            else " (target >= 50,000 events/s)"
            if judge
            else " (quick: too short to judge against 50,000 events/s; run without --quick)"
        )
    )


# -- budget ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """How tightly request times use a rolling budget (see `budget_use`)."""

    utilisation: float  # per_seconds / mean gap: 1.0 is every slot taken the moment it frees
    mean_gap: float
    smallest_gap: float
    most_in_window: int


def budget_use(times: Sequence[float], capacity: int, per_seconds: float) -> BudgetUse | None:
    """How tightly request times use a rolling budget of `capacity` per `per_seconds`.

    The platform admits request n at the earliest `per_seconds` after request n - capacity,
    so the gap `times[n] - times[n - capacity]` (for every n >= capacity) is at least
    `per_seconds` when the budget is kept, and exactly that when it is used to the full.
    Utilisation = per_seconds / mean gap; it does not depend on where the measurement starts
    in the burst cycle a backlog produces (which a plain count per minute does). None when
    there are not more than `capacity` requests.
    """
    times = sorted(times)
    gaps = [times[n] - times[n - capacity] for n in range(capacity, len(times))]
    if not gaps:
        return None
    most = max(bisect_left(times, t + per_seconds) - i for i, t in enumerate(times))
    mean = sum(gaps) / len(gaps)
    return BudgetUse(per_seconds / mean, mean, min(gaps), most)


async def budget(ctx: Context) -> Result:
    """A unique-ID backlog against the request budget: budget use, full arrays, no 429s."""
    name = "budget"
    capacity, per = (20, 10.0) if ctx.quick else (100, 60.0)
    period = 70.0 if ctx.quick else 150.0
    max_records = 500
    needed = math.ceil(period / per * capacity * 1.25) + capacity
    events = needed * max_records
    result = Result(name)
    result.metrics.update(
        budget_requests=capacity, budget_per_seconds=per, measurement_seconds=period,
        events=events, max_records=max_records,
    )  # fmt: skip
    topic, group = ctx.names(name)
    await ctx.kafka.create_topics(topic, f"{topic}.dlq")
    await _backlog(ctx, name, topic, events, None)
    async with _emulator(ctx, name, (capacity, per)) as emu:
        settings = connector_settings(
            bootstrap=ctx.bootstrap, topic=topic, group=group, emulator=emu,
            overrides=ctx.overrides,
            rate_limit=(capacity, per),
        )  # fmt: skip
        async with _connector(ctx, name, settings) as conn:
            run = await _run_for_period(ctx, name, emu, conn, period)
    _profile_notes(ctx, conn, result)
    _budget_report(
        result, run, capacity=capacity, per=per, period=period, max_records=max_records,
        drain_wait=ctx.drain_wait,
    )  # fmt: skip
    return result


async def _run_for_period(
    ctx: Context, name: str, emu: EmulatorProcess, conn: ConnectorProcess, period: float
) -> _Measured:
    """Start the connector, and stop it `period` s after its first API request."""
    conn.start()
    ctx.say(f"[{name}] connector started (pid {conn.child.pid})")
    first: list[LoggedRequest] = []

    async def submitted() -> bool:
        conn.check_alive()
        first[:] = (await emu.api_requests())[:1]
        return bool(first)

    await _wait_for("the first API request", submitted, within=60)
    start = first[0].time
    ctx.say(f"[{name}] first request; measuring for {period:.0f} s")
    ticker = Ticker(10)
    while time.time() < start + period:
        await anyio.sleep(0.5)
        conn.check_alive()
        if ticker.due():
            api = await emu.api_requests()
            throttled = sum(p.status == 429 for p in api)
            posts = sum(p.is_submission for p in api)
            ctx.say(
                f"[{name}] {time.time() - start:5.1f}/{period:.0f} s: {len(api)} API requests "
                f"({posts} submissions, {len(api) - posts} status reads), {throttled} x 429"
            )
    finished = time.monotonic()
    usage = _usage_now(conn)
    scrape = await conn.scrape()
    ctx.say(f"[{name}] measurement done; stopping the connector (SIGTERM)")
    stop = await conn.stop(second_sigterm_after=ctx.drain_wait)
    return _Measured(
        finished - conn.child.started_at, start + period, usage, scrape, stop,
        await emu.api_requests(), conn.child.started_wall,
    )  # fmt: skip


def _budget_report(
    result: Result,
    run: _Measured,
    *,
    capacity: int,
    per: float,
    period: float,
    max_records: int,
    drain_wait: float,
) -> None:
    end = run.finished_wall
    throttled = sum(p.status == 429 for p in run.posts)
    # every admitted request spends budget on the platform, whatever its answer
    counted = [p for p in run.posts if p.time < end and p.status not in (429, None)]
    use = budget_use([p.time for p in counted], capacity, per)
    submissions = [p for p in counted if p.is_submission]
    sizes = [p.record_count or 0 for p in submissions]
    full = sum(s == max_records for s in sizes)
    mean_size = sum(sizes) / len(sizes) if sizes else 0.0
    result.metrics.update(
        requests_in_period=len(counted), submissions_in_period=len(submissions),
        status_reads_in_period=len(counted) - len(submissions), requests_429=throttled,
        budget_per_minute=capacity * 60 / per, mean_records_per_request=round(mean_size, 1),
        full_requests=full, connector_peak_rss_mb=round(run.usage.peak_rss_bytes / MB, 1),
        simple_rate_per_minute=round(len(counted) / period * 60, 2),
    )  # fmt: skip
    budget_text = f"{capacity}/{per:g} s"
    if use is None:
        result.error = f"only {len(counted)} requests in {period:.0f} s; need > {capacity}"
        return
    per_minute = use.utilisation * capacity * 60 / per
    result.metrics.update(
        budget_utilisation=round(use.utilisation, 4), requests_per_minute=round(per_minute, 2),
        mean_gap_seconds=round(use.mean_gap, 3), smallest_gap_seconds=round(use.smallest_gap, 3),
        most_in_any_window=use.most_in_window,
    )  # fmt: skip
    result.check(
        "requests per minute achieved", f"{per_minute:.1f} ({use.utilisation:.1%} of budget)",
        f">= {BUDGET_TARGET:.1%} of {budget_text}", ok=use.utilisation >= BUDGET_TARGET,
    )  # fmt: skip
    result.check("429 responses", str(throttled), "0", ok=throttled == 0)
    result.check(
        "most requests in any rolling window", str(use.most_in_window), f"<= {capacity}",
        ok=use.most_in_window <= capacity,
    )  # fmt: skip
    result.check(
        f"request n - request n-{capacity}: mean / smallest",
        f"{use.mean_gap:.3f} / {use.smallest_gap:.3f} s", f"(the platform's minimum: {per:g} s)",
    )  # fmt: skip
    result.check(
        "records per request (full arrays)", f"{mean_size:.1f} ({full}/{len(sizes)} full)",
        f"{max_records}", ok=full == len(sizes),
    )  # fmt: skip
    result.check(
        "API requests in the period", f"{len(counted)} in {period:.0f} s",
        f"({len(submissions)} submissions, {len(counted) - len(submissions)} status reads)",
    )  # fmt: skip
    polls = len(counted) - len(submissions)
    result.metrics.update(poll_share=round(polls / len(counted), 4) if counted else 0.0)
    result.check(
        "share of requests spent on status polls",
        f"{polls / len(counted):.1%}" if counted else "n/a",
        "(tracking.max_poll_share bounds it while submissions wait)",
    )  # fmt: skip
    onboarded = run.scrape.total("connector_onboarding_latency_seconds_count")
    p50 = run.scrape.quantile("connector_onboarding_latency_seconds", 0.5)
    p99 = run.scrape.quantile("connector_onboarding_latency_seconds", 0.99)
    result.check(
        "onboarding latency p50 / p99 (bucket upper bounds)",
        f"<= {p50:g} s / <= {p99:g} s" if p50 is not None and p99 is not None else "n/a",
        f"Kafka timestamp -> terminal status, {onboarded:,.0f} records",
    )  # fmt: skip
    _exit_row(result, run.stop)
    if run.stop.signals != ("SIGTERM",):
        result.notes.append(
            f"The connector did not exit within {drain_wait:g} s of SIGTERM with a "
            "budget-limited backlog: "
            "its drain sends every pending record within the budget before it stops."
        )
    result.summary = (
        f"{per_minute:.1f} requests/min = {use.utilisation:.1%} of {budget_text}, "
        f"{throttled} x 429, "
        f"{mean_size:.0f} records/request (target >= {BUDGET_TARGET:.1%}, zero 429s)"
    )


# -- latency -----------------------------------------------------------------------------------


async def _produce_live(
    ctx: Context, name: str, topic: str, *, rate: float, duration: float, prefix: str
) -> dict[str, float]:
    """Produce `rate` events/s for `duration` s; external ID -> Kafka timestamp (Unix s)."""
    parts = ctx.kafka.partitions
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, linger_ms=0, acks=1)
    await producer.start()
    produced: dict[str, float] = {}
    pending: list[Any] = []
    ticker = Ticker(10)
    try:
        count = int(rate * duration)
        started = time.monotonic()
        for i in range(count):
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                await anyio.sleep(ahead)
            bid = f"{prefix}-{i}"
            stamp = int(time.time() * 1000)
            value = orjson.dumps(
                {"buildingId": bid, "eventType": "BuildingUpdated", "name": f"Live {i}",
                 "revision": i}
            )  # fmt: skip
            pending.append(
                await producer.send(
                    topic, value=value, key=bid.encode(), partition=i % parts, timestamp_ms=stamp
                )
            )
            produced[bid] = stamp / 1000
            if ticker.due():
                ctx.say(f"[{name}] {time.monotonic() - started:5.1f} s: {i + 1:,} produced live")
        for future in pending:
            await future
    finally:
        await producer.stop()
    return produced


async def latency(ctx: Context) -> Result:
    """Light live load: Kafka timestamp -> the platform's acceptance, p50 and p99."""
    name = "latency"
    rate, duration, max_wait = 50.0, 20.0 if ctx.quick else 60.0, 1.0
    result = Result(name)
    result.metrics.update(rate=rate, duration_seconds=duration, max_wait_seconds=max_wait)
    topic, group = ctx.names(name)
    await ctx.kafka.create_topics(topic, f"{topic}.dlq")
    # The emulator's own limit is lifted so the bench's reads never compete with the
    # connector, which keeps the real budget (100/60 s) on its side.
    async with _emulator(ctx, name, (1_000_000, 1.0)) as emu:
        settings = connector_settings(
            bootstrap=ctx.bootstrap, topic=topic, group=group, emulator=emu,
            overrides=ctx.overrides,
            rate_limit=(100, 60.0), window={"max_wait_seconds": max_wait},
        )  # fmt: skip
        async with _connector(ctx, name, settings) as conn:
            conn.start()
            ready = await conn.wait_ready()
            ctx.say(f"[{name}] connector ready in {ready:.1f} s; warming up with one record")
            await _produce_live(
                ctx, name, topic, rate=1.0, duration=1.0, prefix=f"warm-{ctx.run_id}"
            )

            async def warmed() -> bool:
                conn.check_alive()
                return any(p.status == 200 for p in await emu.submissions())

            await _wait_for("the warm-up record to be delivered", warmed, within=60)
            ctx.say(f"[{name}] producing {rate:g} events/s for {duration:.0f} s")
            produced = await _produce_live(
                ctx, name, topic, rate=rate, duration=duration, prefix=f"lat-{ctx.run_id}"
            )

            async def all_stored() -> bool:
                conn.check_alive()
                return len(await emu.entities("building")) >= len(produced) + 1

            await _wait_for("every live record to be stored", all_stored, within=30)
            scrape = await conn.scrape()
            stop = await conn.stop()
        accepted = await emu.acceptance_times()
        posts = await emu.submissions()
    _profile_notes(ctx, conn, result)

    latencies = sorted(accepted[i] - t for i, t in produced.items() if i in accepted)
    missing = len(produced) - len(latencies)
    if not latencies:
        result.error = "no live record was found among the accepted records"
        return result
    p50, p90, p99 = (_percentile(latencies, q) for q in (0.5, 0.9, 0.99))
    hist = "connector_delivery_latency_seconds"
    h50, h99 = scrape.quantile(hist, 0.5), scrape.quantile(hist, 0.99)
    target = max_wait + 0.25
    result.metrics.update(
        records=len(produced), measured=len(latencies), missing=missing,
        p50_seconds=round(p50, 3), p90_seconds=round(p90, 3), p99_seconds=round(p99, 3),
        max_seconds=round(latencies[-1], 3), min_seconds=round(latencies[0], 3),
        histogram_p50_upper_bound=h50, histogram_p99_upper_bound=h99,
        requests=len(posts),
        mean_records_per_request=round(
            sum(p.record_count or 0 for p in posts) / max(len(posts), 1), 1
        ),
    )  # fmt: skip
    result.check(
        "p99 Kafka timestamp -> API acceptance", f"{p99 * 1000:.0f} ms",
        f"<= {target * 1000:.0f} ms", ok=p99 <= target and missing == 0,
    )  # fmt: skip
    result.check(
        "p50 / p90 / max", f"{p50 * 1000:.0f} / {p90 * 1000:.0f} / {latencies[-1] * 1000:.0f} ms"
    )
    result.check(
        "histogram p50 / p99 (bucket upper bounds)", f"<= {h50} s / <= {h99} s",
        "connector_delivery_latency_seconds",
    )  # fmt: skip
    result.check(
        "records measured", f"{len(latencies):,}/{len(produced):,}", "all", ok=missing == 0
    )
    _exit_row(result, stop)
    result.summary = (
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(latencies):,} records at "
        f"{rate:g}/s (target p99 <= {target * 1000:.0f} ms)"
    )
    return result


# -- memory ------------------------------------------------------------------------------------


async def memory(ctx: Context) -> Result:
    """A 1,000,000-event unique-ID backlog waiting on a slow (budget-bound) API: peak RSS."""
    name = "memory"
    events, duration = 1_000_000, 20.0 if ctx.quick else 60.0
    result = Result(name)
    result.metrics.update(events=events, duration_seconds=duration, api_budget="100/60 s")
    topic, group = ctx.names(name)
    await ctx.kafka.create_topics(topic, f"{topic}.dlq")
    await _backlog(ctx, name, topic, events, None)
    async with _emulator(ctx, name, (100, 60.0)) as emu:
        settings = connector_settings(
            bootstrap=ctx.bootstrap, topic=topic, group=group, emulator=emu,
            overrides=ctx.overrides,
            rate_limit=(100, 60.0),
        )  # fmt: skip
        async with _connector(ctx, name, settings) as conn:
            conn.start()
            ctx.say(f"[{name}] connector started (pid {conn.child.pid}); running {duration:.0f} s")
            started = conn.child.started_at
            most_pending = 0.0
            ticker = Ticker(10)
            while time.monotonic() < started + duration:
                await anyio.sleep(1.0)
                conn.check_alive()
                usage = _usage_now(conn)
                with contextlib.suppress(OSError):  # /metrics not up yet
                    scrape = await conn.scrape()
                    most_pending = max(most_pending, scrape.total("connector_pending_records"))
                if ticker.due():
                    ctx.say(
                        f"[{name}] {time.monotonic() - started:5.1f} s: RSS "
                        f"{usage.rss_bytes / MB:.0f} MB (peak {usage.peak_rss_bytes / MB:.0f}),"
                        f" {most_pending:,.0f} pending at most"
                    )
            usage = _usage_now(conn)
            scrape = await conn.scrape()
            ctx.say(f"[{name}] done; stopping the connector (SIGTERM)")
            stop = await conn.stop(second_sigterm_after=ctx.drain_wait)
        posts = await emu.submissions()
    _profile_notes(ctx, conn, result)

    pending = scrape.total("connector_pending_records")
    consumed = scrape.total("connector_records_consumed_total")
    peak = usage.peak_rss_bytes / MB
    result.metrics.update(
        peak_rss_mb=round(peak, 1), rss_mb_at_end=round(usage.rss_bytes / MB, 1),
        pending_records=int(pending), most_pending_records=int(most_pending),
        consumed=int(consumed),
        delivered=int(scrape.total("connector_records_delivered_total")),
        requests=len(posts), connector_cpu_seconds=round(usage.cpu_seconds, 2),
    )  # fmt: skip
    result.check("connector peak RSS (VmHWM)", f"{peak:.0f} MB", "<= 200 MB", ok=peak <= 200)
    result.check("pending records (/metrics)", f"{pending:,.0f} (max {most_pending:,.0f})")
    result.check("consumed / backlog", f"{consumed:,.0f} / {events:,}")
    _exit_row(result, stop)
    result.summary = (
        f"peak RSS {peak:.0f} MB with {pending:,.0f} records pending of a {events:,} backlog "
        f"after {duration:.0f} s (target <= 200 MB)"
    )
    return result


SCENARIOS: dict[str, Callable[[Context], Awaitable[Result]]] = {
    "throughput": throughput,
    "throughput-tracked": throughput_tracked,
    "throughput-accepted": throughput_accepted,
    "throughput-mapped": throughput_mapped,
    "budget": budget,
    "latency": latency,
    "memory": memory,
}
