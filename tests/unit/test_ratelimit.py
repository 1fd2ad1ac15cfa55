"""Timing policy on a fake clock: exact waits, the window invariant, FIFO, backoff, Retry-After."""

from __future__ import annotations

import math
import random
from email.utils import format_datetime, parsedate_to_datetime
from typing import Literal

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.ratelimit import Backoff, JitterGuard, RollingWindowLimiter, retry_after_seconds
from tests.support.clock import FakeClock

# A fake clock that is never advanced hangs a test; fail it fast instead.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

T0 = 1000.0


def limiter(requests: int, per: float, clock: FakeClock) -> RollingWindowLimiter:
    return RollingWindowLimiter(requests, per, clock=clock, sleep=clock.sleep)


# --- RollingWindowLimiter -------------------------------------------------------------------


async def test_a_full_burst_is_immediate_and_the_next_waits_for_the_oldest_start() -> None:
    clock = FakeClock(T0)
    limit = limiter(100, 60.0, clock)

    assert await limit.acquire() == 0.0  # the oldest start, at T0
    clock.now = T0 + 10.0
    for _ in range(99):
        assert await limit.acquire() == 0.0
    assert clock.sleeps == []
    assert limit.available() == 0

    # The 101st waits until the start at T0 leaves the window, not for a whole new window.
    assert await limit.acquire() == 50.0
    assert clock.now == T0 + 60.0
    # The 102nd waits for the next-oldest start, made at T0 + 10.
    assert await limit.acquire() == 10.0
    assert clock.now == T0 + 70.0


async def test_try_acquire_available_and_wait_time_agree() -> None:
    clock = FakeClock(T0)
    limit = limiter(2, 10.0, clock)
    assert (limit.available(), limit.wait_time(), limit.capacity) == (2, 0.0, 2)
    assert limit.try_acquire()
    clock.now += 4.0
    assert limit.try_acquire()
    assert not limit.try_acquire()
    assert (limit.available(), limit.wait_time()) == (0, 6.0)
    clock.now += 6.0
    assert (limit.available(), limit.wait_time()) == (1, 0.0)
    assert limit.try_acquire()


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="per_seconds"):
        RollingWindowLimiter(1, 0.0)
    with pytest.raises(ValueError, match="requests"):
        RollingWindowLimiter(-1, 1.0)
    with pytest.raises(ValueError, match="requests"):
        RollingWindowLimiter(1, 1.0).set_capacity(-1)


Op = (
    tuple[Literal["acquire"], int]  # that many concurrent acquires
    | tuple[Literal["try"], int]
    | tuple[Literal["advance"], float]
    | tuple[Literal["block"], float]
    | tuple[Literal["capacity"], int]
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(1, 6)),
        st.tuples(st.just("try"), st.just(0)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 2.5, 7.25, 10.0, 30.0])),
        st.tuples(st.just("block"), st.sampled_from([-1.0, 0.0, 0.5, 3.0, 12.0])),
        st.tuples(st.just("capacity"), st.integers(1, 6)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.integers(1, 6), ops=OPS)
async def test_no_window_ever_holds_more_starts_than_the_capacity(
    initial: int, ops: list[Op]
) -> None:
    per = 10.0
    clock = FakeClock(T0)
    limit = limiter(initial, per, clock)
    starts: list[tuple[float, int]] = []  # (time, capacity in force when granted)
    blocks: list[tuple[int, float]] = []  # (starts made before the block, blocked until)

    async def one() -> None:
        await limit.acquire()
        starts.append((clock.now, limit.capacity))

    for op, arg in ops:
        if op == "acquire":
            async with anyio.create_task_group() as tg:
                for _ in range(int(arg)):
                    tg.start_soon(one)
        elif op == "try":
            if limit.try_acquire():
                starts.append((clock.now, limit.capacity))
        elif op == "advance":
            clock.now += arg
        elif op == "block":
            limit.block_for(arg)
            blocks.append((len(starts), clock.now + max(arg, 0.0)))
        else:
            limit.set_capacity(int(arg))
        assert limit.available() <= limit.capacity

    for i, (at, capacity) in enumerate(starts):
        in_window = sum(1 for earlier, _ in starts[: i + 1] if earlier > at - per)
        assert in_window <= capacity, f"start {i} at {at} made {in_window} in one window"
    for made_before, until in blocks:
        assert all(at >= until for at, _ in starts[made_before:])


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock(T0, auto=False)
    limit = limiter(1, 10.0, clock)
    await limit.acquire()
    served: list[int] = []

    async def waiter(n: int) -> None:
        await limit.acquire()
        served.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(waiter, n)
            await wait_all_tasks_blocked()  # queued strictly in this order
        for n in range(5):
            clock.advance(10.0)
            # The slot is free, but it belongs to the head of the queue, not to a newcomer.
            assert not limit.try_acquire()
            await wait_all_tasks_blocked()
            assert served == list(range(n + 1))
    assert clock.now == T0 + 50.0


