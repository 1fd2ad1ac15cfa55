"""Batch status tracking: every accepted batch followed until each record in it is terminal.

A 200 from the platform means "accepted and queued", not "onboarded" (seed 000). The tracker
polls with the cheapest requests: one `GET /batch` lists up to a thousand recent batches with
their status counts, and `GET /batch/{batchId}/inbound?status=...` is asked only for batches
that report failures (or records still waiting after `parent_patience_seconds`).

Status mapping (reference/building-apis.md §1A): Completed and Published succeed; Failed,
FailedValidation, FailedGeoCoding and TransformationFailed fail; New, InProgress, Retrying,
Resubmitting and GeoCodingSuccessful are in progress; New with missing dependencies is
"waiting for parent", reported (not dead-lettered) once the patience runs out, and then
counted as finished: the platform holds the record and links it when the parent arrives.

Budget: polls take their slots from the same rolling-window limiter as submissions. While
submissions wait (`submissions_waiting()`), polls may use at most `max_poll_share` of the
window; otherwise they may use whatever is spare.

Must not: finish a record itself. It reports each batch's outcome once to `on_terminal`, and
the pipeline dead-letters and commits.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from connector.errors import ApiError, AuthError, RateLimited
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
    """How a batch ended: record indexes that failed (status, message) or wait for a parent."""

    failed: dict[int, tuple[str, str]] = field(default_factory=dict)
    waiting: set[int] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Tracked:
    batch_id: str
    batch: Batch
    accepted_at: float
    skip: frozenset[int]  # indexes the platform already refused synchronously
    reported_waiting: bool = False
    positions: dict[str, int] | None = None  # external ID -> index, built on first need


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
        clock: Callable[[], float] = time.monotonic,
        on_poll: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.limiter = limiter
        self.on_terminal = on_terminal
        self.submissions_waiting = submissions_waiting
        self.poll_interval = poll_interval
        self.max_poll_share = max_poll_share
        self.parent_patience = parent_patience
        self.clock = clock
        self.on_poll = on_poll or (lambda _: None)
        self._tracked: dict[str, _Tracked] = {}
        self._polls: deque[float] = deque()  # start times of recent polls, for the share
        self._wake = anyio.Event()
        self.polls = 0

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    def track(self, batch_id: str, batch: Batch, skip: frozenset[int]) -> None:
        self._tracked[batch_id] = _Tracked(batch_id, batch, self.clock(), skip)
        self._wake.set()

    def waiting_for_parent(self) -> int:
        return sum(1 for t in self._tracked.values() if t.reported_waiting)

    # ------------------------------------------------------------------ budget
    async def _take_slot(self) -> None:
        """A limiter slot for one poll, within the share while submissions wait."""
        window = self.limiter.per_seconds
        while True:
            now = self.clock()
            while self._polls and self._polls[0] + window <= now:
                self._polls.popleft()
            within_share = len(self._polls) < max(
                1, int(self.limiter.capacity * self.max_poll_share)
            )
            if within_share or not self.submissions_waiting():
                if within_share:
                    await self.limiter.acquire()
                    break
                if self.limiter.try_acquire():
                    break
            await anyio.sleep(min(self.poll_interval, 1.0))
        self._polls.append(self.clock())
        self.polls += 1

    async def _call(self, func: Callable[[], Awaitable[Any]]) -> Any:
        """One poll request, within the budget; its outcome is counted."""
        await self._take_slot()
        try:
            result = await func()
        except RateLimited as exc:
            self.limiter.block_for(exc.retry_after or 60.0)
            self.on_poll("rate_limited")
            raise
        except (ApiError, AuthError):
            self.on_poll("error")
            raise
        self.on_poll("success")
        return result

    # ------------------------------------------------------------------ polling
    async def run(self) -> None:
        """Poll until cancelled. Errors of one round are logged; the next round tries again."""
        while True:
            if not self._tracked:
                self._wake = anyio.Event()
                await self._wake.wait()
            await anyio.sleep(self.poll_interval)
            try:
                await self.poll_once()
            except (ApiError, AuthError) as exc:
                log.warning(
                    "status poll failed (%s); trying again in %.0f s", exc, self.poll_interval
                )

    async def poll_once(self) -> None:
        """One round: list recent batches, settle those that are terminal."""
        counts = await self._status_counts()
        now = self.clock()
        for batch_id, tracked in list(self._tracked.items()):
            statuses = counts.get(batch_id)
            if statuses is None:
                continue  # not listed yet (eventual consistency) or older than we paged
            in_progress = sum(n for s, n in statuses.items() if s not in SUCCEEDED | FAILED)
            failing = [s for s, n in statuses.items() if s in FAILED and n]
            outcome = Outcome(statuses=dict(statuses))
            if in_progress:
                if now - tracked.accepted_at < self.parent_patience:
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
            for status in failing:
                inbound = functools.partial(self.source.inbound, batch_id, status=status)
                for item in await self._call(inbound):
                    index = self._index_of(tracked, item)
                    if index is not None:
                        message = item.get("message") or status
                        outcome.failed[index] = (status, str(message))
            del self._tracked[batch_id]
            await self.on_terminal(tracked.batch, batch_id, outcome)

    async def _status_counts(self) -> dict[str, dict[str, int]]:
        """Status counts of the tracked batches: one request covers up to a thousand."""
        wanted = set(self._tracked)
        found: dict[str, dict[str, int]] = {}
        for page in range(MAX_LIST_PAGES):
            if len(wanted) == 1:
                (only,) = wanted
                request = functools.partial(self.source.list_batches, batch_id=only, limit=1)
            else:
                request = functools.partial(
                    self.source.list_batches, limit=LIST_PAGE, skip=page * LIST_PAGE
                )
            listing = await self._call(request)
            data = listing.get("data") or []
            for item in data:
                batch_id = str(item.get("batchId"))
                if batch_id in wanted:
                    found[batch_id] = _counts(item)
            if len(wanted) == 1 or wanted <= set(found) or len(data) < LIST_PAGE:
                break
        return found

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
