"""The budget across restarts and the measured guard, on injected clocks.

A stopping process hands the start times of its last window to its successor
(`RollingWindowLimiter.handover` / `take_over`); the successor must never let the platform
count more than the budget in any window, and falls back to the even assumption whenever the
hand-over cannot be trusted (a crash, another replica, garbage)."""

from __future__ import annotations

import math
from bisect import bisect_left

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.ratelimit import HANDOVER_MAX_CHARS, JitterGuard, RollingWindowLimiter

CAPACITY, PER = 10, 60.0


class Clocks:
    """A monotonic clock per process and one wall clock, moved together."""

    def __init__(self) -> None:
        self.mono = 5000.0
        self.wall = 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def limiter(clocks: Clocks, offset: float = 0.0, capacity: int = CAPACITY) -> RollingWindowLimiter:
    """A limiter whose monotonic clock is `offset` from the others' (another process)."""
    return RollingWindowLimiter(
        capacity, PER, clock=lambda: clocks.mono + offset, wall=lambda: clocks.wall
    )


def greedy(lim: RollingWindowLimiter, clocks: Clocks, seconds: float) -> list[float]:
    """Take every slot as soon as it frees, for `seconds`; the wall times of the starts."""
    starts = []
    end = clocks.wall + seconds
    while clocks.wall < end:
        if lim.try_acquire():
            starts.append(clocks.wall)
            continue
        wait = lim.wait_time()
        if not math.isfinite(wait):
            break
        clocks.advance(max(wait, 1e-3))
    return starts


def take_all(lim: RollingWindowLimiter, clocks: Clocks) -> list[float]:
    """Every slot free right now; the wall times of the starts."""
    starts = []
    while lim.try_acquire():
        starts.append(clocks.wall)
    return starts


def most_in_a_window(times: list[float]) -> int:
    """Most starts within any PER seconds, as the platform counts them (two starts exactly PER
    apart are in different windows; 1 µs of float rounding is forgiven)."""
    times = sorted(times)
    edge = PER - 1e-6
    return max((bisect_left(times, t + edge) - i for i, t in enumerate(times)), default=0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0, PER * 2, allow_nan=False), max_size=40),
    st.floats(0, PER * 1.5, allow_nan=False),
)
def test_predecessor_plus_successor_never_exceed_the_budget_in_any_window(
    gaps: list[float], pause: float
) -> None:
    clocks = Clocks()
    first = limiter(clocks)
    sent: list[float] = []
    for gap in gaps:  # the predecessor sends when it likes, within its limiter
        clocks.advance(gap)
        sent += greedy(first, clocks, 0.0) if first.try_acquire() is False else [clocks.wall]
    text = first.handover()
    clocks.advance(pause)  # the restart takes a while
    second = limiter(clocks, offset=-1234.5)  # another process: another monotonic origin
    second.assume_recent_use()
    assert second.take_over([text, text, None], share=1.0)
    sent += greedy(second, clocks, PER * 2)
    assert most_in_a_window(sent) <= CAPACITY


def test_a_successor_uses_the_budget_its_predecessor_left() -> None:
    clocks = Clocks()
    first = limiter(clocks)
    greedy(first, clocks, 0.0)
    for _ in range(3):  # three requests, then 50 s of nothing
        first.try_acquire()
    text = first.handover()
    clocks.advance(50)
    second = limiter(clocks, offset=77.0)
    second.assume_recent_use()
    assert second.available() == 0, "the even assumption paces from a full window"
    assert second.take_over(text)
    assert second.available() == CAPACITY - 3, "the predecessor's three starts still count"
    clocks.advance(10.001)
    assert second.available() == CAPACITY, "and age out when they would on the platform"


def test_an_answered_start_is_handed_over_as_its_answer() -> None:
    """The platform may count a slow request at its end: the successor holds that slot one
    window after the answer, not after the start (the soak's 429 after a SIGTERM restart)."""
    clocks = Clocks()

    def guarded(offset: float) -> RollingWindowLimiter:
        return RollingWindowLimiter(
            1, PER, clock=lambda: clocks.mono + offset, wall=lambda: clocks.wall,
            guard=JitterGuard(initial=0.5, ceiling=0.5),
        )  # fmt: skip

    first = guarded(0.0)
    assert first.try_acquire()
    clocks.advance(2.0)
    first.observe(2.0)  # answered after 2 s: counted by the platform at most 2 s late
    text = first.handover()
    second = guarded(-99.0)
    assert second.take_over(text)
    clocks.advance(PER - 0.1)  # one window after the start, plus the guard: not yet
    assert second.available() == 0
    clocks.advance(0.1 + 0.5)  # one window after the answer, plus the successor's guard
    assert second.available() == 1


