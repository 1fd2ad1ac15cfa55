"""Timing policy: the rolling-window request limiter, backoff delays and `Retry-After` parsing.

Owns *when* a request may start. `RollingWindowLimiter` keeps a sliding log of start times so
that no window of `per_seconds` ever holds more requests than the capacity (with a guard: as
the platform counts them, from the starts and the answers); `Backoff` gives the
exponential, fully jittered delays between retries; `retry_after_seconds` turns a 429's
`Retry-After` header into a bounded wait.

Must not: send requests, decide *whether* to retry (the sink branches on error types), or read
the time any other way than through the injected `clock` and `sleep`, so tests run exact and
fast on a fake clock.
"""

from __future__ import annotations

import heapq
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import NamedTuple, TypeAlias, TypeVar

import anyio
import anyio.lowlevel

__all__ = [
    "Backoff",
    "BudgetShare",
    "Clock",
    "JitterGuard",
    "RollingWindowLimiter",
    "Sleep",
    "retry_after_seconds",
]

HANDOVER_VERSION = "rl1"
HANDOVER_MAX_CHARS = 3500  # Kafka's offset.metadata.max.bytes is 4096 by default

Clock: TypeAlias = Callable[[], float]
"""Monotonic seconds."""
Sleep: TypeAlias = Callable[[float], Awaitable[None]]
"""Waits the given seconds on the same time line as the matching `Clock`."""


