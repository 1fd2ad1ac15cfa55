"""Without a broker: letters read from the writer's headers, the filters, the time forms, the
replay history and hold rules, the receipt's key and schema, and the commands' usage errors."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import orjson
import pytest

from connector.cli import main
from connector.deadletters.replay import (
    held_for,
    new_replay_id,
    replay_headers,
    replay_started_ms,
)
from connector.deadletters.scan import Filters, Letter, Progress, TopicEntities, parse_time
from connector.decode import Reason
from connector.outcomes import RecordOutcome, SourceRef
from connector.receipts import RECEIPT_SCHEMA, receipt_key, receipt_value
from tests.deadletters.helpers import FakeRecord, dead_letter, letter_of, write_settings

if TYPE_CHECKING:
    from pathlib import Path

    from connector.config import Settings

NOW = 1_767_000_000.0  # 2025-12-29T09:20:00Z


def settings(tmp_path: Path, **kafka: object) -> Settings:
    raw = {
        "kafka": {"topics": ["src"], "dead_letter_topic": "dlq", **kafka},
        "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
        "mappings": [{"topic": "cafm.public.buildings", "entity": "building", "id": "bldg_no",
                      "fields": {"name": "bldg_name"}}],
    }  # fmt: skip
    return write_settings(tmp_path, raw)[1]


def building_letter(**kw: object) -> Letter:
    value = orjson.dumps({"buildingId": "B-1", "eventType": "BuildingAdded", "name": "x" * 60})
    fields: dict[str, object] = {"key": b"B-1", "value": value}
    fields.update(kw)
    return letter_of(dead_letter(**fields), at=("dlq", 2, 41), ts=int(NOW * 1000))  # type: ignore[arg-type]


def test_a_letter_is_read_from_the_writers_headers() -> None:
    letter = building_letter(batch_id="batch-9", offset=17, headers=[("trace", b"t-1")])
    assert letter.reason == "api_rejected"
    assert letter.message == "'name' is too long"
    assert letter.batch_id == "batch-9"
    assert letter.source == "src/0/17"
    assert letter.coordinates == "dlq/2/41"
    assert letter.when == "2025-12-29T09:20:00Z"
    assert letter.external_id() == "B-1"
    assert letter.entity(None) == "Building"
    assert letter.replay_count == 0
    assert letter.own_headers() == [("trace", b"t-1")], "the writer's headers are left out"


def test_entity_and_id_come_from_the_value_or_the_topic_when_the_key_does_not_say(
    tmp_path: Path,
) -> None:
    topics = TopicEntities(settings(tmp_path, topic_entities={"meters": "meter"}))
    keyless = building_letter(key=None)
    assert keyless.external_id(topics) == "B-1", "from the entity's ID field"
    row = letter_of(dead_letter(key=b"7", value=b'{"bldg_no": 7}', reason=Reason.MAPPING_FAILED,
                                topic="cafm.public.buildings"))  # fmt: skip
    assert row.entity(topics) == "Building", "the mapping of its source topic"
    assert topics.mapped("cafm.public.buildings")
    assert not topics.mapped("src")
    meter = letter_of(dead_letter(key=b"M-1", value=b"not json", reason=Reason.INVALID_JSON,
                                  topic="meters"))  # fmt: skip
    assert (meter.entity(topics), meter.external_id(topics)) == ("Meter", "M-1")
    struct = letter_of(dead_letter(key=b'{"buildingId": "B-2"}', value=None))
    assert struct.external_id(topics) == "B-2", "a Debezium struct key"


def test_filters_take_only_what_every_given_test_takes(tmp_path: Path) -> None:
    topics = TopicEntities(settings(tmp_path))
    letter = building_letter(batch_id="b-9")
    at = int(NOW * 1000)
    takes = [
        Filters(),
        Filters(reasons=frozenset({"api_rejected", "batch_failed"})),
        Filters(entity="Building", ids=frozenset({"B-1"}), source_topics=frozenset({"src"})),
        Filters(batch_ids=frozenset({"b-9"}), since_ms=at, until_ms=at + 1),
    ]
    refuses = [
        Filters(reasons=frozenset({"batch_failed"})),
        Filters(entity="Floor"),
        Filters(ids=frozenset({"B-2"})),
        Filters(source_topics=frozenset({"other"})),
        Filters(batch_ids=frozenset({"b-8"})),
        Filters(since_ms=at + 1),
        Filters(until_ms=at),
    ]
    assert all(f.matches(letter, topics) for f in takes)
    assert not any(f.matches(letter, topics) for f in refuses)


def test_times_are_iso_or_durations_back_from_now() -> None:
    assert parse_time("2025-12-29T09:20:00Z") == int(NOW * 1000)
    assert parse_time("2025-12-29T10:20:00+01:00") == int(NOW * 1000)
    assert parse_time("2025-12-29T09:20:00") == int(NOW * 1000), "no zone: UTC"
    assert parse_time("2h", now=NOW) == int((NOW - 7200) * 1000)
    assert parse_time("90s", now=NOW) == int((NOW - 90) * 1000)
    with pytest.raises(ValueError, match=r"ISO 8601 .* duration"):
        parse_time("yesterday")


def test_the_history_header_grows_by_one_entry_per_replay() -> None:
    first = building_letter()
    headers = dict(replay_headers(first, "rp-20251229T092000Z-abcdef", NOW + 60))
    assert headers["replay.id"] == b"rp-20251229T092000Z-abcdef"
    assert headers["replay.count"] == b"1"
    assert headers["replay.dead_letter"] == b"dlq/2/41"
    (entry,) = orjson.loads(headers["replay.history"] or b"")
    assert entry == {
        "replay_id": "rp-20251229T092000Z-abcdef", "replayed_at": "2025-12-29T09:21:00Z",
        "dead_lettered_at": "2025-12-29T09:20:00Z", "reason": "api_rejected",
        "message": "'name' is too long", "dead_letter": "dlq/2/41",
    }  # fmt: skip
    assert not any(k.startswith(("error.", "source.")) for k in headers)
    # the replayed record fails again: the connector keeps its headers in the new letter
    again = letter_of(dead_letter(key=b"B-1", value=b"{}", reason=Reason.BATCH_FAILED,
                                  headers=list(headers.items())), at=("dlq", 0, 99))  # fmt: skip
    assert again.replay_count == 1
    assert held_for(again, 1) is not None
    assert "replayed 1 time" in (held_for(again, 1) or "")
    assert held_for(again, 2) is None
    second = dict(replay_headers(again, "rp-20251229T100000Z-123456", NOW + 3600))
    assert second["replay.count"] == b"2"
    history = orjson.loads(second["replay.history"] or b"")
    assert [h["replay_id"] for h in history] == [
        "rp-20251229T092000Z-abcdef", "rp-20251229T100000Z-123456",
    ]  # fmt: skip
    assert [h["reason"] for h in history] == ["api_rejected", "batch_failed"]
    assert [k for k, _ in replay_headers(again, "x", NOW)].count("replay.count") == 1


def test_a_replay_id_carries_its_start_time() -> None:
    rid = new_replay_id(NOW)
    assert rid.startswith("rp-20251229T092000Z-")
    assert replay_started_ms(rid) == int(NOW * 1000)
    assert replay_started_ms("my-own-id") is None


def test_a_receipt_is_keyed_entity_slash_id_with_the_documented_schema() -> None:
    refs = (SourceRef("src", 0, 5, 1000), SourceRef("src", 0, 9, 2000))
    onboarded = RecordOutcome("onboarded", refs, entity="Building", external_id="B/1",
                              batch_id="b-1", status="Completed")  # fmt: skip
    assert receipt_key(onboarded) == "Building/B/1"
    body = orjson.loads(receipt_value(onboarded, NOW + 0.25))
    assert body == {
        "schema": RECEIPT_SCHEMA, "outcome": "onboarded", "entity": "Building", "id": "B/1",
        "status": "Completed", "batch_id": "b-1", "reason": None, "message": None,
        "sources": [
            {"topic": "src", "partition": 0, "offset": 5, "timestamp_ms": 1000},
            {"topic": "src", "partition": 0, "offset": 9, "timestamp_ms": 2000},
        ],
        "finished_at": "2025-12-29T09:20:00.250Z",
    }  # fmt: skip
    undecodable = RecordOutcome("dead_lettered", refs[:1], reason="invalid_json", message="x")
    assert receipt_key(undecodable) == "@src/0/5"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dead-letters", "list", "--reason", "bad_luck"], "no such reason; one of: invalid_json"),
        (["dead-letters", "list", "--entity", "castle"], "no such entity; one of:"),
        (["dead-letters", "list", "--since", "soon"], "is not a time"),
        (["dead-letters", "replay", "--patch", '{"op": 1}'], "a JSON Patch is a JSON array"),
        (["dead-letters", "replay", "--jmespath", "merge(@,"], "not a valid JMESPath"),
        (["dead-letters", "replay", "--max-replays", "0"], "--max-replays must be at least 1"),
        (["story", "--id", "B-1", "--entity", "castle"], "no such entity"),
    ],
)
def test_bad_arguments_are_one_line_with_the_fix_and_exit_2(
    tmp_path: Path, args: list[str], says: str
) -> None:
    config = write_settings(tmp_path, {"sink": {"client_id": "c", "client_secret": "s",
                                                "scope": "api://x"}})[0]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    assert main([*args, "--config", str(config)], out, err) == 2
    assert err.getvalue().startswith("error: ")
    assert says in err.getvalue()


def test_a_letter_reads_aiokafka_records_as_they_come() -> None:
    record = FakeRecord("dlq", 1, 3, 5, None, None, ())
    letter = Letter(record)
    assert (letter.reason, letter.external_id(), letter.entity(None)) == ("", None, None)
    assert letter.when == "1970-01-01T00:00:00Z", "the record's time without error.timestamp"


def test_a_long_read_prints_a_progress_line_every_interval_and_a_short_one_none() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, interval=2.0, clock=lambda: now[0])
    progress.start(1_000_000)
    progress.tick(10_000, 3)
    assert out.getvalue() == "", "nothing before the first interval"
    now[0] = 2.5
    progress.tick(400_000, 7)
    now[0] = 3.0
    progress.tick(500_000, 8)
    assert out.getvalue() == "read 400,000 of 1,000,000 (40 %), 7 match\n"
