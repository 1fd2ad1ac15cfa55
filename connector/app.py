"""The app: wires source → decode → window → scheduler → sink, and runs them.

Only wiring and running: the pipeline itself is `pipeline.Pipeline` (the shared state and
its task group), working through `intake` (consume, decode, backpressure), `delivery` (what a
sink's error means; scheduling, requests, dead letters), `commits` (the commit watermark,
rebalances) and `lifecycle` (the one state, the drain's deadline); clients are built by
`sessions`, the HTTP endpoints served by `health`, and each platform lives in its package
under `sinks/` (built by the registry, `sinks.build_sink`). Nothing here names a platform.

Start (`run_connector`): one INFO line naming the version, sink, topics and group; the
metrics port, bound before Kafka is touched (`StartupFailed` when it is busy); Kafka, waited
for with backoff for as long as it takes (`/healthz` 200, `/readyz` 503 meanwhile); then the
pipeline and the sources. Fetched batches are parsed by `kafkarecords` (installed here).

Shutdown (SIGTERM, SIGINT or SIGHUP, at any moment; before the pipeline runs a signal just
ends the start): the pipeline drains (`Pipeline.begin_drain`: readiness off; stop fetching;
close every pending request at once; wait for in-flight requests and dead letters up to
`shutdown_grace_seconds`; commit); then close the consumer, the producer and the HTTP
session; one summary log line; exit 0. A second signal stops at once (`Pipeline.stop_now`:
what was not committed is read again on restart).

Must not: block the event loop, or hold pipeline logic (it belongs to `pipeline` and its
parts).
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import TYPE_CHECKING

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from connector import __version__
from connector.commits import Rebalance
from connector.deadletter import DeadLetterWriter
from connector.health import STALL_SECONDS, StartupFailed, Status, bind_health
from connector.kafkarecords import install as install_tolerant_records
from connector.logs import get_logger
from connector.metrics import Metrics
from connector.pipeline import Pipeline
from connector.receipts import ReceiptWriter
from connector.sessions import client_session, http_session, kafka_options, source_session
from connector.signals import SIGNALS
from connector.sinks import build_sink
from connector.sinks.base import SinkContext
from connector.sources import build_source
from connector.sources.base import Poller, SnapshotStore

if TYPE_CHECKING:
    from connector.config import Settings
    from connector.signals import EarlySignals

__all__ = [
    "STALL_SECONDS",
    "Pipeline",
    "StartupFailed",
    "client_session",
    "http_session",
    "kafka_options",
    "run_connector",
    "source_session",
]

log = get_logger(__name__)


async def _pollers(
    settings: Settings,
    producer: AIOKafkaProducer,
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
) -> list[Poller]:
    """One poller per configured source, sharing the (idempotent) dead-letter producer.

    Each source gets its own HTTP session, closed by `stack`."""
    pollers = []
    for source in settings.sources:
        session = await stack.enter_async_context(source_session(source))
        store = SnapshotStore(producer, source.snapshot_topic, kafka_options(settings))
        await store.ensure_topic()
        pollers.append(
            Poller(build_source(source, session), source, producer=producer, store=store,
                   metrics=metrics)
        )  # fmt: skip
    return pollers


async def _topic_max_bytes(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """The topic's `max.message.bytes`; None when the topic does not exist (yet) or the
    broker does not say."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})
    for response in await admin.describe_configs([resource]):
        for error_code, _, _, _, entries in response.resources:
            if error_code:
                return None
            for name, value, *_ in entries:
                if name == "max.message.bytes" and value and value.isdigit():
                    return int(value)
    return None


async def _connect(
    settings: Settings, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer
) -> int | None:
    """Start the producer and the consumer, waiting for Kafka as long as it takes.

    A broker that is not reachable yet (a pod that starts before Kafka) is waited for with
    backoff up to 30 s, logging one line per attempt; other Kafka errors (authentication,
    TLS) are raised. Returns the dead-letter topic's `max.message.bytes`, when it is known."""
    since: float | None = None
    attempt = 0
    limit: int | None = None
    steps = [producer.start, consumer.start]  # each once: a retry goes on where it failed
    while True:
        admin = AIOKafkaAdminClient(**kafka_options(settings))
        try:
            await admin.start()
            limit = await _topic_max_bytes(admin, settings.kafka.dead_letter_topic)
            while steps:
                await steps[0]()
                steps.pop(0)
        except KafkaConnectionError as exc:
            now = time.time()
            since = since or now
            delay = min(2.0**attempt, 30.0)
            attempt += 1
            log.warning(
                "Kafka unreachable since %s (%.0f s), retrying in %.0f s: %s",
                time.strftime("%H:%M:%SZ", time.gmtime(since)), now - since, delay, exc,
                extra={"bootstrap_servers": settings.kafka.bootstrap_servers},
            )  # fmt: skip
            await anyio.sleep(delay)
            continue
        finally:
            with anyio.CancelScope(shield=True):
                await admin.close()
        if since is not None:
            log.info("Kafka reachable after %.0f s", time.time() - since)
        return limit


