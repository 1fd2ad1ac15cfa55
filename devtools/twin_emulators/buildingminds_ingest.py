"""The BuildingMinds ingestion pipeline: batches, each record's status, the entity store.

Owns what happens to a submission: each record checked (by `buildingminds_model`'s rules), a
batch of the valid ones per request, each record moving New -> InProgress -> Completed (or
Published) on the processing delay, records held in New while a parent they link to has not
been onboarded, asynchronous FailedValidation for records carrying the failure marker, and the
store of onboarded entities (upsert by external ID, the latest accepted version wins, a
Deleted record removes the entity). A batch can be forgotten (`forget`, `forget_next`): it is
no longer listed nor found by ID, while its records go on as before, the way a platform that
loses a batch's bookkeeping would look to a client.

Time is a number from the caller's clock. A record's status is computed from its times when
someone looks (`status_at`); only the moments that change other records (a record reaching its
terminal status updates the store and may release its children) are events, applied in time
order by `advance(now)`. The caller runs `advance(now)` before every read or write, so the
state is exact at any instant, also with a fake clock, and costs nothing while nobody looks.

Must not: know about HTTP, wall-clock time or credentials; sleep or start tasks.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twin_emulators.buildingminds_model import (
    FAILED_VALIDATION,
    IN_PROGRESS,
    NEW,
    find_marker,
    parent_references,
    validate_record,
)

if TYPE_CHECKING:
    from twin_emulators.buildingminds_model import EntitySpec

__all__ = ["Batch", "InboundRecord", "Ingest", "Submission"]

Key = tuple[str, str]  # (entity, external ID)


@dataclass(slots=True, eq=False)
class InboundRecord:
    """One accepted record of a batch. `index` is its position in the submitted array;
    `ready_at` (when processing started) is None while a parent is missing."""

    batch: Batch
    index: int
    key: Key
    event_type: str
    payload: dict[str, Any]
    parents: tuple[Key, ...]
    seq: int
    accepted_at: float
    ready_at: float | None
    terminal: str
    deleted: bool
    message: str | None = None


@dataclass(slots=True, eq=False)
class Batch:
    """The records accepted from one request, in the order they were sent."""

    batch_id: str
    entity: str
    client_id: str
    created_at: float
    records: list[InboundRecord] = field(default_factory=list)
    # Counts per status once every record is terminal; they cannot change after that.
    final_counts: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    """The outcome of one POST: the batch of the valid records (None if there were none) and
    each invalid record with its message."""

    batch: Batch | None
    failures: list[tuple[Any, str]]


class Ingest:
    """Batches, record lifecycles and the entity store of one emulated tenant."""

    def __init__(self, *, processing_delay: float, failure_marker: str) -> None:
        self.delay = processing_delay
        self.marker = failure_marker
        self.reset()

    def reset(self) -> None:
        """Forget every batch, record and entity."""
        self.batches: dict[str, Batch] = {}
        self._store: dict[str, dict[str, dict[str, Any]]] = {}
        self._applied_seq: dict[Key, int] = {}  # of the version the store holds (or deleted)
        self._waiting: dict[Key, list[InboundRecord]] = {}  # parent -> children held for it
        self._due: list[tuple[float, int, InboundRecord]] = []  # terminal moments, a heap
        self._seq = itertools.count()
        self.forgotten: set[str] = set()  # batch IDs no longer listed nor found by ID
        self.forget_next = 0  # batches still to be forgotten the moment they are accepted

    # -- writes ---------------------------------------------------------------------------

    def submit(
        self,
        spec: EntitySpec,
        records: list[Any],
        *,
        now: float,
        client_id: str,
        may_contain_marker: bool = True,
    ) -> Submission:
        """Validate `records` and queue the valid ones as one batch.

        `may_contain_marker=False` skips the search for the failure marker (the caller found
        it nowhere in the raw body), which keeps large submissions cheap.
        """
        failures: list[tuple[Any, str]] = []
        valid: list[tuple[int, dict[str, Any]]] = []  # with the position in `records`
        for index, record in enumerate(records):
            problem = validate_record(spec, record)
            if problem is None:
                valid.append((index, record))
            else:
                failures.append((record, problem))
        if not valid:
            return Submission(None, failures)
        batch = Batch(str(uuid.uuid4()), spec.name, client_id, now)
        batch.records = [
            self._accept(
                spec, batch, payload, index=i, now=now, may_contain_marker=may_contain_marker
            )
            for i, payload in valid
        ]
        self.batches[batch.batch_id] = batch
        if self.forget_next > 0:
            self.forget_next -= 1
            self.forgotten.add(batch.batch_id)
        return Submission(batch, failures)

    def forget(self, batch_id: str) -> bool:
        """Stop showing batch `batch_id` (its records carry on); False if there is none."""
        if batch_id not in self.batches:
            return False
        self.forgotten.add(batch_id)
        return True

    def _accept(
        self,
        spec: EntitySpec,
        batch: Batch,
        payload: dict[str, Any],
        *,
        index: int,
        now: float,
        may_contain_marker: bool,
    ) -> InboundRecord:
        event_type: str = payload["eventType"]
        deleted = event_type == spec.deleted_event
        marker_at = find_marker(payload, self.marker) if may_contain_marker else None
        record = InboundRecord(
            batch=batch,
            index=index,
            key=(spec.name, payload[spec.id_field]),
            event_type=event_type,
            payload=payload,
            parents=() if deleted else parent_references(spec, payload),
            seq=next(self._seq),
            accepted_at=now,
            ready_at=None,
            terminal=spec.success_status,
            deleted=deleted,
        )
        if marker_at is not None:
            # Fails in processing, so it does not wait for its parents first.
            record.terminal = FAILED_VALIDATION
            record.message = (
                f"Validation failed during processing: field '{marker_at}' contains "
                f"the value '{self.marker}'"
            )
            self._schedule(record, now)
            return record
        missing = self._first_missing(record)
        if missing is None:
            self._schedule(record, now)
        else:
            self._waiting.setdefault(missing, []).append(record)
        return record

    def _schedule(self, record: InboundRecord, ready_at: float) -> None:
        record.ready_at = ready_at
        heapq.heappush(self._due, (ready_at + self.delay, record.seq, record))

    def _first_missing(self, record: InboundRecord) -> Key | None:
        for entity, external_id in record.parents:
            if external_id not in self._store.get(entity, ()):
                return (entity, external_id)
        return None

    def advance(self, now: float) -> None:
        """Apply, in time order, every record that reached its terminal status by `now`."""
        due = self._due
        while due and due[0][0] <= now:
            at, _, record = heapq.heappop(due)
            if record.terminal != FAILED_VALIDATION:
                self._apply(record, at)

    def _apply(self, record: InboundRecord, at: float) -> None:
        key = record.key
        # An older version finishing late (it waited for a parent) must not win over a newer one.
        if self._applied_seq.get(key, -1) > record.seq:
            return
        self._applied_seq[key] = record.seq
        entities = self._store.setdefault(key[0], {})
        if record.deleted:
            entities.pop(key[1], None)
            return
        entities[key[1]] = record.payload
        for child in self._waiting.pop(key, ()):
            missing = self._first_missing(child)
            if missing is None:
                self._schedule(child, at)  # processing starts when the parent arrived
            else:
                self._waiting.setdefault(missing, []).append(child)

    # -- reads ----------------------------------------------------------------------------

    def status_at(self, record: InboundRecord, now: float) -> tuple[str, float]:
        """The record's status at `now` and when it took that status."""
        ready = record.ready_at
        if ready is None:
            return NEW, record.accepted_at
        half = ready + self.delay / 2
        if now < half:
            return NEW, record.accepted_at
        end = ready + self.delay
        if now < end:
            return IN_PROGRESS, half
        return record.terminal, end

    def missing_parents(self, record: InboundRecord) -> list[Key]:
        """The parents a held record still waits for (empty once it is processing)."""
        if record.ready_at is not None:
            return []
        return [(e, i) for e, i in record.parents if i not in self._store.get(e, ())]

    def counts(self, batch: Batch, now: float) -> dict[str, int]:
        """How many of the batch's records are in each status at `now`."""
        if batch.final_counts is not None:
            return batch.final_counts
        counts: dict[str, int] = {}
        settled = True
        for record in batch.records:
            status, _ = self.status_at(record, now)
            counts[status] = counts.get(status, 0) + 1
            settled = settled and status not in (NEW, IN_PROGRESS)
        if settled:
            batch.final_counts = counts
        return counts

    def batches_between(self, start: float | None, end: float | None) -> list[Batch]:
        """Batches created in [start, end), newest first; forgotten ones are not shown."""
        return [
            b
            for b in reversed(self.batches.values())
            if (start is None or b.created_at >= start)
            and (end is None or b.created_at < end)
            and b.batch_id not in self.forgotten
        ]

    def listed(self, batch_id: str) -> Batch | None:
        """Batch `batch_id` as the API shows it: None if unknown or forgotten."""
        return None if batch_id in self.forgotten else self.batches.get(batch_id)

    def entities(self, entity: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The onboarded entities (latest successful version of each), per entity name."""
        names = [entity] if entity is not None else sorted(self._store)
        return {name: list(self._store.get(name, {}).values()) for name in names}

    def pending(self) -> int:
        """How many records have not reached a terminal status yet (held or processing)."""
        return len(self._due) + sum(len(c) for c in self._waiting.values())
