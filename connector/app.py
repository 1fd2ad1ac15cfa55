"""The app: wires source → decode → window → scheduler → sink, and runs them.

The policies live in modules of their own: `intake` (the consumer protocol, backpressure),
`delivery` (what a sink's error means), `offsets` (the commit watermark), `lifecycle` (the one
state, the drain's deadline), `sessions` (clients), `health` (the HTTP endpoints), and each
platform in its package under `sinks/` (built by the registry, `sinks.build_sink`). Nothing
here names a platform.

One task group owns every task: the consume loop, the scheduler, one task per request in
flight, the commit loop, the sink's own background work (`Sink.run`: status polls) and the
signal watcher.

Start (`run_connector`): one INFO line naming the version, sink, topics and group; the
metrics port, bound before Kafka is touched (`StartupFailed` when it is busy); Kafka, waited
for with backoff for as long as it takes (`/healthz` 200, `/readyz` 503 meanwhile); then the
pipeline. Fetched batches are parsed by `kafkarecords`, so a record aiokafka cannot decode (a
header key that is not UTF-8) is dead-lettered as `undecodable_record` instead of stopping the
consumer; a batch it cannot parse at all (a compression codec this process lacks) is read
record by record and each record it cannot hand over is dead-lettered by its coordinates.

Commit order (the rule everything else serves): a record's offset is finished when the platform
accepted it, when its dead letter was acknowledged, or when a newer version of the same ID that
stands for it finished; `commits.Commits` commits the contiguous finished prefix, as the next
offset to read, on an interval, on revoke and at shutdown. Nothing else commits.

Shutdown (SIGTERM, SIGINT or SIGHUP, at any moment; before the pipeline runs a signal just
ends the start): readiness off; stop fetching; close every pending request at once;
wait for in-flight requests and dead letters up to `shutdown_grace_seconds`; commit; close the
consumer, the producer and the HTTP session; one summary log line; exit 0. A second signal
stops at once (what was not committed is read again on restart).

Must not: block the event loop, or finish an offset before its outcome is certain.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    UnsupportedCodecError,
)
from prometheus_client import CollectorRegistry

from connector import __version__
from connector.commits import Commits, Rebalance
from connector.deadletter import DeadLetter, DeadLetterLog, DeadLetterWriter
from connector.decode import Change, Decoder, Reason, Rejection, Skip
from connector.delivery import BackOff, Hold, Split, Stop, Wait, disposition
from connector.delivery import DeadLetter as DeadLetterIt
from connector.errors import ConnectorError
from connector.health import STALL_SECONDS, StartupFailed, Status, bind_health
from connector.intake import Consumer, Pressure, backpressure
from connector.kafkarecords import install as install_tolerant_records
from connector.kafkarecords import undecodable_header_keys
from connector.lifecycle import Changed, Deadline, State
from connector.logs import get_logger
from connector.metrics import Metrics
from connector.offsets import TopicPartitionKey
from connector.outcomes import RecordOutcome, SourceRef
from connector.ratelimit import Backoff, BudgetShare
from connector.receipts import ReceiptWriter
from connector.schemaregistry import build_gate
from connector.sessions import client_session, http_session, kafka_options, source_session
from connector.signals import SIGNALS
from connector.sinks import build_sink
from connector.sinks.base import SinkContext
from connector.sources import build_source
from connector.sources.base import Poller, SnapshotStore
from connector.window import Batch, Ref, Slot, Window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from connector.config import Settings
    from connector.outcomes import OutcomeListener
    from connector.signals import EarlySignals
    from connector.sinks.base import Settlement, Sink, SubmitResult

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

# what aiokafka raises from `getmany` when it cannot parse a fetched batch (a compression codec
# this process lacks, a corrupt batch): the records, not the connection, are at fault
_UNREADABLE = (CorruptRecordException, UnsupportedCodecError, UnicodeDecodeError, ValueError)
STEP_LIMIT = 5000  # records read one at a time per partition after an unreadable batch
STEP_WAIT_MS = 300  # and how long each single read waits for a fetch


def _source_refs(refs: list[Ref]) -> tuple[SourceRef, ...]:
    return tuple(SourceRef(r.tp.topic, r.tp.partition, r.offset, r.timestamp_ms) for r in refs)


@dataclass
class _Stats:
    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    coalesced: int = 0
    skipped: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)


class Pipeline:
    """One running connector, built by `run_connector` (which wires its consumer, sink and
    dead-letter writer), then `await run()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Consumer,
        dead_letters: DeadLetterWriter,
        sink: Sink,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.sink = sink
        self.limiter = sink.limiter  # the budget each submission takes a slot of (or None)
        self._whole_budget = True  # this replica owns every partition (so all of the budget)
        self.metrics = metrics
        self.clock = clock
        # Avro / JSON Schema values: their schemas are fetched before a batch is decoded
        self.schemas, cache = build_gate(settings.schema_registry, metrics=metrics, clock=clock)
        self.decoder = Decoder(
            settings.kafka.topic_entities, settings.window.max_record_bytes, settings.mappings,
            schemas=cache,
        )  # fmt: skip
        self.window = Window(
            max_records=settings.window.max_records,
            max_request_bytes=settings.window.max_request_bytes,
            max_wait=settings.window.max_wait_seconds,
            clock=clock,
        )
        self.commits = Commits(consumer, metrics, clock=clock)
        if self.limiter is not None:
            limiter = self.limiter
            self.commits.handover = lambda final: limiter.handover(final=final)
        self.offsets = self.commits.offsets
        self.rebalances = 0  # assignments received; a storm shows here
        self.heartbeat = clock()  # last turn of the consume loop, for /healthz
        self.has_token: Callable[[], bool] = sink.has_token
        # this replica's share of each of the credential's budgets, recomputed on rebalance
        self.budgets = [BudgetShare(b, b.capacity, clock=clock) for b in sink.budgets]
        self.backoff = Backoff(
            base=settings.sink.retry_backoff_seconds, cap=settings.sink.retry_backoff_max_seconds
        )
        self.stats = _Stats()
        self.dead_letter_log = DeadLetterLog(clock=clock)
        self.state = State.STARTING
        self.deadline = Deadline(clock)  # of the drain; a revoke meanwhile keeps to it too
        self._held: dict[str, float] = {}  # endpoint -> clock time it may be tried again
        self._wake = anyio.Event()
        self._requests = anyio.Semaphore(settings.pipeline.max_in_flight_requests)
        self._in_flight = 0
        self._dead_letters_open = 0
        self._unsettled = 0  # accepted batches the sink reports the terminal outcome of later
        self._paused = False
        self._changed = Changed()  # requests, dead letters or unsettled batches changed
        self.stopped = anyio.Event()
        self._drain_requested = anyio.Event()
        self._drained = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._outer: anyio.CancelScope | None = None
        self.outcomes: OutcomeListener | None = None  # told each record's final outcome

    @property
    def commit_barrier(self) -> Callable[[], Awaitable[bool]] | None:
        """Receipts: a commit waits until those of the records it covers were written."""
        return self.commits.barrier

    @commit_barrier.setter
    def commit_barrier(self, barrier: Callable[[], Awaitable[bool]] | None) -> None:
        self.commits.barrier = barrier

    @property
    def group_lost_since(self) -> float | None:
        """Since when Kafka's group coordinator is unreachable (None: it is not)."""
        return self.commits.group_lost_since

    @property
    def ready(self) -> bool:
        """Running and not draining (/readyz)."""
        return self.state is State.RUNNING

    @property
    def draining(self) -> bool:
        """A drain was asked for (`begin_drain`); stays true once stopped."""
        return self._drain_requested.is_set()

    # ---------------------------------------------------------------- intake
    def _notify(self) -> None:
        self._wake.set()

    async def _consume(self) -> None:
        while not self.draining:
            self.heartbeat = self.clock()
            self._apply_backpressure()
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=2000)
            except _UNREADABLE as exc:
                await self._step_past_unreadable(exc)
                continue
            if self.schemas is not None:  # fetch the schemas it names; retry held partitions
                batches = await self.schemas.admit(batches, self.consumer)
            self._take_in_all(batches)

    def _take_in_all(self, batches: dict[Any, list[Any]]) -> None:
        for tp, records in batches.items():
            key = TopicPartitionKey(tp.topic, tp.partition)
            for rec in records:
                self._take_in(key, rec)
            self.metrics.consumed(tp.topic, len(records))
            self.stats.consumed += len(records)
        if batches:
            self._update_pending()
            self._notify()

    async def _step_past_unreadable(self, first: Exception) -> None:
        """aiokafka could not parse a fetched batch (`kafkarecords` reads what it can): find
        the records at fault and dead-letter them by their coordinates.

        The failed `getmany` had already moved the positions of whatever it drained from other
        partitions, so every partition goes back to where this pipeline stopped taking in.
        Then each is read one record at a time: a record that fails twice at the same position
        (once could be a corrupt fetch) is dead-lettered as `undecodable_record` with only its
        coordinates (neither key nor value could be read), and reading goes on after it."""
        log.error(
            "a fetched batch could not be read (%s): reading record by record; what cannot be "
            "read is dead-lettered by its coordinates (for a compression codec: install it)",
            first,
        )
        for tp in self.consumer.assignment():
            await self._rewind(tp)
        for tp in sorted(self.consumer.assignment()):
            key = TopicPartitionKey(tp.topic, tp.partition)
            failed_at: int | None = None
            settle = False  # a seek leaves one stale, empty answer behind
            for _ in range(STEP_LIMIT):
                if self.draining:
                    return
                try:
                    got = await self.consumer.getmany(tp, timeout_ms=STEP_WAIT_MS, max_records=1)
                except _UNREADABLE as exc:
                    position = await self.consumer.position(tp)
                    if failed_at != position:
                        failed_at = position  # once more, from a fresh fetch
                    else:
                        self._unreadable(key, position, exc)
                        failed_at = None
                        position += 1
                    self.consumer.seek(tp, position)
                    settle = True
                    continue
                if not got:
                    if settle:
                        settle = False
                        continue
                    break  # this partition's fetched data is taken in
                if self.schemas is not None:  # a held partition is paused: the next read is empty
                    got = await self.schemas.admit(got, self.consumer)
                self._take_in_all(got)

    async def _rewind(self, tp: TopicPartition) -> None:
        """Seek `tp` to the first offset not taken in yet (from the group's commit if none)."""
        offset = self.offsets.next_offset(TopicPartitionKey(tp.topic, tp.partition))
        if offset is None:
            offset = await self.consumer.committed(tp)
        if offset is None:
            await self.consumer.seek_to_beginning(tp)  # auto_offset_reset is earliest
        else:
            self.consumer.seek(tp, offset)

    def _unreadable(self, key: TopicPartitionKey, offset: int, exc: Exception) -> None:
        self.offsets.track(key, offset)
        self.metrics.consumed(key.topic)
        self.stats.consumed += 1
        letter = DeadLetter(
            key=None, value=None, headers=[], reason=Reason.UNDECODABLE_RECORD,
            message=f"the record could not be read ({type(exc).__name__}: {exc}); only its "
            "coordinates are known",
            topic=key.topic, partition=key.partition, offset=offset,
        )  # fmt: skip
        self._start(self._dead_letter, letter, Reason.UNDECODABLE_RECORD, [Ref(key, offset, 0)])

    def _take_in(self, key: TopicPartitionKey, rec: Any) -> None:
        self.offsets.track(key, rec.offset)
        result: Change | Rejection | Skip
        if undecodable := undecodable_header_keys(rec.headers or ()):
            # read by `kafkarecords`' lenient parser: aiokafka could not decode its header keys
            shown = ", ".join(repr(k.encode("utf-8", "surrogateescape")) for k in undecodable)
            result = Rejection(Reason.UNDECODABLE_RECORD, f"header key is not UTF-8: {shown}")
        else:
            result = self.decoder.decode(rec)
        if isinstance(result, Rejection):
            letter = DeadLetter(
                key=rec.key, value=rec.value, headers=list(rec.headers or ()),
                reason=result.reason, message=result.message,
                topic=key.topic, partition=key.partition, offset=rec.offset,
                max_value_bytes=self.settings.window.max_record_bytes,
            )  # fmt: skip
            refs = [Ref(key, rec.offset, rec.timestamp)]
            self._start(self._dead_letter, letter, result.reason, refs)
            return
        if isinstance(result, Skip):  # changes nothing on the platform: finished as it is
            self.offsets.finish(key, rec.offset)
            self.metrics.skipped(result.why)
            self.stats.skipped += 1
            return
        ref = Ref(key, rec.offset, rec.timestamp, rec.key, tuple(rec.headers or ()))
        if self.window.add(result, ref):
            self.metrics.coalesced(result.entity.endpoint)
            self.stats.coalesced += 1

    def _apply_backpressure(self) -> None:
        """Pause fetching while too much is unsent; resume below the low-water mark
        (`intake.backpressure` decides)."""
        unsent = self.window.unsent_records + self._dead_letters_open
        held = self.window.pending_records
        pending_bytes = self.window.pending_bytes
        pressure = backpressure(
            self.settings.pipeline, paused=self._paused, unsent=unsent, held=held,
            pending_bytes=pending_bytes,
        )  # fmt: skip
        if pressure is Pressure.PAUSE:
            self.consumer.pause(*self.consumer.assignment())
            self._paused = True
            log.info("paused fetching: %d unsent, %d held, %d bytes", unsent, held, pending_bytes)
        elif pressure is Pressure.RESUME:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False
            log.info("resumed fetching: %d unsent, %d held", unsent, held)
        elif self._paused:
            # partitions assigned by a rebalance meanwhile start unpaused
            self.consumer.pause(*self.consumer.assignment())

    # ---------------------------------------------------------------- scheduling
    def _start(self, func: Callable[..., Any], *args: Any) -> None:
        assert self._tg is not None  # noqa: S101 - set by run() before any task starts
        self._tg.start_soon(func, *args)

    def _held_endpoints(self) -> set[str]:
        now = self.clock()
        for endpoint in [e for e, until in self._held.items() if until <= now]:
            del self._held[endpoint]
        return set(self._held)

    async def _schedule(self) -> None:
        while True:
            held = self._held_endpoints()
            entity = self.window.ready(held, self._free_slots())
            if entity is None:
                if self.draining:
                    return  # draining makes every eligible record ready: none is left
                due = self.window.next_due(held)
                waits = [d - self.clock() for d in (due, *self._held.values()) if d is not None]
                timeout = max(min(waits, default=1.0), 0.005)
                log.debug(
                    "scheduler idle: %d pending, %d in flight, next look in %.3f s",
                    self.window.pending_records,
                    self._in_flight,
                    timeout,
                )
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            await self._requests.acquire()
            if self.limiter is not None:
                self.metrics.rate_limit_waited(await self.limiter.acquire())
                self.metrics.set_tokens_available(self.limiter.available())
            granted = self.clock()  # the limiter's guard measures from the grant
            # the wait for the slot may have changed where a request carries most
            entity = self.window.ready(held, self._free_slots()) or entity
            batch = self.window.take(entity)
            if batch is None:
                self._requests.release()
                continue
            self._start(self._deliver, batch, granted)

    def _free_slots(self) -> int | None:
        """Requests the budget allows now (None: no pipeline budget, e.g. Building X)."""
        return None if self.limiter is None else self.limiter.available()

    async def _deliver(self, batch: Batch, granted: float) -> None:
        self._in_flight += 1
        self.metrics.set_in_flight(self._in_flight)
        try:
            await self._submit(batch, have_slot=True, granted=granted)
        finally:
            self._in_flight -= 1
            self._check_idle()
            self.metrics.set_in_flight(self._in_flight)
            self._update_pending()
            self._requests.release()
            self._notify()

    async def _submit(self, batch: Batch, *, have_slot: bool, granted: float | None = None) -> None:
        """Send one batch until it has an outcome for every record. Never gives up on data.

        What a failure means is the error's own (`connector.delivery.disposition`): this is
        one `match` on the disposition, never a look at a status or a message."""
        endpoint = batch.entity.endpoint
        attempt = 0
        while True:
            if not have_slot and self.limiter is not None:
                self.metrics.rate_limit_waited(await self.limiter.acquire())
            have_slot = False
            started = self.clock()
            since, granted = (granted if granted is not None else started), None
            try:
                result = await self.sink.submit(batch)
            except ConnectorError as exc:
                what = disposition(exc, len(batch.slots))
                match what:
                    case Wait(seconds=wait):
                        if self.limiter is not None:  # the platform counted it
                            self.limiter.observe(self.clock() - since)
                        self.metrics.request(endpoint, "429")
                        self.metrics.retry(what.label)
                        self.sink.rate_limited(wait)
                        log.warning(
                            "429 from /%s: waiting %.1f s", endpoint, wait,
                            extra={"endpoint": endpoint},
                        )  # fmt: skip
                    case Split():
                        self.metrics.request(endpoint, "rejected")
                        await self._split(batch, exc)
                        return
                    case DeadLetterIt(reason=reason):
                        self.metrics.request(endpoint, "rejected")
                        await self._dead_letter_slot(
                            batch.slots[0], reason=reason, message=str(exc),
                            status=getattr(exc, "status", None), batch_id=None,
                            request_id=getattr(exc, "request_id", None),
                        )  # fmt: skip
                        self.window.finish(batch)
                        return
                    case Hold(outcome=outcome):
                        self.metrics.request(endpoint, outcome)
                        pause = self.settings.sink.misconfigured_pause_seconds
                        self._held[endpoint] = self.clock() + pause
                        log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                            "holding /%s for %.0f s, data kept: %s", endpoint, pause, exc,
                            extra={"endpoint": endpoint, "status": getattr(exc, "status", None)},
                        )  # fmt: skip
                        await anyio.sleep(pause)
                    case BackOff(label=label):
                        self.metrics.request(endpoint, "retriable_error")
                        self.metrics.retry(label)
                        delay = self.backoff.delay(attempt)
                        attempt += 1
                        log.warning(
                            "/%s failed (%s); retry %d in %.2f s", endpoint, exc, attempt, delay,
                            extra={"endpoint": endpoint},
                        )  # fmt: skip
                        await anyio.sleep(delay)
                    case Stop():
                        raise
            else:
                if self.limiter is not None:
                    self.limiter.observe(self.clock() - since)
                self.metrics.batch_submitted(endpoint, len(batch.slots), self.clock() - started)
                self.stats.requests += 1
                await self._accepted(batch, result, self.clock() - started)
                return

    async def _split(self, batch: Batch, exc: ConnectorError) -> None:
        """A request refused without naming a record: halves, to isolate the bad records,
        each within the budget."""
        left, right = batch.split()
        log.info(
            "/%s rejected %d records without naming any (%s); splitting",
            batch.entity.endpoint, len(batch.slots), getattr(exc, "status", None),
        )  # fmt: skip
        await self._submit(left, have_slot=False)
        await self._submit(right, have_slot=False)

    async def _accepted(self, batch: Batch, result: SubmitResult, seconds: float) -> None:
        endpoint = batch.entity.endpoint
        failed = result.failed
        for index, message in failed.items():
            await self._dead_letter_slot(
                batch.slots[index], reason=Reason.API_REJECTED, message=message,
                status=result.status, batch_id=result.batch_id, request_id=result.request_id,
            )  # fmt: skip
        now_ms = time.time() * 1000
        latencies: list[float] = []
        delivered = 0
        tracking = result.settles_later and result.batch_id is not None
        finish_now = not tracking or self.settings.tracking.commit_on == "accepted"
        for index, slot in enumerate(batch.slots):
            if index in failed:
                continue
            delivered += 1  # the records it superseded are counted as coalesced
            latencies.append((now_ms - slot.refs[-1].timestamp_ms) / 1000)
            if finish_now:
                self._finish_refs(slot.refs)
            if not tracking and self.outcomes is not None:
                self._tell(slot, "onboarded", batch_id=result.batch_id, status="accepted")
        if tracking:
            # the IDs stay in flight until the sink settles the batch: a newer version waits
            self._unsettled += 1
        else:
            self.window.finish(batch)
        self.metrics.request(endpoint, "partial" if failed else "accepted")
        # a tracked record is counted delivered once, at its final status (`_terminal`): one
        # that fails asynchronously is a dead letter, not also a delivery, and a lost batch's
        # re-submission is not counted twice; its acceptance latency is observed now
        counted = 0 if tracking else delivered
        self.metrics.delivered(endpoint, counted, latencies)
        self.stats.delivered += counted
        log.info(
            "batch accepted: /%s %d records, %d rejected", endpoint, len(batch.slots), len(failed),
            extra={
                "endpoint": endpoint, "records": len(batch.slots), "rejected": len(failed),
                "batch_id": result.batch_id, "request_id": result.request_id,
                "duration_s": round(seconds, 4), "outcome": "partial" if failed else "accepted",
            },
        )  # fmt: skip

    # ---------------------------------------------------------------- the sink's reports
    def submissions_waiting(self) -> bool:
        """`Reports`: a submission is ready to go."""
        return self.window.ready(self._held) is not None

    def blocked(self) -> bool:
        """`Reports`: a pending record waits for an unsettled batch of its ID."""
        return self.window.blocked_records > 0

    async def settled(self, batch: Batch, batch_id: str, outcome: Settlement) -> None:
        """`Reports`: the sink's terminal report of a batch accepted with `settles_later`:
        dead-letter the asynchronous failures, finish the rest.

        A lost batch's records are sent again (the platform upserts by external ID) until
        `tracking.lost_retries` re-submissions were lost too; then they are dead-lettered as
        `batch_lost`. The records it refused synchronously were dead-lettered already."""
        self._unsettled -= 1
        completed_mode = self.settings.tracking.commit_on == "completed"
        now_ms = time.time() * 1000
        lost_retries = self.settings.tracking.lost_retries
        if outcome.lost and outcome.resubmissions < lost_retries:
            again = [batch.slots[i] for i in outcome.lost]
            refused = [s for i, s in enumerate(batch.slots) if i not in set(outcome.lost)]
            if refused:  # their IDs are released now; the rest stay in flight
                self.window.finish(Batch(batch.entity, refused, 0))
            size = 2 + sum(len(s.change.payload) for s in again) + len(again) - 1
            resend = Batch(batch.entity, again, size)
            self.metrics.retry("batch_lost")
            self._in_flight += 1  # from now, so that a drain waits for the re-submission
            self._start(self._resubmit_lost, resend)
            log.warning(
                "batch %s lost: sending its %d records again (re-submission %d of %d)",
                batch_id, len(again), outcome.resubmissions + 1, lost_retries,
                extra={"endpoint": batch.entity.endpoint, "batch_id": batch_id},
            )  # fmt: skip
            self._check_idle()
            return
        for index in outcome.lost:  # out of re-submissions
            await self._dead_letter_slot(
                batch.slots[index], reason=Reason.BATCH_LOST,
                message=f"the platform lost batch {batch_id} and {outcome.resubmissions} "
                "re-submission(s) of these records: no status after "
                f"{outcome.lost_for:.0f} s, not even by its ID",
                status=None, batch_id=batch_id, request_id=None,
            )  # fmt: skip
        for index, (status, message) in outcome.failed.items():
            slot = batch.slots[index]
            self.metrics.terminal(status)
            await self._dead_letter_slot(
                slot, reason=Reason.BATCH_FAILED, message=f"{status}: {message}",
                status=None, batch_id=batch_id, request_id=None,
                finish=completed_mode,
            )  # fmt: skip
        succeeded = 0
        for index, slot in enumerate(batch.slots):
            if index in outcome.failed or outcome.lost or index in outcome.refused:
                continue  # (a refused record was dead-lettered when the batch was accepted)
            if index in outcome.waiting:
                self.metrics.terminal("waiting_for_parent")
                status = "waiting_for_parent"
            else:
                succeeded += 1
                self.metrics.onboarded((now_ms - slot.refs[-1].timestamp_ms) / 1000)
                status = batch.entity.success_status
            if self.outcomes is not None:
                self._tell(slot, "onboarded", batch_id=batch_id, status=status)
            if completed_mode:
                self._finish_refs(slot.refs)
        self.metrics.terminal(batch.entity.success_status, succeeded)
        settled = succeeded + sum(
            1 for i in outcome.waiting if i not in outcome.failed and i not in outcome.refused
        )
        if not outcome.lost:  # (waiting children were accepted; they onboard with the parent)
            self.metrics.delivered(batch.entity.endpoint, settled, [])
            self.stats.delivered += settled
        self.window.finish(batch)
        self._update_pending()
        self._check_idle()
        self._notify()
        log.info(
            "batch terminal: /%s %s, %d failed, %d waiting for a parent, %d lost",
            batch.entity.endpoint, batch_id, len(outcome.failed), len(outcome.waiting),
            len(outcome.lost),
            extra={"endpoint": batch.entity.endpoint, "batch_id": batch_id,
                   "statuses": outcome.statuses},
        )  # fmt: skip

    async def _resubmit_lost(self, batch: Batch) -> None:
        """Send the records of a lost batch again, like the scheduler would: a request slot,
        then the budget. `settled` counted it in flight already."""
        try:
            async with self._requests:
                await self._submit(batch, have_slot=False)
        finally:
            self._in_flight -= 1
            self._check_idle()
            self.metrics.set_in_flight(self._in_flight)
            self._notify()

    def _tell(self, slot: Slot, outcome: Literal["onboarded"], **fields: str | None) -> None:
        assert self.outcomes is not None  # noqa: S101 - callers check, to skip the work
        self.outcomes.record_finished(
            RecordOutcome(
                outcome, _source_refs(slot.refs), entity=slot.change.entity.name,
                external_id=slot.change.external_id, **fields,
            )
        )  # fmt: skip

    def _finish_refs(self, refs: list[Ref]) -> None:
        for ref in refs:
            self.offsets.finish(ref.tp, ref.offset)

    # ---------------------------------------------------------------- dead letters
    async def _dead_letter_slot(
        self,
        slot: Slot,
        *,
        reason: Reason,
        message: str,
        status: int | None,
        batch_id: str | None,
        request_id: str | None,
        finish: bool = True,
    ) -> None:
        ref = slot.refs[-1]
        letter = DeadLetter(
            key=ref.key, value=slot.change.payload, headers=list(ref.headers), reason=reason,
            message=message, topic=ref.tp.topic, partition=ref.tp.partition, offset=ref.offset,
            http_status=status, batch_id=batch_id, request_id=request_id,
        )  # fmt: skip
        await self._dead_letter(letter, reason, slot.refs if finish else [], slot)

    async def _dead_letter(
        self, letter: DeadLetter, reason: Reason, refs: list[Ref], slot: Slot | None = None
    ) -> None:
        """Write until acknowledged (retrying with backoff), then finish the records (`refs`;
        a slot's records stand for one ID, whose outcome listeners are told)."""
        self._dead_letters_open += 1
        try:
            attempt = 0
            while True:
                try:
                    await self.dead_letters.write(letter, reason)
                    break
                except KafkaError as exc:
                    delay = self.backoff.delay(attempt)
                    attempt += 1
                    log.warning("dead-letter write failed (%s); retry in %.2f s", exc, delay)
                    await anyio.sleep(delay)
            self.stats.dead_lettered += 1
            self.dead_letter_log.written(letter, reason)
            if self.outcomes is not None:
                told = slot.refs if slot is not None else refs
                self.outcomes.record_finished(
                    RecordOutcome(
                        "dead_lettered", _source_refs(told),
                        entity=slot.change.entity.name if slot else None,
                        external_id=slot.change.external_id if slot else None,
                        batch_id=letter.batch_id, reason=str(reason), message=letter.message,
                    )
                )  # fmt: skip
            self._finish_refs(refs)
        finally:
            self._dead_letters_open -= 1
            self._update_pending()
            self._check_idle()

    def _update_pending(self) -> None:
        """connector_pending_records: taken in, not yet finished (in the window, in flight,
        tracked, or being dead-lettered); set wherever one of those changes."""
        self.metrics.set_pending(self.window.pending_records + self._dead_letters_open)

    def _busy(self) -> bool:
        return bool(self._in_flight or self._dead_letters_open or self._unsettled)

    def _check_idle(self) -> None:
        """Wake every waiter (a drain, a revoke) to re-check its own condition."""
        self._changed.notify()

    async def _wait_idle(self) -> None:
        """Until no request, dead-letter write or unsettled batch is open."""
        await self._changed.until(lambda: not self._busy())

    # ---------------------------------------------------------------- commits
    async def commit(
        self, only: set[TopicPartitionKey] | None = None, *, final: bool = False
    ) -> None:
        """Commit the finished prefix (`commits.Commits.commit`; `final` at shutdown)."""
        await self.commits.commit(only, final=final)

    async def _commit_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.pipeline.commit_interval_seconds)
            for share in self.budgets:
                share.tick()
            self.dead_letter_log.tick()
            self.commits.watch_group(joined=self.rebalances > 0)
            await self.commit()
            self.commits.update_lag()

    def partitions_assigned(self, mine: int) -> None:
        """After a rebalance: take this replica's share of the credential's budget."""
        total = 0
        for topic in self.settings.kafka.topics:
            total += len(self.consumer.partitions_for_topic(topic) or ())
        self.rebalances += 1
        self._whole_budget = total <= 0 or mine >= total
        for share in self.budgets:  # one per budget of the sink's (Building X: per API)
            capacity = share.assigned(mine, total)
            target = share.target(mine, total)
        if self.budgets:
            log.info(
                "request budget: %d of %d partitions -> %d requests per window now%s",
                mine, total, capacity,
                "" if target == capacity else f", {target} after one window",
            )  # fmt: skip

    async def take_over_budget(self, assigned: list[TopicPartition]) -> None:
        """At the first assignment: the predecessor's request starts, from the metadata of
        its final commit (`RollingWindowLimiter.take_over`; a replica that owns only some
        partitions takes nothing: `BudgetShare` starts it small)."""
        if self.rebalances != 1 or self.limiter is None:
            return
        limiter, share = self.limiter, 1.0 if self._whole_budget else 0.0

        def take(metadata: list[str | None]) -> None:
            if limiter.take_over(metadata, share):
                log.info("request budget: took over the predecessor's last window")

        await self.commits.take_over(assigned, take)

    async def partitions_revoked(self, revoked: set[TopicPartitionKey]) -> None:
        """Called by aiokafka before a rebalance: finish requests in flight (bounded), commit.

        Batches still being tracked are not waited for: the next owner re-sends what is not
        committed, and the platform's upsert makes that harmless. During a drain the wait
        keeps to the drain's deadline (`deadline`): a revoke never extends a shutdown.
        """
        bound = self.deadline.within(min(10.0, self.settings.pipeline.shutdown_grace_seconds))
        with anyio.move_on_after(bound):
            await self._changed.until(lambda: not (self._in_flight or self._dead_letters_open))
        await self.commit(revoked)
        dropped = self.window.drop_partitions(revoked)
        self.offsets.forget(revoked)
        for tp in revoked:
            self.metrics.forget_partition(tp.topic, tp.partition)
        log.info(
            "partitions revoked: %d, %d pending records left to the next owner",
            len(revoked),
            dropped,
        )

    # ---------------------------------------------------------------- lifecycle
    def stop_now(self) -> None:
        """A second signal: end every task now, then commit what is finished (up to 10 s)."""
        self.begin_drain()
        if self._outer is not None:
            self._outer.cancel()

    def begin_drain(self) -> None:
        """Stop intake, close every pending request now, and let in-flight work finish
        within `pipeline.shutdown_grace_seconds` from now (`deadline`)."""
        if self.state in (State.STARTING, State.RUNNING):
            self.state = State.DRAINING
        self.deadline.start(self.settings.pipeline.shutdown_grace_seconds)
        self.window.draining = True
        self._drain_requested.set()
        self._notify()

    async def _schedule_then_settle(self) -> None:
        await self._schedule()  # returns once draining and nothing more can be sent
        await self._wait_idle()
        self._drained.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until drained (`begin_drain`, or `stop_now`), then commit. Returns normally.

        Signals are `run_connector`'s: it calls `begin_drain` on the first, `stop_now` on the
        second."""
        grace = self.settings.pipeline.shutdown_grace_seconds
        with anyio.CancelScope() as outer:
            self._outer = outer
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._commit_loop)
                tg.start_soon(self._consume)
                tg.start_soon(self.sink.run, self)
                if self.state is State.STARTING:
                    self.state = State.RUNNING
                task_status.started()
                tg.start_soon(self._schedule_then_settle)
                await self._drain_requested.wait()
                # the grace period bounds the whole drain: flushing what is pending, the
                # requests in flight and the batches still being tracked
                with anyio.move_on_after(self.deadline.remaining()) as deadline:
                    await self._drained.wait()
                if deadline.cancelled_caught:
                    log.warning(
                        "grace period of %.0f s ended before the drain did; what is not "
                        "committed will be read again on restart",
                        grace,
                    )
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self.commit(final=True)  # with the budget's final hand-over
        self.dead_letter_log.tick(force=True)
        self.state = State.STOPPED
        self.stopped.set()
        elapsed = time.monotonic() - self.stats.started
        log.info(
            "stopped: %d consumed, %d delivered, %d dead-lettered, %d coalesced, "
            "%d requests in %.1f s",
            self.stats.consumed, self.stats.delivered, self.stats.dead_lettered,
            self.stats.coalesced, self.stats.requests, elapsed,
        )  # fmt: skip


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
