"""Reading the dead-letter topic fast: assign, seek by time, stop at the end, headers first.

`scan_topic` reads every partition of a topic without a consumer group (nothing is committed,
a running connector is not disturbed): from the first offset at or after `since`
(`offsets_for_times`), or the beginning, up to the offsets that were the end when it started
(or the first at or after `until`), so it ends even while letters keep arriving. A letter is
parsed from its headers only (`Letter`); the value is looked at only for what the headers do
not say (the entity, and the ID of a record without a key).

`Filters` are the selection the commands share (reason, entity, source topic, ID, batch ID,
time range). `Progress` writes one line every few seconds on a long read.

Must not: write to any topic.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from connector.debezium import parse_key
from connector.entities import entity_for_event_type, find_entity

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Sequence
    from typing import TextIO

    from connector.config import Settings

__all__ = [
    "Filters",
    "Letter",
    "Progress",
    "ScanError",
    "ScanStats",
    "TopicEntities",
    "counts_line",
    "parse_time",
    "scan_topic",
]

ERROR_HEADERS = frozenset({
    "error.reason", "error.message", "error.http_status", "error.batch_id", "error.request_id",
    "error.timestamp", "error.value_omitted", "error.key_omitted", "error.headers_cut",
    "source.topic", "source.partition", "source.offset",
})  # fmt: skip
"""The headers the connector's dead-letter writer adds (connector.deadletter)."""

_EVENT_TYPE = re.compile(rb'"eventType"\s*:\s*"([A-Za-z]+)"')
_MAX_PEEK = 1 << 20  # values larger than this are not parsed for an ID
# What one fetch brings: a few MB of letters is a few hundred MB as Python objects, so fetch
# little and often (the time goes into decoding records, not into round trips)
FETCH_BYTES = 4 * 1024 * 1024
PARTITION_FETCH_BYTES = 1024 * 1024
BATCH_RECORDS = 2000


class ScanError(Exception):
    """A topic cannot be read as asked (it does not exist, the brokers are unreachable);
    the message says what to fix."""


def parse_time(text: str, *, now: float | None = None) -> int:
    """Milliseconds since the epoch from an ISO 8601 time (`2026-01-31T12:00:00Z`, a date,
    an offset; no zone means UTC) or a duration back from now (`90s`, `15m`, `2h`, `7d`).

    Raises ValueError with the forms it takes."""
    value = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value)
    if match:
        moment = (time.time() if now is None else now) - float(match[1]) * units[match[2]]
        return int(moment * 1000)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2026-01-31T12:00:00Z, 2026-01-31) "
            "or a duration back from now (90s, 15m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


class TopicEntities:
    """The entity the config gives a topic: a mapping by topic or by table, or
    `kafka.topic_entities`."""

    def __init__(self, settings: Settings) -> None:
        self._mapped: dict[str, str] = {}  # topic -> entity, by a mapping of the topic
        self._tables: dict[str, str] = {}  # table -> entity, by a mapping of the table
        self._named: dict[str, str] = {}  # topic -> entity, by kafka.topic_entities
        for m in settings.mappings:
            entity = find_entity(m.entity)
            if entity is not None and m.topic:
                self._mapped[m.topic] = entity.name
            elif entity is not None and m.table:
                self._tables[m.table] = entity.name
        for topic, name in settings.kafka.topic_entities.items():
            entity = find_entity(name)
            if entity is not None:
                self._named[topic] = entity.name

    def mapped(self, topic: str) -> bool:
        """Whether a mapping reads the records of `topic` (as rows, not platform records)."""
        return topic in self._mapped or topic.rsplit(".", 1)[-1] in self._tables

    def of(self, topic: str) -> str | None:
        return (
            self._mapped.get(topic) or self._tables.get(topic.rsplit(".", 1)[-1])
            or self._named.get(topic)
        )  # fmt: skip


