"""The window: pending changes per endpoint, coalesced by external ID, closed into requests.

- Coalescing: a newer version of an ID replaces the pending one and keeps its place in line;
  the superseded record's Kafka offset rides along and finishes with its successor.
- Per-ID ordering: an ID whose earlier version is in flight is held back until that request
  is finished (`finish`), so two unfinished versions of one entity are never sent at once.
- Closing: an endpoint is ready when its eligible records fill a request (`max_records` or
  `max_request_bytes`) or its oldest eligible record has waited `max_wait` seconds, or always
  while draining.
- Choosing (`ready`): while there are at least as many request slots as ready endpoints, the
  oldest ready work goes first (the latency promise). When slots are scarcer than ready
  endpoints, each slot goes where a request carries most: every endpoint with eligible
  records competes (ready or not, as long as one is ready), by the age of its oldest eligible
  record plus `patience` seconds for a full request (in proportion for a partial one). So a
  slot is not spent on an endpoint whose records are mostly held while a fuller one waits,
  and no endpoint is passed over for one whose oldest record came more than `patience`
  seconds after its own. While the source is behind (`behind`: the intake is paused, or
  Kafka holds records it has not fetched yet), a partial request's missing records may be
  just behind the buffer: then only a full request carries, and it outweighs
  `backlog_patience` seconds of waiting (a budget-bound backlog sends full requests only, and
  an endpoint still waits at most that long behind one whose oldest record came later).

Must not: do I/O or sleep; the scheduler (in `app`) asks it what is ready and when to look
again, on an injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from connector.decode import Change
    from connector.entities import Entity
    from connector.offsets import TopicPartitionKey

__all__ = ["Batch", "Ref", "Slot", "Window"]


class Ref(NamedTuple):
    """Where a record came from, and what a dead letter of it needs besides the payload.

    (A NamedTuple: one is made per record, and a frozen dataclass costs 2.7 times as much.)"""

    tp: TopicPartitionKey
    offset: int
    timestamp_ms: int
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Slot:
    """The newest pending version of one ID, with every record it stands for."""

    change: Change
    refs: list[Ref]
    since: float  # when the oldest coalesced version arrived, on the window's clock


@dataclass(slots=True)
class Batch:
    """One request's worth of slots for one endpoint."""

    entity: Entity
    slots: list[Slot]
    size: int  # bytes of the JSON array body

    def body(self) -> bytes:
        return b"[" + b",".join(s.change.payload for s in self.slots) + b"]"

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, for isolating the records a 400/413 is about."""
        half = len(self.slots) // 2
        left, right = self.slots[:half], self.slots[half:]
        return (
            Batch(self.entity, left, _array_size(left)),
            Batch(self.entity, right, _array_size(right)),
        )


def _array_size(slots: Iterable[Slot]) -> int:
    sizes = [len(s.change.payload) for s in slots]
    return 2 + sum(sizes) + max(len(sizes) - 1, 0)


@dataclass(slots=True)
class _Queue:
    entity: Entity
    pending: dict[str, Slot] = field(default_factory=dict)  # insertion order = age order
    in_flight: set[str] = field(default_factory=set)
    blocked: int = 0  # pending IDs whose earlier version is in flight
    bytes: int = 0


class Window:
    """Pending work of every endpoint. Not thread-safe; one event loop owns it."""

    def __init__(
        self,
        *,
        max_records: int,
        max_request_bytes: int,
        max_wait: float,
        clock: Callable[[], float],
        patience: float = 10.0,
        backlog_patience: float = 60.0,
    ) -> None:
        """`patience` (`backlog_patience` while `behind`): how many seconds of waiting a full
        request outweighs when slots are scarce (see the module docstring)."""
        self.max_records = max_records
        self.max_request_bytes = max_request_bytes
        self.max_wait = max_wait
        self.clock = clock
        self.patience = patience
        self.backlog_patience = backlog_patience
        self.draining = False
        self.behind = False  # set by the intake: more records wait in the source
        self._queues: dict[str, _Queue] = {}
        self.pending_records = 0  # Kafka records held (coalesced ones included)
        self.unsent_records = 0  # of those, not yet taken into a request
        self.pending_bytes = 0

    def add(self, change: Change, ref: Ref) -> bool:
        """Queue a change; True when it superseded a pending version of the same ID."""
        endpoint = change.entity.endpoint
        queue = self._queues.get(endpoint)
        if queue is None:
            queue = self._queues[endpoint] = _Queue(change.entity)
        self.pending_records += 1
        self.unsent_records += 1
        size = len(change.payload)
        old = queue.pending.get(change.external_id)
        if old is not None:
            old_size = len(old.change.payload)
            old.change = change
            old.refs.append(ref)
            queue.bytes += size - old_size
            self.pending_bytes += size - old_size
            return True
        queue.pending[change.external_id] = Slot(change, [ref], self.clock())
        queue.bytes += size
        self.pending_bytes += size
        if change.external_id in queue.in_flight:
            queue.blocked += 1
        return False

    def _oldest_eligible(self, queue: _Queue) -> Slot | None:
        if queue.blocked == 0:
            return next(iter(queue.pending.values()), None)
        for key, slot in queue.pending.items():
            if key not in queue.in_flight:
                return slot
        return None

    @property
    def blocked_records(self) -> int:
        """Pending IDs held back because an earlier version of theirs is in flight."""
        return sum(q.blocked for q in self._queues.values())

    def ready(self, held: Iterable[str] = (), slots: int | None = None) -> Entity | None:
        """The endpoint a request should go to now, or None; `held` endpoints are skipped.

        `slots`: the request slots free right now (None: as many as needed). With at least
        as many slots as ready endpoints, the one whose ready work is oldest; otherwise the
        one a request carries most for (module docstring)."""
        now = self.clock()
        best: tuple[float, Entity] | None = None
        ready_count = 0
        carry_best: tuple[float, float, Entity] | None = None
        for endpoint, queue in self._queues.items():
            if endpoint in held:
                continue
            oldest = self._oldest_eligible(queue)
            if oldest is None:
                continue
            since = oldest.since
            eligible = len(queue.pending) - queue.blocked
            full = eligible >= self.max_records or queue.bytes >= self.max_request_bytes
            if full or self.draining or since + self.max_wait <= now:
                ready_count += 1
                if best is None or since < best[0]:
                    best = (since, queue.entity)
            if slots is not None:
                if self.behind:
                    rank = since - (self.backlog_patience if full else 0.0)  # lower goes first
                else:
                    rank = since - (1.0 if full else eligible / self.max_records) * self.patience
                if carry_best is None or (rank, since) < carry_best[:2]:
                    carry_best = (rank, since, queue.entity)
        if best is None:
            return None
        if slots is None or ready_count <= slots or carry_best is None:
            return best[1]
        return carry_best[2]

    def next_due(self, held: Iterable[str] = ()) -> float | None:
        """When, on the clock, the next endpoint becomes ready by age (None: nothing waits)."""
        dues = []
        for endpoint, queue in self._queues.items():
            if endpoint in held:
                continue
            oldest = self._oldest_eligible(queue)
            if oldest is not None:
                dues.append(oldest.since + self.max_wait)
        return min(dues) if dues else None

    def take(self, entity: Entity) -> Batch | None:
        """Close a request for `entity`: its oldest eligible slots, within both limits."""
        queue = self._queues.get(entity.endpoint)
        if queue is None:
            return None
        taken: list[Slot] = []
        size = 2
        for key, slot in queue.pending.items():
            if key in queue.in_flight:
                continue
            extra = len(slot.change.payload) + (1 if taken else 0)
            if taken and (len(taken) >= self.max_records or size + extra > self.max_request_bytes):
                break
            taken.append(slot)
            size += extra
        for slot in taken:
            key = slot.change.external_id
            del queue.pending[key]
            self.unsent_records -= len(slot.refs)
            queue.in_flight.add(key)
            queue.bytes -= len(slot.change.payload)
        return Batch(entity, taken, size) if taken else None

    def finish(self, batch: Batch) -> None:
        """The slots of `batch` are finished: release their IDs and their accounting."""
        queue = self._queues[batch.entity.endpoint]
        for slot in batch.slots:
            key = slot.change.external_id
            queue.in_flight.discard(key)
            if key in queue.pending:
                queue.blocked -= 1
            self.pending_records -= len(slot.refs)
            self.pending_bytes -= len(slot.change.payload)

    def drop_partitions(self, tps: set[TopicPartitionKey]) -> int:
        """Forget pending slots that come only from `tps` (revoked); returns records dropped.

        A slot that also stands for records of partitions we keep stays, so those records
        are still delivered. In-flight slots are not touched.
        """
        dropped = 0
        for queue in self._queues.values():
            for key in [k for k, s in queue.pending.items() if all(r.tp in tps for r in s.refs)]:
                slot = queue.pending.pop(key)
                if key in queue.in_flight:
                    queue.blocked -= 1
                size = len(slot.change.payload)
                queue.bytes -= size
                self.pending_bytes -= size
                self.pending_records -= len(slot.refs)
                self.unsent_records -= len(slot.refs)
                dropped += len(slot.refs)
        return dropped