@pytest.mark.parametrize(
    "texts",
    [
        ["rl1;abc;r;1799999940.000;60;1000,2000"],  # a crash, its last mark a window old
        ["garbage"],
        ["rl1;abc;f;1800000000.000;60;?"],  # too many starts to write
        ["rl1;abc;r;1800000000.000;60;?"],
        [],
        [None, ""],
    ],
)
def test_anything_but_a_readable_hand_over_of_the_last_window_keeps_the_even_assumption(
    texts: list[str | None],
) -> None:
    clocks = Clocks()
    lim = limiter(clocks)
    lim.assume_recent_use()
    assert not lim.take_over(texts)
    assert lim.available() == 0
    assert lim.wait_time() == pytest.approx(PER / CAPACITY)


def test_a_replica_without_the_whole_budget_takes_no_hand_over() -> None:
    clocks = Clocks()
    first = limiter(clocks)
    text = first.handover()
    second = limiter(clocks)
    second.assume_recent_use()
    assert not second.take_over(text, share=0.5), "BudgetShare starts it from zero instead"


def test_replicas_that_stopped_together_are_added_up() -> None:
    clocks = Clocks()
    a, b = limiter(clocks, capacity=5), limiter(clocks, offset=3.0, capacity=5)
    for _ in range(5):
        a.try_acquire()
        b.try_acquire()
    texts = [a.handover(), b.handover()]
    clocks.advance(1)
    successor = limiter(clocks)
    successor.assume_recent_use()
    assert successor.take_over(texts)
    assert successor.available() == 0, "five and five of ten"


def test_an_old_hand_over_of_another_writer_is_ignored_beside_a_newer_one() -> None:
    clocks = Clocks()
    old = limiter(clocks)
    for _ in range(CAPACITY):
        old.try_acquire()
    stale = old.handover()
    clocks.advance(PER * 3)
    new = limiter(clocks)
    new.try_acquire()
    fresh = new.handover()
    successor = limiter(clocks)
    successor.assume_recent_use()
    assert successor.take_over([stale, fresh])
    assert successor.available() == CAPACITY - 1


def test_a_hand_over_stays_within_the_commit_metadata_limit() -> None:
    clocks = Clocks()
    big = limiter(clocks, capacity=5000)
    for _ in range(5000):
        big.try_acquire()
    text = big.handover()
    assert len(text) <= HANDOVER_MAX_CHARS
    assert text.endswith("?"), "too many to write: the successor falls back"


def test_starts_the_successor_made_before_the_take_over_are_kept() -> None:
    clocks = Clocks()
    first = limiter(clocks)
    text = first.handover()  # nothing sent
    second = limiter(clocks)
    second.assume_recent_use()
    clocks.advance(PER / CAPACITY)
    assert second.try_acquire()
    assert second.take_over(text)
    assert second.available() == CAPACITY - 1


def test_the_guard_is_the_flat_margin_until_measured_then_the_spread() -> None:
    guard = JitterGuard(ceiling=0.65, floor=0.02, samples=10, min_samples=3)
    lim = RollingWindowLimiter(100, 60, guard=guard)
    assert lim.per_seconds == pytest.approx(60.65)
    for seconds in (0.010, 0.030):
        lim.observe(seconds)
    assert lim.per_seconds == pytest.approx(60.65), "two samples: not measured yet"
    lim.observe(0.050)
    assert lim.per_seconds == pytest.approx(60 + 0.02 + 0.04)
    lim.observe(5.0)  # one slow answer: never more than the ceiling
    assert lim.per_seconds == pytest.approx(60.65)
    for _ in range(10):
        lim.observe(0.02)
    assert lim.per_seconds == pytest.approx(60.02), "the slow one left the sample"
    lim.observe(math.nan)
    lim.observe(-1)
    assert lim.per_seconds == pytest.approx(60.02)
    assert lim.budget_seconds == 60


def test_for_budget_paces_from_the_start_with_a_guard() -> None:
    now = [100.0]
    lim = RollingWindowLimiter.for_budget(100, 60, clock=lambda: now[0])
    assert lim.available() == 0
    assert lim.per_seconds == pytest.approx(60 * 1.01 + 0.05)
    with pytest.raises(ValueError, match="JitterGuard"):
        JitterGuard(ceiling=0.1, floor=0.2)


