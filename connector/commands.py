"""The I/O of the one-shot commands: `check`, `batches` and `produce-sample`.

`check` proves a configuration end to end without sending data: the sink's `probe` (its
token from the token endpoint, then one read-only request: BuildingMinds `GET /batch`,
Building X the partition's locations); then
every configured source's `probe()` (a token and one read-only request, nothing published);
then Kafka: the brokers answer within `KAFKA_CHECK_SECONDS`, every configured topic and the
dead-letter topic exist, and the consumer group's committed position and lag per topic. Each
failure prints what to fix; a failed part does not stop the others being checked. Log lines
are kept out of its output: every problem is said once, in its own `FAILED:` line.

Must not: write to the platform, publish to Kafka, commit, join the consumer group, create a
topic, or print a secret or a token (only masked summaries and the platforms' own error text,
which the token requests scrub of our secrets).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, TextIO

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from connector.errors import ApiError, AuthError, ConnectorError
from connector.metrics import Metrics
from connector.samples import sample_events
from connector.sessions import client_session, kafka_options, source_session
from connector.sinks import build_sink
from connector.sinks.base import BatchHistory, SinkContext
from connector.sources import build_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from connector.config import Settings

__all__ = ["list_batches", "produce_sample", "run_check"]

KAFKA_CHECK_SECONDS = 10.0  # how long `check` waits for the brokers before it says so
PROGRESS_SECONDS = 2.0  # `produce-sample` says how far it got at least this often


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Keep log lines (ours and aiokafka's) out of a command's output while it runs.

    Without a handler set up, Python prints warnings to stderr on its own: `check` would show
    a stray `token request failed: rejected` beside its own `FAILED:` line saying the same."""
    saved = []
    for name in ("connector", "aiokafka"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [logging.NullHandler()]
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


async def run_check(settings: Settings, out: TextIO, err: TextIO, *, kafka: bool = True) -> bool:
    """True when the sink, every configured source and (unless `kafka` is False) Kafka
    passed; each is checked regardless of the others."""
    with _quiet_logs():
        sink_ok = await _check_sink(settings, out, err)
        sources_ok = await _check_sources(settings, out, err)
        kafka_ok = await _check_kafka(settings, out, err) if kafka else True
    return sink_ok and sources_ok and kafka_ok


async def _check_kafka(settings: Settings, out: TextIO, err: TextIO) -> bool:
    """The brokers, the topics and the group's position, read-only.

    One line per topic: `topic NAME: ok (N partitions; group G: committed C, lag L)` or
    `FAILED: topic NAME does not exist ...`. The consumer never subscribes, so it never joins
    the group (a running connector is not disturbed), and it asks only for topics that exist
    (asking for a missing one could create it on a broker that creates topics on demand)."""
    k = settings.kafka
    timeout_ms = int(KAFKA_CHECK_SECONDS * 1000)
    admin = AIOKafkaAdminClient(request_timeout_ms=timeout_ms, **kafka_options(settings))
    consumer = AIOKafkaConsumer(
        group_id=k.group_id, enable_auto_commit=False, request_timeout_ms=timeout_ms,
        **kafka_options(settings),
    )  # fmt: skip
    try:
        try:
            with anyio.fail_after(KAFKA_CHECK_SECONDS):
                await admin.start()
                described = await admin.describe_topics()  # every topic, one request
                await consumer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            if type(exc).__name__ not in why:  # aiokafka's errors name their class already
                why = f"{type(exc).__name__}: {why}"
            if isinstance(exc, TimeoutError):
                why = f"no answer within {KAFKA_CHECK_SECONDS:.0f} s"
            print(
                f"FAILED: Kafka brokers {k.bootstrap_servers} are not reachable ({why})\n"
                "  fix: check kafka.bootstrap_servers, kafka.security_protocol (and its TLS/SASL "
                "keys) and that this machine can reach the brokers",
                file=err,
            )
            return False
        existing = {
            str(t["topic"]): sorted(int(p["partition"]) for p in t["partitions"])
            for t in described
            if not t.get("error_code")
        }
        print(f"kafka: ok ({k.bootstrap_servers}, {len(existing)} topics visible)", file=out)
        passed = True
        for topic in k.topics:
            if topic not in existing:
                passed = False
                print(
                    f"FAILED: topic {topic} does not exist on {k.bootstrap_servers}\n"
                    "  fix: correct its name in kafka.topics, or create the topic",
                    file=err,
                )
                continue
            tps = [TopicPartition(topic, p) for p in existing[topic]]
            print(f"topic {topic}: ok ({await _position(consumer, tps, k.group_id)})", file=out)
        dlq = k.dead_letter_topic
        if dlq in existing:
            print(f"dead-letter topic {dlq}: ok ({len(existing[dlq])} partitions)", file=out)
        else:
            passed = False
            print(
                f"FAILED: dead-letter topic {dlq} does not exist on {k.bootstrap_servers}\n"
                "  fix: create it (see docs/operations.md), or correct kafka.dead_letter_topic",
                file=err,
            )
        receipts = settings.receipts
        if receipts.enabled and receipts.topic in existing:
            count = len(existing[receipts.topic])
            print(f"receipts topic {receipts.topic}: ok ({count} partitions)", file=out)
        elif receipts.enabled:
            passed = False
            print(
                f"FAILED: receipts topic {receipts.topic} does not exist on "
                f"{k.bootstrap_servers}\n  fix: create it compacted (cleanup.policy=compact; "
                "docs/operations.md, Receipts), correct receipts.topic, or set "
                "receipts.enabled: false",
                file=err,
            )
        return passed
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(KAFKA_CHECK_SECONDS):
            await consumer.stop()
            await admin.close()


async def _position(consumer: AIOKafkaConsumer, tps: list[TopicPartition], group: str) -> str:
    """`3 partitions; group G: committed 120, lag 30` for the partitions of one topic."""
    if not tps:
        return "no partitions visible"
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    committed = {tp: await consumer.committed(tp) for tp in tps}
    done = [tp for tp in tps if committed[tp] is not None]
    lag = sum(max(ends[tp] - (committed[tp] or starts[tp]), 0) for tp in tps)
    where = f"{len(tps)} partitions; group {group}"
    if not done:
        return f"{where}: nothing committed yet, lag {lag} (it starts at the earliest offset)"
    position = sum(committed[tp] or 0 for tp in done)
    partial = "" if len(done) == len(tps) else f" on {len(done)} of {len(tps)} partitions"
    return f"{where}: committed {position}{partial}, lag {lag}"


async def _check_sources(settings: Settings, out: TextIO, err: TextIO) -> bool:
    """One line per source: `source NAME: ok (summary)` or `source NAME: FAILED: why and fix`.

    `probe` gets a token the way a poll does (for BIMlink this rotates the refresh token and
    stores the new one) and makes one read-only request."""
    passed = True
    for source_settings in settings.sources:
        async with source_session(source_settings) as session:
            source = build_source(source_settings, session)
            try:
                summary = await source.probe()
            except ConnectorError as exc:
                passed = False
                print(f"source {source.name}: FAILED: {exc}", file=err)
                if exc.retriable:
                    print(
                        "  fix: this may pass on a retry; if it persists, check the source's "
                        "URLs and the network",
                        file=err,
                    )
            else:
                print(f"source {source.name}: ok ({summary})", file=out)
    return passed


async def _check_sink(settings: Settings, out: TextIO, err: TextIO) -> bool:
    """True when the sink's `probe` passed (a token, one read-only request)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    session = client_session(settings)
    try:
        sink = build_sink(SinkContext(settings, Metrics(CollectorRegistry()), session))
        try:
            return await sink.probe(out, err)
        finally:
            await sink.aclose()
    finally:
        await session.close()


async def list_batches(
    settings: Settings, limit: int, batch_id: str | None, out: TextIO, err: TextIO
) -> bool:
    """`batches`: recent batches with their status counts; one batch's failed records, for a
    sink that settles later (`BatchHistory`). Everything is read before anything is printed,
    so a failure prints only its `FAILED:`."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    session = client_session(settings)
    try:
        sink = build_sink(SinkContext(settings, Metrics(CollectorRegistry()), session))
        try:
            if not isinstance(sink, BatchHistory):
                print(
                    f"FAILED: batches: sink.type {settings.sink.type} has no batches (it "
                    "answers synchronously)",
                    file=err,
                )
                return False
            with _quiet_logs():
                return await sink.batches(limit, batch_id, out, err)
        except (ApiError, AuthError) as exc:
            print(f"FAILED: {exc}", file=err)
            return False
        finally:
            await sink.aclose()
    finally:
        await session.close()


async def produce_sample(
    settings: Settings,
    count: int,
    *,
    ids: int,
    invalid_share: float,
    rate: float,
    seed: int,
    out: TextIO,
) -> None:
    """Write `count` sample events to the first two configured topics (or the one)."""
    topics = settings.kafka.topics
    building_topic, meter_topic = topics[0], topics[1] if len(topics) > 1 else topics[0]
    producer = AIOKafkaProducer(linger_ms=10, acks="all", **kafka_options(settings))
    await producer.start()
    started = time.monotonic()
    sent = invalid = 0
    progress = _Progress(count, out)
    try:
        for event in sample_events(
            count, building_topic=building_topic, meter_topic=meter_topic, ids=ids,
            invalid_share=invalid_share, seed=seed,
        ):  # fmt: skip
            await producer.send(event.topic, key=event.key, value=event.value)
            sent += 1
            invalid += event.invalid
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await anyio.sleep(ahead)
            progress.sent(sent)
        await producer.flush()
    finally:
        await producer.stop()
    print(
        f"produced {sent} events ({invalid} invalid on purpose) to {building_topic}, {meter_topic} "
        f"in {time.monotonic() - started:.1f} s",
        file=out,
    )


class _Progress:
    """`  3000/6000 events (50%, 40/s)` at least every `every` seconds while events go out."""

    def __init__(
        self,
        total: int,
        out: TextIO,
        *,
        every: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.out, self.every, self.clock = total, out, every, clock
        self.started = self.next_at = clock()
        self.next_at += every

    def sent(self, sent: int) -> None:
        now = self.clock()
        if now < self.next_at or sent >= self.total:
            return  # the final line says the rest
        self.next_at = now + self.every
        rate = sent / max(now - self.started, 1e-9)
        share = 100 * sent / self.total
        print(
            f"  {sent}/{self.total} events ({share:.0f}%, {rate:.0f}/s)", file=self.out, flush=True
        )