class Letter:
    """One dead letter as read from the topic: its coordinates, key, value and headers.

    Header values are decoded on demand; the entity and ID are worked out on demand too."""

    __slots__ = ("_entity", "_h", "_id", "headers", "key", "offset", "partition", "timestamp_ms",
                 "topic", "value")  # fmt: skip

    def __init__(self, record: RecordLike) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.timestamp_ms: int = record.timestamp
        self.key: bytes | None = record.key
        self.value: bytes | None = record.value
        self.headers: Sequence[tuple[str, bytes | None]] = record.headers or ()
        self._h: dict[str, bytes | None] | None = None  # built on the first look (~1 us)
        self._entity: str | bool | None = False  # False: not worked out yet
        self._id: str | bool | None = False

    @property
    def h(self) -> dict[str, bytes | None]:
        """The headers by name (the last of a repeated name)."""
        if self._h is None:
            self._h = dict(self.headers)
        return self._h

    def text(self, name: str) -> str | None:
        raw = self.h.get(name)
        return None if raw is None else raw.decode("utf-8", "replace")

    @property
    def reason(self) -> str:
        return self.text("error.reason") or ""

    @property
    def message(self) -> str:
        return self.text("error.message") or ""

    @property
    def batch_id(self) -> str | None:
        return self.text("error.batch_id")

    @property
    def when(self) -> str:
        """When it was dead-lettered (the `error.timestamp` header, else the record's time)."""
        stamp = self.text("error.timestamp")
        if stamp:
            return stamp
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.timestamp_ms / 1000))

    @property
    def source_topic(self) -> str | None:
        return self.text("source.topic")

    @property
    def source(self) -> str:
        """`topic/partition/offset` of the original record."""
        return f"{self.source_topic}/{self.text('source.partition')}/{self.text('source.offset')}"

    @property
    def coordinates(self) -> str:
        """`topic/partition/offset` of the dead letter itself."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def replay_count(self) -> int:
        """How often the record was replayed before it became this dead letter."""
        raw = self.text("replay.count")
        return int(raw) if raw and raw.isdigit() else 0

    @property
    def replay_history(self) -> list[dict[str, Any]]:
        raw = self.h.get("replay.history")
        if not raw:
            return []
        try:
            history = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return []
        return [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []

    def own_headers(self) -> list[tuple[str, bytes | None]]:
        """The original record's headers: without the dead letter's and the replays' own."""
        return [
            (k, v) for k, v in self.headers
            if k not in ERROR_HEADERS and not k.startswith("replay.")
        ]  # fmt: skip

    def entity(self, topics: TopicEntities | None) -> str | None:
        """The entity's name: from the value's `eventType`, else the source topic's entity."""
        if self._entity is False:
            found: str | None = None
            if self.value and len(self.value) <= _MAX_PEEK:
                match = _EVENT_TYPE.search(self.value)
                if match:
                    known = entity_for_event_type(match[1].decode())
                    found = known[0].name if known else None
            if found is None and topics is not None and self.source_topic:
                found = topics.of(self.source_topic)
            self._entity = found
        return self._entity if isinstance(self._entity, str) else None

    def external_id(self, topics: TopicEntities | None = None) -> str | None:
        """The record's external ID: its key, else the entity's ID field in the value."""
        if self._id is False:
            key = parse_key(self.key)
            found = key.single() if key is not None else None
            if found is None and self.value and len(self.value) <= _MAX_PEEK:
                name = self.entity(topics)
                entity = find_entity(name) if name else None
                if entity is not None:
                    found = _field_of(self.value, entity.id_field)
            self._id = found
        return self._id if isinstance(self._id, str) else None


def _field_of(value: bytes, name: str) -> str | None:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    found = obj.get(name) if isinstance(obj, dict) else None
    if isinstance(found, str | int) and not isinstance(found, bool):
        return str(found)
    return None


@dataclass(frozen=True)
class Filters:
    """Which dead letters a command takes; an empty set takes every value."""

    reasons: frozenset[str] = frozenset()
    entity: str | None = None  # an entity's name ("Building")
    source_topics: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    batch_ids: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, letter: Letter, topics: TopicEntities | None) -> bool:
        """Whether the letter is selected; the cheap header tests first."""
        if (
            (self.reasons and letter.reason not in self.reasons)
            or (self.source_topics and letter.source_topic not in self.source_topics)
            or (self.batch_ids and letter.batch_id not in self.batch_ids)
            or (self.until_ms is not None and letter.timestamp_ms >= self.until_ms)
            or (self.since_ms is not None and letter.timestamp_ms < self.since_ms)
        ):
            return False
        if self.ids and letter.external_id(topics) not in self.ids:
            return False
        return self.entity is None or letter.entity(topics) == self.entity


