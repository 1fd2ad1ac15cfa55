"""Intake: what the pipeline needs of a Kafka consumer, and when it stops fetching.

`Consumer` is the part of aiokafka's `AIOKafkaConsumer` the pipeline calls, as a protocol
(as `decode.RecordLike` is for a record), so the pipeline's policy runs in unit tests against
an in-memory consumer (`tests/support/consumer.py`) without a broker.

`backpressure` is the pause / resume decision as a pure function: pause while too much is
unsent, resume below the low-water mark (`pipeline.resume_ratio`).

Must not: commit, decode or deliver (the pipeline does).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiokafka import TopicPartition

    from connector.config import PipelineSettings

__all__ = ["Consumer", "Pressure", "backpressure"]


class Consumer(Protocol):
    """The consumer calls of the pipeline (aiokafka's signatures)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def commit(self, offsets: dict[TopicPartition, int | tuple[int, str]]) -> None: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...


class Pressure(enum.Enum):
    PAUSE = "pause"  # stop fetching now
    RESUME = "resume"  # fetch again
    STAY = "stay"  # keep fetching, or keep paused (re-pausing newly assigned partitions)


def backpressure(
    settings: PipelineSettings, *, paused: bool, unsent: int, held: int, pending_bytes: int
) -> Pressure:
    """Whether to pause or resume fetching.

    The limit counts records not yet sent (`unsent`, dead letters being written included):
    records already accepted and waiting for their final status must not stall intake at a
    window boundary (the next window's requests would go out half-empty). All held records
    (`held`) are capped at twice the limit, so confirmations that never come cannot grow
    memory without bound; `pending_bytes` at `max_pending_bytes`.
    """
    p = settings
    over = (
        unsent >= p.max_pending_records
        or held >= 2 * p.max_pending_records
        or pending_bytes >= p.max_pending_bytes
    )
    under = (
        unsent < p.max_pending_records * p.resume_ratio
        and held < 2 * p.max_pending_records * p.resume_ratio
        and pending_bytes < p.max_pending_bytes * p.resume_ratio
    )
    if not paused and over:
        return Pressure.PAUSE
    if paused and under:
        return Pressure.RESUME
    return Pressure.STAY
