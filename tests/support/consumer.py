"""An in-memory consumer that keeps `connector.intake.Consumer`: the pipeline's policy runs
against it in unit tests, without a broker.

Records are appended per partition (`add`); `getmany` hands out what is past each partition's
position (paused partitions skipped) and waits `timeout_ms` on an anyio sleep when nothing
is there, as aiokafka does; `commit` records the committed positions.

Must not: model a group or a rebalance; the tests call the pipeline's rebalance hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
from aiokafka import TopicPartition

__all__ = ["MemoryConsumer", "MemoryRecord"]


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)


class MemoryConsumer:
    def __init__(self, topic: str, partitions: int = 1) -> None:
        self.topic = topic
        self.logs: dict[TopicPartition, list[MemoryRecord]] = {
            TopicPartition(topic, p): [] for p in range(partitions)
        }
        self.positions = dict.fromkeys(self.logs, 0)
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []

    def add(self, key: bytes | None, value: bytes | None, partition: int = 0) -> None:
        tp = TopicPartition(self.topic, partition)
        log = self.logs[tp]
        log.append(MemoryRecord(self.topic, partition, len(log), key, value))

    def committed_positions(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for commit in self.commits:
            found.update({tp.partition: offset for tp, offset in commit.items()})
        return found

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        wanted = partitions or tuple(self.logs)
        got: dict[TopicPartition, list[Any]] = {}
        for tp in wanted:
            if tp in self.paused:
                continue
            start = self.positions[tp]
            records = self.logs[tp][start : None if max_records is None else start + max_records]
            if records:
                got[tp] = list(records)
                self.positions[tp] = start + len(records)
        if not got:
            await anyio.sleep(timeout_ms / 1000)
        return got

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.positions[tp] = 0

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.committed_positions().get(partition.partition)

    async def commit(self, offsets: dict[TopicPartition, int | tuple[int, str]]) -> None:
        # (offset, metadata) when the commit carries a budget hand-over
        self.commits.append(
            {tp: pos if isinstance(pos, int) else pos[0] for tp, pos in offsets.items()}
        )

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.logs[partition])

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {tp.partition for tp in self.logs} if topic == self.topic else None
