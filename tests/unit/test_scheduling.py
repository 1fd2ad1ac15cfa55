"""The scheduling policy of `Window.ready`, property-tested on an injected clock.

Invariants (docs/design.md, scheduling):
1. Nothing is chosen while no endpoint is ready (full, due by age, or draining).
2. With at least as many slots as ready endpoints, the oldest ready work goes first.
3. With fewer slots, no endpoint is chosen over another with eligible records whose oldest
   record came more than `patience` seconds earlier (no starvation), and of two endpoints
   whose oldest records came at the same time, the one that carries more wins. While the
   source is behind, `backlog_patience` instead, and a partial request never goes before a
   full one whose oldest record came less than that later.
4. The choice is an endpoint with eligible records, never a held one.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.decode import Change
from connector.entities import ENTITIES
from connector.offsets import TopicPartitionKey
from connector.window import Ref, Window

TP = TopicPartitionKey("t", 0)
ENDPOINTS = [ENTITIES[name] for name in ("Building", "Certificate", "Valuation", "EnergyRating")]
MAX_RECORDS, MAX_WAIT, PATIENCE, BACKLOG_PATIENCE = 10, 1.0, 10.0, 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def change(entity_index: int, external_id: str) -> Change:
    entity = ENDPOINTS[entity_index]
    return Change(entity, external_id, orjson.dumps({entity.id_field: external_id}))


# one arrival: (seconds after the previous one, endpoint, ID number)
arrivals = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(min_value=0, max_value=15, allow_nan=False)),
        st.integers(0, len(ENDPOINTS) - 1),
        st.integers(0, 12),
    ),
    min_size=1,
    max_size=60,
)


def build(steps: list[tuple[float, int, int]], in_flight_every: int) -> tuple[Window, Clock]:
    """A window fed with `steps`; every `in_flight_every`-th arrival's ID is first sent (so
    that its next version is held) to mix held and eligible records."""
    clock = Clock()
    w = Window(
        max_records=MAX_RECORDS, max_request_bytes=1_000_000, max_wait=MAX_WAIT, clock=clock,
        patience=PATIENCE, backlog_patience=BACKLOG_PATIENCE,
    )  # fmt: skip
    for n, (gap, endpoint, ident) in enumerate(steps):
        clock.now += gap
        w.add(change(endpoint, f"id-{ident}"), Ref(TP, n, 0))
        if in_flight_every and n % in_flight_every == 0:
            w.take(ENDPOINTS[endpoint])  # now in flight: its next versions are held
    return w, clock


def candidates(w: Window) -> dict[str, tuple[float, int]]:
    """Endpoint -> (arrival of its oldest eligible record, eligible records)."""
    out = {}
    for endpoint, queue in w._queues.items():  # the invariant is about them
        eligible = [s for k, s in queue.pending.items() if k not in queue.in_flight]
        if eligible:
            out[endpoint] = (eligible[0].since, len(eligible))
    return out


def ready_ones(w: Window, now: float) -> dict[str, float]:
    return {
        e: since
        for e, (since, n) in candidates(w).items()
        if n >= MAX_RECORDS or w.draining or since + MAX_WAIT <= now
    }


@settings(max_examples=300, deadline=None)
@given(arrivals, st.integers(0, 4), st.integers(0, 5), st.floats(0, 5), st.booleans())
def test_the_choice_keeps_the_invariants(
    steps: list[tuple[float, int, int]],
    in_flight_every: int,
    slots: int,
    later: float,
    behind: bool,  # noqa: FBT001 - drawn by hypothesis
) -> None:
    w, clock = build(steps, in_flight_every)
    w.behind = behind
    clock.now += later
    choice = w.ready((), slots)
    ready = ready_ones(w, clock.now)
    cands = candidates(w)
    if not ready:
        assert choice is None  # 1
        return
    assert choice is not None
    assert choice.endpoint in cands  # 4: it has eligible records
    if slots >= len(ready):  # 2: the oldest ready work
        assert choice.endpoint in ready
        assert ready[choice.endpoint] == min(ready.values())
        return
    chosen_since, chosen_count = cands[choice.endpoint]
    oldest = min(since for since, _ in cands.values())
    patience = BACKLOG_PATIENCE if behind else PATIENCE
    assert chosen_since <= oldest + patience + 1e-9  # 3: no starvation beyond patience
    if behind and chosen_count < MAX_RECORDS:  # 3: behind, full requests first
        full = [since for since, n in cands.values() if n >= MAX_RECORDS]
        assert all(since >= chosen_since + BACKLOG_PATIENCE - 1e-9 for since in full)


def test_behind_a_full_request_goes_before_an_older_partial_one() -> None:
    """budget-six's two half-full requests: the intake paused with one endpoint's buffered
    records used up, its oldest record 31 s older than a full endpoint's."""
    clock = Clock()
    w = Window(
        max_records=MAX_RECORDS, max_request_bytes=1_000_000, max_wait=MAX_WAIT, clock=clock,
        patience=PATIENCE, backlog_patience=BACKLOG_PATIENCE,
    )  # fmt: skip
    for i in range(MAX_RECORDS // 2):
        w.add(change(0, f"a-{i}"), Ref(TP, i, 0))
    clock.now += 31
    for i in range(MAX_RECORDS):
        w.add(change(1, f"b-{i}"), Ref(TP, 100 + i, 0))
    assert w.ready((), 1) is ENDPOINTS[0]  # caught up: the older one, as before
    w.behind = True
    assert w.ready((), 1) is ENDPOINTS[1]
    assert w.take(ENDPOINTS[1]) is not None
    clock.now = BACKLOG_PATIENCE + 1  # behind, still no endpoint waits beyond backlog_patience
    for i in range(MAX_RECORDS):
        w.add(change(1, f"c-{i}"), Ref(TP, 200 + i, 0))
    assert w.ready((), 1) is ENDPOINTS[0]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, MAX_RECORDS), st.integers(1, MAX_RECORDS))
