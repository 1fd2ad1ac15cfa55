"""Decoding: every accepted format, and what each kind of bad record becomes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson
import pytest

from connector.decode import Change, Decoder, Reason, Rejection


@dataclass
class Rec:
    topic: str
    key: bytes | None
    value: bytes | None


DECODER = Decoder({"meter-changes": "meter", "floors": "floor"}, max_record_bytes=2048)


def change(topic: str, key: bytes | None, value: object) -> Change:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    result = DECODER.decode(Rec(topic, key, raw))
    assert isinstance(result, Change), result
    return result


def rejection(topic: str, key: bytes | None, value: object) -> Rejection:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    result = DECODER.decode(Rec(topic, key, raw))
    assert isinstance(result, Rejection), result
    return result


def test_native_record_takes_entity_and_id_from_itself() -> None:
    c = change("any", None, {"buildingId": "b-1", "eventType": "BuildingAdded", "siteId": "s"})
    assert (c.entity.endpoint, c.external_id) == ("building", "b-1")
    assert orjson.loads(c.payload) == {
        "buildingId": "b-1",
        "eventType": "BuildingAdded",
        "siteId": "s",
    }


def test_kafka_key_is_the_id_when_the_record_has_none() -> None:
    c = change("any", b"b-7", {"eventType": "BuildingUpdated"})
    assert c.external_id == "b-7"
    assert orjson.loads(c.payload)["buildingId"] == "b-7"


def test_key_and_id_that_disagree_are_rejected() -> None:
    r = rejection("any", b"b-1", {"buildingId": "b-2", "eventType": "BuildingAdded"})
    assert r.reason is Reason.INVALID_RECORD
    assert "disagree" in r.message


def test_json_object_keys_fall_back_to_the_id_field() -> None:
    c = change("any", b'{"id": 5}', {"buildingId": "b-5", "eventType": "BuildingAdded"})
    assert c.external_id == "b-5"


def test_topic_mapping_supplies_entity_without_event_type() -> None:
    c = change("meter-changes", b"m-1", {"buildingId": "b-1"})
    assert c.entity.endpoint == "meter"
    assert orjson.loads(c.payload)["eventType"] == "MeterUpdated"


@pytest.mark.parametrize(("op", "kind"), [("c", "Added"), ("r", "Added"), ("u", "Updated")])
def test_cdc_envelopes_with_and_without_payload_wrapper(op: str, kind: str) -> None:
    after = {"floorId": "f-1", "buildingId": "b", "name": "L1", "validFrom": "x", "validUntil": "y"}
    envelope = {"before": None, "after": after, "op": op, "source": {"table": "floor"}}
    for value in (envelope, {"schema": {}, "payload": envelope}):
        c = change("cdc", None, value)
        assert c.entity.endpoint == "floor"
        assert orjson.loads(c.payload)["eventType"] == f"Floor{kind}"


def test_cdc_delete_uses_before() -> None:
    envelope = {
        "before": {"meterId": "m-9"},
        "after": None,
        "op": "d",
        "source": {"table": "meter"},
    }
    c = change("cdc", None, envelope)
    assert orjson.loads(c.payload) == {"meterId": "m-9", "eventType": "MeterDeleted"}


def test_tombstone_on_a_mapped_topic_deletes() -> None:
    c = change("floors", b"f-3", None)
    assert orjson.loads(c.payload) == {"floorId": "f-3", "eventType": "FloorDeleted"}


@pytest.mark.parametrize(
    ("topic", "key", "value", "reason", "text"),
    [
        ("t", b"k", b"{not json", Reason.INVALID_JSON, "not JSON"),
        ("t", b"k", b"[1, 2]", Reason.INVALID_RECORD, "JSON list, not an object"),
        ("t", None, {"eventType": "BuildingAdded"}, Reason.MISSING_ID, "no buildingId"),
        ("t", b"k", {"eventType": "SpaceshipAdded"}, Reason.UNKNOWN_ENTITY, "SpaceshipAdded"),
        ("t", b"k", {"name": "x"}, Reason.UNKNOWN_ENTITY, "no eventType"),
        ("t", b"k", b"x" * 4096, Reason.RECORD_TOO_LARGE, "4096 bytes"),
        ("t", b"f", {"eventType": "FloorAdded"}, Reason.INVALID_RECORD, "misses required fields"),
        ("t", b"a", {"eventType": "AddressDeleted"}, Reason.INVALID_RECORD, "cannot be deleted"),
        ("t", b"k" * 51, {"eventType": "BuildingAdded"}, Reason.INVALID_RECORD, "51 characters"),
        ("t", None, None, Reason.MISSING_ID, "without a key"),
        ("t", b"k", None, Reason.UNKNOWN_ENTITY, "not mapped"),
        (
            "t",
            None,
            {"op": "u", "before": None, "source": {"table": "meter"}},
            Reason.INVALID_RECORD,
            "no 'after'",
        ),
        ("t", None, {"op": "x", "after": {}}, Reason.INVALID_RECORD, "unknown op"),
        ("t", None, {"op": "c", "source": {"table": "floor"}}, Reason.INVALID_RECORD, "no 'after'"),
        (
            "t",
            None,
            {"op": "c", "after": {}, "source": {"table": "rockets"}},
            Reason.UNKNOWN_ENTITY,
            "rockets",
        ),
        ("t", b"m", {"eventType": "MeterAdded"}, Reason.INVALID_RECORD, "needs one of buildingId"),
    ],
)
def test_bad_records_get_a_reason_and_a_message(
    topic: str, key: bytes | None, value: object, reason: Reason, text: str
) -> None:
    r = rejection(topic, key, value)
    assert r.reason is reason
    assert text in r.message


def test_unknown_entity_in_mapping_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown entity 'rocket'"):
        Decoder({"t": "rocket"}, 100)


def test_a_pending_change_holds_about_its_own_size_in_memory() -> None:
    """orjson's result keeps a ~4 KB buffer; a pending change must not (memory target §5)."""
    import tracemalloc  # noqa: PLC0415

    value = orjson.dumps({"buildingId": "b-1", "eventType": "BuildingUpdated", "name": "x" * 60})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [DECODER.decode(Rec("t", None, value)) for _ in range(1000)]
        per_change = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_change < 600, f"{per_change:.0f} bytes per pending change"


