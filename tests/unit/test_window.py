"""The window: coalescing, per-ID ordering, and when a request closes."""

from __future__ import annotations

import orjson

from connector.decode import Change
from connector.entities import ENTITIES
from connector.offsets import TopicPartitionKey
from connector.window import Ref, Window

TP = TopicPartitionKey("t", 0)
BUILDING = ENTITIES["Building"]
FLOOR = ENTITIES["Floor"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def mk(external_id: str, rev: int = 0, entity: object = BUILDING) -> Change:
    e = entity if entity is FLOOR else BUILDING
    return Change(e, external_id, orjson.dumps({e.id_field: external_id, "rev": rev}))


def window(clock: Clock, **kw: float) -> Window:
    options = {"max_records": 3, "max_request_bytes": 10_000, "max_wait": 1.0}
    options.update(kw)
    return Window(
        max_records=int(options["max_records"]),
        max_request_bytes=int(options["max_request_bytes"]),
        max_wait=options["max_wait"],
        clock=clock,
    )


def test_newest_version_wins_and_keeps_its_place_and_refs() -> None:
    clock = Clock()
    w = window(clock)
    assert not w.add(mk("a", 1), Ref(TP, 0, 0))
    assert not w.add(mk("b", 1), Ref(TP, 1, 0))
    assert w.add(mk("a", 2), Ref(TP, 2, 0))
    clock.now += 1.0
    batch = w.take(BUILDING)
    assert batch is not None
    assert [orjson.loads(s.change.payload)["rev"] for s in batch.slots] == [2, 1]
    assert [r.offset for r in batch.slots[0].refs] == [0, 2]
    assert w.pending_records == 3
    assert w.unsent_records == 0, "taken records are no longer unsent"
    w.finish(batch)
    assert w.pending_records == 0
    assert w.pending_bytes == 0


def test_request_closes_when_full_or_when_the_oldest_waited_long_enough() -> None:
    clock = Clock()
    w = window(clock)
    w.add(mk("a"), Ref(TP, 0, 0))
    assert w.ready() is None
    assert w.next_due() == 101.0
    clock.now = 101.0
    assert w.ready() is BUILDING
    w.add(mk("b"), Ref(TP, 1, 0))
    w.add(mk("c"), Ref(TP, 2, 0))
    clock.now = 100.0  # full: ready regardless of age
    assert w.ready() is BUILDING


def test_take_respects_max_records_and_bytes() -> None:
    clock = Clock()
    w = window(clock, max_records=10, max_request_bytes=70)
    for i in range(5):
        w.add(mk(f"id-{i}"), Ref(TP, i, 0))
    batch = w.take(BUILDING)
    assert batch is not None
    assert len(batch.body()) == batch.size <= 70
    assert len(batch.slots) == 2


def test_an_id_in_flight_is_held_until_its_request_finishes() -> None:
    clock = Clock()
    w = window(clock, max_wait=0)
    w.add(mk("a", 1), Ref(TP, 0, 0))
    first = w.take(BUILDING)
    assert first is not None
    w.add(mk("a", 2), Ref(TP, 1, 0))
    assert w.ready() is None, "a second version of 'a' must wait for the first"
    assert w.take(BUILDING) is None
    w.finish(first)
    assert w.ready() is BUILDING
    second = w.take(BUILDING)
    assert second is not None
    assert orjson.loads(second.slots[0].change.payload)["rev"] == 2


def test_oldest_ready_endpoint_goes_first_and_draining_closes_everything() -> None:
    clock = Clock()
    w = window(clock, max_wait=5)
    w.add(mk("f", entity=FLOOR), Ref(TP, 0, 0))
    clock.now += 1
    w.add(mk("b"), Ref(TP, 1, 0))
    assert w.ready() is None
    w.draining = True
    assert w.ready() is FLOOR
    assert w.ready(held={"floor"}) is BUILDING


def test_split_halves_cover_the_batch() -> None:
    clock = Clock()
    w = window(clock, max_records=5, max_wait=0)
    for i in range(5):
        w.add(mk(f"id-{i}"), Ref(TP, i, 0))
    batch = w.take(BUILDING)
    assert batch is not None
    left, right = batch.split()
    assert [s.change.external_id for s in left.slots + right.slots] == [f"id-{i}" for i in range(5)]
    assert left.size == len(left.body())
    assert right.size == len(right.body())


def test_dropping_revoked_partitions_keeps_slots_that_also_stand_for_kept_ones() -> None:
    clock = Clock()
    w = window(clock)
    other = TopicPartitionKey("t", 1)
    w.add(mk("a", 1), Ref(TP, 0, 0))
    w.add(mk("b", 1), Ref(other, 0, 0))
    w.add(mk("b", 2), Ref(TP, 1, 0))
    assert w.drop_partitions({TP}) == 1
    assert w.pending_records == 2
    clock.now += 2
    batch = w.take(BUILDING)
    assert batch is not None
    assert [s.change.external_id for s in batch.slots] == ["b"]