async def test_a_cancelled_waiter_leaves_the_queue_without_taking_a_slot() -> None:
    clock = FakeClock(T0, auto=False)
    limit = limiter(1, 10.0, clock)
    await limit.acquire()
    served: list[str] = []

    async def waiter(
        name: str,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await limit.acquire()
            served.append(name)

    async with anyio.create_task_group() as tg:
        first = await tg.start(waiter, "first")
        await wait_all_tasks_blocked()
        await tg.start(waiter, "second")
        await wait_all_tasks_blocked()
        first.cancel()
        await wait_all_tasks_blocked()
        clock.advance(10.0)
    assert served == ["second"]
    assert limit.available() == 0


async def test_block_for_holds_every_slot_and_never_shortens() -> None:
    clock = FakeClock(T0)
    limit = limiter(100, 60.0, clock)
    limit.block_for(30.0)
    limit.block_for(10.0)  # shorter: ignored
    limit.block_for(-5.0)  # meaningless: ignored
    assert (limit.available(), limit.wait_time(), limit.try_acquire()) == (0, 30.0, False)
    assert await limit.acquire() == 30.0
    assert clock.now == T0 + 30.0
    limit.block_for(45.0)  # longer: extends
    assert limit.wait_time() == 45.0


async def test_shrinking_counts_the_starts_already_in_the_window() -> None:
    clock = FakeClock(T0)
    limit = limiter(4, 10.0, clock)
    for _ in range(4):
        assert limit.try_acquire()
        clock.now += 1.0  # starts at T0, T0+1, T0+2, T0+3; now T0+4
    limit.set_capacity(2)
    assert (limit.capacity, limit.available()) == (2, 0)
    # Two starts may remain in the window, so the one at T0+2 must age out first.
    assert limit.wait_time() == 8.0
    assert await limit.acquire() == 8.0


async def test_growing_allows_more_at_once_but_remembers_the_window() -> None:
    clock = FakeClock(T0)
    limit = limiter(4, 10.0, clock)
    for _ in range(4):
        assert limit.try_acquire()
    limit.set_capacity(1)
    limit.set_capacity(4)  # shrinking must not have forgotten the four starts
    assert limit.available() == 0
    limit.set_capacity(6)
    assert limit.available() == 2
    assert limit.try_acquire()


async def test_growing_wakes_a_waiter_without_the_clock_moving() -> None:
    clock = FakeClock(T0, auto=False)
    limit = limiter(1, 60.0, clock)
    await limit.acquire()
    waited: list[float] = []

    async def waiter() -> None:
        waited.append(await limit.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        assert waited == []
        limit.set_capacity(2)
    assert waited == [0.0]
    assert clock.now == T0


async def test_capacity_zero_waits_until_a_share_is_given() -> None:
    clock = FakeClock(T0, auto=False)
    limit = limiter(0, 60.0, clock)
    assert (limit.available(), limit.wait_time(), limit.try_acquire()) == (0, math.inf, False)
    done = anyio.Event()

    async def waiter() -> None:
        await limit.acquire()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        assert not done.is_set()
        limit.set_capacity(1)
    assert limit.available() == 0


# --- answers: a start frees one window after its answer, or one guarded window after it ---------

GUARD = 0.5  # a constant guard: never measured (min_samples beyond any test's requests)
FLOOR = 0.02


def guarded(requests: int, per: float, clock: FakeClock) -> RollingWindowLimiter:
    guard = JitterGuard(initial=GUARD, ceiling=GUARD, floor=FLOOR, samples=10**6, min_samples=10**6)
    return RollingWindowLimiter(requests, per, clock=clock, sleep=clock.sleep, guard=guard)


def test_an_answered_start_frees_one_window_after_its_answer_not_one_guarded_window() -> None:
    clock = FakeClock(T0)
    limit = guarded(2, 60.0, clock)
    assert limit.per_seconds == 60.0 + GUARD
    assert limit.try_acquire()  # A at T0, answered after 0.1 s
    clock.now = T0 + 0.1
    limit.observe(0.1)
    assert limit.try_acquire()  # B at T0 + 0.1, never answered (a timeout, say)
    assert not limit.try_acquire()
    # A's platform window ends at its answer + 60 s at the latest: + the floor, not the guard
    assert limit.wait_time() == pytest.approx(60.0 + FLOOR)
    clock.now = T0 + 0.1 + 60.0 + FLOOR
    assert limit.available() == 1
    # B holds its slot for the whole guarded window
    assert limit.try_acquire()
    assert limit.wait_time() == pytest.approx(T0 + 0.1 + 60.0 + GUARD - clock.now)


def test_a_slow_answer_holds_its_slot_one_window_after_the_answer_not_the_guarded_window() -> None:
    clock = FakeClock(T0)
    limit = guarded(1, 60.0, clock)
    assert limit.try_acquire()
    clock.now = T0 + 3.0  # slower than the guard: the platform may have counted it just now
    limit.observe(3.0)
    assert limit.wait_time() == pytest.approx(60.0 + FLOOR)


def test_a_guard_that_shrinks_after_slow_answers_frees_no_slot_before_its_answer_proof() -> None:
    """The soak's 429: answers slowed by 2 s widen the measured guard, faster ones shrink it
    again, and a slow start must still hold its slot a window after its answer."""
    clock = FakeClock(T0)
    guard = JitterGuard(ceiling=3.0, floor=FLOOR, samples=5, min_samples=5)
    limit = RollingWindowLimiter(1, 60.0, clock=clock, sleep=clock.sleep, guard=guard)
    assert limit.try_acquire()
    clock.now = T0 + 2.0
    limit.observe(2.0)  # counted by the platform at T0 + 2.0, say
    for _ in range(5):
        limit.observe(0.01)  # later fast answers (of requests outside this window)
    assert limit.per_seconds == pytest.approx(60.0 + FLOOR)
    assert limit.wait_time() == pytest.approx(60.0 + FLOOR)


def test_answers_out_of_order_mark_their_own_starts_and_free_in_their_order() -> None:
    clock = FakeClock(T0)
    limit = guarded(3, 60.0, clock)
    for _ in range(3):  # starts at T0, T0 + 0.1, T0 + 0.2
        assert limit.try_acquire()
        clock.now += 0.1
    clock.now = T0 + 0.25
    limit.observe(0.05)  # the third, answered first
    clock.now = T0 + 0.3
    limit.observe(0.2)  # the second; the first is never answered
    # they free in the reverse order of their starts: third, second, then the first
    assert limit.wait_time() == pytest.approx(T0 + 0.25 + 60.0 + FLOOR - clock.now)
    clock.now = T0 + 0.25 + 60.0 + FLOOR
    assert limit.available() == 1
    clock.now = T0 + 0.3 + 60.0 + FLOOR
    assert limit.available() == 2
    clock.now = T0 + 60.0 + GUARD - 0.001
    assert limit.available() == 2
    clock.now = T0 + 60.0 + GUARD
    assert limit.available() == 3


def test_a_duration_that_matches_no_start_marks_nothing() -> None:
    clock = FakeClock(T0)
    limit = guarded(1, 60.0, clock)
    assert limit.try_acquire()
    clock.now = T0 + 5.0
    limit.observe(1.0)  # "granted at T0 + 4": no such start
    limit.observe(float("nan"))
    assert limit.wait_time() == pytest.approx(60.0 + GUARD - 5.0)


def test_without_a_guard_answers_change_nothing() -> None:
    clock = FakeClock(T0)
    limit = limiter(1, 60.0, clock)
    assert limit.try_acquire()
    clock.now = T0 + 0.1
    limit.observe(0.1)
    assert limit.wait_time() == pytest.approx(59.9)


async def test_an_answer_wakes_the_waiter_whose_slot_it_frees_sooner() -> None:
    clock = FakeClock(T0, auto=False)
    limit = guarded(1, 60.0, clock)
    assert limit.try_acquire()
    waited: list[float] = []

    async def waiter() -> None:
        waited.append(await limit.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        assert clock.sleeps == [pytest.approx(60.0 + GUARD)]
        clock.now = T0 + 0.2  # no sleeper's deadline reached, but the answer came
        limit.observe(0.2)
        await wait_all_tasks_blocked()
        assert clock.sleeps[-1] == pytest.approx(60.0 + FLOOR)
        clock.advance(60.0 + FLOOR)
    assert waited == [pytest.approx(60.2 + FLOOR)]


def test_a_saturated_backlog_spaces_request_n_and_n_minus_capacity_by_window_answer_floor() -> None:
    clock = FakeClock(T0)
    capacity, per, took = 5, 60.0, 0.03
    limit = guarded(capacity, per, clock)
    grants: list[float] = []
    for _ in range(4 * capacity):
        clock.now += limit.wait_time()
        assert limit.try_acquire()
        grants.append(clock.now)
        clock.now += took
        limit.observe(took)
    gaps = [b - a for a, b in zip(grants, grants[capacity:], strict=False)]
    assert gaps == [pytest.approx(per + took + FLOOR)] * len(gaps)  # not per + GUARD


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.integers(1, 5),
    requests=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.1, 1.0, 4.0, 11.0]),  # think time before it
            # grant -> answer, within the window (the sink's request timeout is shorter)
            st.sampled_from([0.0, 0.01, 0.2, 0.45, 2.0, 9.5]),
            st.floats(0.0, 1.0),  # where in its one-way delay the platform counts it
            st.booleans(),  # the answer is observed (a timeout or an error is not)
        ),
        max_size=40,
    ),
)
def test_the_platform_never_counts_more_than_the_budget_in_its_window(
    capacity: int, requests: list[tuple[float, float, float, bool]]
) -> None:
    """Whatever the durations and answers: the platform counts each request between its
    grant and its answer (anywhere, when the answer is observed; within the guard's model, the
    one-way delay <= guard - floor, when it is not), and its exact rolling window of `per`
    never holds more than the capacity."""
    per = 10.0
    clock = FakeClock(T0)
    limit = guarded(capacity, per, clock)
    answers: list[tuple[float, float]] = []  # (answer time, duration) still to come
    counted: list[float] = []

    def advance_to(t: float) -> None:
        """Move the clock to `t`, observing each answer on the way at its own moment."""
        while answers and answers[0][0] <= t:
            at, took = answers.pop(0)
            clock.now = max(clock.now, at)
            limit.observe(took)
        clock.now = max(clock.now, t)

    for think, took, where, observed in requests:
        advance_to(clock.now + think)
        while (wait := limit.wait_time()) > 0:
            due = clock.now + wait
            if answers and answers[0][0] < due:
                advance_to(answers[0][0])
            else:
                clock.now = max(due, math.nextafter(clock.now, math.inf))
        assert limit.try_acquire()
        granted = clock.now
        counted.append(granted + where * (took if observed else min(took, GUARD - FLOOR)))
        if observed:
            answers.append((granted + took, took))
            answers.sort()
    counted.sort()
    for i, at in enumerate(counted):
        in_window = sum(1 for earlier in counted[: i + 1] if earlier > at - per)
        assert in_window <= capacity, f"request counted at {at} made {in_window} in a window"


