"""Status polling follows the batches, not a clock: on an injected clock, when the tracker
polls, what it learns of the platform's processing time, and how the budget bounds it."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest

from connector.errors import ApiError, ServerError
from connector.ratelimit import JitterGuard, RollingWindowLimiter
from connector.sinks.buildingminds.tracker import Outcome, Tracker
from tests.support.clock import FakeClock as Clock
from tests.unit.test_tracker import Platform, Reports, batch

if TYPE_CHECKING:
    from connector.window import Batch

pytestmark = pytest.mark.anyio


def polling_tracker(
    platform: Platform,
    clock: Clock,
    reports: Reports,
    *,
    waiting: bool = False,
    blocking: bool = False,
    capacity: int = 100_000,
    guard: JitterGuard | None = None,
) -> Tracker:
    async def on_terminal(_: Batch, batch_id: str, outcome: Outcome) -> None:
        reports.append((batch_id, outcome))

    return Tracker(
        platform, RollingWindowLimiter(capacity, 60, clock=clock, sleep=clock.sleep, guard=guard),
        on_terminal=on_terminal,
        submissions_waiting=lambda: waiting, blocking=lambda: blocking, poll_interval=5,
        clock=clock, expected_processing=1.0, min_poll_gap=0.05, sleep=clock.sleep,
    )  # fmt: skip


async def test_the_first_poll_is_due_when_the_batch_can_be_expected_terminal() -> None:
    clock, reports = Clock(), Reports()
    t = polling_tracker(Platform(), clock, reports)
    assert t.next_poll_at() is None, "nothing tracked: no poll"
    t.track("b1", batch("x"), frozenset())
    assert t.next_poll_at() == pytest.approx(clock.now + 1.0), "the expected processing time"


async def test_the_estimate_learns_a_fast_platform_and_polls_sooner() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports)
    for n in range(30):  # the platform finishes every batch 0.2 s after acceptance
        t.track(f"b{n}", batch(f"x{n}"), frozenset())
        start = clock.now
        while t.tracked:
            due = t.next_poll_at()
            assert due is not None
            clock.now = max(due, clock.now)
            if clock.now - start >= 0.2:
                platform.known[f"b{n}"] = {"Completed": 1}
            await t.poll_once()
        clock.now += 1
    assert 0.15 < t.expected < 0.45, t.expected
    waits = [o for _, o in reports]
    assert len(waits) == 30


async def test_a_batch_in_progress_is_looked_at_again_no_later_than_the_interval() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports)
    t.track("slow", batch("x"), frozenset())
    platform.known["slow"] = {"InProgress": 1}
    for _ in range(20):
        due = t.next_poll_at()
        assert due is not None
        assert due - clock.now <= 5.0 + 1e-9, "never later than poll_interval"
        clock.now = due
        await t.poll_once()
    assert reports == []
    due = t.next_poll_at()
    assert due is not None
    assert due - clock.now == pytest.approx(5.0), "backed off to the interval"


@pytest.mark.parametrize("budget_left", [True, False])
async def test_while_submissions_wait_polls_keep_the_share_gap_and_without_a_hold_the_old_clock(
    budget_left: bool,  # noqa: FBT001 - a parameter of the test
) -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports, waiting=True, blocking=False, capacity=100)
    t.track("b1", batch("x"), frozenset())
    platform.known["b1"] = {"InProgress": 1}
    clock.now += 1
    await t.poll_once()
    t.track("b2", batch("y"), frozenset())
    if not budget_left:  # the submissions took every slot
        while t.limiter.try_acquire():
            pass
    due = t.next_poll_at()
    assert due is not None
    if budget_left:
        # 20 % of 100 per 60 s: one poll request every 3 s, even with slots to spare now
        assert t.share_gap() == pytest.approx(3.0)
        assert due == pytest.approx(clock.now + 3.0), "the share's gap after the last poll"
    else:
        assert due == pytest.approx(clock.now + 5.0), "poll_interval after the last poll"


async def test_without_waiting_submissions_spare_slots_are_not_paced_by_the_share() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports, waiting=False, capacity=100)
    t.track("b1", batch("x"), frozenset())
    platform.known["b1"] = {"Completed": 1}
    clock.now += 1
    await t.poll_once()
    assert [b for b, _ in reports] == ["b1"]
    t.track("b2", batch("y"), frozenset())
    due = t.next_poll_at()
    assert due is not None
    assert due - clock.now == pytest.approx(t.expected), "b2's expected end, not the gap"
    assert t.expected < t.share_gap()


@pytest.mark.parametrize("blocking", [False, True])
async def test_with_the_limiter_down_to_its_reserve_polls_leave_it_to_the_next_submission(
    blocking: bool,  # noqa: FBT001 - a parameter of the test
) -> None:
    """No submission waits at this instant, but the next one will need one of the few slots
    left (seen right after a start): a poll that nothing waits for keeps to the old clock."""
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports, waiting=False, blocking=blocking, capacity=100)
    t.track("b1", batch("x"), frozenset())
    platform.known["b1"] = {"Completed": 1}
    clock.now += 1
    await t.poll_once()
    t.track("b2", batch("y"), frozenset())
    while t.limiter.available() > 10:  # a tenth of 100: the reserve
        assert t.limiter.try_acquire()
    due = t.next_poll_at()
    assert due is not None
    if blocking:
        # a record waits: its batch's time, but the share is spent evenly even so
        assert t.expected < t.share_gap()
        assert due == pytest.approx(clock.now + t.share_gap()), "a share's gap after the last"
    else:
        assert due == pytest.approx(clock.now + 5.0), "poll_interval after the last poll"


class Feed:
    """Batches accepted on a schedule, each terminal `processing` s later, and a poll whenever
    the tracker says one is due: when each batch was seen terminal, and the polls' times."""

    def __init__(self, t: Tracker, platform: Platform, reports: Reports, clock: Clock) -> None:
        self.t, self.platform, self.reports, self.clock = t, platform, reports, clock
        self.accepted: dict[str, float] = {}
        self.waits: list[float] = []  # accepted -> seen terminal, per batch
        self.polls: list[float] = []
        self.refused = 0  # submissions that did not find a slot at once

    def accept(self, n: int, *, take_slot: bool = False) -> None:
        self.t.track(f"b{n}", batch(f"x{n}"), frozenset())
        self.accepted[f"b{n}"] = self.clock.now
        if take_slot:
            self.refused += not self.t.limiter.try_acquire()

    async def step(self, seconds: float, processing: float = 2.0) -> None:
        now = self.clock.now
        for batch_id, at in self.accepted.items():
            done = now - at >= processing
            self.platform.listed[batch_id] = {"Completed": 1} if done else {"InProgress": 1}
        due = self.t.next_poll_at()
        if due is not None and due <= now:
            self.polls.append(now)
            await self.t.poll_once()
            for batch_id, _ in self.reports:
                if batch_id in self.accepted:
                    self.waits.append(self.clock.now - self.accepted.pop(batch_id))
                    self.platform.listed.pop(batch_id, None)
        self.clock.now += seconds


