"""The app: wires source → decode → window → scheduler → sink, and owns the lifecycle.

One task group owns every task: the consume loop, the scheduler, one task per request in
flight, the commit loop, the signal watcher and the metrics server.

Commit order (the rule everything else serves): a record's offset is finished when the platform
accepted it, when its dead letter was acknowledged, or when a newer version of the same ID that
stands for it finished; `OffsetTracker` commits the contiguous finished prefix, as the next
offset to read, on an interval, on revoke and at shutdown. Nothing else commits.

Shutdown (SIGTERM/SIGINT): readiness off; stop fetching; close every pending request at once;
wait for in-flight requests and dead letters up to `shutdown_grace_seconds`; commit; close the
consumer, the producer and the HTTP session; one summary log line; exit 0. A second signal
stops at once (what was not committed is read again on restart).

Must not: block the event loop, or finish an offset before its outcome is certain.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connector.auth import BearerAuth, ClientCredentials, TokenProvider
from connector.deadletter import DeadLetter, DeadLetterWriter
from connector.decode import Decoder, Reason, Rejection
from connector.errors import (
    AuthError,
    ConnectorError,
    CredentialsRejected,
    EndpointMisconfigured,
    RateLimited,
    RequestRejected,
    ServerError,
    TokenEndpointUnavailable,
    Unauthorized,
)
from connector.logs import get_logger
from connector.metrics import Metrics
from connector.offsets import OffsetTracker, TopicPartitionKey
from connector.ratelimit import Backoff, BudgetShare, RollingWindowLimiter
from connector.sinks.buildingminds import BuildingMindsSink
from connector.sinks.buildingx import APIS as BUILDINGX_APIS
from connector.sinks.buildingx import BuildingXSink
from connector.sources import build_source
from connector.sources.base import Poller, SnapshotStore
from connector.tracker import Outcome, StatusSource, Tracker
from connector.window import Batch, Ref, Slot, Window

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from connector.config import RateLimitSettings, Settings, SourceSettings
    from connector.sinks.base import Sink, SubmitResult

__all__ = [
    "Pipeline",
    "build_sink",
    "client_session",
    "kafka_options",
    "run_connector",
    "source_session",
]

log = get_logger(__name__)

# retry reasons are a small fixed label set (connector_api_retries_total{reason})
_RETRY_REASONS: dict[type[Exception], str] = {
    ServerError: "server_error",
    Unauthorized: "unauthorized",
    TokenEndpointUnavailable: "token_unavailable",
}


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by the consumer and the dead-letter producer."""
    k = settings.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        # verification is on by default; the CA bundle, when given, replaces the system store
        context = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
        if k.ssl_certfile:
            context.load_cert_chain(
                str(k.ssl_certfile), str(k.ssl_keyfile) if k.ssl_keyfile else None
            )
        options["ssl_context"] = context
    if k.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = k.sasl_mechanism
        options["sasl_plain_username"] = k.sasl_username
        options["sasl_plain_password"] = (
            k.sasl_password.get_secret_value() if k.sasl_password else None
        )
    return options


@dataclass
class _Stats:
    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    coalesced: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.pipeline.partitions_revoked(
            {TopicPartitionKey(tp.topic, tp.partition) for tp in revoked}
        )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.pipeline.partitions_assigned(len(assigned))
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