class RollingWindowLimiter:
    """At most `requests` starts in any rolling `per_seconds` window (a sliding log of start times).

    A start at time `t` is granted only while fewer than `capacity` recorded starts still hold
    their slot at `t` and no `block_for` is in force. A start holds its slot for `per_seconds`.
    With a `JitterGuard`, a start whose answer was observed (`observe`) holds it instead until
    the platform's window plus the guard's floor has passed since that answer, sooner or later
    than that: the platform counted the request before it answered, so the answer bounds where
    the platform's window for it ends, whatever the jitter was (see `JitterGuard`). The guard
    is a model of the jitter, measured on recent requests; the answer is a proof, and it holds
    when the model does not (a platform that counts a slow request at its end, a guard that
    has shrunk since). Waiters are served first come, first served; a newcomer never
    overtakes a queued waiter.

    Memory: the log holds only starts still holding a slot, so at most the largest capacity
    in force during the last `per_seconds` (it is not trimmed on a shrink, because a later grow
    must still see every start in the window).
    """

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        guard: JitterGuard | None = None,
        wall: Clock = time.time,
    ) -> None:
        """Raises `ValueError` for a negative `requests` or a `per_seconds` that is not > 0.

        With a `guard`, the window this limiter keeps is `per_seconds` + `guard.seconds`
        (measured, see `JitterGuard`); without one it is exactly `per_seconds`. `wall` is
        Unix time, used only to date a hand-over (`handover`, `take_over`).
        """
        if not per_seconds > 0 or not math.isfinite(per_seconds):
            raise ValueError(f"per_seconds must be a finite number > 0, got {per_seconds!r}")
        self._capacity = _check_capacity(requests)
        self._budget_per = float(per_seconds)
        self._guard = guard
        self._per = self._budget_per + (guard.seconds if guard is not None else 0.0)
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._soonest = math.inf  # no start in the log frees before this
        self._blocked_until = -math.inf
        self._assumed_at: float | None = None  # when `assume_recent_use` filled the log
        self._writer = uuid.uuid4().hex[:12]  # names this process's hand-overs
        # Held by the one waiter at the head of the queue while it sleeps; anyio's Lock hands
        # ownership over in FIFO order, which is what makes waiting fair.
        self._queue = anyio.Lock()
        # Set by `set_capacity` to cut the head waiter's sleep short when slots appear early.
        self._wake: anyio.Event | None = None

    @property
    def capacity(self) -> int:
        """The number of starts allowed in any window right now."""
        return self._capacity

    @classmethod
    def for_budget(
        cls,
        requests: int,
        per_seconds: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        wall: Clock = time.time,
    ) -> RollingWindowLimiter:
        """A limiter for one platform budget: a measured `JitterGuard` instead of a flat
        margin, pacing from the start (`assume_recent_use`) until a `take_over` says more."""
        # until measured, the flat margin of old; measured, up to 5 % of the window (a
        # saturated host can delay a granted request by a second or more)
        margin = per_seconds * 0.01 + 0.05
        guard = JitterGuard(initial=margin, ceiling=max(margin, per_seconds * 0.05))
        limiter = cls(requests, per_seconds, clock=clock, sleep=sleep, guard=guard, wall=wall)
        limiter.assume_recent_use()
        return limiter

    @property
    def per_seconds(self) -> float:
        """The length of the rolling window this limiter keeps, in seconds (the budget's
        window plus the guard in force): the longest a start holds its slot."""
        return self._per

    @property
    def budget_seconds(self) -> float:
        """The platform's window, without the guard."""
        return self._budget_per

    def observe(self, seconds: float) -> None:
        """One request took `seconds` from its slot to its answer, which came just now: feeds
        the guard (if any) and marks that request's start answered (see the class docstring).

        Call it for every request that took a slot, whatever its answer, at the answer and on
        the limiter's clock. The start is found by its time (now - `seconds`); a duration that
        matches no start still feeds the guard."""
        if self._guard is None:
            return
        self._guard.observe(seconds)
        self._per = self._budget_per + self._guard.seconds
        if 0 <= seconds < math.inf:
            self._answered(self._clock(), seconds)
        # once per answer: the guard may have moved every unanswered start's expiry
        self._soonest = min(map(self._expiry, self._starts), default=math.inf)
        if self._wake is not None:  # the head waiter's slot may free sooner now
            self._wake.set()

    def _answered(self, now: float, seconds: float) -> None:
        """Mark the start granted `seconds` before `now` answered at `now`: the latest start
        not after `now - seconds` and not yet answered, if it lies within `_MATCH_SECONDS`
        (the caller reads the clock just after the grant, so its start is a little later
        than the one recorded; any start between the two would be the same instant's)."""
        started = now - seconds
        starts = self._starts
        for index in range(len(starts) - 1, -1, -1):
            start = starts[index]
            if start > started + 1e-6:  # granted after it (1e-6: float rounding)
                continue
            if start < started - _MATCH_SECONDS:
                return
            if not isinstance(start, _Answered):
                starts[index] = _Answered(start, now)
                return

    def _expiry(self, start: float) -> float:
        """When `start` stops holding its slot (class docstring)."""
        if isinstance(start, _Answered) and self._guard is not None:
            return start.answer + self._budget_per + self._guard.floor
        return start + self._per

    async def acquire(self) -> float:
        """Wait until a slot is free, record the start, and return the seconds waited.

        Waiters are served in arrival order. Cancelling a waiter removes it from the queue
        without taking a slot. With a capacity of 0 this waits until `set_capacity` grows it.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self.try_acquire():
            return 0.0
        started = self._clock()
        async with self._queue:
            while (wait := self.wait_time()) > 0:
                await self._nap(wait)
            now = self._clock()
            self._record(now)
        return now - started

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is queued for it; never waits."""
        if self._queue.locked() or self.wait_time() > 0:
            return False
        self._record(self._clock())
        return True

    def _record(self, start: float) -> None:
        self._starts.append(start)
        self._soonest = min(self._soonest, start + self._per)

    def available(self) -> int:
        """Slots free right now (0 while a `block_for` is in force)."""
        now = self._clock()
        if now < self._blocked_until:
            return 0
        self._prune(now)
        return max(0, self._capacity - len(self._starts))

    def wait_time(self) -> float:
        """Seconds until the next slot frees: 0 if one is free now, `math.inf` at capacity 0."""
        now = self._clock()
        self._prune(now)
        excess = len(self._starts) - self._capacity
        if self._capacity == 0:
            free_at = math.inf
        elif excess < 0:
            free_at = now
        else:
            # Once the slot freeing at this rank frees, capacity - 1 starts hold one.
            free_at = heapq.nsmallest(excess + 1, map(self._expiry, self._starts))[-1]
        return max(0.0, max(free_at, self._blocked_until) - now)

    def assume_recent_use(self, *, limit: int = 10_000) -> None:
        """Start as if the last window had been used evenly: pace, do not burst.

        A process that starts (or restarts after a crash) cannot know what its predecessor,
        or another client of the credential, sent in the platform's current window. An even
        log of `capacity` starts across the last window lets requests through at
        capacity / per_seconds from the first moment: the whole budget is still used, but a
        restart no longer bursts into a window that may be full. Skipped above `limit`
        (an unconstrained budget has no window worth protecting).
        """
        if not 0 < self._capacity <= limit or self._starts:
            return
        now, per, n = self._clock(), self._per, self._capacity
        self._starts.extend(now - per + per * (i + 1) / n for i in range(n))
        self._soonest = min(self._soonest, self._starts[0] + per)
        self._assumed_at = now

    # ---------------------------------------------------------------- hand-over
    def handover(self, *, final: bool = True) -> str:
        """The start times of this limiter's requests still holding a slot, for a successor
        (an answered one's answer time instead: the successor holds it a window from there).

        Written by a process that stops into the metadata of its final offset commit
        (`final=True`); `final=False` marks a commit of a process that keeps running, so a
        successor that finds it knows its predecessor did not stop cleanly. The text is
        `rl1;<writer>;<f|r>;<unix time>;<window s>;<age ms>,<age ms>,...` and stays within
        `HANDOVER_MAX_CHARS` (the oldest starts are replaced by an "unknown" mark when it
        would not, which a successor treats as no hand-over).
        """
        now = self._clock()
        self._prune(now)
        # an answered start as its answer (where its slot's proof starts, see the class
        # docstring); the time rounded up and the ages down: never taken for older than it is
        ages = ",".join(
            str(int((now - (s.answer if isinstance(s, _Answered) else s)) * 1000))
            for s in reversed(self._starts)
        )
        head = (
            f"{HANDOVER_VERSION};{self._writer};{'f' if final else 'r'};"
            f"{math.ceil(self._wall() * 1000) / 1000:.3f};{self._per:g};"
        )
        if len(head) + len(ages) > HANDOVER_MAX_CHARS:
            return head + "?"
        return head + ages

    def take_over(
        self, metadata: str | Iterable[str | None] | None, share: float = 1.0
    ) -> str | None:
        """Replace the even assumption (`assume_recent_use`) by what predecessors handed over.

        `metadata`: the commit metadata of the partitions this process was assigned (one text
        or several; None or empty for a partition without). The newest hand-over decides, and
        every other one written within one window before it is added to it (replicas that
        stopped together: their sum is what the platform counted); older ones are ignored
        (their starts had aged out when the newest was written, and its writer had counted
        them). When all of them are final, their starts are taken as they are. When one is a
        "running" mark (its writer crashed after that commit, see `_after_a_crash`), its
        starts are a floor, and every other slot is taken as used just now, which holds
        whatever the writer sent after its mark; a running mark a window old or more says
        nothing of the tail, and the even assumption stays.

        Nothing is taken when a text cannot be read or lists too many starts, or when this
        replica does not hold the whole budget (`share` < 1: `BudgetShare` starts it from
        zero and grows it after a window, which keeps the sum of the replicas within the
        budget). Starts this limiter granted since the assumption are kept. Returns what was
        taken, for the log, or None when the even assumption stays.
        """
        texts = [metadata] if isinstance(metadata, str) or metadata is None else list(metadata)
        present = list(dict.fromkeys(t for t in texts if t))  # every partition has a copy
        if share < 1 or not present:
            return None
        parsed = [_parse_handover(t) for t in present]
        handovers = [h for h in parsed if h is not None]
        if len(handovers) != len(parsed):
            return None
        newest = max(h.written for h in handovers)
        recent = [h for h in handovers if h.written > newest - self._per]
        if not all(h.ages is not None for h in recent):
            return None
        now, wall = self._clock(), self._wall()
        running = [h.written for h in recent if not h.final]
        if running and wall - max(running) >= self._per:
            return None
        if self._guard is not None:  # the predecessor's jitter, for as long as it is unknown
            self._guard.carry(max(h.window for h in recent) - self._budget_per)
            self._per = self._budget_per + self._guard.seconds
        handed: list[float] = []
        for h in recent:
            since = max(wall - h.written, 0.0)  # a clock behind the writer's: no younger
            handed.extend(now - since - age for age in h.ages or ())
        if running:
            handed = self._after_a_crash(handed, now)
        own = [s for s in self._starts if self._assumed_at is None or s > self._assumed_at]
        self._starts = deque(sorted(s for s in (*handed, *own) if self._expiry(s) > now))
        self._soonest = min(map(self._expiry, self._starts), default=math.inf)
        self._assumed_at = None
        if running:
            return "after a crash: the predecessor's last running mark, every other slot used now"
        return "took over the predecessor's last window"

    def _after_a_crash(self, known: list[float], now: float) -> list[float]:
        """The starts to assume when a predecessor crashed after its last mark: `known` (the
        marks' starts, on this clock) that cannot have freed their slot by `now`, and `now`
        for every other slot of the budget.

        Why this holds whatever the predecessors did after their marks: together they never
        held more than the capacity, and none of them starts a request after `now` (they are
        gone). A start holds its slot at least the platform's window (`budget_seconds`; an
        answered one frees a little after that, `observe`), so a known start younger than
        that cannot have been followed on its slot by a later one: it keeps its date. Every
        other slot (free at the mark, or freed since) may have been taken again up to `now`,
        so it is dated `now`, the latest it can be. The guard widens the first test for
        clocks that disagree by up to the guard. Cost: the slots dated `now` come back one
        window later (after a predecessor that used the whole budget, about the budget of the
        time since its last mark; after a quiet one, up to the whole budget).
        """
        tolerance = self._per - self._budget_per
        kept = [s for s in known if s + self._budget_per > now + tolerance]
        return kept + [now] * max(0, self._capacity - len(kept))

    def block_for(self, seconds: float) -> None:
        """Grant no slot until `seconds` from now, e.g. after a 429 with `Retry-After`.

        Never shortens a block already in force; a negative or NaN value blocks nothing.
        """
        if seconds > 0:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def set_capacity(self, requests: int) -> None:
        """Change the number of starts allowed per window (a replica's share of the budget).

        Shrinking takes effect at once: starts already in the window count against the new,
        smaller capacity. Growing immediately allows more and wakes a waiting caller.
        Raises `ValueError` for a negative value.
        """
        grew = requests > self._capacity
        self._capacity = _check_capacity(requests)
        if grew and self._wake is not None:
            self._wake.set()

    def _prune(self, now: float) -> None:
        """Forget the starts that no longer hold a slot at `now`."""
        # answered starts free by their answers, so not in the order of the log
        if now >= self._soonest:
            self._starts = deque(s for s in self._starts if self._expiry(s) > now)
            self._soonest = min(map(self._expiry, self._starts), default=math.inf)

    async def _nap(self, seconds: float) -> None:
        """Sleep up to `seconds`, or less if `set_capacity` grows the capacity or `observe`
        marks an answer meanwhile."""
        wake = self._wake = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:

                async def alarm() -> None:
                    await self._sleep(seconds)
                    tg.cancel_scope.cancel()

                tg.start_soon(alarm)
                await wake.wait()
                tg.cancel_scope.cancel()
        finally:
            self._wake = None