# --- numbers and IDs the probe found changed or let through ------------------------------

BIG = 123456789012345678901234567890


@pytest.mark.parametrize(
    "number",
    [BIG, -BIG, 2**64, -(2**63) - 1, 10**400, 2**64 - 1, -(2**63)],
    ids=["30-digits", "minus-30-digits", "2**64", "-2**63-1", "10**400", "u64-max", "i64-min"],
)
def test_integers_of_any_size_reach_the_platform_exactly(number: int) -> None:
    """orjson reads integers beyond 64 bits as floats: 1.2345678901234568e+29 was sent."""
    value = b'{"eventType": "MeterUpdated", "meterId": "m-1", "buildingId": "b-1", "reading": %d}'
    c = change("t", None, value % number)
    assert f'"reading":{number}'.encode() in c.payload
    assert json.loads(c.payload)["reading"] == number


def test_an_integer_id_beyond_64_bits_keeps_every_digit() -> None:
    c = change("t", None, b'{"eventType": "BuildingAdded", "buildingId": %d}' % BIG)
    assert c.external_id == str(BIG)
    assert json.loads(c.payload)["buildingId"] == str(BIG)


def test_the_exact_path_is_as_strict_as_orjson() -> None:
    """A value that takes the exact path (a long digit run) is still refused when it is bad."""
    long_run = b'"x": 123456789012345678901234567890'
    for bad in (
        b"{" + long_run + b", NaN: 1}",
        b'{"v": NaN, ' + long_run + b"}",
        b'{"v": Infinity, ' + long_run + b"}",
        b'{"v": 1e400, ' + long_run + b"}",  # the standard library reads inf, sent as Infinity
        b'{"v": "\\ud800", ' + long_run + b"}",  # a lone surrogate: it cannot be sent
        b'{"v": "\xff", ' + long_run + b"}",
        b"\xef\xbb\xbf{" + long_run + b"}",
    ):
        assert rejection("t", b"k", bad).reason is Reason.INVALID_JSON, bad
    huge = b'{"eventType": "BuildingAdded", "buildingId": "b", "n": 1' + b"0" * 5000 + b"}"
    result = Decoder({}, max_record_bytes=8192).decode(Rec("t", None, huge))
    assert isinstance(result, Rejection)
    assert result.reason is Reason.INVALID_RECORD  # beyond Python's 4,300-digit limit
    text_run = {"eventType": "BuildingAdded", "buildingId": "b-1", "iban": "0" * 30}
    assert orjson.loads(change("t", None, text_run).payload)["iban"] == "0" * 30


@pytest.mark.parametrize(
    ("key", "own", "message"),
    [
        (b"   ", None, "buildingId must not be blank"),
        (None, " \t ", "buildingId must not be blank"),
        (None, "b-1\x07", "buildingId contains a control character U+0007"),
        (b"b-1\n", None, "buildingId contains a control character U+000A"),
        (None, "b\x00-1", "buildingId contains a control character U+0000"),
        (None, "b-1\x85", "buildingId contains a control character U+0085"),
    ],
)
def test_blank_ids_and_ids_with_control_characters_are_dead_lettered(
    key: bytes | None, own: str | None, message: str
) -> None:
    value: dict[str, object] = {"eventType": "BuildingAdded"}
    if own is not None:
        value["buildingId"] = own
    r = rejection("t", key, value)
    assert (r.reason, r.message) == (Reason.INVALID_RECORD, message)


def test_ids_with_other_characters_pass() -> None:
    for eid in ("b 1", "Gebäude-1", "b\u00a01", "建物-1"):
        assert (
            change("t", None, {"eventType": "BuildingAdded", "buildingId": eid}).external_id == eid
        )