class Pipeline:
    """One running connector. Build with `Pipeline.create`, then `await run()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Any,
        dead_letters: DeadLetterWriter,
        sink: Sink,
        limiter: RollingWindowLimiter,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.sink = sink
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock
        self.decoder = Decoder(settings.kafka.topic_entities, settings.window.max_record_bytes)
        self.window = Window(
            max_records=settings.window.max_records,
            max_request_bytes=settings.window.max_request_bytes,
            max_wait=settings.window.max_wait_seconds,
            clock=clock,
        )
        self.offsets = OffsetTracker()
        self.rebalances = 0  # assignments received; a storm shows here
        self.heartbeat = clock()  # last turn of the consume loop, for /healthz
        self.has_token: Callable[[], bool] = lambda: True  # set by run_connector
        self.budget = BudgetShare(limiter, limiter.capacity, clock=clock)
        t = settings.tracking
        self.tracker: Tracker | None = None
        # Building X answers synchronously: its sink is no StatusSource, so it is never tracked
        if t.enabled and isinstance(sink, StatusSource):
            self.tracker = Tracker(
                sink, limiter, on_terminal=self._terminal,
                submissions_waiting=lambda: self.window.ready(self._held) is not None,
                poll_interval=t.poll_interval_seconds, max_poll_share=t.max_poll_share,
                parent_patience=t.parent_patience_seconds, clock=clock, on_poll=metrics.polled,
            )  # fmt: skip
        self.backoff = Backoff(
            base=settings.sink.retry_backoff_seconds, cap=settings.sink.retry_backoff_max_seconds
        )
        self.stats = _Stats()
        self.ready = False
        self.draining = False
        self._held: dict[str, float] = {}  # endpoint -> clock time it may be tried again
        self._wake = anyio.Event()
        self._requests = anyio.Semaphore(settings.pipeline.max_in_flight_requests)
        self._in_flight = 0
        self._dead_letters_open = 0
        self._paused = False
        self._idle = anyio.Event()
        self.stopped = anyio.Event()
        self._drain_requested = anyio.Event()
        self._drained = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    # ---------------------------------------------------------------- intake
    def _notify(self) -> None:
        self._wake.set()

    async def _consume(self) -> None:
        while not self.draining:
            self.heartbeat = self.clock()
            self._apply_backpressure()
            batches = await self.consumer.getmany(timeout_ms=200, max_records=2000)
            for tp, records in batches.items():
                key = TopicPartitionKey(tp.topic, tp.partition)
                for rec in records:
                    self._take_in(key, rec)
                self.metrics.consumed(tp.topic, len(records))
                self.stats.consumed += len(records)
            if batches:
                self.metrics.set_pending(self.window.pending_records + self._dead_letters_open)
                self._notify()

    def _take_in(self, key: TopicPartitionKey, rec: Any) -> None:
        self.offsets.track(key, rec.offset)
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
        ref = Ref(key, rec.offset, rec.timestamp, rec.key, tuple(rec.headers or ()))
        if self.window.add(result, ref):
            self.metrics.coalesced(result.entity.endpoint)
            self.stats.coalesced += 1

    def _apply_backpressure(self) -> None:
        """Pause fetching while too much is unsent; resume below the low-water mark.

        The limit counts records not yet sent: records already accepted and waiting for their
        final status must not stall intake at a window boundary (the next window's requests
        would go out half-empty). All held records are capped at twice the limit, so
        confirmations that never come cannot grow memory without bound.
        """
        p = self.settings.pipeline
        unsent = self.window.unsent_records + self._dead_letters_open
        held = self.window.pending_records
        pending_bytes = self.window.pending_bytes
        over = (
            unsent >= p.max_pending_records
            or held >= 2 * p.max_pending_records
            or pending_bytes >= p.max_pending_bytes
        )
        under = (
            unsent < p.max_pending_records * p.resume_ratio
            and held < 2 * p.max_pending_records * p.resume_ratio
            and pending_bytes < p.max_pending_bytes * p.resume_ratio
        )
        if not self._paused and over:
            self.consumer.pause(*self.consumer.assignment())
            self._paused = True
            log.info("paused fetching: %d unsent, %d held, %d bytes", unsent, held, pending_bytes)
        elif self._paused and under:
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
            entity = self.window.ready(held)
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
            waited = await self.limiter.acquire()
            self.metrics.rate_limit_waited(waited)
            self.metrics.set_tokens_available(self.limiter.available())
            batch = self.window.take(entity)
            if batch is None:
                self._requests.release()
                continue
            self._start(self._deliver, batch)

    async def _deliver(self, batch: Batch) -> None:
        self._in_flight += 1
        self.metrics.set_in_flight(self._in_flight)
        try:
            await self._submit(batch, have_slot=True)
        finally:
            self._in_flight -= 1
            self._check_idle()
            self.metrics.set_in_flight(self._in_flight)
            self.metrics.set_pending(self.window.pending_records + self._dead_letters_open)
            self._requests.release()
            self._notify()

    async def _submit(self, batch: Batch, *, have_slot: bool) -> None:
        """Send one batch until it has an outcome for every record. Never gives up on data."""
        entity = batch.entity
        endpoint = entity.endpoint
        attempt = 0
        while True:
            if not have_slot:
                self.metrics.rate_limit_waited(await self.limiter.acquire())
            have_slot = False
            started = self.clock()
            ids = [s.change.external_id for s in batch.slots]
            try:
                result = await self.sink.submit(endpoint, batch.body(), ids, entity.id_field)
            except RateLimited as exc:
                self.metrics.request(endpoint, "429")
                self.metrics.retry("rate_limited")
                wait = exc.retry_after if exc.retry_after is not None else 60.0
                self.limiter.block_for(wait)
                log.warning(
                    "429 from /%s: waiting %.1f s", endpoint, wait, extra={"endpoint": endpoint}
                )
            except RequestRejected as exc:
                self.metrics.request(endpoint, "rejected")
                await self._rejected(batch, exc)
                return
            except (EndpointMisconfigured, CredentialsRejected) as exc:
                outcome = "misconfigured" if isinstance(exc, EndpointMisconfigured) else "auth"
                self.metrics.request(endpoint, outcome)
                pause = self.settings.sink.misconfigured_pause_seconds
                self._held[endpoint] = self.clock() + pause
                log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                    "holding /%s for %.0f s, data kept: %s", endpoint, pause, exc,
                    extra={"endpoint": endpoint, "status": getattr(exc, "status", None)},
                )  # fmt: skip
                await anyio.sleep(pause)
            except (ConnectorError, AuthError) as exc:
                if not exc.retriable:
                    raise
                self.metrics.request(endpoint, "retriable_error")
                self.metrics.retry(_RETRY_REASONS.get(type(exc), "other"))
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "/%s failed (%s); retry %d in %.2f s", endpoint, exc, attempt, delay,
                    extra={"endpoint": endpoint},
                )  # fmt: skip
                await anyio.sleep(delay)
            else:
                self.metrics.batch_submitted(endpoint, len(batch.slots), self.clock() - started)
                self.stats.requests += 1
                await self._accepted(batch, result, self.clock() - started)
                return

    async def _rejected(self, batch: Batch, exc: RequestRejected) -> None:
        """400 naming no record, or 413: split to isolate the bad records, within the budget."""
        if len(batch.slots) > 1:
            left, right = batch.split()
            log.info(
                "/%s rejected %d records without naming any (%s); splitting",
                batch.entity.endpoint, len(batch.slots), exc.status,
            )  # fmt: skip
            await self._submit(left, have_slot=False)
            await self._submit(right, have_slot=False)
            return
        (slot,) = batch.slots
        reason = Reason.RECORD_TOO_LARGE if exc.status == 413 else Reason.API_REJECTED
        await self._dead_letter_slot(
            slot, reason=reason, message=str(exc), status=exc.status, batch_id=None,
            request_id=exc.request_id,
        )  # fmt: skip
        self.window.finish(batch)

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
        tracking = self.tracker is not None and result.batch_id is not None
        finish_now = not tracking or self.settings.tracking.commit_on == "accepted"
        for index, slot in enumerate(batch.slots):
            if index in failed:
                continue
            delivered += 1  # the records it superseded are counted as coalesced
            latencies.append((now_ms - slot.refs[-1].timestamp_ms) / 1000)
            if finish_now:
                self._finish_refs(slot.refs)
        if tracking:
            # the IDs stay in flight until the batch is terminal: a newer version waits
            assert self.tracker is not None  # noqa: S101 - tracking implies a tracker
            assert result.batch_id is not None  # noqa: S101 - and a batch ID
            self.tracker.track(result.batch_id, batch, frozenset(failed))
            self.metrics.set_tracking(self.tracker.tracked, self.tracker.waiting_for_parent())
        else:
            self.window.finish(batch)
        self.metrics.request(endpoint, "partial" if failed else "accepted")
        self.metrics.delivered(endpoint, delivered, latencies)
        self.stats.delivered += delivered
        log.info(
            "batch accepted: /%s %d records, %d rejected", endpoint, len(batch.slots), len(failed),
            extra={
                "endpoint": endpoint, "records": len(batch.slots), "rejected": len(failed),
                "batch_id": result.batch_id, "request_id": result.request_id,
                "duration_s": round(seconds, 4), "outcome": "partial" if failed else "accepted",
            },
        )  # fmt: skip

    async def _terminal(self, batch: Batch, batch_id: str, outcome: Outcome) -> None:
        """The tracker's report: dead-letter the asynchronous failures, finish the rest."""
        assert self.tracker is not None  # noqa: S101 - only the tracker calls this
        completed_mode = self.settings.tracking.commit_on == "completed"
        now_ms = time.time() * 1000
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
            if index in outcome.failed:
                continue
            if index in outcome.waiting:
                self.metrics.terminal("waiting_for_parent")
            else:
                succeeded += 1
                self.metrics.onboarded((now_ms - slot.refs[-1].timestamp_ms) / 1000)
            if completed_mode:
                self._finish_refs(slot.refs)
        self.metrics.terminal(batch.entity.success_status, succeeded)
        self.window.finish(batch)
        self.metrics.set_tracking(self.tracker.tracked, self.tracker.waiting_for_parent())
        self._check_idle()
        self._notify()
        log.info(
            "batch terminal: /%s %s, %d failed, %d waiting for a parent",
            batch.entity.endpoint, batch_id, len(outcome.failed), len(outcome.waiting),
            extra={"endpoint": batch.entity.endpoint, "batch_id": batch_id,
                   "statuses": outcome.statuses},
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
        await self._dead_letter(letter, reason, slot.refs if finish else [])

    async def _dead_letter(self, letter: DeadLetter, reason: Reason, refs: list[Ref]) -> None:
        """Write until acknowledged (retrying with backoff), then finish the records."""
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
            self._finish_refs(refs)
        finally:
            self._dead_letters_open -= 1
            self._check_idle()

    def _busy(self) -> bool:
        tracked = self.tracker.tracked if self.tracker is not None else 0
        return bool(self._in_flight or self._dead_letters_open or tracked)

    def _check_idle(self) -> None:
        if not self._busy() or not (self._in_flight or self._dead_letters_open):
            self._idle.set()

    async def _wait_idle(self) -> None:
        """Until no request, dead-letter write or tracked batch is open."""
        while self._busy():
            self._idle = anyio.Event()
            await self._idle.wait()

    # ---------------------------------------------------------------- commits
    async def commit(self, only: set[TopicPartitionKey] | None = None) -> None:
        positions = self.offsets.committable(only)
        if not positions:
            return
        try:
            await self.consumer.commit(
                {TopicPartition(tp.topic, tp.partition): pos for tp, pos in positions.items()}
            )
        except (CommitFailedError, KafkaError) as exc:
            self.metrics.committed("failed")
            log.warning("offset commit failed (%s); will retry", exc)
            return
        self.offsets.committed(positions)
        self.metrics.committed("success", time.time())

    async def _commit_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.pipeline.commit_interval_seconds)
            self.budget.tick()
            await self.commit()
            self._update_lag()

    def _update_lag(self) -> None:
        """Lag = the log end minus the first unfinished record (what a restart would re-read)."""
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self.offsets.position(TopicPartitionKey(tp.topic, tp.partition))
            if high is not None and position is not None:
                self.metrics.set_lag(tp.topic, tp.partition, max(high - position, 0))

    def partitions_assigned(self, mine: int) -> None:
        """After a rebalance: take this replica's share of the credential's budget."""
        total = 0
        for topic in self.settings.kafka.topics:
            total += len(self.consumer.partitions_for_topic(topic) or ())
        self.rebalances += 1
        capacity = self.budget.assigned(mine, total)
        log.info(
            "request budget: %d of %d partitions -> %d requests per window now%s",
            mine, total, capacity,
            "" if self.budget.target(mine, total) == capacity else
            f", {self.budget.target(mine, total)} after one window",
        )  # fmt: skip

    async def partitions_revoked(self, revoked: set[TopicPartitionKey]) -> None:
        """Called by aiokafka before a rebalance: finish requests in flight (bounded), commit.

        Batches still being tracked are not waited for: the next owner re-sends what is not
        committed, and the platform's upsert makes that harmless.
        """
        with anyio.move_on_after(min(10.0, self.settings.pipeline.shutdown_grace_seconds)):
            while self._in_flight or self._dead_letters_open:
                self._idle = anyio.Event()
                await self._idle.wait()
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
    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self.draining:
                    log.info("%s received: draining", signal.Signals(signum).name)
                    self.begin_drain()
                else:
                    log.warning(
                        "second signal: stopping now; uncommitted records will be read again"
                    )
                    scope.cancel()
                    return

    def begin_drain(self) -> None:
        """Stop intake, close every pending request now, and let in-flight work finish."""
        self.ready = False
        self.draining = True
        self.window.draining = True
        self._drain_requested.set()
        self._notify()

    async def _schedule_then_settle(self) -> None:
        await self._schedule()  # returns once draining and nothing more can be sent
        await self._wait_idle()
        self._drained.set()

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until drained (SIGTERM/SIGINT or `begin_drain`), then commit. Returns normally."""
        grace = self.settings.pipeline.shutdown_grace_seconds
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if handle_signals:
                    tg.start_soon(self._watch_signals, outer)
                tg.start_soon(self._commit_loop)
                tg.start_soon(self._consume)
                if self.tracker is not None:
                    tg.start_soon(self.tracker.run)
                self.ready = True
                task_status.started()
                tg.start_soon(self._schedule_then_settle)
                await self._drain_requested.wait()
                # the grace period bounds the whole drain: flushing what is pending, the
                # requests in flight and the batches still being tracked
                with anyio.move_on_after(grace) as deadline:
                    await self._drained.wait()
                if deadline.cancelled_caught:
                    log.warning(
                        "grace period of %.0f s ended before the drain did; what is not "
                        "committed will be read again on restart",
                        grace,
                    )
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self.commit()
        self.stopped.set()
        elapsed = time.monotonic() - self.stats.started
        log.info(
            "stopped: %d consumed, %d delivered, %d dead-lettered, %d coalesced, "
            "%d requests in %.1f s",
            self.stats.consumed, self.stats.delivered, self.stats.dead_lettered,
            self.stats.coalesced, self.stats.requests, elapsed,
        )  # fmt: skip


STALL_SECONDS = 60.0  # /healthz fails when the consume loop has not turned for this long


async def _warm_up_token(provider: TokenProvider) -> None:
    """Get a token at start so /readyz can say "holds a token" before the first request.

    Failures are only logged: the pipeline retries with backoff on its first request."""
    try:
        await provider.token()
    except AuthError as exc:
        log.error("no token at start: %s", exc)  # noqa: TRY400 - the message carries the fix


def client_session(settings: Settings) -> aiohttp.ClientSession:
    """The sink's plain session (TLS, timeouts, pool); the token endpoint is called through it."""
    sink = settings.sink
    return http_session(
        verify=sink.tls_verify, ca_file=sink.ca_file, timeout=sink.request_timeout_seconds
    )


