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


@pytest.mark.parametrize(
    "texts",
    [
        ["rl1;abc;r;1800000000.000;60;1000,2000"],  # a crash after a running commit
        ["garbage"],
        ["rl1;abc;f;1800000000.000;60;?"],  # too many starts to write
        ["rl1;abc;f;1800000000.000;60;1000", "rl1;abc;r;1799999990.000;60;1000"],
        [],
        [None, ""],
    ],
)
def test_anything_but_a_clean_final_hand_over_keeps_the_even_assumption(
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