def test_a_successor_keeps_its_predecessors_guard_until_it_has_measured_its_own() -> None:
    clocks = Clocks()
    first = RollingWindowLimiter(
        CAPACITY, PER, clock=lambda: clocks.mono, wall=lambda: clocks.wall,
        guard=JitterGuard(ceiling=3.0, samples=10, min_samples=3),
    )  # fmt: skip
    for seconds in (0.1, 1.2, 0.1):  # a saturated host: granted slots sent 1.1 s late
        first.observe(seconds)
    assert first.per_seconds == pytest.approx(PER + 0.02 + 1.1)
    text = first.handover()
    second = RollingWindowLimiter(
        CAPACITY, PER, clock=lambda: clocks.mono, wall=lambda: clocks.wall,
        guard=JitterGuard(initial=0.65, ceiling=3.0, samples=10, min_samples=3),
    )  # fmt: skip
    assert second.per_seconds == pytest.approx(PER + 0.65)
    assert second.take_over(text)
    assert second.per_seconds == pytest.approx(PER + 1.12), "the predecessor's guard"
    for _ in range(9):
        second.observe(0.05)
    assert second.per_seconds == pytest.approx(PER + 1.12), "held for a full sample"
    second.observe(0.05)
    assert second.per_seconds == pytest.approx(PER + 0.02), "then its own measurement"


def test_a_measured_guard_may_exceed_the_old_margin_up_to_five_percent() -> None:
    now = [100.0]
    lim = RollingWindowLimiter.for_budget(100, 60, clock=lambda: now[0])
    for seconds in (0.0, 1.5, 0.0, 0.0, 0.0):
        lim.observe(seconds)
    assert lim.per_seconds == pytest.approx(60 + 0.02 + 1.5)
    for seconds in (0.0, 9.0):
        lim.observe(seconds)
    assert lim.per_seconds == pytest.approx(63.0), "at most 5 % of the window"


# ------------------------------------------------------------------------ after a crash
def guarded(clocks: Clocks, offset: float = 0.0) -> RollingWindowLimiter:
    """A limiter as the connector builds one (a measured guard; answered starts free early),
    without the start-up assumption, so that it may send any pattern its budget allows."""
    guard = JitterGuard(initial=0.65, ceiling=3.0)
    return RollingWindowLimiter(
        CAPACITY, PER, clock=lambda: clocks.mono + offset, wall=lambda: clocks.wall, guard=guard
    )