def source_session(source: SourceSettings) -> aiohttp.ClientSession:
    """One source's plain session (its TLS and timeout); its token is added per request."""
    return http_session(
        verify=source.tls_verify, ca_file=source.ca_file, timeout=source.request_timeout_seconds
    )


def http_session(*, verify: bool, ca_file: Path | None, timeout: float) -> aiohttp.ClientSession:
    """A session that verifies certificates (against `ca_file` when given) unless told not to."""
    context: ssl.SSLContext | bool = True
    if not verify:
        context = False
    elif ca_file:
        context = ssl.create_default_context(cafile=str(ca_file))
    connector = aiohttp.TCPConnector(ssl=context, limit=32)
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), connector=connector)


def budget_limiter(rate: RateLimitSettings) -> RollingWindowLimiter:
    """A limiter for one request budget, pacing from the start.

    A request starts here a little before the platform counts it, and network jitter can
    bring two starts closer there than here: a 1% (+50 ms) wider window keeps the platform's
    count under the budget while still using about 99% of it.
    """
    limiter = RollingWindowLimiter(rate.requests, rate.per_seconds * 1.01 + 0.05)
    limiter.assume_recent_use()  # a restart must not burst into a window its predecessor filled
    return limiter


async def build_sink(
    settings: Settings, metrics: Metrics, session: aiohttp.ClientSession
) -> tuple[BuildingMindsSink | BuildingXSink, TokenProvider]:
    """The configured sink (`sink.type`) on a session that carries its token."""
    s = settings.sink

    def refreshed(outcome: str) -> None:
        metrics.token_refreshed(outcome)
        if outcome == "success" and provider.current is not None:
            metrics.set_token_expiry(provider.current.expires_at_wall)

    if s.type == "buildingx":  # Auth0: a JSON body with an audience
        grant = ClientCredentials(
            s.token_url, s.client_id, s.client_secret, audience=s.audience, as_json=True
        )
    else:
        grant = ClientCredentials(s.token_url, s.client_id, s.client_secret, scope=s.token_scope)
    provider = TokenProvider(
        session, grant, skew_seconds=s.token_skew_seconds, on_refresh=refreshed
    )
    auth = BearerAuth(provider, renew_on=frozenset(s.token_renew_statuses))
    authed = aiohttp.ClientSession(
        timeout=session.timeout, connector=session.connector, connector_owner=False,
        middlewares=(auth,),
    )  # fmt: skip
    if s.type == "buildingx":
        assert s.partition_id is not None  # noqa: S101 - required for buildingx by the config
        # one submission becomes several requests: the sink paces each API itself
        sink = BuildingXSink(
            authed, s.base_url, s.partition_id,
            limiters={api: budget_limiter(s.rate_limit) for api in BUILDINGX_APIS},
            point_field=s.point_field, point_ids=s.point_ids,
            overwrite_values=s.overwrite_values, parent_wait=s.parent_wait_seconds,
            max_retry_after=s.max_retry_after_seconds, on_wait=metrics.rate_limit_waited,
        )  # fmt: skip
        return sink, provider
    return BuildingMindsSink(
        authed, s.base_url, max_retry_after=s.max_retry_after_seconds
    ), provider


