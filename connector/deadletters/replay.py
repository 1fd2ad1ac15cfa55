"""`dead-letters replay`: re-drive selected dead letters, as they are or edited, with history.

Each replayed record goes to its `source.topic` (or `--to`) with the original key, the
original headers (the dead letter's `error.*` and `source.*` left out), and these headers:

| header | value |
|---|---|
| `replay.id` | the replay that sent it (`rp-<UTC start>-<random>`, printed first) |
| `replay.count` | how often the record has now been replayed (1 on the first replay) |
| `replay.history` | JSON list, oldest first, one entry per replay (below) |
| `replay.dead_letter` | `topic/partition/offset` of the dead letter this replay sent it from |

A history entry: `{"replay_id", "replayed_at", "dead_lettered_at", "reason", "message",
"dead_letter"}` (when and why the record was dead-lettered before that replay, and where).

The connector keeps a record's own headers when it dead-letters it (connector.deadletter), so a
replayed record that fails again carries `replay.count` into its new dead letter. A dead letter
whose record was replayed `max_replays` times already is held, not sent (`--force` sends it).
A dead letter that was replayed and whose record failed again is never sent again: the newer
dead letter stands for the record (its `replay.dead_letter` names the older one).

Idempotent per replay ID: a replay interrupted and run again with the same `--replay-id`
first reads each target topic from the replay's start time (in its ID) to its end, collects
the `replay.dead_letter` of the records carrying this `replay.id`, and does not send those
again. No state outside Kafka: the target topic is the record of what was sent, and a replay
can be resumed from any machine. Each record is checked before it is sent: a record the
connector would dead-letter again at once (not JSON, a platform record sent to a mapped topic)
is held with the reason (`--force` sends it anyway). The check decodes as the connector does
(`connector.dryrun.Decoding`): with `schema_registry.url`, an Avro or JSON Schema value is
decoded with its schema; a schema that cannot be fetched (the registry down, an ID it does not
know) holds the record with that reason, as something to retry, not as a record that would
fail again.

Must not: write to the dead-letter topic. Dead letters stay; a replay only adds records.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from connector.deadletters.edit import EditError
from connector.deadletters.scan import Filters, Progress, ScanStats, TopicEntities, scan_topic
from connector.decode import Rejection
from connector.dryrun import Decoding, DryRecord, Held
from connector.schemas import schema_id

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from connector.config import Settings
    from connector.deadletters.edit import Edit
    from connector.deadletters.scan import Letter
    from connector.decode import Change, Skip

__all__ = ["ReplayOptions", "ReplayReport", "held_for", "new_replay_id", "replay", "replay_headers"]

_ID = re.compile(r"rp-(\d{8}T\d{6}Z)-[0-9a-f]{6,}")
SCAN_MARGIN_MS = 5 * 60 * 1000  # clocks of the machines that ran a replay may differ


def new_replay_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"rp-{stamp}-{secrets.token_hex(3)}"


def replay_started_ms(replay_id: str) -> int | None:
    """The start time a replay ID carries (None for an ID of another form)."""
    match = _ID.fullmatch(replay_id)
    if match is None:
        return None
    return int(time.mktime(time.strptime(match[1] + "UTC", "%Y%m%dT%H%M%SZ%Z")) * 1000)


def held_for(letter: Letter, max_replays: int) -> str | None:
    """Why a dead letter is not replayed automatically, or None."""
    if letter.replay_count >= max_replays:
        return f"replayed {letter.replay_count} time(s) already (--max-replays {max_replays})"
    return None


def replay_headers(letter: Letter, replay_id: str, now: float) -> list[tuple[str, bytes | None]]:
    """The original headers plus this replay's `replay.*` headers."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    entry = {
        "replay_id": replay_id, "replayed_at": stamp, "dead_lettered_at": letter.when,
        "reason": letter.reason, "message": letter.message, "dead_letter": letter.coordinates,
    }  # fmt: skip
    history = [*letter.replay_history, entry]
    return [
        *letter.own_headers(),
        ("replay.id", replay_id.encode()),
        ("replay.count", str(letter.replay_count + 1).encode()),
        ("replay.history", orjson.dumps(history)),
        ("replay.dead_letter", letter.coordinates.encode()),
    ]


