"""`make demo`: the whole product on a laptop, with live progress, stopped by Ctrl-C.

Starts (or reuses) a Kafka broker (`KAFKA_BOOTSTRAP`, else a local one from Maven Central jars),
the BuildingMinds emulator, and the connector with `config/connector.local.yaml`, each as its
own process; then produces a steady stream of sample building and meter events (a few invalid
on purpose) and prints a progress line every few seconds from the connector's own /metrics.
`demo_cdc` runs the same flow with PostgreSQL and Debezium as the source (`make demo-cdc`).

Each run starts afresh: a new consumer group that begins at the topics' current ends, so the
last run's backlog is not replayed (and the demo's own local broker starts on an empty data
directory); `DEMO_KEEP=1` (or `--keep`) continues with the last run's group and backlog.

Ctrl-C or SIGTERM (or `--duration`) stops the feed, sends the connector SIGTERM so it drains and
commits, prints the connector's own summary line, then stops the emulator and the broker, and
exits 0. A second Ctrl-C passes a second SIGTERM on: the connector then stops at once.

Must not: be imported by the connector's run path; it is a developer tool.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client.parser import text_string_to_metric_families

from connector.errors import BrokerUnavailable
from connector.samples import sample_events
from twin_devtools.devbroker import (
    PROJECT_ROOT,
    find_or_start_broker,
    free_port,
    port_open,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = [
    "Demo",
    "Options",
    "SampleWorkload",
    "Workload",
    "main",
    "run_demo",
    "scrape",
    "skip_backlog",
]

CONFIG = PROJECT_ROOT / "config" / "connector.local.yaml"
DEAD_LETTER_TOPIC = "building-twin-connector.dlq"
KEEP_GROUP = "twin-demo"  # the group a `DEMO_KEEP=1` run continues
SUCCESS_STATUSES = ("Completed", "Published")


def say(message: str) -> None:
    """One line for the person at the terminal (stderr, unbuffered)."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    work: Path
    duration: float | None = None
    keep: bool = False


@dataclass
class Demo:
    """The running parts a workload may use: where things are, and what to undo at the end.

    `cleanups` run in reverse order after the connector and the emulator stopped (blocking
    callables, run in a worker thread), after `async_cleanups` (coroutines, e.g. closing a
    Kafka client)."""

    options: Options
    group: str
    bootstrap: str = ""
    emulator: str = ""  # base URL
    metrics_port: int = 0
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    async_cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    connector: subprocess.Popen[bytes] | None = None
    draining: bool = False  # the connector was sent SIGTERM
    hurry: anyio.Event = field(default_factory=anyio.Event)  # a second Ctrl-C


class Workload:
    """What a demo feeds through the connector; `run_demo` does the rest.

    Hooks, in order: `prepare` (after the broker, while the emulator and the connector
    start), `seed` (once the emulator answers, before the connector starts), `feed` (until
    `stop` is set; `refresh` before each progress line), `settle` (after the feed stopped,
    the connector still running), `report` (after the connector exited, the emulator still
    running). An exception from a hook stops the demo with its
    message, never a traceback."""

    name = "demo"
    config: Path = CONFIG
    topics: tuple[str, ...] = ()
    processing_delay = 2.0

    async def prepare(self, demo: Demo) -> None:
        """Start the workload's own upstream parts."""

    async def seed(self, demo: Demo) -> None:
        """Put what the platform must already hold into the emulator."""

    async def feed(self, demo: Demo, stop: anyio.Event) -> None:
        """Produce changes until `stop` is set; must return soon after."""

    async def refresh(self, demo: Demo) -> None:
        """Read what the next progress line shows besides the connector's /metrics."""

    def progress(self, metrics: dict[str, float]) -> str:
        """One progress line from the connector's /metrics."""
        raise NotImplementedError

    async def settle(self, demo: Demo) -> None:
        """Let what the feed produced reach the platform (bounded)."""

    async def report(self, demo: Demo) -> None:
        """Say what reached the platform."""


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "connector", *args],
            stdout=out, stderr=out, env=env, start_new_session=True,
        )  # fmt: skip


async def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    with anyio.fail_after(60):
        while not port_open(port):
            if proc.poll() is not None:
                raise DemoError(f"{what} exited ({proc.returncode}); see {log}")
            await anyio.sleep(0.1)


class DemoError(Exception):
    """A part of the demo could not start; the message says which and where its log is."""