async def _serve_metrics(
    settings: Settings, registry: CollectorRegistry, pipeline: Pipeline,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:  # fmt: skip
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        """Liveness: the consume loop turned recently (it turns every 200 ms, paused or not).

        Never a dependency check: a broker or API outage must not get the pod restarted."""
        stalled = pipeline.clock() - pipeline.heartbeat
        ok = stalled < STALL_SECONDS or pipeline.draining
        return web.json_response(
            {"status": "ok" if ok else "stalled", "seconds_since_progress": round(stalled, 1)},
            status=200 if ok else 503,
        )

    async def readyz(_: web.Request) -> web.Response:
        """Readiness: joined the group (holds an assignment), holds a token, not draining."""
        checks = {
            "joined": pipeline.rebalances > 0,
            "token": pipeline.has_token(),
            "not_draining": pipeline.ready and not pipeline.draining,
        }
        ok = all(checks.values())
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.metrics.host, settings.metrics.port)
        await site.start()
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


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


async def run_connector(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    handle_signals: bool = True,
    task_status: anyio.abc.TaskStatus[Pipeline] = anyio.TASK_STATUS_IGNORED,
) -> Pipeline:
    """`run`: build every part from `settings`, run until drained, close everything.

    With `tg.start(run_connector, ...)` the caller gets the running `Pipeline` (tests drain it
    with `begin_drain()` instead of a signal). Returns the pipeline, for its final stats.
    """
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    options = kafka_options(settings)
    consumer = AIOKafkaConsumer(
        group_id=settings.kafka.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_bytes=settings.kafka.fetch_max_bytes,
        max_partition_fetch_bytes=settings.kafka.max_partition_fetch_bytes, **options,
    )  # fmt: skip
    producer = AIOKafkaProducer(
        enable_idempotence=True, acks="all", linger_ms=5,
        max_request_size=settings.window.max_record_bytes + 64 * 1024, **options,
    )  # fmt: skip
    limiter = budget_limiter(settings.sink.rate_limit)
    session = client_session(settings)
    sink, provider = await build_sink(settings, metrics, session)
    dead_letters = DeadLetterWriter(
        producer,
        settings.kafka.dead_letter_topic,
        on_written=lambda reason: metrics.dead_lettered(reason.value),
    )
    pipeline = Pipeline(
        settings, consumer=consumer, dead_letters=dead_letters, sink=sink, limiter=limiter,
        metrics=metrics,
    )  # fmt: skip
    pipeline.has_token = lambda: provider.current is not None
    try:
        await producer.start()
        consumer.subscribe(list(settings.kafka.topics), listener=_Rebalance(pipeline))
        await consumer.start()
        # the stack (the sources' sessions) closes only after every task has ended
        async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
            if settings.metrics.port:
                await tg.start(_serve_metrics, settings, registry, pipeline)
            await tg.start(functools.partial(pipeline.run, handle_signals=handle_signals))
            tg.start_soon(_warm_up_token, provider)
            for poller in await _pollers(settings, producer, metrics, stack):
                tg.start_soon(poller.run)
            task_status.started(pipeline)
            await pipeline.stopped.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()
            await producer.stop()
            await sink.session.close()
            await session.close()
    return pipeline
