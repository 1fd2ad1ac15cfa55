"""The dry run: decode and map records as `run` would, and show what would happen to each.

This is how a user writes a mapping: point it at a topic (or a file of records), read what
would be sent to which endpoint, what would be dead-lettered and why, and what would be
skipped, then edit the config and run it again. Nothing is sent, committed or produced.

Records come from the configured topics (or `--topic`), read from the beginning of each
partition without a consumer group (so no offset is committed), or from a file of JSON lines:
`{"topic": ..., "key": ..., "value": ...}`, where `value` (or kcat's `payload`) is the record's
JSON value as an object or a string, and `key` a string or a JSON object.

Owns the dry-run's reading and printing. Must not: send, produce or commit anything.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from connector.decode import Change, Decoder, Rejection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

    from connector.config import Settings

__all__ = ["DryRecord", "DryRun", "read_file", "read_topics"]


@dataclass(frozen=True, slots=True)
class DryRecord:
    """A record to decode, from a topic or a file (the shape `Decoder.decode` reads)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def read_file(path: Path) -> Iterable[DryRecord | str]:
    """Records from a JSON-lines file; a line that is not a record gives its error text."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield f"{path.name}:{number}: not JSON ({exc})"
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str):
                yield f'{path.name}:{number}: expected {{"topic": ..., "key": ..., "value": ...}}'
                continue
            value = obj.get("value", obj.get("payload"))
            yield DryRecord(
                obj["topic"], _as_bytes(obj.get("key")), _as_bytes(value),
                int(obj.get("partition") or 0), int(obj.get("offset") or number),
            )  # fmt: skip


async def read_topics(
    settings: Settings, topics: list[str], limit: int, idle_seconds: float = 10.0
) -> AsyncIterator[DryRecord]:
    """Up to `limit` records of `topics` from the beginning, without a consumer group; ends
    early when nothing new arrived for `idle_seconds` (the end of the topics)."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 - only the topic mode needs Kafka

    from connector.app import kafka_options  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        *topics, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        **kafka_options(settings),
    )  # fmt: skip
    await consumer.start()
    try:
        seen = 0
        quiet_since = time.monotonic()
        while seen < limit and time.monotonic() - quiet_since < idle_seconds:
            batches = await consumer.getmany(timeout_ms=500, max_records=min(500, limit - seen))
            for tp, records in batches.items():
                for rec in records:
                    quiet_since = time.monotonic()
                    seen += 1
                    yield DryRecord(
                        tp.topic, rec.key, rec.value, tp.partition, rec.offset,
                        tuple(rec.headers or ()),
                    )  # fmt: skip
    finally:
        await consumer.stop()


@dataclass
class DryRun:
    """Decodes records and writes one line per record, then a summary."""

    decoder: Decoder
    out: TextIO
    show_body: bool = True
    sent: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def feed(self, record: DryRecord | str) -> None:
        if isinstance(record, str):
            self.dead["unreadable_line"] += 1
            self.out.write(f"  ! {record}\n")
            return
        where = f"{record.topic}/{record.partition}/{record.offset}"
        result = self.decoder.decode(record)
        if isinstance(result, Change):
            endpoint = result.entity.endpoint
            self.sent[endpoint] += 1
            line = f"{where}  -> POST /{endpoint}  {result.external_id}"
            if self.show_body:
                line += f"  {bytes(result.payload).decode()}"
            self.out.write(line + "\n")
        elif isinstance(result, Rejection):
            self.dead[result.reason.value] += 1
            self.out.write(f"{where}  x dead letter {result.reason.value}: {result.message}\n")
        else:
            self.skipped[result.why] += 1
            self.out.write(f"{where}  = skipped: {result.why}\n")

    def summary(self) -> str:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{n} {k}" for k, n in c.most_common()) or "none"

        total = sum(self.sent.values()) + sum(self.dead.values()) + sum(self.skipped.values())
        return (
            f"dry run: {total} records; would send {counts(self.sent)}; "
            f"would dead-letter {counts(self.dead)}; would skip {counts(self.skipped)}. "
            "Nothing was sent."
        )
