"""The pipeline: the state one running connector shares, and the task group that runs it.

`Pipeline` owns the window, the offsets (through `commits.Commits`), the stats, the one
lifecycle state and the drain's deadline; its parts work on that state: `intake.Intake` (the
consume loop), `delivery.Delivery` (scheduling, requests, settlement, dead letters) and
`commits.Commits` (commit, hand-over, lag, group watch). One task group owns every task: the
consume loop, the scheduler, one task per request in flight, the commit loop and the sink's own
background work (`Sink.run`: status polls).

Commit order (the rule everything else serves): a record's offset is finished when the platform
accepted it, when its dead letter was acknowledged, or when a newer version of the same ID that
stands for it finished; `commits.Commits` commits the contiguous finished prefix, as the next
offset to read, on an interval, on revoke and at shutdown. Nothing else commits.

Drain (`begin_drain`): readiness off; stop fetching; close every pending request at once; wait
for in-flight requests and dead letters up to `shutdown_grace_seconds`; commit; one summary
log line. `stop_now` ends every task at once (what was not committed is read again).

Must not: block the event loop, finish an offset before its outcome is certain, or name a
platform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from connector.commits import Commits
from connector.deadletter import DeadLetterLog
from connector.delivery import Delivery
from connector.intake import Intake
from connector.lifecycle import Deadline, State
from connector.logs import get_logger
from connector.ratelimit import Backoff, BudgetShare
from connector.window import Window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any

    from aiokafka import TopicPartition

    from connector.config import Settings
    from connector.deadletter import DeadLetterWriter
    from connector.intake import Consumer
    from connector.metrics import Metrics
    from connector.offsets import TopicPartitionKey
    from connector.outcomes import OutcomeListener
    from connector.sinks.base import Settlement, Sink
    from connector.window import Batch

__all__ = ["Pipeline"]

log = get_logger(__name__)


@dataclass
class _Stats:
    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    coalesced: int = 0
    skipped: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)


class Pipeline:
    """One running connector, built by `run_connector` (which wires its consumer, sink and
    dead-letter writer), then `await run()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Consumer,
        dead_letters: DeadLetterWriter,
        sink: Sink,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.sink = sink
        self.limiter = sink.limiter  # the budget each submission takes a slot of (or None)
        self._whole_budget = True  # this replica owns every partition (so all of the budget)
        self.metrics = metrics
        self.clock = clock
        self.window = Window(
            max_records=settings.window.max_records,
            max_request_bytes=settings.window.max_request_bytes,
            max_wait=settings.window.max_wait_seconds,
            clock=clock,
        )
        self.commits = Commits(consumer, metrics, clock=clock)
        if self.limiter is not None:
            limiter = self.limiter
            self.commits.handover = lambda final: limiter.handover(final=final)
        self.offsets = self.commits.offsets
        self.rebalances = 0  # assignments received; a storm shows here
        self.heartbeat = clock()  # last turn of the consume loop, for /healthz
        self.has_token: Callable[[], bool] = sink.has_token
        # this replica's share of each of the credential's budgets, recomputed on rebalance
        self.budgets = [BudgetShare(b, b.capacity, clock=clock) for b in sink.budgets]
        self.backoff = Backoff(
            base=settings.sink.retry_backoff_seconds, cap=settings.sink.retry_backoff_max_seconds
        )
        self.stats = _Stats()
        self.dead_letter_log = DeadLetterLog(clock=clock)
        self.state = State.STARTING
        self.deadline = Deadline(clock)  # of the drain; a revoke meanwhile keeps to it too
        self.stopped = anyio.Event()
        self._drain_requested = anyio.Event()
        self._drained = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._outer: anyio.CancelScope | None = None
        self.outcomes: OutcomeListener | None = None  # told each record's final outcome
        self.delivery = Delivery(self)
        self.intake = Intake(self)

    @property
    def commit_barrier(self) -> Callable[[], Awaitable[bool]] | None:
        """Receipts: a commit waits until those of the records it covers were written."""
        return self.commits.barrier

    @commit_barrier.setter
    def commit_barrier(self, barrier: Callable[[], Awaitable[bool]] | None) -> None:
        self.commits.barrier = barrier

    @property
    def group_lost_since(self) -> float | None:
        """Since when Kafka's group coordinator is unreachable (None: it is not)."""
        return self.commits.group_lost_since

    @property
    def ready(self) -> bool:
        """Running and not draining (/readyz)."""
        return self.state is State.RUNNING

    @property
    def draining(self) -> bool:
        """A drain was asked for (`begin_drain`); stays true once stopped."""
        return self._drain_requested.is_set()

    def start(self, func: Callable[..., Any], *args: Any) -> None:
        """Start `func(*args)` in the pipeline's task group (once `run` has begun)."""
        assert self._tg is not None  # noqa: S101 - set by run() before any task starts
        self._tg.start_soon(func, *args)

    # ---------------------------------------------------------------- the sink's reports
    def submissions_waiting(self) -> bool:
        """`Reports`: a submission is ready to go."""
        return self.delivery.submissions_waiting()

    def blocked(self) -> bool:
        """`Reports`: a pending record waits for an unsettled batch of its ID."""
        return self.delivery.blocked()

    async def settled(self, batch: Batch, batch_id: str, outcome: Settlement) -> None:
        """`Reports`: the sink's terminal report of a batch (`Delivery.settled`)."""
        await self.delivery.settled(batch, batch_id, outcome)

    # ---------------------------------------------------------------- commits
    async def commit(
        self, only: set[TopicPartitionKey] | None = None, *, final: bool = False
    ) -> None:
        """Commit the finished prefix (`commits.Commits.commit`; `final` at shutdown)."""
        await self.commits.commit(only, final=final)

    async def _commit_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.pipeline.commit_interval_seconds)
            for share in self.budgets:
                share.tick()
            self.dead_letter_log.tick()
            self.commits.watch_group(joined=self.rebalances > 0)
            await self.commit()
            self.commits.update_lag()

    def partitions_assigned(self, mine: int) -> None:
        """After a rebalance: take this replica's share of the credential's budget."""
        total = 0
        for topic in self.settings.kafka.topics:
            total += len(self.consumer.partitions_for_topic(topic) or ())
        self.rebalances += 1
        self._whole_budget = total <= 0 or mine >= total
        for share in self.budgets:  # one per budget of the sink's (Building X: per API)
            capacity = share.assigned(mine, total)
            target = share.target(mine, total)
        if self.budgets:
            log.info(
                "request budget: %d of %d partitions -> %d requests per window now%s",
                mine, total, capacity,
                "" if target == capacity else f", {target} after one window",
            )  # fmt: skip

    async def take_over_budget(self, assigned: list[TopicPartition]) -> None:
        """At the first assignment: the predecessor's request starts, from the metadata of
        its final commit (`RollingWindowLimiter.take_over`; a replica that owns only some
        partitions takes nothing: `BudgetShare` starts it small)."""
        if self.rebalances != 1 or self.limiter is None:
            return
        limiter, share = self.limiter, 1.0 if self._whole_budget else 0.0

        def take(metadata: list[str | None]) -> None:
            if taken := limiter.take_over(metadata, share):
                log.info("request budget: %s", taken)

        await self.commits.take_over(assigned, take)

    async def partitions_revoked(self, revoked: set[TopicPartitionKey]) -> None:
        """Called by aiokafka before a rebalance: finish requests in flight (bounded), commit.

        Batches still being tracked are not waited for: the next owner re-sends what is not
        committed, and the platform's upsert makes that harmless. During a drain the wait
        keeps to the drain's deadline (`deadline`): a revoke never extends a shutdown.
        """
        bound = self.deadline.within(min(10.0, self.settings.pipeline.shutdown_grace_seconds))
        with anyio.move_on_after(bound):
            d = self.delivery
            await d.changed.until(lambda: not (d.in_flight or d.dead_letters_open))
        await self.commit(revoked)
        dropped = self.window.drop_partitions(revoked)
        self.offsets.forget(revoked)
        for tp in revoked:
            self.metrics.forget_partition(tp.topic, tp.partition)
        log.info(
            "partitions revoked: %d, %d pending records left to the next owner",
            len(revoked),
            dropped,
        )

    # ---------------------------------------------------------------- lifecycle
    def stop_now(self) -> None:
        """A second signal: end every task now, then commit what is finished (up to 10 s)."""
        self.begin_drain()
        if self._outer is not None:
            self._outer.cancel()

    def begin_drain(self) -> None:
        """Stop intake, close every pending request now, and let in-flight work finish
        within `pipeline.shutdown_grace_seconds` from now (`deadline`)."""
        if self.state in (State.STARTING, State.RUNNING):
            self.state = State.DRAINING
        self.deadline.start(self.settings.pipeline.shutdown_grace_seconds)
        self.window.draining = True
        self._drain_requested.set()
        self.delivery.notify()

    async def _schedule_then_settle(self) -> None:
        await self.delivery.schedule()  # returns once draining and nothing more can be sent
        await self.delivery.wait_idle()
        self._drained.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until drained (`begin_drain`, or `stop_now`), then commit. Returns normally.

        Signals are `run_connector`'s: it calls `begin_drain` on the first, `stop_now` on the
        second."""
        grace = self.settings.pipeline.shutdown_grace_seconds
        with anyio.CancelScope() as outer:
            self._outer = outer
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._commit_loop)
                tg.start_soon(self.intake.consume)
                tg.start_soon(self.sink.run, self)
                if self.state is State.STARTING:
                    self.state = State.RUNNING
                task_status.started()
                tg.start_soon(self._schedule_then_settle)
                await self._drain_requested.wait()
                # the grace period bounds the whole drain: flushing what is pending, the
                # requests in flight and the batches still being tracked
                with anyio.move_on_after(self.deadline.remaining()) as deadline:
                    await self._drained.wait()
                if deadline.cancelled_caught:
                    log.warning(
                        "grace period of %.0f s ended before the drain did; what is not "
                        "committed will be read again on restart",
                        grace,
                    )
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self.commit(final=True)  # with the budget's final hand-over
        self.dead_letter_log.tick(force=True)
        self.state = State.STOPPED
        self.stopped.set()
        elapsed = time.monotonic() - self.stats.started
        log.info(
            "stopped: %d consumed, %d delivered, %d dead-lettered, %d coalesced, "
            "%d requests in %.1f s",
            self.stats.consumed, self.stats.delivered, self.stats.dead_lettered,
            self.stats.coalesced, self.stats.requests, elapsed,
        )  # fmt: skip