async def test_the_share_is_spread_over_the_window_so_every_batch_is_seen_soon_after_its_end() -> (
    None
):
    """A batch accepted every 0.75 s while submissions wait, each terminal 2 s later. Spent in
    a burst, the share left batches unseen for half a window."""
    clock, reports, platform = Clock(), Reports(), Platform()
    t = polling_tracker(platform, clock, reports, waiting=True, blocking=True, capacity=100)
    feed, start, step, n = Feed(t, platform, reports, clock), clock.now, 0.05, 0
    while clock.now < start + 180:
        if clock.now >= start + n * 0.75:
            feed.accept(n)
            n += 1
        await feed.step(step)
    assert len(feed.waits) > 200
    assert max(feed.waits) <= 2.0 + 3.0 + 2 * step, "terminal, then seen within one share's gap"
    polls = feed.polls
    assert all(b - a >= 3.0 - 1e-6 for a, b in itertools.pairwise(polls)), "paced"
    assert all(sum(a <= p < a + 60 for p in polls) <= 20 for a in polls), "within the share"


async def test_submissions_that_never_wait_but_fill_the_budget_leave_polls_their_share() -> None:
    """`make demo`'s shape: six endpoints each closing a request every 5 s (72 a minute),
    each terminal 2 s later; a submission finds its slot at once, so none waits when a poll
    is due, but with the polls the window is at the limiter's reserve. Spare polls used to
    count against the share, and once the reserve was reached the share was spent: no poll
    for 22-26 s once a minute, every batch of that time unseen."""
    clock, reports, platform = Clock(), Reports(), Platform()
    t = polling_tracker(platform, clock, reports, waiting=False, blocking=True, capacity=100)
    feed, start, step, n = Feed(t, platform, reports, clock), clock.now, 0.05, 0
    while clock.now < start + 240:
        if clock.now >= start + (n // 6) * 5.0:
            for _ in range(6):
                feed.accept(n, take_slot=True)
                n += 1
        await feed.step(step)
    assert len(feed.waits) > 270
    assert max(feed.waits) <= 2.0 + t.share_gap() + 2 * step, "terminal, then seen within a gap"
    assert feed.refused == 0, "and every submission still found its slot"


async def test_while_submissions_wait_a_held_record_makes_the_poll_due_at_once() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports, waiting=True, blocking=True)
    t.track("b1", batch("x"), frozenset())
    platform.known["b1"] = {"InProgress": 1}
    clock.now += 1
    await t.poll_once()
    due = t.next_poll_at()
    assert due is not None
    assert due - clock.now < 1.0, "a record waits for this batch: look when it is expected done"


