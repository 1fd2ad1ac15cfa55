"""Commits: the offset watermark, the commit that follows it, and the rebalance hooks.

The commit order (the rule everything else serves): a record's offset is finished when the
platform accepted it (or settled it, with `tracking.commit_on: completed`), when its dead
letter was acknowledged, or when a newer version of the same ID that stands for it finished;
`offsets.OffsetTracker` computes the contiguous finished prefix per partition, and `commit`
commits it as the next offset to read, never past a gap. The pipeline calls `commit` on an
interval, on revoke (for the revoked partitions) and at shutdown; nothing else commits. With
a `barrier` (the receipts writer), a commit waits until what it covers was written.

Also here, because they turn with the commit loop: the consumer lag per partition (the log
end minus the first unfinished record: what a restart would read again) and the watch over
the group coordinator (/readyz).

Must not: finish an offset (the pipeline does, when an outcome is certain), or commit while
a rebalance has not told us what we own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from connector.logs import get_logger
from connector.offsets import OffsetTracker, TopicPartitionKey

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from connector.intake import Consumer
    from connector.metrics import Metrics

__all__ = ["Commits", "Rebalance", "RebalanceHandler"]

log = get_logger(__name__)


class Commits:
    """The watermark of what this replica consumed, committed through its consumer."""

    def __init__(
        self, consumer: Consumer, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.clock = clock
        self.offsets = OffsetTracker()
        self.barrier: Callable[[], Awaitable[bool]] | None = None
        # the request budget's hand-over (`RollingWindowLimiter.handover`): every commit's
        # metadata carries it, so a successor knows when its predecessor's requests started
        self.handover: Callable[[bool], str] | None = None
        self.group_lost_since: float | None = None  # Kafka's group coordinator is unreachable

    async def commit(
        self, only: set[TopicPartitionKey] | None = None, *, final: bool = False
    ) -> None:
        """Commit the finished prefix of every partition (or of `only`) that moved. A failed
        commit is counted and logged; the next one carries the same positions.

        `final` (at shutdown, with a hand-over): every assigned partition is committed, moved
        or not, so that the successor finds the final hand-over on whichever it is given."""
        positions = self.offsets.committable(only)
        if final and self.handover is not None:
            await self._add_unmoved(positions)
        if not positions:
            return
        if self.barrier is not None and not await self.barrier():
            log.warning("offset commit waits for receipts not yet written; will retry")
            return
        mark = None if self.handover is None else self.handover(final)
        try:
            await self.consumer.commit(
                {
                    TopicPartition(tp.topic, tp.partition): pos if mark is None else (pos, mark)
                    for tp, pos in positions.items()
                }
            )
        except (CommitFailedError, KafkaError) as exc:
            self.metrics.committed("failed")
            log.warning("offset commit failed (%s); will retry", exc)
            return
        self.offsets.committed(positions)
        self.metrics.committed("success", time.time())

    async def _add_unmoved(self, positions: dict[TopicPartitionKey, int]) -> None:
        for tp in self.consumer.assignment():
            key = TopicPartitionKey(tp.topic, tp.partition)
            if key in positions:
                continue
            pos = self.offsets.position(key)  # never past a gap: the first unfinished record
            if pos is None:
                try:
                    pos = await self.consumer.committed(tp)
                except KafkaError:
                    continue
            if pos is not None:
                positions[key] = pos

    async def take_over(
        self, assigned: list[TopicPartition], take: Callable[[list[str | None]], None]
    ) -> None:
        """At the first assignment: hand the metadata of the partitions' last commits to
        `take` (the limiter's `take_over`), then mark them "running" (a non-final hand-over,
        as every periodic commit does), so that a successor after a crash of this process
        knows its starts up to the newest mark and assumes the rest of the budget used since."""
        if self.handover is None or not assigned:
            return
        try:
            # aiokafka's public `committed` drops the metadata; its coordinator keeps it
            fetched = await self.consumer._coordinator.fetch_committed_offsets(assigned)  # type: ignore[attr-defined]
        except (KafkaError, AttributeError) as exc:
            log.warning("no request-budget hand-over (committed offsets unreadable: %s)", exc)
            return
        take([getattr(c, "metadata", None) for c in fetched.values()])
        mark = self.handover(False)
        offsets: dict[TopicPartition, int | tuple[int, str]] = {
            tp: (c.offset, mark) for tp, c in fetched.items() if c.offset >= 0
        }
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                log.warning("could not mark the hand-over as running (%s)", exc)

    def watch_group(self, *, joined: bool) -> None:
        """Log the loss of the consumer group's coordinator once, and its return once.

        aiokafka says nothing public about it: its coordinator forgets the node
        (`coordinator_id` None) at the first failed heartbeat, commit or lookup, and finds it
        again when the broker is back. /readyz is not ready meanwhile."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        lost = (
            joined and coordinator is not None and getattr(coordinator, "coordinator_id", 0) is None
        )
        now = self.clock()
        if lost and self.group_lost_since is None:
            self.group_lost_since = now
            log.warning(
                "Kafka group coordinator lost: not ready, retrying (aiokafka's repeated lines "
                "are rate-limited meanwhile)"
            )
        elif not lost and self.group_lost_since is not None:
            log.info("Kafka group coordinator back after %.0f s", now - self.group_lost_since)
            self.group_lost_since = None

    def update_lag(self) -> None:
        """Lag = the log end minus the first unfinished record (what a restart would re-read)."""
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self.offsets.position(TopicPartitionKey(tp.topic, tp.partition))
            if high is not None and position is not None:
                self.metrics.set_lag(tp.topic, tp.partition, max(high - position, 0))


class RebalanceHandler(Protocol):
    """What a rebalance tells the pipeline."""

    async def partitions_revoked(self, revoked: set[TopicPartitionKey]) -> None: ...
    def partitions_assigned(self, mine: int) -> None: ...
    async def take_over_budget(self, assigned: list[TopicPartition]) -> None: ...


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance listener, in our partition keys."""

    def __init__(self, handler: RebalanceHandler) -> None:
        self.handler = handler

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.handler.partitions_revoked(
            {TopicPartitionKey(tp.topic, tp.partition) for tp in revoked}
        )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.handler.partitions_assigned(len(assigned))
        await self.handler.take_over_budget(list(assigned))
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
