"""The commit watermark: which offsets of each partition are safe to commit.

A record is finished when it was accepted, dead-lettered (and the write acknowledged), or
superseded by a newer version that is itself finished. The committable position of a
partition is the first offset that is not finished (Kafka's "next offset to read"), so a
commit never passes a gap. Offsets are tracked in the order they were consumed.

Must not: talk to Kafka; the pipeline's commit loop (`connector.commits`) commits what this
module computes.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

__all__ = ["OffsetTracker", "PartitionOffsets", "TopicPartitionKey"]


class TopicPartitionKey(NamedTuple):
    topic: str
    partition: int


class PartitionOffsets:
    """Open offsets of one partition, in consumption order."""

    __slots__ = ("_done", "_last", "_open")

    def __init__(self) -> None:
        self._open: deque[int] = deque()
        self._done: set[int] = set()
        self._last: int | None = None

    def track(self, offset: int) -> None:
        if self._last is not None and offset <= self._last:
            return  # a re-delivery after a seek; the first copy is already tracked
        self._open.append(offset)
        self._last = offset

    def finish(self, offset: int) -> None:
        if self._open and offset == self._open[0]:
            self._open.popleft()
            while self._open and self._open[0] in self._done:
                self._done.discard(self._open.popleft())
        elif self._open and self._open[0] < offset <= self._open[-1]:
            self._done.add(offset)

    def position(self) -> int | None:
        """The offset to commit: the first unfinished one, or one past the last finished."""
        if self._open:
            return self._open[0]
        return None if self._last is None else self._last + 1

    def next_offset(self) -> int | None:
        """One past the last offset taken in (where reading goes on), None before the first."""
        return None if self._last is None else self._last + 1


class OffsetTracker:
    """Per-partition watermarks, plus what changed since the last commit."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}
        self._committed: dict[TopicPartitionKey, int] = {}

    def track(self, tp: TopicPartitionKey, offset: int) -> None:
        self.partition(tp).track(offset)

    def partition(self, tp: TopicPartitionKey) -> PartitionOffsets:
        """The offsets of `tp` (tracked from now on): for a caller that tracks many at once."""
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = PartitionOffsets()
        return part

    def finish(self, tp: TopicPartitionKey, offset: int) -> None:
        """Mark one offset finished; unknown partitions (revoked meanwhile) are ignored."""
        part = self._partitions.get(tp)
        if part is not None:
            part.finish(offset)

    def committable(
        self, only: set[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Positions that moved since they were last committed."""
        result = {}
        for tp, part in self._partitions.items():
            if only is not None and tp not in only:
                continue
            pos = part.position()
            if pos is not None and self._committed.get(tp) != pos:
                result[tp] = pos
        return result

    def position(self, tp: TopicPartitionKey) -> int | None:
        """The committable position of one partition (None: nothing consumed from it yet)."""
        part = self._partitions.get(tp)
        return None if part is None else part.position()

    def next_offset(self, tp: TopicPartitionKey) -> int | None:
        """Where reading `tp` goes on: one past the last offset taken in (None: none yet)."""
        part = self._partitions.get(tp)
        return None if part is None else part.next_offset()

    def committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        self._committed.update(positions)

    def forget(self, tps: set[TopicPartitionKey]) -> None:
        for tp in tps:
            self._partitions.pop(tp, None)
            self._committed.pop(tp, None)