# --- Backoff -------------------------------------------------------------------------------


@given(
    attempt=st.integers(0, 5000),
    rand=st.floats(0.0, 1.0, exclude_max=True),
    base=st.floats(0.001, 10.0),
    cap=st.floats(0.0, 600.0),
)
def test_backoff_never_exceeds_the_cap_or_the_exponential_bound(
    attempt: int, rand: float, base: float, cap: float
) -> None:
    backoff = Backoff(base=base, cap=cap)
    delay = backoff.delay(attempt, lambda: rand)
    assert 0.0 <= delay <= cap
    if attempt < 60:
        assert delay <= base * 2**attempt


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=60.0)
    assert [backoff.ceiling(n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(3, lambda: 0.0) == 0.0
    assert backoff.delay(3, lambda: 0.5) == 2.0
    assert backoff.ceiling(10**6) == 60.0


def test_backoff_jitter_spans_the_whole_range() -> None:
    rng = random.Random(7)
    delays = [Backoff().delay(20, rng.random) for _ in range(2000)]
    assert max(delays) <= 60.0
    assert min(delays) < 1.0
    assert max(delays) > 59.0
    # Full jitter is uniform: roughly half the delays fall below the midpoint.
    assert 900 < sum(d < 30.0 for d in delays) < 1100


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0.0)
    with pytest.raises(ValueError, match="cap"):
        Backoff(cap=-1.0)
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1)