@dataclass(frozen=True)
class ReplayOptions:
    filters: Filters = field(default_factory=Filters)
    edit: Edit | None = None
    to: str | None = None
    replay_id: str | None = None
    max_replays: int = 3
    force: bool = False
    dry_run: bool = False
    limit: int | None = None
    rate: float = 0.0  # records per second; 0: as fast as the broker takes them


@dataclass
class ReplayReport:
    replay_id: str
    sent: Counter[str] = field(default_factory=Counter)  # target topic -> records
    held: Counter[str] = field(default_factory=Counter)  # why -> records
    read: int = 0

    def summary(self, *, dry_run: bool) -> str:
        verb = "would send" if dry_run else "sent"
        sent = ", ".join(f"{n} to {t}" for t, n in sorted(self.sent.items())) or "nothing"
        held = "; ".join(f"{n} {why}" for why, n in self.held.most_common())
        tail = f"; held: {held}" if held else ""
        note = " Nothing was sent." if dry_run else ""
        return f"replay {self.replay_id}: {verb} {sent}{tail}.{note}"


class _Sent:
    """What this replay ID sent already, per target topic (read once per topic)."""

    def __init__(self, settings: Settings, replay_id: str, *, resume: bool) -> None:
        self.settings, self.replay_id, self.resume = settings, replay_id, resume
        self._topics: dict[str, set[str]] = {}

    async def contains(self, topic: str, coordinates: str) -> bool:
        if not self.resume:
            return False
        if topic not in self._topics:
            started = replay_started_ms(self.replay_id)
            since = None if started is None else started - SCAN_MARGIN_MS
            mine = self.replay_id.encode()
            found: set[str] = set()
            async for rec in scan_topic(
                self.settings, topic, since_ms=since,
                keep=lambda letter: letter.h.get("replay.id") == mine,
            ):  # fmt: skip
                found.add(rec.text("replay.dead_letter") or "")
            self._topics[topic] = found
        return coordinates in self._topics[topic]


async def _prepare(
    letter: Letter, options: ReplayOptions, decoding: Decoding, topics: TopicEntities
) -> tuple[str, bytes] | str:
    """(target, value) to send, or why the letter is held."""
    if not options.force and (why := held_for(letter, options.max_replays)):
        return why
    if letter.value is None or "error.value_omitted" in letter.h:
        return "without a value (error.value_omitted): re-produce it from source.topic"
    target = options.to or letter.source_topic
    if not target:
        return "without source.topic: give --to TOPIC"
    value = _edited(letter.value, options.edit)
    if isinstance(value, str):
        return value
    if not options.force:
        own = tuple((k, v) for k, v in letter.own_headers() if v is not None)
        result = await decoding.decode(DryRecord(target, letter.key, value, 0, 0, own))
        if (why := _checked(result, target, topics)) is not None:
            return why
    return target, value


def _checked(
    result: Change | Rejection | Skip | Held, target: str, topics: TopicEntities
) -> str | None:
    """Why a record that decoded as `result` is held, or None (it may be sent)."""
    if isinstance(result, Held):  # the connector would hold it: so it is not sent unchecked
        return (
            f"{result.message}; run the replay again when the registry answers "
            "(--force sends it unchecked)"
        )
    if isinstance(result, Rejection):
        hint = (
            " (a platform record on a mapped topic: give --to a topic the connector reads "
            "without a mapping)"
            if topics.mapped(target) else ""
        )  # fmt: skip
        return f"would be dead-lettered again as {result.reason.value}{hint}"
    return None


def _edited(value: bytes, edit: Edit | None) -> bytes | str:
    """The value after the edit, or why the edit does not apply."""
    if edit is None:
        return value
    if (ident := _wire_id(value)) is not None:
        return (
            f"in the Schema Registry wire format (schema ID {ident}): an edit cannot apply, "
            "replay it as it is"
        )
    try:
        return orjson.dumps(edit.apply(orjson.loads(value)))
    except orjson.JSONDecodeError:
        return "not JSON, so the edit cannot apply"
    except EditError as exc:
        return f"edit failed: {exc}"


def _producer(settings: Settings) -> Any:
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - keeps --help fast

    from connector.sessions import kafka_options  # noqa: PLC0415

    return AIOKafkaProducer(
        enable_idempotence=True, acks="all", linger_ms=5,
        max_request_size=settings.window.max_record_bytes + 64 * 1024,
        **kafka_options(settings),
    )  # fmt: skip