def test_when_slots_are_scarce_the_fuller_of_two_equally_old_endpoints_wins(
    few: int, many: int
) -> None:
    clock = Clock()
    w = Window(
        max_records=MAX_RECORDS, max_request_bytes=1_000_000, max_wait=MAX_WAIT, clock=clock,
        patience=PATIENCE,
    )  # fmt: skip
    for i in range(few):
        w.add(change(0, f"a-{i}"), Ref(TP, i, 0))
    for i in range(many):
        w.add(change(1, f"b-{i}"), Ref(TP, 100 + i, 0))
    clock.now += MAX_WAIT  # both due
    choice = w.ready((), 1)
    assert choice is not None
    if many > few:
        assert choice is ENDPOINTS[1]
    elif few > many:
        assert choice is ENDPOINTS[0]
    assert w.ready((), 2) is ENDPOINTS[0], "enough slots: the oldest ready work, as before"


def test_a_slot_is_not_spent_on_an_endpoint_whose_records_are_mostly_held() -> None:
    clock = Clock()
    w = Window(
        max_records=MAX_RECORDS, max_request_bytes=1_000_000, max_wait=MAX_WAIT, clock=clock,
        patience=PATIENCE,
    )  # fmt: skip
    for i in range(MAX_RECORDS):  # endpoint 0: ten IDs sent, their new versions held
        w.add(change(0, f"hot-{i}"), Ref(TP, i, 0))
    w.take(ENDPOINTS[0])
    for i in range(MAX_RECORDS):
        w.add(change(0, f"hot-{i}"), Ref(TP, 20 + i, 0))
    w.add(change(0, "cold"), Ref(TP, 40, 0))  # and one eligible record
    clock.now += 0.5
    for i in range(8):  # endpoint 1: eight eligible records, a little younger
        w.add(change(1, f"b-{i}"), Ref(TP, 50 + i, 0))
    clock.now += MAX_WAIT
    assert w.ready((), 0) is ENDPOINTS[1], "the fuller request goes first when slots are scarce"
    assert w.ready((), None) is ENDPOINTS[0], "with slots to spare: oldest first, as before"
    assert w.ready({ENDPOINTS[1].endpoint}, 0) is ENDPOINTS[0], "a held endpoint is skipped"
    assert w.blocked_records == MAX_RECORDS


def test_nothing_ready_means_no_choice_even_when_slots_are_scarce() -> None:
    clock = Clock()
    w = Window(
        max_records=MAX_RECORDS, max_request_bytes=1_000_000, max_wait=MAX_WAIT, clock=clock,
        patience=PATIENCE,
    )  # fmt: skip
    w.add(change(0, "a"), Ref(TP, 0, 0))
    assert w.ready((), 0) is None, "not due yet: the latency promise is kept by max_wait"
    clock.now += MAX_WAIT
    assert w.ready((), 0) is ENDPOINTS[0]


def test_patience_bounds_how_long_a_fuller_request_may_pass_an_older_one() -> None:
    # a full request is worth PATIENCE s of waiting, the lonely record 1/MAX_RECORDS of that
    edge = PATIENCE * (1 - 1 / MAX_RECORDS)
    for younger_by, expected in ((edge - 0.5, 1), (edge + 0.5, 0)):
        clock = Clock()
        w = Window(
            max_records=MAX_RECORDS, max_request_bytes=1_000_000, max_wait=MAX_WAIT,
            clock=clock, patience=PATIENCE,
        )  # fmt: skip
        w.add(change(0, "lonely"), Ref(TP, 0, 0))
        clock.now += younger_by
        for i in range(MAX_RECORDS):
            w.add(change(1, f"b-{i}"), Ref(TP, 1 + i, 0))
        clock.now += MAX_WAIT
        assert w.ready((), 1) is ENDPOINTS[expected], younger_by
