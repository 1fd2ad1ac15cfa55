"""Batch status tracking: every accepted batch followed until each record in it is terminal.

A 200 from the platform means "accepted and queued", not "onboarded". The tracker
polls with the cheapest requests: one `GET /batch` lists up to a thousand recent batches with
their status counts, and `GET /batch/{batchId}/inbound?status=...` is asked only for batches
that report failures (or records still waiting after `parent_patience_seconds`). A tracked
batch the listing does not show (not listed yet, older than the pages read, or forgotten by
the platform) is looked up by ID, `GET /batch?batchId=`, a few per round, the longest unseen
first.

Lost batches: one that neither the listing nor the lookup by ID has shown for
`lost_after_seconds` is reported lost (`Outcome.lost`, with how often its records were already
sent again); the pipeline re-submits its records, which is safe because the platform upserts by
external ID, and after `lost_retries` re-submissions dead-letters them as `batch_lost`. The
verdict always follows a lookup by ID of that round, so a batch is never called lost only
because it was beyond the pages read.

Status mapping (docs/design.md §4): Completed and Published succeed; Failed,
FailedValidation, FailedGeoCoding and TransformationFailed fail; New, InProgress, Retrying,
Resubmitting and GeoCodingSuccessful are in progress; New with missing dependencies is
"waiting for parent", reported (not dead-lettered) once the patience runs out, and then
counted as finished: the platform holds the record and links it when the parent arrives.

When to poll (the batches set the pace, not a clock): each tracked batch is due for a look
when it can be expected terminal, `accepted_at` + the platform's processing time as the polls
have seen it (an average of the midpoints between the last look that found a batch in progress
and the first that found it terminal). One listing answers for every tracked batch, so a poll
is made as soon as the earliest batch is due, at most one per `min_poll_gap`. A batch found
still in progress is looked at again after the rest of the expected time or a quarter of its
age, whichever is longer, and never later than `poll_interval` (the old clock, now the
longest gap).

Budget: polls take their slots from the same rolling-window limiter as submissions. While
submissions wait (`submissions_waiting()`) or the limiter is down to its `reserve`, polls may
use at most `max_poll_share` of the window, spread evenly over it: a poll request starts no
sooner than one share's gap (the window divided by the share's slots) after the last one
started, so the share is not spent in a burst that leaves every batch accepted after it
unseen until the window has passed (seen: 20 polls in 25 s, then none for 35 s, and batches
terminal for 30 s while their IDs and their partitions' commits waited; and in `make demo`,
where submissions rarely wait at the instant a poll is due but use three quarters of the
budget, polls stopped for 22-26 s once a minute). When the limiter has no more than
`reserve` slots left, polls are made only when a pending record waits for a tracked batch
(`blocking()`) or `poll_interval` has passed since the last, whether or not a submission
waits at that moment: the next one will need the slot (seen right after a start, while the
limiter assumed its predecessor's window used: a poll in every other slot, each submission
0.2 s late, the latency p99 up by 160 ms). Otherwise polls may use whatever is spare, keeping
`reserve` slots free for the next submission (the latency promise); a spare poll is not
counted against the share.

Must not: finish a record itself. It reports each batch's outcome once to `on_terminal`, and
the pipeline dead-letters and commits.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from connector.errors import ApiError, AuthError, EndpointMisconfigured, RateLimited
from connector.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from connector.ratelimit import RollingWindowLimiter
    from connector.window import Batch

__all__ = ["FAILED", "IN_PROGRESS", "SUCCEEDED", "Outcome", "StatusSource", "Tracker"]

log = get_logger(__name__)

SUCCEEDED = frozenset({"Completed", "Published"})
FAILED = frozenset({"Failed", "FailedValidation", "FailedGeoCoding", "TransformationFailed"})
IN_PROGRESS = frozenset({"New", "InProgress", "Retrying", "Resubmitting", "GeoCodingSuccessful"})
LIST_PAGE = 1000
MAX_LIST_PAGES = 5
LOOKUPS_PER_ROUND = 5  # lookups by ID of batches the listing missed, per round (budget)


@runtime_checkable
class StatusSource(Protocol):
    """What the tracker needs of a sink: the two read-only batch calls."""

    async def list_batches(
        self, *, limit: int = 10, skip: int = 0, batch_id: str | None = None
    ) -> dict[str, Any]: ...

    async def inbound(
        self,
        batch_id: str,
        *,
        status: str | None = None,
        missing_dependencies: bool | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]: ...


@dataclass(slots=True)
class Outcome:
    """How a batch ended: record indexes that failed (status, message) or wait for a parent.

    A lost batch (the platform no longer shows it) has `lost`: the indexes of the records it
    had accepted; `resubmissions` says how often those records were already sent again
    because an earlier batch of theirs was lost."""

    failed: dict[int, tuple[str, str]] = field(default_factory=dict)
    waiting: set[int] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    lost: tuple[int, ...] = ()
    resubmissions: int = 0
    refused: frozenset[int] = frozenset()  # refused synchronously: dead-lettered already


@dataclass(slots=True)
class _Tracked:
    batch_id: str
    batch: Batch
    accepted_at: float
    skip: frozenset[int]  # indexes the platform already refused synchronously
    last_seen: float  # when the platform last showed it (first: when it was accepted)
    resubmissions: int = 0  # how often its records were sent again after a lost batch
    reported_waiting: bool = False
    positions: dict[str, int] | None = None  # external ID -> index, built on first need
    next_look: float = 0.0  # when a poll is worth making for it
    in_progress_at: float = 0.0  # its age at the last look that found it in progress


class Tracker:
    """Follows accepted batches; calls `on_terminal(batch, batch_id, outcome)` once for each."""

    def __init__(
        self,
        source: StatusSource,
        limiter: RollingWindowLimiter,
        *,
        on_terminal: Callable[[Batch, str, Outcome], Awaitable[None]],
        submissions_waiting: Callable[[], bool],
        poll_interval: float = 5.0,
        max_poll_share: float = 0.2,
        parent_patience: float = 600.0,
        lost_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_poll: Callable[[str], None] | None = None,
        blocking: Callable[[], bool] | None = None,
        min_poll_gap: float = 0.05,
        expected_processing: float | None = None,
        reserve: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`blocking()`: whether a pending record waits for a tracked batch (None: assume
        one does not, so polls follow `poll_interval` while submissions wait).
        `expected_processing`: the first guess of the platform's processing time (default:
        `min(1, poll_interval)`). `reserve`: limiter slots spare polls leave free (default:
        a tenth of the capacity, at least 1). `sleep` waits on `clock`'s time line."""
        self.source = source
        self.limiter = limiter
        self.on_terminal = on_terminal
        self.submissions_waiting = submissions_waiting
        self.poll_interval = poll_interval
        self.max_poll_share = max_poll_share
        self.parent_patience = parent_patience
        self.lost_after = lost_after
        self.clock = clock
        self.on_poll = on_poll or (lambda _: None)
        self._tracked: dict[str, _Tracked] = {}
        # batches being sent again after a loss, by identity: their count, for the next track
        self._resubmitting: dict[int, tuple[Batch, int]] = {}
        self._polls: deque[float] = deque()  # start times of recent polls of the share
        self._wake = anyio.Event()
        self.blocking = blocking or (lambda: False)
        self.min_poll_gap = min_poll_gap
        self.expected = min(1.0, poll_interval) if expected_processing is None else (
            expected_processing
        )  # fmt: skip
        self.reserve = reserve
        self.sleep = sleep
        self._last_poll = -math.inf
        # when the last poll request started: while submissions wait, the next one is due a
        # share's gap after it (module docstring, Budget)
        self._last_request = -math.inf

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    def track(self, batch_id: str, batch: Batch, skip: frozenset[int]) -> None:
        """Follow `batch`, accepted as `batch_id`; `skip`: indexes refused synchronously."""
        now = self.clock()
        held = self._resubmitting.pop(id(batch), None)
        resubmissions = held[1] if held is not None and held[0] is batch else 0
        self._tracked[batch_id] = _Tracked(
            batch_id, batch, now, skip, last_seen=now, resubmissions=resubmissions,
            next_look=now + self.expected,
        )  # fmt: skip
        self._wake.set()

    def poke(self) -> None:
        """Look again at when to poll now (e.g. submissions stopped waiting)."""
        self._wake.set()

    def next_poll_at(self) -> float | None:
        """When, on the clock, the next poll is worth making (None: nothing is tracked)."""
        if not self._tracked:
            return None
        due = min(t.next_look for t in self._tracked.values())
        earliest = self._last_poll + self.min_poll_gap
        if self.submissions_waiting() or self._scarce():
            # polls share the window with submissions that wait or will: a share's gap apart
            earliest = max(earliest, self._last_request + self.share_gap())
        if self._scarce() and not self.blocking():
            # the next submission needs the few slots left and no record waits for a status:
            # the old clock (module docstring, Budget)
            earliest = max(earliest, self._last_poll + self.poll_interval)
        return max(due, earliest)

    def share_gap(self) -> float:
        """Seconds between two poll requests that spend `max_poll_share` evenly."""
        return self.limiter.per_seconds / self._share_slots()

    def _share_slots(self) -> int:
        return max(1, int(self.limiter.capacity * self.max_poll_share))

    def _reserve(self) -> int:
        capacity = self.limiter.capacity
        return max(1, capacity // 10) if self.reserve is None else self.reserve

    def _scarce(self) -> bool:
        """The limiter has no more than the reserve left."""
        return self.limiter.available() <= self._reserve()

    def _learn(self, tracked: _Tracked, age: float) -> None:
        """A batch seen terminal at `age`: its processing time lay between its last look in
        progress and now; the midpoint goes into the running estimate."""
        sample = (tracked.in_progress_at + age) / 2
        self.expected = min(max(0.8 * self.expected + 0.2 * sample, 0.01), self.poll_interval)

    def _look_again(self, tracked: _Tracked, now: float) -> None:
        age = now - tracked.accepted_at
        tracked.in_progress_at = age
        wait = max(self.expected - age, age / 4, self.min_poll_gap)
        tracked.next_look = now + min(wait, self.poll_interval)

    def resubmitting(self, batch: Batch, resubmissions: int) -> None:
        """`batch` holds records of a lost batch, sent again for the `resubmissions`th time.

        Its next `track` carries the count on; `resubmission_ended` forgets it if the batch
        settles without being tracked (refused outright, say)."""
        self._resubmitting[id(batch)] = (batch, resubmissions)

    def resubmission_ended(self, batch: Batch) -> None:
        self._resubmitting.pop(id(batch), None)

    def waiting_for_parent(self) -> int:
        return sum(1 for t in self._tracked.values() if t.reported_waiting)

    # ------------------------------------------------------------------ budget
    async def _take_slot(self) -> None:
        """A limiter slot for one poll: a spare one (no submission waits, more than the
        reserve is free), else one of the share, a share's gap after the last poll request."""
        window = self.limiter.per_seconds
        reserve = self._reserve()
        while True:
            now = self.clock()
            while self._polls and self._polls[0] + window <= now:
                self._polls.popleft()
            waiting = self.submissions_waiting()
            if not waiting and self.limiter.available() > reserve and self.limiter.try_acquire():
                # spare: nothing waited for it, so it is not the share's (counted there, a
                # burst of spare polls left none for the minute after, seen in `make demo`)
                break
            if (wait := self._last_request + self.share_gap() - now) > 0:
                # the share is spent evenly; a round of several requests (pages, lookups)
                # too: each one a share's gap apart
                await self.sleep(min(wait, self.poll_interval))
                continue
            if len(self._polls) < self._share_slots():
                await self.limiter.acquire()
                self._polls.append(self.clock())
                break
            await self.sleep(min(self.poll_interval, 0.25))
        self._last_request = self.clock()

    async def _call(self, func: Callable[[], Awaitable[Any]]) -> Any:
        """One poll request, within the budget; its outcome is counted."""
        await self._take_slot()
        started = self.clock()
        try:
            result = await func()
        except RateLimited as exc:
            self.limiter.observe(self.clock() - started)
            self.limiter.block_for(exc.retry_after or 60.0)
            self.on_poll("rate_limited")
            raise
        except (ApiError, AuthError) as exc:
            if getattr(exc, "status", None) is not None:  # answered (see `observe`)
                self.limiter.observe(self.clock() - started)
            self.on_poll("error")
            raise
        self.limiter.observe(self.clock() - started)
        self.on_poll("success")
        return result

    # ------------------------------------------------------------------ polling
    async def run(self) -> None:
        """Poll until cancelled. Errors of one round are logged; the next round tries again."""
        while True:
            self._wake = anyio.Event()
            when = self.next_poll_at()
            if when is None:
                await self._wake.wait()
                continue
            if (wait := when - self.clock()) > 0:
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                continue  # something changed, or the time came: decide again
            try:
                await self.poll_once()
            except (ApiError, AuthError) as exc:
                log.warning(
                    "status poll failed (%s); trying again in %.0f s", exc, self.poll_interval
                )
                await self.sleep(self.poll_interval)

    async def poll_once(self) -> None:
        """One round: list recent batches, look up the missing ones by ID, settle those that
        are terminal, report those lost."""
        self._last_poll = self.clock()
        counts, asked = await self._status_counts()
        await self._look_up_missing(counts, asked)
        now = self.clock()
        for batch_id, tracked in list(self._tracked.items()):
            statuses = counts.get(batch_id)
            if statuses is None:
                await self._unlisted(tracked, looked_up=batch_id in asked, now=now)
                continue
            tracked.last_seen = now
            in_progress = sum(n for s, n in statuses.items() if s not in SUCCEEDED | FAILED)
            failing = [s for s, n in statuses.items() if s in FAILED and n]
            outcome = Outcome(statuses=dict(statuses), refused=tracked.skip)
            if in_progress:
                due = tracked.next_look <= now
                if due:
                    self._look_again(tracked, now)
                if not due or now - tracked.accepted_at < self.parent_patience:
                    continue
                waiting = await self._waiting(tracked)
                if len(waiting) < in_progress:
                    continue  # some records are still genuinely in progress
                outcome.waiting = waiting
                if not tracked.reported_waiting:
                    tracked.reported_waiting = True
                    log.warning(
                        "batch %s: %d records still wait for a parent after %.0f s; "
                        "the platform will link them when it arrives",
                        batch_id, len(waiting), self.parent_patience,
                        extra={"batch_id": batch_id, "endpoint": tracked.batch.entity.endpoint},
                    )  # fmt: skip
            else:
                self._learn(tracked, now - tracked.accepted_at)
            for status in failing:
                inbound = functools.partial(self.source.inbound, batch_id, status=status)
                for item in await self._call(inbound):
                    index = self._index_of(tracked, item)
                    if index is not None:
                        message = item.get("message") or status
                        outcome.failed[index] = (status, str(message))
            del self._tracked[batch_id]
            await self.on_terminal(tracked.batch, batch_id, outcome)

    async def _unlisted(self, tracked: _Tracked, *, looked_up: bool, now: float) -> None:
        """Not listed yet (eventual consistency), or forgotten: lost once unseen for long
        enough, and only right after a lookup by ID found nothing."""
        if looked_up and now - tracked.last_seen >= self.lost_after:
            await self._lost(tracked, now)
        elif tracked.next_look <= now:
            self._look_again(tracked, now)

    async def _lost(self, tracked: _Tracked, now: float) -> None:
        batch_id = tracked.batch_id
        del self._tracked[batch_id]
        accepted = tuple(i for i in range(len(tracked.batch.slots)) if i not in tracked.skip)
        log.warning(
            "batch %s: not shown by the platform for %.0f s, not even by its ID; "
            "reporting its %d records lost",
            batch_id, now - tracked.last_seen, len(accepted),
            extra={"batch_id": batch_id, "endpoint": tracked.batch.entity.endpoint,
                   "resubmissions": tracked.resubmissions},
        )  # fmt: skip
        outcome = Outcome(lost=accepted, resubmissions=tracked.resubmissions, refused=tracked.skip)
        await self.on_terminal(tracked.batch, batch_id, outcome)

    async def _look_up_missing(self, found: dict[str, dict[str, int]], asked: set[str]) -> None:
        """Tracked batches the listing missed, by ID (`GET /batch?batchId=`): a few per
        round, the longest unseen first, so a deadline passes only after a lookup."""
        now = self.clock()
        missing = sorted(
            (
                t
                for batch_id, t in self._tracked.items()
                if batch_id not in found
                and batch_id not in asked
                and now - t.last_seen >= self.poll_interval
            ),
            key=lambda t: t.last_seen,
        )
        for tracked in missing[:LOOKUPS_PER_ROUND]:
            asked.add(tracked.batch_id)
            counts = await self._by_id(tracked.batch_id)
            if counts is not None:
                found[tracked.batch_id] = counts

    async def _by_id(self, batch_id: str) -> dict[str, int] | None:
        """One batch's status counts by its ID; None when the platform does not know it (an
        empty listing, or a 404: the documentation does not say which it answers)."""
        request = functools.partial(self.source.list_batches, batch_id=batch_id, limit=1)
        try:
            listing = await self._call(request)
        except EndpointMisconfigured as exc:
            if exc.status != 404:
                raise
            return None
        for item in listing.get("data") or []:
            if str(item.get("batchId")) == batch_id:
                return _counts(item)
        return None

    async def _status_counts(self) -> tuple[dict[str, dict[str, int]], set[str]]:
        """Status counts of the tracked batches: one request covers up to a thousand. Also
        the IDs asked for by ID (the listing of a single tracked batch is a lookup)."""
        wanted = set(self._tracked)
        found: dict[str, dict[str, int]] = {}
        asked: set[str] = set()
        if len(wanted) == 1:  # one tracked batch: ask for it by its ID
            (only,) = wanted
            asked.add(only)
            counts = await self._by_id(only)
            return ({} if counts is None else {only: counts}), asked
        for page in range(MAX_LIST_PAGES):
            request = functools.partial(
                self.source.list_batches, limit=LIST_PAGE, skip=page * LIST_PAGE
            )
            listing = await self._call(request)
            data = listing.get("data") or []
            for item in data:
                batch_id = str(item.get("batchId"))
                if batch_id in wanted:
                    found[batch_id] = _counts(item)
            if wanted <= set(found) or len(data) < LIST_PAGE:
                break
        return found, asked

    async def _waiting(self, tracked: _Tracked) -> set[int]:
        items = await self._call(
            functools.partial(
                self.source.inbound, tracked.batch_id, status="New", missing_dependencies=True
            )
        )
        return {i for item in items if (i := self._index_of(tracked, item)) is not None}

    @staticmethod
    def _index_of(tracked: _Tracked, item: dict[str, Any]) -> int | None:
        if tracked.positions is None:
            tracked.positions = {s.change.external_id: i for i, s in enumerate(tracked.batch.slots)}
        return tracked.positions.get(str(item.get("externalId")))


def _counts(item: dict[str, Any]) -> dict[str, int]:
    raw = item.get("statusCounts")
    if isinstance(raw, dict):
        return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}
    status = item.get("status")
    return {str(status): int(item.get("recordCount") or 1)} if status else {}
