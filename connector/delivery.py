"""Delivery policy: what the pipeline does about a failed submission, decided by one pure
function of the error.

`disposition(error, records)` reads only the error's class attributes (`action`,
`retry_label`, `dead_letter_reason`, see `connector.errors`) and its `retry_after`; delivery
then branches with one `match` on the returned type, never on a status number or a message:

| disposition    | from                                   | what delivery does                   |
|----------------|----------------------------------------|--------------------------------------|
| `Wait`         | `RateLimited`                          | waits for Retry-After (bounded by    |
|                |                                        | the sink) or `default_wait`, resends |
| `BackOff`      | `ServerError`, `Unauthorized`, a       | exponential backoff with full jitter,|
|                | transient token endpoint failure       | resends, never gives up on data      |
| `Hold`         | `EndpointMisconfigured`,               | holds the endpoint for a pause, keeps|
|                | `CredentialsRejected`                  | the data, alerts                     |
| `Split`        | `RequestRejected` of several records   | halves the request                   |
| `DeadLetter`   | `RequestRejected` of one record        | dead-letters it with its reason      |
| `Stop`         | anything else                          | raises: the pipeline stops           |

`disposition` must not do I/O, sleep, or look at anything but the error and the record
count; the tests in `tests/unit/test_delivery.py` call it without a broker or a platform.

`Delivery` is the rest of one `Pipeline`'s way to the sink: the scheduler (a request slot,
then the budget, then the window's readiest batch), one task per request, the `match` above,
splitting, acceptance, the sink's settlement reports (`settled`, with lost batches sent
again), dead letters (written until acknowledged) and the outcomes told to listeners. It
finishes offsets only once a record's outcome is certain.

Must not: commit, fetch, or name a concrete sink (it calls the `Sink` contract).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import anyio
from aiokafka.errors import KafkaError

from connector.deadletter import DeadLetter as Letter
from connector.decode import Reason
from connector.errors import Action, AuthError, ConnectorError, RateLimited, RequestRejected
from connector.lifecycle import Changed
from connector.logs import get_logger
from connector.outcomes import RecordOutcome, SourceRef
from connector.window import Batch, Ref, Slot

if TYPE_CHECKING:
    from connector.pipeline import Pipeline
    from connector.sinks.base import Settlement, SubmitResult

__all__ = [
    "DEFAULT_WAIT",
    "BackOff",
    "DeadLetter",
    "Delivery",
    "Disposition",
    "Hold",
    "Split",
    "Stop",
    "Wait",
    "disposition",
]

log = get_logger(__name__)

DEFAULT_WAIT: Final = 60.0  # a 429 without Retry-After: the platform's window (seed 000)


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait `seconds` (the platform asked), then send again."""

    seconds: float
    label: str


@dataclass(frozen=True, slots=True)
class BackOff:
    """Send again after the next backoff delay; `label` is the retry's metrics label."""

    label: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Stop sending to the endpoint for a pause; `outcome` labels the request metric."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Split:
    """Send the two halves of the request, each on its own."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Dead-letter the one record of the request."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class Stop:
    """Not delivery's to handle: raise it."""


Disposition = Wait | BackOff | Hold | Split | DeadLetter | Stop


def disposition(error: BaseException, records: int) -> Disposition:
    """What to do about `error`, raised by a sink for a request of `records` records."""
    action = error.action if isinstance(error, ConnectorError) else Action.STOP
    result: Disposition
    match action:
        case Action.WAIT:
            after = error.retry_after if isinstance(error, RateLimited) else None
            result = Wait(DEFAULT_WAIT if after is None else after, _label(error))
        case Action.BACK_OFF:
            result = BackOff(_label(error))
        case Action.HOLD:
            result = Hold("auth" if isinstance(error, AuthError) else "misconfigured")
        case Action.SPLIT if records > 1:
            result = Split()
        case Action.SPLIT:
            reason = error.dead_letter_reason if isinstance(error, RequestRejected) else None
            result = DeadLetter(Reason(reason or Reason.API_REJECTED))
        case _:
            result = Stop()
    return result


def _label(error: BaseException) -> str:
    return error.retry_label if isinstance(error, ConnectorError) else "other"


def _source_refs(refs: list[Ref]) -> tuple[SourceRef, ...]:
    return tuple(SourceRef(r.tp.topic, r.tp.partition, r.offset, r.timestamp_ms) for r in refs)