def _startup_line(settings: Settings) -> None:
    k = settings.kafka
    log.info(
        "starting building-twin-connector %s: sink %s, topics %s, group %s",
        __version__, settings.sink.type, ", ".join(k.topics), k.group_id,
        extra={"version": __version__, "sink": settings.sink.type, "topics": list(k.topics),
               "group_id": k.group_id},
    )  # fmt: skip


async def _watch_signals(status: Status, early: EarlySignals | None) -> None:
    """SIGTERM, SIGINT, SIGHUP: the first drains (or, before the pipeline runs, stops the
    start); a second stops at once. Signals that came before the loop ran count too."""

    def received(signum: int) -> None:
        name = signal.Signals(signum).name
        pipeline = status.pipeline
        if not status.stop_requested:
            status.stop_requested = True
            log.info("%s received: %s", name, "draining" if pipeline else "stopping the start")
            if pipeline is not None:
                pipeline.begin_drain()
            else:
                status.starting.cancel()
            return
        log.warning("second signal: stopping now; uncommitted records will be read again")
        if pipeline is not None:
            pipeline.stop_now()
        else:
            status.everything.cancel()

    with anyio.open_signal_receiver(*SIGNALS) as signals:
        for signum in early.received if early is not None else ():
            received(signum)
        async for signum in signals:
            received(signum)


async def run_connector(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    handle_signals: bool = True,
    early_signals: EarlySignals | None = None,
    task_status: anyio.abc.TaskStatus[Pipeline] = anyio.TASK_STATUS_IGNORED,
) -> Pipeline:
    """`run`: build every part from `settings`, run until drained, close everything.

    Order: the start-up line; signals (`early_signals`: those that came before the loop ran);
    the metrics port (`StartupFailed` when it is busy); Kafka, waited for as long as it
    takes; then the pipeline. With `tg.start(run_connector, ...)` the caller gets the running
    `Pipeline` (tests drain it with `begin_drain()` instead of a signal). Returns the pipeline,
    for its final stats (never started, if a signal came first).
    """
    _startup_line(settings)
    install_tolerant_records()
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    session = client_session(settings)
    try:
        sink = build_sink(SinkContext(settings, metrics, session))
    except BaseException:
        await session.close()
        raise
    options = kafka_options(settings)
    consumer = AIOKafkaConsumer(
        group_id=settings.kafka.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_bytes=settings.kafka.fetch_max_bytes,
        max_partition_fetch_bytes=settings.kafka.max_partition_fetch_bytes, **options,
    )  # fmt: skip
    max_request_size = settings.window.max_record_bytes + 64 * 1024
    producer = AIOKafkaProducer(
        enable_idempotence=True, acks="all", linger_ms=5, max_request_size=max_request_size,
        **options,
    )  # fmt: skip
    dead_letters = DeadLetterWriter(
        producer,
        settings.kafka.dead_letter_topic,
        on_written=lambda reason: metrics.dead_lettered(reason.value),
        max_bytes=max_request_size,
    )
    pipeline = Pipeline(
        settings, consumer=consumer, dead_letters=dead_letters, sink=sink,
        metrics=metrics,
    )  # fmt: skip
    status = Status()
    runner = None
    try:
        # bound before Kafka is touched, and outside the task group so that a busy port
        # raises `StartupFailed` itself
        if settings.metrics.port:
            runner = await bind_health(settings, registry, status)
        with status.everything:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(_watch_signals, status, early_signals)
                with status.starting:
                    consumer.subscribe(list(settings.kafka.topics), listener=Rebalance(pipeline))
                    topic_limit = await _connect(settings, producer, consumer)
                    if topic_limit is not None:
                        dead_letters.max_bytes = min(topic_limit, max_request_size)
                if not status.starting.cancel_called:
                    await _serve(
                        settings, pipeline, producer, status=status,
                        task_status=task_status,
                    )  # fmt: skip
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if runner is not None:
                await runner.cleanup()
            await consumer.stop()
            await producer.stop()
            await sink.aclose()
            await session.close()
    if status.pipeline is None:
        log.info("stopped before the pipeline started")
    return pipeline


async def _serve(
    settings: Settings, pipeline: Pipeline, producer: AIOKafkaProducer,
    *, status: Status, task_status: anyio.abc.TaskStatus[Pipeline],
) -> None:  # fmt: skip
    """Run the pipeline and the sources until the pipeline has stopped."""
    # the stack (the sources' sessions) closes only after every task has ended
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        status.pipeline = pipeline  # from now on a signal drains
        if status.stop_requested:
            pipeline.begin_drain()
        if settings.receipts.enabled:  # commits wait for receipts; the rest written at cancel
            receipts = ReceiptWriter(producer, settings.receipts.topic)
            pipeline.outcomes, pipeline.commit_barrier = receipts, receipts.written_up_to_now
            tg.start_soon(receipts.run)
        await tg.start(pipeline.run)
        tg.start_soon(pipeline.sink.warm_up)
        for poller in await _pollers(settings, producer, pipeline.metrics, stack):
            tg.start_soon(poller.run)
        task_status.started(pipeline)
        await pipeline.stopped.wait()
        tg.cancel_scope.cancel()
