"""The dry run: decode and map records as `run` would, and show what would happen to each.

This is how a user writes a mapping: point it at a topic (or a file of records), read what
would be sent to which endpoint, what would be dead-lettered and why, and what would be
skipped, then edit the config and run it again. Nothing is sent, committed or produced.

Records come from the configured topics (or `--topic`), read from the beginning of each
partition without a consumer group (so no offset is committed), or from a file of JSON lines:
`{"topic": ..., "key": ..., "value": ...}`, where `value` (or kcat's `payload`) is the record's
JSON value as an object or a string, and `key` a string or a JSON object.

With `schema_registry.url` set, a value in the Schema Registry wire format (Avro, JSON Schema)
is decoded with its schema, fetched from the registry the first time a record names it
(`Decoding`, which `dead-letters replay` uses too). A schema that cannot be fetched (the
registry down, an ID it does not know) holds the record, as the connector would: it is shown
as held with the reason, never as a dead letter.

Owns the dry-run's reading and printing, and `Decoding` (decoding as `run` does, outside its
consume loop). Must not: send, produce or commit anything.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from connector.decode import Change, Decoder, Rejection, Skip
from connector.schemaregistry import build_lookup
from connector.schemas import schema_id

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterable
    from pathlib import Path
    from types import TracebackType

    from connector.config import Settings

__all__ = ["Decoding", "DryRecord", "DryRun", "Held", "dry_run", "read_file", "read_topics"]


@dataclass(frozen=True, slots=True)
class DryRecord:
    """A record to decode, from a topic or a file (the shape `Decoder.decode` reads)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    """A record the connector would hold, not decode yet: its schema could not be fetched."""

    schema_id: int
    message: str


class Decoding:
    """Records decoded as `run` decodes them, outside its consume loop: the config's decoder
    and, with `schema_registry.url`, the schemas the records name, fetched the first time one
    names them (`connector.schemaregistry.SchemaLookup`). The one place `dry-run` and
    `dead-letters replay` get their decoder; an async context manager (it closes the
    registry's session)."""

    def __init__(self, settings: Settings) -> None:
        self.schemas = build_lookup(settings.schema_registry)
        k = settings.kafka
        self.decoder = Decoder(
            k.topic_entities, settings.window.max_record_bytes, settings.mappings,
            schemas=None if self.schemas is None else self.schemas.cache,
        )  # fmt: skip

    async def decode(self, record: DryRecord) -> Change | Rejection | Skip | Held:
        if self.schemas is not None and (why := await self.schemas.unfetched(record.value)):
            return Held(schema_id(record.value or b"") or 0, why)
        return self.decoder.decode(record)

    async def aclose(self) -> None:
        """Close the registry's HTTP session, if one was opened."""
        if self.schemas is not None:
            await self.schemas.aclose()

    async def __aenter__(self) -> Decoding:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


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
) -> AsyncGenerator[DryRecord, None]:
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
                    seen += 1
                    yield DryRecord(
                        tp.topic, rec.key, rec.value, tp.partition, rec.offset,
                        tuple(rec.headers or ()),
                    )  # fmt: skip
                    # after the record is shown: a schema fetch meanwhile is not quiet time
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()


@dataclass
class DryRun:
    """Decodes records and writes one line per record, then a summary."""

    decoding: Decoding
    out: TextIO
    show_body: bool = True
    sent: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    held: Counter[int] = field(default_factory=Counter)  # schema ID -> records

    async def feed(self, record: DryRecord | str) -> None:
        if isinstance(record, str):
            self.dead["unreadable_line"] += 1
            self.out.write(f"  ! {record}\n")
            return
        where = f"{record.topic}/{record.partition}/{record.offset}"
        result = await self.decoding.decode(record)
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
        elif isinstance(result, Held):
            self.held[result.schema_id] += 1
            self.out.write(f"{where}  = held: {result.message}\n")
        else:
            self.skipped[result.why] += 1
            self.out.write(f"{where}  = skipped: {result.why}\n")

    def summary(self) -> str:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{n} {k}" for k, n in c.most_common()) or "none"

        held = sum(self.held.values())
        total = sum(self.sent.values()) + sum(self.dead.values()) + sum(self.skipped.values())
        tail = ""
        if held:
            ids = ", ".join(str(i) for i in sorted(self.held))
            tail = (
                f"; held {held} whose schema could not be fetched (schema {ids}: the connector "
                "would wait for the registry, not dead-letter them)"
            )
        return (
            f"dry run: {total + held} records; would send {counts(self.sent)}; "
            f"would dead-letter {counts(self.dead)}; would skip {counts(self.skipped)}{tail}. "
            "Nothing was sent."
        )


async def dry_run(
    settings: Settings, out: TextIO, err: TextIO, *, count: int, file: Path | None = None,
    topics: list[str] | None = None, show_body: bool = True,
) -> None:  # fmt: skip
    """Decode up to `count` records of `file` (JSON lines), else of `topics` (default: the
    configured ones), one line each, then the summary. Raises OSError for a file it cannot
    read."""
    async with Decoding(settings) as decoding:
        dry = DryRun(decoding, out, show_body=show_body)
        if file is not None:
            for n, record in enumerate(read_file(file)):
                if n >= count:
                    break
                await dry.feed(record)
        else:
            names = topics or list(settings.kafka.topics)
            print(f"reading up to {count} records of {', '.join(names)} ...", file=err)
            async with contextlib.aclosing(read_topics(settings, names, count)) as records:
                async for record in records:
                    await dry.feed(record)
        print(dry.summary(), file=out)
