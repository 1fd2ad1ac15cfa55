"""Status polling follows the batches, not a clock: on an injected clock, when the tracker
polls, what it learns of the platform's processing time, and how the budget bounds it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from connector.ratelimit import RollingWindowLimiter
from connector.sinks.buildingminds.tracker import Outcome, Tracker
from tests.unit.test_tracker import Clock, Platform, Reports, batch

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
) -> Tracker:
    async def on_terminal(_: Batch, batch_id: str, outcome: Outcome) -> None:
        reports.append((batch_id, outcome))

    return Tracker(
        platform, RollingWindowLimiter(capacity, 60, clock=clock), on_terminal=on_terminal,
        submissions_waiting=lambda: waiting, blocking=lambda: blocking, poll_interval=5,
        clock=clock, expected_processing=1.0, min_poll_gap=0.05,
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
async def test_while_the_budget_is_the_bottleneck_and_nothing_is_held_the_old_clock_paces(
    budget_left: bool,  # noqa: FBT001 - a parameter of the test
) -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = polling_tracker(platform, clock, reports, waiting=True, blocking=False, capacity=10)
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
        assert due - clock.now < 1.0, "slots to spare: waiting submissions do not slow polls"
    else:
        assert due == pytest.approx(clock.now + 5.0), "poll_interval after the last poll"


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
