"""The commit watermark never passes an unfinished record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connector.offsets import OffsetTracker, PartitionOffsets, TopicPartitionKey

TP = TopicPartitionKey("t", 0)


def test_position_is_the_first_unfinished_offset() -> None:
    p = PartitionOffsets()
    for offset in (5, 6, 7, 9):
        p.track(offset)
    assert p.position() == 5
    p.finish(6)
    assert p.position() == 5
    p.finish(5)
    assert p.position() == 7
    p.finish(9)
    p.finish(7)
    assert p.position() == 10


def test_tracker_reports_only_moved_positions_and_forgets_revoked() -> None:
    t = OffsetTracker()
    t.track(TP, 0)
    t.track(TP, 1)
    t.finish(TP, 0)
    assert t.committable() == {TP: 1}
    t.committed({TP: 1})
    assert t.committable() == {}
    t.forget({TP})
    t.finish(TP, 1)  # a late finish of a revoked partition is ignored
    assert t.committable() == {}


@given(
    st.lists(st.integers(min_value=0, max_value=1_000), min_size=1, max_size=200, unique=True),
    st.randoms(),
)
def test_watermark_never_passes_an_unfinished_offset(offsets: list[int], rnd: object) -> None:
    import random  # noqa: PLC0415

    assert isinstance(rnd, random.Random)
    ordered = sorted(offsets)
    p = PartitionOffsets()
    for offset in ordered:
        p.track(offset)
    finished: set[int] = set()
    order = ordered[:]
    rnd.shuffle(order)
    for offset in order:
        p.finish(offset)
        finished.add(offset)
        pos = p.position()
        assert pos is not None
        assert all(o in finished for o in ordered if o < pos), "committed past a gap"
        unfinished = [o for o in ordered if o not in finished]
        assert pos == (unfinished[0] if unfinished else ordered[-1] + 1)


def test_next_offset_is_one_past_the_last_taken_in_whatever_is_finished() -> None:
    t = OffsetTracker()
    assert t.next_offset(TP) is None
    t.track(TP, 4)
    t.track(TP, 5)
    assert t.next_offset(TP) == 6
    t.finish(TP, 4)
    assert t.next_offset(TP) == 6