class Predecessor:
    """A process that sends what its limiter allows, sees answers, commits "running" marks,
    and is killed: what the platform counted (at each start) and its last mark."""

    def __init__(self, clocks: Clocks) -> None:
        self.clocks = clocks
        self.limiter = guarded(clocks)
        self.sent: list[float] = []  # wall times
        self.answers: list[tuple[float, float]] = []  # (answer, start), monotonic
        self.mark: str | None = None
        self.marked_at = -math.inf

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass, each answer observed at its moment."""
        end = self.clocks.mono + seconds
        for answer, start in sorted(a for a in self.answers if a[0] <= end):
            self.clocks.advance(answer - self.clocks.mono)
            self.limiter.observe(answer - start)
        self.answers = [a for a in self.answers if a[0] > end]
        self.clocks.advance(end - self.clocks.mono)

    def send(self, count: int, answer_after: float) -> None:
        for _ in range(count):
            if not self.limiter.try_acquire():
                return
            self.sent.append(self.clocks.wall)
            self.answers.append((self.clocks.mono + answer_after, self.clocks.mono))

    def commit(self) -> None:
        self.mark = self.limiter.handover(final=False)
        self.marked_at = self.clocks.wall


steps = st.lists(
    st.tuples(
        st.floats(0, PER / 4, allow_nan=False),  # the time before it
        st.sampled_from(["send", "commit"]),
        st.integers(1, CAPACITY),  # requests it tries to send at once
        st.sampled_from([0.0, 0.05, 0.5, 2.0]),  # how long their answers take
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    steps,
    st.lists(
        st.tuples(st.floats(0, PER / 10) | st.just("next"), st.integers(1, CAPACITY)),
        max_size=8,
    ),
    st.floats(0, PER / 6, allow_nan=False),
    st.floats(-0.5, 0.5, allow_nan=False),
)
def test_after_a_crash_predecessor_and_successor_never_exceed_the_budget_in_any_window(
    before: list[tuple[float, str, int, float]],
    tail: list[tuple[float | str, int]],
    pause: float,
    skew: float,
) -> None:
    """Whatever the predecessor sent before its last mark and after it (the tail nobody
    knows), and however soon after the crash the successor starts, as long as that mark is
    within a window of the take-over and the two wall clocks agree within the guard
    (`skew`: the successor's ahead of its predecessor's, or behind)."""
    clocks = Clocks()
    first = Predecessor(clocks)
    for gap, action, count, answer_after in before:
        first.wait(gap)
        if action == "send":
            first.send(count, answer_after)
        else:
            first.commit()
    first.commit()  # its last mark
    for after, count in tail:  # answered at once: the earliest any slot frees
        gap = first.limiter.wait_time() if after == "next" else float(after)  # "next": it frees
        # the take-over within a window of the mark
        first.wait(max(min(gap, PER * 0.8 - (clocks.wall - first.marked_at)), 0.0))
        first.send(count, 0.0)
    first.wait(0.0)
    clocks.advance(pause)  # killed; the successor joins
    assert first.mark is not None
    assert clocks.wall - first.marked_at < PER
    second = RollingWindowLimiter.for_budget(
        CAPACITY, PER, clock=lambda: clocks.mono - 1234.5, wall=lambda: clocks.wall + skew
    )
    assert second.take_over([first.mark, None], share=1.0)
    sent = first.sent + greedy(second, clocks, PER * 2)
    assert most_in_a_window(sent) <= CAPACITY


def test_after_a_crash_right_after_a_burst_the_successor_waits_for_it() -> None:
    """The soak's case: the even assumption would let the successor send into a window its
    predecessor had just filled; what the crash costs instead is the budget of the time
    between the last mark and the take-over, for one window."""
    clocks = Clocks()
    first = limiter(clocks)  # no guard: the times below are exact
    start = clocks.wall
    for _ in range(4):
        assert first.try_acquire()
    clocks.advance(20)
    mark = first.handover(final=False)  # a periodic commit: four starts of 20 s ago
    clocks.advance(5)
    burst = take_all(first, clocks)  # then six, and a kill -9
    assert len(burst) == CAPACITY - 4
    clocks.advance(10)  # the successor takes over 15 s after the mark

    even = limiter(clocks, offset=-99.0)
    even.assume_recent_use()
    assert not even.take_over([mark], share=0.5)  # today's behaviour without a take-over
    assert even.wait_time() == pytest.approx(PER / CAPACITY)
    assert most_in_a_window([start] * 4 + burst + take_all(even, clocks)) <= CAPACITY
    clocks.advance(PER / CAPACITY)
    assert most_in_a_window([start] * 4 + burst + take_all(even, clocks)) > CAPACITY, (
        "the even assumption sends into the burst's window: a 429"
    )

    clocks.advance(-PER / CAPACITY)
    second = limiter(clocks, offset=-99.0)
    second.assume_recent_use()
    assert second.take_over([mark])
    assert second.available() == 0
    sent = greedy(second, clocks, PER * 2)
    assert most_in_a_window([start] * 4 + burst + sent) <= CAPACITY
    # the four known starts free when they would on the platform; the six unknown ones are
    # dated at the take-over, 10 s after they really started (what the crash costs)
    assert sent[:4] == [pytest.approx(start + PER)] * 4
    assert sent[4:CAPACITY] == [pytest.approx(start + 35 + PER)] * (CAPACITY - 4)


def test_after_a_crash_a_known_start_that_may_have_freed_counts_as_used_now() -> None:
    """An answered start frees its slot one platform window after its answer, before the
    limiter's guarded window has passed: the predecessor may have reused it after its mark,
    so its date cannot be kept beyond the platform's window."""
    clocks = Clocks()
    first = guarded(clocks)
    for _ in range(CAPACITY):
        assert first.try_acquire()
        first.observe(0.0)
    clocks.advance(PER - 5)
    mark = first.handover(final=False)
    clocks.advance(5.1)  # past the platform's window, within the guarded one
    reused = take_all(first, clocks)
    assert len(reused) == CAPACITY, "every slot freed by its answer and taken again"
    clocks.advance(0.2)
    second = RollingWindowLimiter.for_budget(
        CAPACITY, PER, clock=lambda: clocks.mono, wall=lambda: clocks.wall
    )
    assert second.take_over(mark)
    assert second.available() == 0
    assert second.wait_time() == pytest.approx(second.per_seconds)


def test_after_a_crash_starts_handed_over_by_replicas_that_stopped_cleanly_count_too() -> None:
    clocks = Clocks()
    stopped, crashed = limiter(clocks, capacity=5), limiter(clocks, offset=3.0, capacity=5)
    for _ in range(5):
        stopped.try_acquire()
    clocks.advance(10)
    crashed.try_acquire()
    texts = [stopped.handover(), crashed.handover(final=False)]
    clocks.advance(10)
    successor = limiter(clocks)
    successor.assume_recent_use()
    assert successor.take_over(texts)
    assert successor.available() == 0
    clocks.advance(PER - 20)
    assert successor.available() == 5, "the stopped replica's five, at their own time"
    clocks.advance(10)
    assert successor.available() == 6, "the crashed one's known start"
    clocks.advance(10)
    assert successor.available() == CAPACITY, "the rest a window after the take-over"