_MATCH_SECONDS = 0.05
"""How far before the start an `observe` names the recorded start may lie (the caller reads the
clock just after the grant; a loaded host may preempt it in between)."""


class _Answered(float):
    """A start (the float's value) whose request was answered at `answer`, on the same clock.

    A float, so that everything that reads the log as start times (the hand-over, the
    window's order) reads it unchanged."""

    __slots__ = ("answer",)
    answer: float

    def __new__(cls, start: float, answer: float) -> _Answered:
        self = super().__new__(cls, start)
        self.answer = answer
        return self


class _Handover(NamedTuple):
    writer: str
    final: bool
    written: float  # Unix time
    window: float  # the writer's window, its guard included
    ages: tuple[float, ...] | None  # seconds before `written`; None: too many to write


def _parse_handover(text: str) -> _Handover | None:
    """A hand-over written by `RollingWindowLimiter.handover`, or None if `text` is none."""
    parts = text.split(";")
    if len(parts) != 6 or parts[0] != HANDOVER_VERSION or parts[2] not in ("f", "r"):
        return None
    try:
        written, window = float(parts[3]), float(parts[4])
        ages = None if parts[5] == "?" else tuple(
            int(a) / 1000 for a in parts[5].split(",") if a
        )  # fmt: skip
    except ValueError:
        return None
    if not (math.isfinite(written) and 0 < window < math.inf) or (
        ages is not None and any(a < 0 for a in ages)
    ):
        return None
    return _Handover(parts[1], parts[2] == "f", written, window, ages)