@contextlib.asynccontextmanager
async def _admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        with anyio.CancelScope(shield=True):
            await admin.close()


async def _create_topics(bootstrap: str, topics: tuple[str, ...]) -> dict[str, int]:
    """Create the topics that are missing; returns each topic's partition count."""
    async with _admin(bootstrap) as admin:
        for name in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, 3, 1)])
        with anyio.fail_after(30):
            while True:
                described = await admin.describe_topics(list(topics))
                counts = {d["topic"]: len(d["partitions"]) for d in described}
                if all(counts.get(t) for t in topics):
                    return counts
                await anyio.sleep(0.2)


async def skip_backlog(bootstrap: str, group: str, partitions: dict[str, int]) -> int:
    """Commit `group`'s offsets at the topics' current ends; returns the records skipped."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit(dict(ends.items()))
        return sum(ends.values())
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()


def scrape(port: int) -> dict[str, float]:
    """The connector's /metrics summed over labels (requests by outcome, terminal by status)."""
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.name
            if key == "connector_api_requests_total":
                key += ":" + sample.labels.get("outcome", "")
            if key == "connector_records_terminal_total":
                totals[f"{key}:{sample.labels.get('status', '')}"] = sample.value
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def onboarded(metrics: dict[str, float]) -> float:
    """Records that reached a successful final status."""
    return sum(metrics.get(f"connector_records_terminal_total:{s}", 0.0) for s in SUCCESS_STATUSES)


class SampleWorkload(Workload):
    """`make demo`: sample building and meter events (about 1 % invalid) at a steady rate."""

    topics = ("building-changes", "meter-changes")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.history: deque[tuple[float, float]] = deque([(time.monotonic(), 0.0)])

    async def feed(self, demo: Demo, stop: anyio.Event) -> None:
        say(f"demo: producing about {self.rate:.0f} events/s")
        producer = AIOKafkaProducer(bootstrap_servers=demo.bootstrap, linger_ms=20)
        await producer.start()
        try:
            started = time.monotonic()
            events = sample_events(
                10**9, building_topic=self.topics[0], meter_topic=self.topics[1], ids=2000,
                invalid_share=0.01, seed=int(time.time()),
            )  # fmt: skip
            for sent, event in enumerate(events, start=1):
                if stop.is_set():
                    break
                await producer.send(event.topic, key=event.key, value=event.value)
                ahead = sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    with anyio.move_on_after(ahead):
                        await stop.wait()
        finally:
            # shielded: a producer left running would print metadata errors once Kafka stops
            with anyio.CancelScope(shield=True):
                await producer.stop()

    def progress(self, metrics: dict[str, float]) -> str:
        """`history` keeps (time, requests so far) to count the last rolling minute."""
        budget = 100
        requests = sum(
            v for k, v in metrics.items() if k.startswith("connector_api_requests_total:")
        )
        now = time.monotonic()
        self.history.append((now, requests))
        while len(self.history) > 1 and self.history[1][0] <= now - 60:
            self.history.popleft()
        used = 100 * (requests - self.history[0][1]) / budget
        return (
            f"consumed {metrics.get('connector_records_consumed_total', 0):>7.0f}  "
            f"delivered {metrics.get('connector_records_delivered_total', 0):>7.0f}  "
            f"dead-lettered {metrics.get('connector_records_dead_lettered_total', 0):>4.0f}  "
            f"coalesced {metrics.get('connector_records_coalesced_total', 0):>6.0f}  "
            f"onboarded {onboarded(metrics):>7.0f}  "
            f"batches tracked {metrics.get('connector_batches_tracked', 0):>3.0f}  "
            f"budget used {used:>3.0f}% of {budget}/min  "
            f"pending {metrics.get('connector_pending_records', 0):>5.0f}"
        )


async def _start_parts(
    workload: Workload, demo: Demo, procs: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], Path]:
    """The workload's upstream and, at the same time, the emulator and the connector; returns
    the connector and its log. Raises the first problem of either side."""
    problems: list[Exception] = []
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    async def upstream() -> None:
        try:
            await workload.prepare(demo)
        except (DemoError, KafkaError, OSError) as exc:
            problems.append(exc)

    async def platform() -> None:
        try:
            started.append(await _start_connector(workload, demo, procs))
        except (DemoError, KafkaError, OSError) as exc:
            problems.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(upstream)
        tg.start_soon(platform)
    if problems:
        raise problems[0]
    return started[0]