async def replay(
    settings: Settings,
    options: ReplayOptions,
    out: TextIO,
    err: TextIO,
    *,
    clock: Callable[[], float] = time.time,
    producer: Any = None,
) -> ReplayReport:
    """Replay the dead letters `options` select; one line per record, then the summary.

    Raises `ScanError` (a topic missing, Kafka unreachable)."""
    resume = options.replay_id is not None
    replay_id = options.replay_id or new_replay_id(clock())
    report = ReplayReport(replay_id)
    verb = "dry run of replay" if options.dry_run else "replay"
    again = "" if resume else f" (interrupted? run it again with --replay-id {replay_id})"
    print(f"{verb} {replay_id}{again}", file=err)
    topics = TopicEntities(settings)
    decoding = Decoding(settings)
    sent_before = _Sent(settings, replay_id, resume=resume)
    own = producer is None and not options.dry_run
    if own:
        producer = _producer(settings)
        await producer.start()
    pending: list[Any] = []
    started = clock()
    try:
        selected, superseded, report.read = await _select(settings, options, topics, err)
        for letter in selected:
            if options.limit is not None and sum(report.sent.values()) >= options.limit:
                break
            newer = superseded.get(letter.coordinates)
            prepared = (
                f"replayed already: its record failed again as dead letter {newer}"
                if newer else await _prepare(letter, options, decoding, topics)
            )  # fmt: skip
            if isinstance(prepared, str):
                report.held[prepared.split(" as dead letter ")[0]] += 1
                print(f"{letter.coordinates}  = held: {prepared}", file=out)
                continue
            target, value = prepared
            if await sent_before.contains(target, letter.coordinates):
                report.held["sent already by this replay"] += 1
                continue
            headers = replay_headers(letter, replay_id, clock())
            ident = letter.external_id(topics) or "-"
            print(f"{letter.coordinates}  -> {target}  {ident}  ({letter.reason}, replay "
                  f"{letter.replay_count + 1})" + (f"  {_shown(value)}"
                  if options.dry_run else ""), file=out)  # fmt: skip
            report.sent[target] += 1
            if not options.dry_run:
                pending.append(
                    await producer.send(target, key=letter.key, value=value, headers=headers)
                )
                await _pace(pending, options.rate, started, sum(report.sent.values()), clock)
        await _pace(pending, 0, started, 0, clock, flush=True)
    finally:
        await decoding.aclose()
        if own:
            await producer.stop()
    return report


def _wire_id(value: bytes) -> int | None:
    """The schema ID of a value in the Schema Registry wire format, else None."""
    ident = schema_id(value)
    return ident if ident is not None and ident >= 0 else None


def _shown(value: bytes) -> str:
    """A value to print: the JSON text, or what a wire-format value is (its bytes are binary)."""
    if (ident := _wire_id(value)) is not None:
        return f"<Schema Registry wire format, schema ID {ident}, {len(value)} bytes>"
    return value.decode(errors="replace")


async def _select(
    settings: Settings, options: ReplayOptions, topics: TopicEntities, err: TextIO
) -> tuple[list[Letter], dict[str, str], int]:
    """The selected letters, which dead letters were replayed and failed again (the
    coordinates of each -> of the newer letter), and how many letters were read.

    The newer letters may lie outside the selection (another reason, later than --until),
    so every letter from --since on is looked at; the selection is held in memory."""
    stats = ScanStats()
    superseded: dict[str, str] = {}
    filters = options.filters

    def look(letter: Letter) -> bool:
        came_from = letter.h.get("replay.dead_letter")
        if came_from:
            superseded[came_from.decode("utf-8", "replace")] = letter.coordinates
        return filters.matches(letter, topics)

    selected = [
        letter async for letter in scan_topic(
            settings, settings.kafka.dead_letter_topic, since_ms=filters.since_ms,
            progress=Progress(err), stats=stats, keep=look,
        )
    ]  # fmt: skip
    return selected, superseded, stats.read


async def _pace(
    pending: list[Any], rate: float, started: float, count: int, clock: Callable[[], float],
    *, flush: bool = False,
) -> None:  # fmt: skip
    """Wait for the acknowledgements every 500 records (and at the end), and keep `rate`."""
    if flush or len(pending) >= 500 or rate > 0:
        results = await asyncio.gather(*pending, return_exceptions=True)
        pending.clear()
        for result in results:
            if isinstance(result, BaseException):
                raise result
    if rate > 0:
        import anyio  # noqa: PLC0415

        await anyio.sleep(max(0.0, started + count / rate - clock()))
