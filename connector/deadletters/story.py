"""`story`: what the connector can tell about one external ID, from what it can see.

Three witnesses, read-only: the dead letters for the ID (the dead-letter topic, with each
letter's replay history), the receipts (the receipts topic, when `receipts.enabled`: every
outcome still on the compacted topic for `Entity/ID`), and the platform's batch API for every
batch either names (BuildingMinds: `GET /batch?batchId=` for the batch's status and
`GET /batch/{id}/inbound` for the record's own status in it). The last status is the latest
event of these.

Must not: write anything, anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from connector.deadletters.scan import Filters, TopicEntities, scan_topic

if TYPE_CHECKING:
    from typing import TextIO

    from connector.config import Settings

__all__ = ["Event", "tell_story"]


@dataclass(frozen=True)
class Event:
    when: str  # ISO 8601, UTC
    what: str  # "dead-lettered", "onboarded", "replayed"
    detail: str
    batch_id: str | None = None


async def _dead_letter_events(
    settings: Settings, external_id: str, entity: str | None
) -> list[Event]:
    topics = TopicEntities(settings)
    filters = Filters(ids=frozenset({external_id}), entity=entity)
    events: list[Event] = []
    async for letter in scan_topic(
        settings, settings.kafka.dead_letter_topic, keep=lambda x: filters.matches(x, topics)
    ):
        events.extend(
            Event(
                str(entry.get("replayed_at", "")), "replayed",
                f"by {entry.get('replay_id')} from dead letter {entry.get('dead_letter')}",
            )
            for entry in letter.replay_history
        )  # fmt: skip
        events.append(Event(
            letter.when, "dead-lettered",
            f"{letter.reason}: {letter.message} (read at {letter.source}; dead letter "
            f"{letter.coordinates})",
            letter.batch_id,
        ))  # fmt: skip
    return events


async def _receipt_events(settings: Settings, external_id: str, entity: str | None) -> list[Event]:
    suffix = f"/{external_id}".encode()
    wanted = f"{entity}/{external_id}".encode() if entity else None

    def mine(letter: Any) -> bool:
        key = letter.key or b""
        if wanted is not None:
            return bool(key == wanted)
        return bool(key.endswith(suffix) and b"/" not in key[: -len(suffix)])

    events: list[Event] = []
    async for rec in scan_topic(settings, settings.receipts.topic, keep=mine):
        try:
            body = orjson.loads(rec.value or b"")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(body, dict) or body.get("outcome") == "dead_lettered":
            continue  # the dead letter tells it, with more
        sources = body.get("sources") or [{}]
        last = sources[-1]
        events.append(Event(
            str(body.get("finished_at", "")), "onboarded",
            f"{body.get('status')} in batch {body.get('batch_id')} (read at "
            f"{last.get('topic')}/{last.get('partition')}/{last.get('offset')})",
            body.get("batch_id"),
        ))  # fmt: skip
    return events


async def _show_batches(settings: Settings, batch_ids: list[str], out: TextIO, err: TextIO) -> None:
    """Each batch as `batches --batch-id` shows it (its status counts, its failed records),
    for a sink whose platform keeps batches (`BatchHistory`)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from connector.errors import ApiError, AuthError  # noqa: PLC0415
    from connector.metrics import Metrics  # noqa: PLC0415
    from connector.sessions import client_session  # noqa: PLC0415
    from connector.sinks import build_sink  # noqa: PLC0415
    from connector.sinks.base import BatchHistory, SinkContext  # noqa: PLC0415

    session = client_session(settings)
    try:
        sink = build_sink(SinkContext(settings, Metrics(CollectorRegistry()), session))
        try:
            if not isinstance(sink, BatchHistory):
                print("  (this platform keeps no batches: it answers synchronously)", file=out)
                return
            for batch_id in batch_ids:
                try:
                    await sink.batches(1, batch_id, out, err)
                except (ApiError, AuthError) as exc:
                    print(f"  {batch_id}: the platform did not answer ({exc})", file=out)
        finally:
            await sink.aclose()
    finally:
        await session.close()


async def tell_story(
    settings: Settings, external_id: str, entity: str | None, out: TextIO, err: TextIO
) -> bool:
    """Print the story; False when nothing at all is known of the ID.

    Raises `ScanError` (the dead-letter topic missing, Kafka unreachable)."""
    from connector.deadletters.scan import ScanError  # noqa: PLC0415

    events = await _dead_letter_events(settings, external_id, entity)
    if settings.receipts.enabled:
        try:
            events += await _receipt_events(settings, external_id, entity)
        except ScanError as exc:
            print(f"receipts: {exc}", file=err)
    else:
        print("receipts are off (receipts.enabled): onboardings are not recorded", file=err)
    events = sorted(set(events), key=lambda e: e.when)  # a history repeats in later letters
    title = f"{entity or 'any entity'} {external_id}"
    if not events:
        print(f"{title}: no dead letter" + (", no receipt" if settings.receipts.enabled
              else "") + " for this ID", file=out)  # fmt: skip
        return False
    print(f"{title}:", file=out)
    for event in events:
        print(f"  {event.when}  {event.what:13}  {event.detail}", file=out)
    batch_ids = list(dict.fromkeys(e.batch_id for e in events if e.batch_id))
    if batch_ids:
        print("batches:", file=out)
        await _show_batches(settings, batch_ids, out, err)
    last = events[-1]
    print(f"last status: {last.what} at {last.when}: {last.detail}", file=out)
    return True