async def _start_connector(
    workload: Workload, demo: Demo, procs: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], Path]:
    """The emulator (seeded by the workload), then the connector pointed at it."""
    work = demo.options.work
    emulator_port, metrics_port = free_port(), int(os.environ.get("DEMO_METRICS_PORT", "9108"))
    if port_open(metrics_port):
        metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    emulator_log = work / "emulator.log"
    emulator = _spawn(
        ["emulate", "buildingminds", "--port", str(emulator_port),
         "--processing-delay", f"{workload.processing_delay:g}"],
        env, emulator_log,
    )  # fmt: skip
    procs.append(emulator)
    await _wait_port(emulator_port, emulator, "the emulator", emulator_log)
    demo.emulator = f"http://127.0.0.1:{emulator_port}"
    await workload.seed(demo)
    env.update({
        "CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": demo.bootstrap,
        "CONNECTOR_KAFKA__GROUP_ID": demo.group,
        "CONNECTOR_SINK__BASE_URL": f"{demo.emulator}/api/digitaltwinintegration",
        "CONNECTOR_SINK__TOKEN_URL":
            f"{demo.emulator}/buildingminds.onmicrosoft.com/oauth2/v2.0/token",
        "CONNECTOR_METRICS__PORT": str(metrics_port),
        "CONNECTOR_LOGGING__FORMAT": "json",
        "CONNECTOR_PIPELINE__SHUTDOWN_GRACE_SECONDS": "15",
    })  # fmt: skip
    connector_log = work / "connector.log"
    connector_log.unlink(missing_ok=True)
    connector = _spawn(["run", "--config", str(workload.config)], env, connector_log)
    demo.connector = connector
    procs.append(connector)
    await _wait_port(metrics_port, connector, "the connector", connector_log)
    demo.metrics_port = metrics_port
    return connector, connector_log


async def _show_progress(
    workload: Workload, demo: Demo, connector: subprocess.Popen[bytes], stop: anyio.Event
) -> None:
    """A progress line every 3 s until `stop` is set, the duration ends or the connector dies."""
    started = time.monotonic()
    duration = demo.options.duration
    while not stop.is_set():
        with anyio.move_on_after(3):
            await stop.wait()
        if connector.poll() is not None:
            say(f"demo: the connector exited early ({connector.returncode})")
            break
        with contextlib.suppress(OSError, KafkaError):
            await workload.refresh(demo)
            say(workload.progress(scrape(demo.metrics_port)))
        if duration is not None and time.monotonic() - started >= duration:
            break


async def _feed(workload: Workload, demo: Demo, stop: anyio.Event) -> None:
    try:
        await workload.feed(demo, stop)
    except (KafkaError, OSError, DemoError) as exc:
        say(f"demo: the feed stopped: {exc}")


async def _settle(workload: Workload, demo: Demo) -> None:
    """The workload's `settle`, cut short by a second Ctrl-C."""
    async with anyio.create_task_group() as tg:

        async def on_hurry() -> None:
            await demo.hurry.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(on_hurry)
        with contextlib.suppress(OSError, KafkaError):
            await workload.settle(demo)
        tg.cancel_scope.cancel()


def summary_line(log: Path) -> str | None:
    """The connector's own last words: its `stopped: ...` summary from its JSON log."""
    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(errors="replace").splitlines()):
            with contextlib.suppress(ValueError):
                message = str(json.loads(line).get("msg", ""))
                if message.startswith("stopped"):
                    return message
    return None


async def _stop_connector(connector: subprocess.Popen[bytes], log: Path) -> int:
    say("demo: stopping: the connector drains and commits ...")
    if connector.poll() is None:
        connector.send_signal(signal.SIGTERM)
    try:
        code = await anyio.to_thread.run_sync(functools.partial(connector.wait, 60))
    except subprocess.TimeoutExpired:
        connector.kill()
        code = await anyio.to_thread.run_sync(connector.wait)
    say(f"demo: connector exited {code}")
    say(f"demo: connector: {summary_line(log) or f'(no summary line; see {log})'}")
    return code


def _announce(demo: Demo) -> None:
    if demo.options.keep:
        say(f"demo: DEMO_KEEP=1: continuing the last run's backlog (consumer group {demo.group})")
    else:
        say(
            f"demo: a fresh start: consumer group {demo.group} begins at the topics' ends "
            "(DEMO_KEEP=1 continues the last run's backlog)"
        )


