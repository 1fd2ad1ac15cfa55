"""Decoding Schema Registry values: the wire format, Avro and JSON Schema read with their
schema, logical types converted by the mapping, and every failure a dead letter that names
the schema ID (no I/O: the cache is filled by hand, as the gate fills it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from connector.config import MappingSettings
from connector.decode import Change, Decoder, Reason, Rejection, SchemaNotFetched
from connector.schemas import SchemaCache, SchemaUnusable, parse_schema, schema_id
from tests.registry.samples import (
    BUILT_ISO,
    MAPPING,
    PERMIT_ISO,
    avro_change,
    avro_envelope,
    json_change,
    json_schema,
)
from tests.support.registry import avro_value, wire

TOPIC = "shop.public.buildings"


@dataclass
class Rec:
    value: bytes | None
    key: bytes | None = b'{"bldg_no": "B-1"}'
    topic: str = TOPIC
    partition: int = 0


def decoder(cache: SchemaCache | None) -> Decoder:
    return Decoder({}, 1_000_000, [MappingSettings.model_validate(MAPPING)], schemas=cache)


def cached(ident: int, schema: dict[str, Any], kind: str | None = None) -> SchemaCache:
    cache = SchemaCache()
    cache.put(ident, parse_schema(ident, orjson.dumps(schema).decode(), kind))
    return cache


def test_the_wire_format_header_gives_the_schema_id() -> None:
    assert schema_id(wire(7, b"x")) == 7
    assert schema_id(wire(2**32 - 1, b"")) == 2**32 - 1
    assert schema_id(b'{"a": 1}') is None  # JSON never starts with a zero byte
    assert schema_id(b"") is None
    assert schema_id(b"\x00\x00\x01") == -1  # the magic byte, but no room for an ID


def test_an_avro_debezium_change_is_mapped_with_its_logical_types() -> None:
    cache = cached(7, avro_envelope())
    value = avro_value(avro_envelope(), 7, avro_change("B-1", "Tower A"))

    result = decoder(cache).decode(Rec(value))

    assert isinstance(result, Change), result
    assert (result.entity.name, result.external_id, result.kind) == ("Building", "B-1", "Added")
    assert orjson.loads(result.payload) == {
        "buildingId": "B-1", "eventType": "BuildingAdded", "name": "Tower A",
        "buildingPermitDate": PERMIT_ISO, "constructionDate": BUILT_ISO, "usableArea": 1234.5,
        "opened": "2020-01-02T00:00:00Z",
    }  # fmt: skip


def test_an_avro_delete_takes_the_before_row() -> None:
    cache = cached(7, avro_envelope())
    value = avro_value(avro_envelope(), 7, avro_change("B-1", "Tower A", op="d"))

    result = decoder(cache).decode(Rec(value))

    assert isinstance(result, Change), result
    assert (result.external_id, result.kind) == ("B-1", "Deleted")


def test_a_json_schema_change_is_mapped_with_its_logical_types() -> None:
    cache = cached(3, json_schema(), "JSON")
    value = wire(3, orjson.dumps(json_change("B-2", "Annex")))

    result = decoder(cache).decode(Rec(value, key=b'{"bldg_no": "B-2"}'))

    assert isinstance(result, Change), result
    assert orjson.loads(result.payload) == {
        "buildingId": "B-2", "eventType": "BuildingAdded", "name": "Annex",
        "buildingPermitDate": PERMIT_ISO, "constructionDate": BUILT_ISO, "usableArea": 1234.5,
    }  # fmt: skip


def test_a_native_record_in_avro_is_decoded_like_its_json() -> None:
    schema = {"type": "record", "name": "BuildingEvent", "fields": [
        {"name": "eventType", "type": "string"}, {"name": "buildingId", "type": "string"},
        {"name": "name", "type": "string"}]}  # fmt: skip
    value = avro_value(schema, 9, {"eventType": "BuildingUpdated", "buildingId": "B-9",
                                   "name": "Depot"})  # fmt: skip

    result = Decoder({}, 1_000_000, schemas=cached(9, schema)).decode(Rec(value, key=b"B-9"))

    assert isinstance(result, Change), result
    assert orjson.loads(result.payload) == {
        "eventType": "BuildingUpdated",
        "buildingId": "B-9",
        "name": "Depot",
    }


def test_an_undecodable_avro_value_is_dead_lettered_naming_the_schema_id() -> None:
    cache = cached(7, avro_envelope())
    good = avro_value(avro_envelope(), 7, avro_change("B-1", "Tower A"))

    truncated = decoder(cache).decode(Rec(good[:12]))
    trailing = decoder(cache).decode(Rec(good + b"\x02\x04"))

    for result in (truncated, trailing):
        assert isinstance(result, Rejection), result
        assert result.reason is Reason.UNDECODABLE_RECORD
        assert "Avro schema ID 7" in result.message, result.message


def test_a_json_schema_value_that_is_not_json_is_dead_lettered_naming_the_schema_id() -> None:
    result = decoder(cached(3, json_schema(), "JSON")).decode(Rec(wire(3, b"{not json")))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.UNDECODABLE_RECORD
    assert result.message.startswith("JSON Schema schema ID 3: value is not JSON")


def test_without_a_registry_a_wire_format_value_says_what_to_configure() -> None:
    result = decoder(None).decode(Rec(wire(12, b"\x02")))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.UNDECODABLE_RECORD
    assert "schema ID 12" in result.message
    assert "schema_registry.url" in result.message


def test_a_value_too_short_for_the_header_is_dead_lettered() -> None:
    result = decoder(SchemaCache()).decode(Rec(b"\x00\x00\x07"))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.UNDECODABLE_RECORD
    assert "5-byte header" in result.message


@pytest.mark.parametrize(
    ("text", "kind", "why"),
    [
        ('syntax = "proto3";', "PROTOBUF", "Protobuf"),
        ('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Nope"}]}', None,
         "not a usable Avro schema"),
        ("{nope", None, "not JSON"),
        ("{}", "XML", "unknown schemaType"),
    ],
)  # fmt: skip
def test_a_schema_the_connector_cannot_use_dead_letters_its_records(
    text: str, kind: str | None, why: str
) -> None:
    with pytest.raises(SchemaUnusable) as caught:
        parse_schema(5, text, kind)
    cache = SchemaCache()
    cache.put(5, caught.value)

    result = decoder(cache).decode(Rec(wire(5, b"\x02")))

    assert isinstance(result, Rejection)
    assert result.reason is Reason.UNDECODABLE_RECORD
    assert "schema 5" in result.message
    assert why in result.message


def test_a_schema_not_fetched_before_decoding_is_a_wiring_fault_not_a_dead_letter() -> None:
    with pytest.raises(SchemaNotFetched, match="schema 4 was not fetched"):
        decoder(SchemaCache()).decode(Rec(wire(4, b"\x02")))


def test_json_values_are_decoded_as_before_when_a_registry_is_configured() -> None:
    value = orjson.dumps({"buildingId": "B-5", "eventType": "BuildingUpdated", "name": "x"})

    result = Decoder({}, 1_000_000, schemas=SchemaCache()).decode(Rec(value, key=b"B-5"))

    assert isinstance(result, Change)
    assert result.external_id == "B-5"


def test_avro_bytes_come_out_as_base64_text_as_jsonconverter_writes_them() -> None:
    schema = {"type": "record", "name": "Row", "fields": [
        {"name": "bldg_no", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "bytes"}},
        {"name": "blob", "type": ["null", {"type": "fixed", "name": "F", "size": 2}]}]}  # fmt: skip
    mapping = {"table": "buildings", "entity": "building", "id": "bldg_no",
               "fields": {"tags": "tags", "checksum": "blob"}}  # fmt: skip
    value = avro_value(schema, 4, {"bldg_no": "B-4", "tags": [b"\x00\x01"], "blob": b"\xff\xfe"})
    dec = Decoder({}, 1_000_000, [MappingSettings.model_validate(mapping)],
                  schemas=cached(4, schema))  # fmt: skip

    result = dec.decode(Rec(value, key=b"B-4"))

    assert isinstance(result, Change), result
    body = orjson.loads(result.payload)
    assert (body["tags"], body["checksum"]) == (["AAE="], "//4=")
