"""Replicas share one credential's budget by partitions: shrink at once, grow a window later."""

from __future__ import annotations

import pytest

from connector.ratelimit import BudgetShare, RollingWindowLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def share() -> tuple[BudgetShare, RollingWindowLimiter, Clock]:
    clock = Clock()
    limiter = RollingWindowLimiter(100, 60, clock=clock)
    return BudgetShare(limiter, 100, clock=clock), limiter, clock


def test_alone_takes_the_whole_budget_at_once() -> None:
    budget, limiter, _ = share()
    assert budget.assigned(6, 6) == 100
    assert limiter.capacity == 100


def test_a_joiner_starts_at_zero_and_grows_after_one_window() -> None:
    budget, limiter, clock = share()
    assert budget.assigned(3, 6) == 0
    clock.now = 59.9
    budget.tick()
    assert limiter.capacity == 0
    clock.now = 60.0
    budget.tick()
    assert limiter.capacity == 50


def test_shrinking_is_immediate_and_cancels_a_pending_growth() -> None:
    budget, limiter, clock = share()
    budget.assigned(6, 6)
    assert budget.assigned(2, 6) == 33
    assert budget.assigned(4, 6) == 33, "growth waits a window"
    assert budget.assigned(1, 6) == 16
    clock.now = 120
    budget.tick()
    assert limiter.capacity == 16, "the cancelled growth must not apply later"


def test_shares_of_all_replicas_never_exceed_the_budget() -> None:
    budget, _, _ = share()
    for replicas in range(1, 13):
        for total in (replicas, 6, 12, 50):
            parts = [total // replicas + (i < total % replicas) for i in range(replicas)]
            assert sum(budget.target(p, total) for p in parts) <= 100 or any(
                p and budget.target(p, total) == 1 for p in parts
            )


def test_a_fresh_limiter_that_assumes_recent_use_paces_instead_of_bursting() -> None:
    clock = Clock()
    clock.now = 1000.0
    limiter = RollingWindowLimiter(100, 60, clock=clock)
    limiter.assume_recent_use()
    assert limiter.available() == 0
    assert limiter.wait_time() == pytest.approx(0.6)
    clock.now += 0.6
    assert limiter.try_acquire()
    assert not limiter.try_acquire(), "one slot frees every 0.6 s, not a burst of 100"
    clock.now += 59.9  # every assumed start has aged out; the real one has not
    assert limiter.available() == 99, "after a window the whole budget is there again"


def test_an_unconstrained_budget_is_not_prefilled() -> None:
    limiter = RollingWindowLimiter(1_000_000, 1, clock=Clock())
    limiter.assume_recent_use()
    assert limiter.available() == 1_000_000