async def _start_broker(demo: Demo) -> None:
    data = demo.options.work / "kafka"
    if not demo.options.keep and not os.environ.get("KAFKA_BOOTSTRAP"):
        shutil.rmtree(data, ignore_errors=True)  # our own broker: start on an empty log
    say("demo: starting Kafka (KAFKA_BOOTSTRAP, or a local broker from Maven Central jars) ...")
    broker = await anyio.to_thread.run_sync(find_or_start_broker, data)
    demo.cleanups.append(broker.stop)
    demo.bootstrap = broker.bootstrap


async def _session(workload: Workload, demo: Demo, stop: anyio.Event) -> int:
    """Everything up, progress until `stop` (or the duration), everything down. Exit code."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _announce(demo)
        await _start_broker(demo)
        if stop.is_set():
            return 0
        partitions = await _create_topics(demo.bootstrap, (*workload.topics, DEAD_LETTER_TOPIC))
        if not demo.options.keep:
            mine = {t: partitions[t] for t in workload.topics}
            skipped = await skip_backlog(demo.bootstrap, demo.group, mine)
            if skipped:
                say(f"demo: skipping {skipped} records of earlier runs")
        connector, connector_log = await _start_parts(workload, demo, procs)
        say(
            f"demo: Kafka {demo.bootstrap} | emulator {demo.emulator} | connector metrics "
            f"http://127.0.0.1:{demo.metrics_port}/metrics | logs in {demo.options.work}\n"
            "demo: Ctrl-C stops everything"
        )
        if not stop.is_set():  # else Ctrl-C came while things started: straight to the stop
            feed_stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, workload, demo, feed_stop)
                await _show_progress(workload, demo, connector, stop)
                feed_stop.set()
            if connector.poll() is None:
                await _settle(workload, demo)
        demo.draining = True
        code = await _stop_connector(connector, connector_log)
        await workload.report(demo)
        return 0 if code == 0 else 1
    finally:
        with anyio.CancelScope(shield=True):
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        await anyio.to_thread.run_sync(functools.partial(proc.wait, 15))
                    except subprocess.TimeoutExpired:
                        proc.kill()
            for close in reversed(demo.async_cleanups):
                with contextlib.suppress(KafkaError, OSError):
                    await close()
            for cleanup in reversed(demo.cleanups):
                await anyio.to_thread.run_sync(cleanup)
        say("demo: stopped")


def _clients_to_file(path: Path) -> None:
    """The Kafka and HTTP clients' own log lines and Python's warnings go to `path`: the
    terminal shows the demo's lines only (a broker starting up makes aiokafka log retries)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(capture=True)


async def run_demo(workload: Workload, options: Options) -> int:
    """Run `workload` until Ctrl-C/SIGTERM (or the duration); the exit code."""
    _clients_to_file(options.work / "demo.log")
    group = KEEP_GROUP if options.keep else f"{KEEP_GROUP}-{time.strftime('%Y%m%d-%H%M%S')}"
    demo = Demo(options, group=group)
    stop = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def on_signals() -> None:
            async for _ in signals:
                if not stop.is_set():
                    stop.set()
                    continue
                # a second Ctrl-C: no more waiting for the last changes, and the connector's
                # own second signal stops it at once
                demo.hurry.set()
                connector = demo.connector
                if demo.draining and connector is not None and connector.poll() is None:
                    connector.send_signal(signal.SIGTERM)

        code = 2
        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signals)
            try:
                code = await _session(workload, demo, stop)
            except (BrokerUnavailable, DemoError, KafkaError, OSError) as exc:
                say(f"demo: {exc}")
            finally:
                tg.cancel_scope.cancel()
    return code


def parser(prog: str, description: str | None, work: str) -> argparse.ArgumentParser:
    """The options both demos take."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--work-dir", type=Path, default=PROJECT_ROOT / ".cache" / work)
    parser.add_argument(
        "--keep", action="store_true", default=os.environ.get("DEMO_KEEP", "") not in ("", "0"),
        help="continue the last run's consumer group and backlog (also DEMO_KEEP=1)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args_parser = parser("python -m twin_devtools.demo", __doc__, "demo")
    args_parser.add_argument("--rate", type=float, default=50.0, help="events/s (default 50)")
    args = args_parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    options = Options(args.work_dir, args.duration, keep=args.keep)
    return anyio.run(run_demo, SampleWorkload(args.rate), options)


if __name__ == "__main__":
    sys.exit(main())