async def test_polls_while_submissions_wait_stay_within_the_share() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports, waiting=True, blocking=True, capacity=100)
    t.track("b1", batch("x"), frozenset())
    platform.known["b1"] = {"InProgress": 1}
    for _ in range(20):  # 20 % of 100 per window: 20 polls, then they would wait
        clock.now += 0.5
        await t.poll_once()
    assert len(platform.calls) == 20
    assert t.limiter.available() == 80, "the rest of the window is left to submissions"


async def test_a_batch_seen_terminal_before_its_time_settles_in_the_same_listing() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports)
    t.track("due", batch("x"), frozenset())
    clock.now += 0.5
    t.track("young", batch("y"), frozenset())
    platform.listed = {"due": {"Completed": 1}, "young": {"Completed": 1}}
    clock.now += 0.5
    await t.poll_once()
    assert sorted(b for b, _ in reports) == ["due", "young"], "one listing answers for all"


class _Failing(Platform):
    def __init__(self, error: ApiError) -> None:
        super().__init__()
        self.error = error

    async def list_batches(self, **_: object) -> dict[str, object]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "held_for"), [(ServerError("503", status=503), 60.02), (ServerError("reset"), 63.0)]
)
async def test_a_poll_answered_by_an_error_frees_its_slot_from_the_answer(
    error: ApiError, held_for: float
) -> None:
    """A status is an answer, so the slot frees one window (plus the guard's floor) after it;
    a dropped connection is no answer, and the slot is held for the guarded window."""
    clock, reports = Clock(), Reports()
    guard = JitterGuard(initial=3.0, ceiling=3.0, floor=0.02)
    t = polling_tracker(_Failing(error), clock, reports, capacity=1, guard=guard)
    t.track("b1", batch("x"), frozenset())
    start = clock.now
    with pytest.raises(ApiError):
        await t.poll_once()
    assert t.limiter.wait_time() == pytest.approx(start + held_for - clock.now)