def _check_capacity(requests: int) -> int:
    if requests < 0:
        raise ValueError(f"requests must be >= 0, got {requests!r}")
    return int(requests)


class JitterGuard:
    """How much wider than the platform's window the limiter's own must be, measured.

    A request starts here a little before the platform counts it, and that delay varies
    (network, the event loop, the platform's own front door): two starts `g` apart here can
    arrive `g - spread` apart there, where `spread` is the largest minus the smallest delay.
    The request's whole duration, from the slot's grant to the answer, bounds its one-way
    delay from above, so the spread of the last `samples` durations bounds the spread of the
    delays. The guard is that spread plus `floor` (clock granularity), never more than
    `ceiling`; until `min_samples` requests were measured it is `initial` (default: the
    ceiling). A guard handed over by a predecessor (`carry`) holds as a minimum until
    `samples` requests of this process were measured.

    The guard covers the starts whose answer is unknown (in flight, answered by an error the
    caller does not `observe`, a predecessor's, the even assumption). An observed answer is a
    proof instead of a model: the platform counted the request before it answered, so its
    slot may free one platform window plus `floor` after the answer (`RollingWindowLimiter`).
    On a busy host that is much the tighter bound: there the spread of the durations is
    mostly the time spent answering (the platform's work, this host's event loop), which
    comes after the platform counted the request and needs no guard.
    """

    def __init__(
        self,
        *,
        ceiling: float,
        floor: float = 0.02,
        samples: int = 100,
        min_samples: int = 5,
        initial: float | None = None,
    ) -> None:
        """Raises `ValueError` unless 0 <= floor <= initial <= ceiling and samples >=
        min_samples >= 1."""
        first = ceiling if initial is None else initial
        if not (0 <= floor <= first <= ceiling < math.inf) or not 1 <= min_samples <= samples:
            raise ValueError(
                f"JitterGuard needs 0 <= floor <= initial <= ceiling and 1 <= min_samples <= "
                f"samples, got {floor}, {first}, {ceiling}, {min_samples}, {samples}"
            )
        self.ceiling = ceiling
        self.floor = floor
        self.min_samples = min_samples
        self._durations: deque[float] = deque(maxlen=samples)
        self._measured = first
        self._carried = 0.0
        self._carried_for = 0  # observations the carried guard still holds for
        self.seconds = first

    def carry(self, seconds: float) -> None:
        """A predecessor's guard: hold at least `seconds` (within the ceiling) until this
        process has measured a full sample of its own."""
        if 0 <= seconds < math.inf:
            self._carried = max(self._carried, min(seconds, self.ceiling))
            self._carried_for = self._durations.maxlen or 0
            self._update()

    def _update(self) -> None:
        carried = self._carried if self._carried_for > 0 else 0.0
        self.seconds = max(self._measured, carried)

    def observe(self, seconds: float) -> None:
        """One request's duration, slot to answer; NaN, infinite and negative are ignored."""
        if not (0 <= seconds < math.inf):
            return
        self._durations.append(seconds)
        self._carried_for = max(self._carried_for - 1, 0)
        if len(self._durations) >= self.min_samples:
            spread = max(self._durations) - min(self._durations)
            self._measured = min(self.ceiling, self.floor + spread)
        self._update()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: delay(n) = uniform(0, min(cap, base * 2**n)).

    Full jitter spreads retries of many clients over the whole interval, so they do not come
    back in lock step after a shared outage.
    """

    base: float = 0.5
    cap: float = 60.0

    def __post_init__(self) -> None:
        """Raises `ValueError` unless 0 < base and 0 <= cap, both finite."""
        if not (0 < self.base < math.inf) or not (0 <= self.cap < math.inf):
            raise ValueError(f"backoff needs 0 < base and 0 <= cap, got {self.base}, {self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before retry number `attempt` (0-based)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            return min(self.cap, math.ldexp(self.base, attempt))
        except OverflowError:
            # base * 2**attempt beyond float range: far above any cap.
            return self.cap

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `attempt` (0-based); `rand()` is in [0, 1).

        Raises `ValueError` for a negative attempt.
        """
        return rand() * self.ceiling(attempt)