class RecordLike(Protocol):
    """What a `Letter` reads of a consumed record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...


@dataclass
class Progress:
    """One line on `out` every `interval` seconds of a long read (none for a short one)."""

    out: TextIO | None
    total: int = 0
    interval: float = 2.0
    clock: Callable[[], float] = time.monotonic
    read: int = 0
    matched: int = 0
    _next: float = field(default=0.0)

    def start(self, total: int) -> None:
        self.total = total
        self._next = self.clock() + self.interval

    def tick(self, read: int, matched: int) -> None:
        self.read, self.matched = read, matched
        if self.out is None:
            return
        now = self.clock()
        if now >= self._next:
            self._next = now + self.interval
            share = f" ({100 * read / self.total:.0f} %)" if self.total else ""
            print(f"read {read:,} of {self.total:,}{share}, {matched:,} match", file=self.out)


@dataclass
class ScanStats:
    read: int = 0
    matched: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


async def scan_topic(
    settings: Settings,
    topic: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    progress: Progress | None = None,
    stats: ScanStats | None = None,
    keep: Callable[[Letter], bool] | None = None,
) -> AsyncGenerator[Letter, None]:
    """Every record of `topic` in the time range, as `Letter`s (those `keep` takes).

    Raises `ScanError` when the topic does not exist or Kafka cannot be reached."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 - keeps --help fast

    from connector.sessions import kafka_options  # noqa: PLC0415

    tps = await _partitions(settings, topic)
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, fetch_max_bytes=FETCH_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES, **kafka_options(settings),
    )  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(tps)
        starts, ends = await _bounds(consumer, tps, since_ms, until_ms)
        open_tps = [tp for tp in tps if starts[tp] < ends[tp]]
        for tp in tps:
            consumer.seek(tp, starts[tp])
            if tp not in open_tps:
                consumer.pause(tp)  # nothing to read: do not fetch it
        if progress is not None:
            progress.start(sum(ends[tp] - starts[tp] for tp in open_tps))
        stats = stats if stats is not None else ScanStats()
        while open_tps:
            batches = await consumer.getmany(*open_tps, timeout_ms=1000, max_records=BATCH_RECORDS)
            for tp, records in batches.items():
                end = ends[tp]
                for rec in records:
                    if rec.offset >= end:
                        break
                    stats.read += 1
                    letter = Letter(rec)
                    if keep is None or keep(letter):
                        stats.matched += 1
                        stats.reasons[letter.reason] += 1
                        yield letter
            for tp in list(open_tps):
                if await consumer.position(tp) >= ends[tp]:
                    open_tps.remove(tp)
                    consumer.pause(tp)
            if progress is not None:
                progress.tick(stats.read, stats.matched)
    finally:
        await consumer.stop()


async def _partitions(settings: Settings, topic: str) -> list[Any]:
    """The topic's partitions, asked of the brokers without creating the topic."""
    from aiokafka import TopicPartition  # noqa: PLC0415
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    from connector.sessions import kafka_options  # noqa: PLC0415

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    except (KafkaError, OSError) as exc:
        raise ScanError(
            f"Kafka brokers {settings.kafka.bootstrap_servers} are not reachable ({exc}); "
            "check kafka.bootstrap_servers and its TLS/SASL keys"
        ) from exc
    finally:
        await admin.close()
    found = [t for t in described if t.get("topic") == topic and not t.get("error_code")]
    if not found:
        raise ScanError(f"topic {topic} does not exist on {settings.kafka.bootstrap_servers}")
    return [TopicPartition(topic, int(p["partition"])) for p in found[0]["partitions"]]


async def _bounds(
    consumer: Any, tps: list[Any], since_ms: int | None, until_ms: int | None
) -> tuple[dict[Any, int], dict[Any, int]]:
    """Per partition, the first offset to read and the one to stop before: the end captured
    now, or the first at or after `until_ms`; the beginning, or the first at `since_ms`."""
    ends: dict[Any, int] = await consumer.end_offsets(tps)
    if until_ms is not None:
        at = await consumer.offsets_for_times(dict.fromkeys(tps, until_ms))
        ends = {tp: at[tp].offset if at[tp] is not None else ends[tp] for tp in tps}
    starts: dict[Any, int] = await consumer.beginning_offsets(tps)
    if since_ms is not None:
        at = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        starts = {tp: at[tp].offset if at[tp] is not None else ends[tp] for tp in tps}
    return starts, ends


def counts_line(reasons: Counter[str], read: int, what: str = "dead letters") -> str:
    """`12 dead letters of 1,000,000 read: api_rejected 10, batch_failed 2`."""
    total = sum(reasons.values())
    parts = ", ".join(f"{r or '(no reason)'} {n:,}" for r, n in sorted(reasons.items()))
    return f"{total:,} {what} of {read:,} read" + (f": {parts}" if parts else "")
