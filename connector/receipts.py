"""Receipts: each record's final outcome on a compacted topic, so a source system can learn what
became of its change (docs/operations.md, "Receipts").

One receipt per final outcome the pipeline reports (`connector.outcomes`): onboarded (with the
batch ID and the platform's terminal status, or `accepted` with tracking off, or
`waiting_for_parent`) or dead-lettered (with the reason and the message). Skipped records
(a tombstone after a delete, a truncate, a filtered row) get none.

The key is `Entity/ID` (`Building/B-11`: the entity's name, a slash, the external ID, which may
itself hold slashes: split at the first one). A dead letter of a record that never decoded to
an entity and ID is keyed `@topic/partition/offset` of the record. The value is JSON, schema
`RECEIPT_SCHEMA`:

    {"schema": "building-twin-connector.receipt/1", "outcome": "onboarded" | "dead_lettered",
     "entity": "Building" | null, "id": "B-11" | null, "status": "Completed" | null,
     "batch_id": "..." | null, "reason": "api_rejected" | null, "message": "..." | null,
     "sources": [{"topic": ..., "partition": 0, "offset": 17, "timestamp_ms": ...}, ...],
     "finished_at": "2026-01-31T12:00:00.123Z"}

`sources` names every Kafka record the outcome stands for (older versions of the ID coalesced
into the same submission included), the newest last.

Guarantee: at least once. `record_finished` only buffers (it is called from the pipeline's
task and must not block); `run` writes the buffer through the producer (acks=all, idempotent)
in a task of its own, and the pipeline's commit waits for `written_up_to_now` first, so no
offset is committed before the receipts of the records it covers were acknowledged. A crash
before that re-reads the records, and their receipts are written again: a consumer of the
topic sees a receipt twice at worst, never none. With `tracking.commit_on: accepted` a record
is committed at its acceptance, before its terminal status is known: its onboarded receipt is
then best effort across a crash.

Memory is bounded: at most `max_buffered` receipts wait to be written (the receipts topic
unwritable for long). Beyond that a receipt is dropped, one ERROR line says so, and from then
`written_up_to_now` is false, so this process commits no more offsets: a restart reads the
records again and writes their receipts (the ConnectorCommitsStalled alert fires meanwhile).

Must not: block the pipeline, or be told anything but final outcomes.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from aiokafka.errors import KafkaError

from connector.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from connector.outcomes import RecordOutcome

__all__ = ["RECEIPT_SCHEMA", "ReceiptWriter", "receipt_key", "receipt_value"]

log = get_logger(__name__)

RECEIPT_SCHEMA = "building-twin-connector.receipt/1"
_CHUNK = 5000  # receipts handed to the producer before waiting for their acknowledgements


def receipt_key(outcome: RecordOutcome) -> str:
    """`Entity/ID`, or `@topic/partition/offset` for a record that never had both."""
    if outcome.entity is not None and outcome.external_id is not None:
        return f"{outcome.entity}/{outcome.external_id}"
    ref = outcome.refs[-1] if outcome.refs else None
    return f"@{ref.topic}/{ref.partition}/{ref.offset}" if ref else "@unknown"


def _iso_ms(stamp: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
    return f"{whole}.{int(stamp * 1000) % 1000:03d}Z"


def receipt_value(outcome: RecordOutcome, finished_at: float) -> bytes:
    """The receipt's JSON value (schema `RECEIPT_SCHEMA`, the module docstring)."""
    body: dict[str, Any] = {
        "schema": RECEIPT_SCHEMA,
        "outcome": outcome.outcome,
        "entity": outcome.entity,
        "id": outcome.external_id,
        "status": outcome.status,
        "batch_id": outcome.batch_id,
        "reason": outcome.reason,
        "message": outcome.message,
        "sources": [
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
            }
            for r in outcome.refs
        ],
        "finished_at": _iso_ms(finished_at),
    }
    return orjson.dumps(body)


class ReceiptWriter:
    """An `OutcomeListener` that writes receipts to `topic` through `producer`.

    `producer` is started and stopped by the caller (the connector shares its dead-letter
    producer, which is idempotent with acks=all). `run` is the writing task."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        *,
        max_buffered: int = 200_000,
        clock: Callable[[], float] = time.time,
        retry_seconds: float = 1.0,
        grace: float = 10.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.max_buffered = max_buffered
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.grace = grace
        self._buffer: collections.deque[tuple[RecordOutcome, float]] = collections.deque()
        self.told = 0  # receipts accepted into the buffer
        self.written = 0  # receipts the broker acknowledged
        self.dropped = 0  # receipts the full buffer refused
        self._wake = anyio.Event()
        self._progress = anyio.Event()

    # ---------------------------------------------------------------- OutcomeListener
    def record_finished(self, outcome: RecordOutcome) -> None:
        """Buffer the receipt; never blocks (called from the pipeline's task)."""
        if len(self._buffer) >= self.max_buffered:
            if not self.dropped:
                log.error(
                    "receipts: %d receipts wait to be written to %s; dropping from now, and "
                    "committing no more offsets until a restart (which writes them again)",
                    len(self._buffer), self.topic, extra={"topic": self.topic},
                )  # fmt: skip
            self.dropped += 1
            return
        self._buffer.append((outcome, self.clock()))
        self.told += 1
        self._wake.set()

    # ---------------------------------------------------------------- commit barrier
    async def written_up_to_now(self, wait_seconds: float = 5.0) -> bool:
        """Whether every receipt told before this call was acknowledged within `wait_seconds`
        (and none was ever dropped). The pipeline commits only when it is."""
        target = self.told
        with anyio.move_on_after(wait_seconds):
            while self.written < target and not self.dropped:
                await self._progress.wait()
        return self.written >= target and not self.dropped

    # ---------------------------------------------------------------- the writing task
    async def run(self) -> None:
        """Write receipts as they come, until cancelled; then (shielded, at most `grace`
        seconds) write what is left: the connector cancels it after the pipeline's last
        commit, which waited for the receipts of what it committed."""
        try:
            while True:
                if not self._buffer:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                await self._write_some()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.grace):
                while self._buffer:
                    await self._write_some()
            if self.told > self.written:
                log.warning(
                    "receipts: %d of %d not written to %s at shutdown",
                    self.told - self.written, self.told, self.topic,
                )  # fmt: skip

    async def _write_some(self) -> None:
        """Write the oldest receipts; they leave the buffer only once acknowledged."""
        chunk = list(itertools.islice(self._buffer, _CHUNK))
        await self._write(chunk)
        for _ in chunk:
            self._buffer.popleft()
        self.written += len(chunk)
        self._progress.set()
        self._progress = anyio.Event()

    async def _write(self, chunk: list[tuple[RecordOutcome, float]]) -> None:
        """Hand the chunk to the producer and wait for every acknowledgement; a failure sends
        the whole chunk again after `retry_seconds` (duplicates are allowed, losses not)."""
        records = [
            (receipt_key(outcome).encode(), receipt_value(outcome, stamp))
            for outcome, stamp in chunk
        ]
        failures = 0
        while True:
            try:
                pending = [
                    await self.producer.send(self.topic, key=key, value=value)
                    for key, value in records
                ]
                await _acknowledged(pending)
            except KafkaError as exc:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning(
                        "receipts: writing %d receipts to %s failed (%s); retrying",
                        len(records), self.topic, exc, extra={"topic": self.topic},
                    )  # fmt: skip
                await anyio.sleep(self.retry_seconds)
                continue
            return


async def _acknowledged(futures: list[Any]) -> None:
    """Wait for every acknowledgement (each failure retrieved); raise the first failure."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