_Default = TypeVar("_Default", bound=float | None)


def retry_after_seconds(
    value: str | None,
    *,
    default: _Default,
    maximum: float,
    now: Callable[[], float] = time.time,
) -> float | _Default:
    """Seconds to wait as a `Retry-After` header asks, bounded to [0, `maximum`]. The one
    parser of the header: every platform client reaches it through `connector.http`.

    `value` is delta-seconds ("120", decimals tolerated) or an HTTP-date; a date in the past and
    a negative number give 0. `default` is returned unchanged when the header is absent or
    cannot be parsed (including "inf" and "nan"). `now` is wall-clock unix time, for dates.
    """
    if value is None or not (text := value.strip()):
        return default
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return default
        if when.tzinfo is None:
            # RFC 9110 dates are always GMT; "-0000" parses zone-less and must not mean local.
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return default
    return min(max(seconds, 0.0), maximum)


class BudgetShare:
    """This replica's share of one credential's budget (docs/design.md §4, scale-out).

    Replicas in one consumer group share a credential without a coordinator: each takes the
    share of the budget that its assigned partitions are of all partitions. A smaller share
    applies at once; a larger one only after a full window, so the others' requests under the
    old split have aged out of the platform's window before this replica uses more. A replica
    joining others (not holding every partition) starts from zero for the same reason.

    `assigned` is called after every rebalance, `tick` regularly (it applies a due increase).
    """

    def __init__(self, limiter: RollingWindowLimiter, budget: int, *, clock: Clock) -> None:
        self.limiter = limiter
        self.budget = budget
        self.clock = clock
        self._first = True
        self._grow: tuple[float, int] | None = None  # (when, capacity)

    def target(self, mine: int, total: int) -> int:
        if total <= 0 or mine >= total:
            return self.budget
        return max(1, self.budget * mine // total) if mine else 0

    def assigned(self, mine: int, total: int) -> int:
        """Apply the share of `mine` of `total` partitions; returns the capacity now in force."""
        target = self.target(mine, total)
        if self._first and target < self.budget:
            self.limiter.set_capacity(0)  # we cannot know what the others used recently
        self._first = False
        if target <= self.limiter.capacity:
            self.limiter.set_capacity(target)
            self._grow = None
        else:
            self._grow = (self.clock() + self.limiter.per_seconds, target)
        return self.limiter.capacity

    def tick(self) -> None:
        if self._grow is not None and self.clock() >= self._grow[0]:
            self.limiter.set_capacity(self._grow[1])
            self._grow = None