# --- Retry-After ---------------------------------------------------------------------------

HTTP_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
DATE_TS = parsedate_to_datetime(HTTP_DATE).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),  # below the floor
        ("999999", 300.0),  # above the maximum
        (None, 42.0),
        ("", 42.0),
        ("soon", 42.0),
        ("nan", 42.0),
        ("inf", 42.0),
        ("Sun, 99 Foo 1994 25:61:00 GMT", 42.0),
    ],
)
def test_retry_after_delta_seconds_and_garbage(value: str | None, expected: float) -> None:
    assert retry_after_seconds(value, default=42.0, maximum=300.0, now=lambda: DATE_TS) == expected


def test_retry_after_http_date() -> None:
    def at(now: float) -> float:
        return retry_after_seconds(HTTP_DATE, default=42.0, maximum=300.0, now=lambda: now)

    assert at(DATE_TS - 30.0) == 30.0
    assert at(DATE_TS + 30.0) == 0.0  # already past
    assert at(DATE_TS - 10_000.0) == 300.0  # bounded
    zoneless = HTTP_DATE.replace("GMT", "-0000")  # parses without a zone: still UTC
    assert retry_after_seconds(zoneless, default=1.0, maximum=300.0, now=lambda: DATE_TS) == 0.0
    dated = format_datetime(parsedate_to_datetime(HTTP_DATE), usegmt=True)
    assert retry_after_seconds(dated, default=1.0, maximum=99.0, now=lambda: DATE_TS - 5) == 5.0