class Delivery:
    """Pipeline `p`'s sending: `schedule` (one task of its task group) takes batches from
    `p.window` and starts one task per request; `settled` is the sink's report."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.held: dict[str, float] = {}  # endpoint -> clock time it may be tried again
        self.wake = anyio.Event()
        self.requests = anyio.Semaphore(p.settings.pipeline.max_in_flight_requests)
        self.in_flight = 0
        self.dead_letters_open = 0
        self.unsettled = 0  # accepted batches the sink reports the terminal outcome of later
        self.changed = Changed()  # requests, dead letters or unsettled batches changed

    def notify(self) -> None:
        """Wake the scheduler: there may be something to send."""
        self.wake.set()

    def _held_endpoints(self) -> set[str]:
        now = self.p.clock()
        for endpoint in [e for e, until in self.held.items() if until <= now]:
            del self.held[endpoint]
        return set(self.held)

    async def schedule(self) -> None:
        while True:
            held = self._held_endpoints()
            entity = self.p.window.ready(held, self._free_slots())
            if entity is None:
                if self.p.draining:
                    return  # draining makes every eligible record ready: none is left
                due = self.p.window.next_due(held)
                waits = [d - self.p.clock() for d in (due, *self.held.values()) if d is not None]
                timeout = max(min(waits, default=1.0), 0.005)
                log.debug(
                    "scheduler idle: %d pending, %d in flight, next look in %.3f s",
                    self.p.window.pending_records,
                    self.in_flight,
                    timeout,
                )
                with anyio.move_on_after(timeout):
                    await self.wake.wait()
                self.wake = anyio.Event()
                continue
            await self.requests.acquire()
            if self.p.limiter is not None:
                self.p.metrics.rate_limit_waited(await self.p.limiter.acquire())
                self.p.metrics.set_tokens_available(self.p.limiter.available())
            granted = self.p.clock()  # the limiter's guard measures from the grant
            # the wait for the slot may have changed where a request carries most
            entity = self.p.window.ready(held, self._free_slots()) or entity
            batch = self.p.window.take(entity)
            if batch is None:
                self.requests.release()
                continue
            self.p.start(self._deliver, batch, granted)

    def _free_slots(self) -> int | None:
        """Requests the budget allows now (None: no pipeline budget, e.g. Building X)."""
        return None if self.p.limiter is None else self.p.limiter.available()

    async def _deliver(self, batch: Batch, granted: float) -> None:
        self.in_flight += 1
        self.p.metrics.set_in_flight(self.in_flight)
        try:
            await self._submit(batch, have_slot=True, granted=granted)
        finally:
            self.in_flight -= 1
            self.check_idle()
            self.p.metrics.set_in_flight(self.in_flight)
            self.update_pending()
            self.requests.release()
            self.notify()

    async def _submit(self, batch: Batch, *, have_slot: bool, granted: float | None = None) -> None:
        """Send one batch until it has an outcome for every record. Never gives up on data.

        What a failure means is the error's own (`connector.delivery.disposition`): this is
        one `match` on the disposition, never a look at a status or a message."""
        endpoint = batch.entity.endpoint
        attempt = 0
        while True:
            if not have_slot and self.p.limiter is not None:
                self.p.metrics.rate_limit_waited(await self.p.limiter.acquire())
            have_slot = False
            started = self.p.clock()
            since, granted = (granted if granted is not None else started), None
            try:
                result = await self.p.sink.submit(batch)
            except ConnectorError as exc:
                if self.p.limiter is not None and getattr(exc, "status", None) is not None:
                    # answered: if the platform counted it, that was before this moment
                    self.p.limiter.observe(self.p.clock() - since)
                what = disposition(exc, len(batch.slots))
                match what:
                    case Wait(seconds=wait):
                        self.p.metrics.request(endpoint, "429")
                        self.p.metrics.retry(what.label)
                        self.p.sink.rate_limited(wait)
                        log.warning(
                            "429 from /%s: waiting %.1f s", endpoint, wait,
                            extra={"endpoint": endpoint},
                        )  # fmt: skip
                    case Split():
                        self.p.metrics.request(endpoint, "rejected")
                        await self._split(batch, exc)
                        return
                    case DeadLetter(reason=reason):
                        self.p.metrics.request(endpoint, "rejected")
                        await self._dead_letter_slot(
                            batch.slots[0], reason=reason, message=str(exc),
                            status=getattr(exc, "status", None), batch_id=None,
                            request_id=getattr(exc, "request_id", None),
                        )  # fmt: skip
                        self.p.window.finish(batch)
                        return
                    case Hold(outcome=outcome):
                        self.p.metrics.request(endpoint, outcome)
                        pause = self.p.settings.sink.misconfigured_pause_seconds
                        self.held[endpoint] = self.p.clock() + pause
                        log.error(  # noqa: TRY400 - the message says it all; no traceback wanted
                            "holding /%s for %.0f s, data kept: %s", endpoint, pause, exc,
                            extra={"endpoint": endpoint, "status": getattr(exc, "status", None)},
                        )  # fmt: skip
                        await anyio.sleep(pause)
                    case BackOff(label=label):
                        self.p.metrics.request(endpoint, "retriable_error")
                        self.p.metrics.retry(label)
                        delay = self.p.backoff.delay(attempt)
                        attempt += 1
                        log.warning(
                            "/%s failed (%s); retry %d in %.2f s", endpoint, exc, attempt, delay,
                            extra={"endpoint": endpoint},
                        )  # fmt: skip
                        await anyio.sleep(delay)
                    case Stop():
                        raise
            else:
                if self.p.limiter is not None:
                    self.p.limiter.observe(self.p.clock() - since)
                self.p.metrics.batch_submitted(endpoint, len(batch.slots), self.p.clock() - started)
                self.p.stats.requests += 1
                await self._accepted(batch, result, self.p.clock() - started)
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
        finish_now = not tracking or self.p.settings.tracking.commit_on == "accepted"
        for index, slot in enumerate(batch.slots):
            if index in failed:
                continue
            delivered += 1  # the records it superseded are counted as coalesced
            latencies.append((now_ms - slot.refs[-1].timestamp_ms) / 1000)
            if finish_now:
                self._finish_refs(slot.refs)
            if not tracking and self.p.outcomes is not None:
                self._tell(slot, "onboarded", batch_id=result.batch_id, status="accepted")
        if tracking:
            # the IDs stay in flight until the sink settles the batch: a newer version waits
            self.unsettled += 1
        else:
            self.p.window.finish(batch)
        self.p.metrics.request(endpoint, "partial" if failed else "accepted")
        # a tracked record is counted delivered once, at its final status (`_terminal`): one
        # that fails asynchronously is a dead letter, not also a delivery, and a lost batch's
        # re-submission is not counted twice; its acceptance latency is observed now
        counted = 0 if tracking else delivered
        self.p.metrics.delivered(endpoint, counted, latencies)
        self.p.stats.delivered += counted
        log.info(
            "batch accepted: /%s %d records, %d rejected", endpoint, len(batch.slots), len(failed),
            extra={
                "endpoint": endpoint, "records": len(batch.slots), "rejected": len(failed),
                "batch_id": result.batch_id, "request_id": result.request_id,
                "duration_s": round(seconds, 4), "outcome": "partial" if failed else "accepted",
            },
        )  # fmt: skip

    def submissions_waiting(self) -> bool:
        """`Reports`: a submission is ready to go."""
        return self.p.window.ready(self.held) is not None

    def blocked(self) -> bool:
        """`Reports`: a pending record waits for an unsettled batch of its ID."""
        return self.p.window.blocked_records > 0

    async def settled(self, batch: Batch, batch_id: str, outcome: Settlement) -> None:
        """`Reports`: the sink's terminal report of a batch accepted with `settles_later`:
        dead-letter the asynchronous failures, finish the rest.

        A lost batch's records are sent again (the platform upserts by external ID) until
        `tracking.lost_retries` re-submissions were lost too; then they are dead-lettered as
        `batch_lost`. The records it refused synchronously were dead-lettered already."""
        self.unsettled -= 1
        completed_mode = self.p.settings.tracking.commit_on == "completed"
        now_ms = time.time() * 1000
        lost_retries = self.p.settings.tracking.lost_retries
        if outcome.lost and outcome.resubmissions < lost_retries:
            again = [batch.slots[i] for i in outcome.lost]
            refused = [s for i, s in enumerate(batch.slots) if i not in set(outcome.lost)]
            if refused:  # their IDs are released now; the rest stay in flight
                self.p.window.finish(Batch(batch.entity, refused, 0))
            size = 2 + sum(len(s.change.payload) for s in again) + len(again) - 1
            resend = Batch(batch.entity, again, size)
            self.p.metrics.retry("batch_lost")
            self.in_flight += 1  # from now, so that a drain waits for the re-submission
            self.p.start(self._resubmit_lost, resend)
            log.warning(
                "batch %s lost: sending its %d records again (re-submission %d of %d)",
                batch_id, len(again), outcome.resubmissions + 1, lost_retries,
                extra={"endpoint": batch.entity.endpoint, "batch_id": batch_id},
            )  # fmt: skip
            self.check_idle()
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
            self.p.metrics.terminal(status)
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
                self.p.metrics.terminal("waiting_for_parent")
                status = "waiting_for_parent"
            else:
                succeeded += 1
                self.p.metrics.onboarded((now_ms - slot.refs[-1].timestamp_ms) / 1000)
                status = batch.entity.success_status
            if self.p.outcomes is not None:
                self._tell(slot, "onboarded", batch_id=batch_id, status=status)
            if completed_mode:
                self._finish_refs(slot.refs)
        self.p.metrics.terminal(batch.entity.success_status, succeeded)
        settled = succeeded + sum(
            1 for i in outcome.waiting if i not in outcome.failed and i not in outcome.refused
        )
        if not outcome.lost:  # (waiting children were accepted; they onboard with the parent)
            self.p.metrics.delivered(batch.entity.endpoint, settled, [])
            self.p.stats.delivered += settled
        self.p.window.finish(batch)
        self.update_pending()
        self.check_idle()
        self.notify()
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
            async with self.requests:
                await self._submit(batch, have_slot=False)
        finally:
            self.in_flight -= 1
            self.check_idle()
            self.p.metrics.set_in_flight(self.in_flight)
            self.notify()

    def _tell(self, slot: Slot, outcome: Literal["onboarded"], **fields: str | None) -> None:
        assert self.p.outcomes is not None  # noqa: S101 - callers check, to skip the work
        self.p.outcomes.record_finished(
            RecordOutcome(
                outcome, _source_refs(slot.refs), entity=slot.change.entity.name,
                external_id=slot.change.external_id, **fields,
            )
        )  # fmt: skip

    def _finish_refs(self, refs: list[Ref]) -> None:
        for ref in refs:
            self.p.offsets.finish(ref.tp, ref.offset)

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
        letter = Letter(
            key=ref.key, value=slot.change.payload, headers=list(ref.headers), reason=reason,
            message=message, topic=ref.tp.topic, partition=ref.tp.partition, offset=ref.offset,
            http_status=status, batch_id=batch_id, request_id=request_id,
        )  # fmt: skip
        await self.dead_letter(letter, reason, slot.refs if finish else [], slot)

    async def dead_letter(
        self, letter: Letter, reason: Reason, refs: list[Ref], slot: Slot | None = None
    ) -> None:
        """Write until acknowledged (retrying with backoff), then finish the records (`refs`;
        a slot's records stand for one ID, whose outcome listeners are told)."""
        self.dead_letters_open += 1
        try:
            attempt = 0
            while True:
                try:
                    await self.p.dead_letters.write(letter, reason)
                    break
                except KafkaError as exc:
                    delay = self.p.backoff.delay(attempt)
                    attempt += 1
                    log.warning("dead-letter write failed (%s); retry in %.2f s", exc, delay)
                    await anyio.sleep(delay)
            self.p.stats.dead_lettered += 1
            self.p.dead_letter_log.written(letter, reason)
            if self.p.outcomes is not None:
                told = slot.refs if slot is not None else refs
                self.p.outcomes.record_finished(
                    RecordOutcome(
                        "dead_lettered", _source_refs(told),
                        entity=slot.change.entity.name if slot else None,
                        external_id=slot.change.external_id if slot else None,
                        batch_id=letter.batch_id, reason=str(reason), message=letter.message,
                    )
                )  # fmt: skip
            self._finish_refs(refs)
        finally:
            self.dead_letters_open -= 1
            self.update_pending()
            self.check_idle()

    def update_pending(self) -> None:
        """connector_pending_records: taken in, not yet finished (in the window, in flight,
        tracked, or being dead-lettered); set wherever one of those changes."""
        self.p.metrics.set_pending(self.p.window.pending_records + self.dead_letters_open)

    def busy(self) -> bool:
        return bool(self.in_flight or self.dead_letters_open or self.unsettled)

    def check_idle(self) -> None:
        """Wake every waiter (a drain, a revoke) to re-check its own condition."""
        self.changed.notify()

    async def wait_idle(self) -> None:
        """Until no request, dead-letter write or unsettled batch is open."""
        await self.changed.until(lambda: not self.busy())
