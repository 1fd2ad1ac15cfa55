"""Decoding what Debezium really writes: struct keys, tombstones after deletes, flattened rows,
truncates, and rows mapped to the platform's shape by a config mapping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import yaml

from connector.config import MappingSettings, load_settings
from connector.decode import Change, Decoder, Reason, Rejection, Skip
from connector.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class Rec:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0


def mapping(**values: Any) -> MappingSettings:
    return MappingSettings.model_validate(values)


BUILDINGS = mapping(
    topic="cafm.public.buildings",
    entity="building",
    id="bldg_no",
    fields={"name": "bldg_name", "siteId": "site_no", "constructionDate": "built_at"},
)
FLOORS = mapping(
    table="floors",
    entity="floor",
    id="{bldg_no}-{floor_no}",
    fields={
        "buildingId": "bldg_no",
        "name": "floor_name",
        "validFrom": {"expr": "valid_from", "convert": "date"},
        "validUntil": {"expr": "valid_until", "convert": "date"},
    },
)


def decoder() -> Decoder:
    return Decoder({}, 1 << 20, [BUILDINGS, FLOORS])


def value(obj: Any) -> bytes:
    return orjson.dumps(obj)


def envelope(op: str, *, before: Any = None, after: Any = None, table: str = "buildings") -> bytes:
    source = {"connector": "postgresql", "table": table, "snapshot": "false"}
    return value({"before": before, "after": after, "source": source, "op": op})


ROW = {"bldg_no": "B-11", "bldg_name": "Tower A", "site_no": "S-1", "built_at": 946684799123456}
KEY = b'{"bldg_no":"B-11"}'


def test_a_mapped_envelope_becomes_the_platform_record() -> None:
    result = decoder().decode(Rec("cafm.public.buildings", KEY, envelope("r", after=ROW)))
    assert isinstance(result, Change)
    assert (result.entity.endpoint, result.external_id, result.kind) == (
        "building", "B-11", "Added",
    )  # fmt: skip
    assert orjson.loads(result.payload) == {
        "name": "Tower A", "siteId": "S-1", "constructionDate": 946684799123456,
        "buildingId": "B-11", "eventType": "BuildingAdded",
    }  # fmt: skip


def test_the_tombstone_after_a_delete_is_finished_with_it_not_dead_lettered() -> None:
    d = decoder()
    deleted = d.decode(Rec("cafm.public.buildings", KEY, envelope("d", before=ROW)))
    assert isinstance(deleted, Change)
    assert (deleted.kind, deleted.external_id) == ("Deleted", "B-11")
    assert d.decode(Rec("cafm.public.buildings", KEY, None)) == Skip("tombstone_after_delete")


def test_a_tombstone_with_no_delete_before_it_is_the_delete() -> None:
    # ExtractNewRecordState with delete.tombstone.handling.mode=tombstone writes only this
    result = decoder().decode(Rec("cafm.public.buildings", KEY, None))
    assert isinstance(result, Change)
    assert (result.kind, result.external_id) == ("Deleted", "B-11")


def test_a_tombstone_is_matched_to_the_delete_of_its_own_partition_only() -> None:
    d = decoder()
    d.decode(Rec("cafm.public.buildings", KEY, envelope("d", before=ROW), partition=0))
    other = d.decode(Rec("cafm.public.buildings", KEY, None, partition=1))
    assert isinstance(other, Change)
    assert other.kind == "Deleted"


def test_a_flattened_row_marked_deleted_is_a_delete() -> None:
    flat = value({**ROW, "__deleted": "true", "__op": "d", "__table": "buildings"})
    result = decoder().decode(Rec("cafm.public.buildings", KEY, flat))
    assert isinstance(result, Change)
    assert result.kind == "Deleted"
    assert orjson.loads(result.payload) == {"buildingId": "B-11", "eventType": "BuildingDeleted"}


def test_a_schema_wrapped_flat_row_is_unwrapped_and_its_logical_types_converted() -> None:
    schema = {
        "type": "struct",
        "fields": [
            {"type": "string", "field": "bldg_no"},
            {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "field": "built_at"},
        ],
    }
    flat = {**ROW, "__deleted": "false", "__op": "u"}
    result = decoder().decode(
        Rec("cafm.public.buildings", KEY, value({"schema": schema, "payload": flat}))
    )
    assert isinstance(result, Change)
    assert orjson.loads(result.payload)["constructionDate"] == "1999-12-31T23:59:59Z"


def test_a_mapping_found_by_table_builds_the_id_from_a_template() -> None:
    row = {"bldg_no": "B-1", "floor_no": "3", "floor_name": "Third", "valid_from": 19000,
           "valid_until": 47000}  # fmt: skip
    result = decoder().decode(Rec("erp.dbo.floors", b"Struct{floor_no=3}", envelope(
        "c", after=row, table="floors")))  # fmt: skip
    assert isinstance(result, Change)
    assert result.external_id == "B-1-3"
    body = orjson.loads(result.payload)
    assert (body["validFrom"], body["validUntil"]) == (
        "2022-01-08T00:00:00Z",
        "2098-09-06T00:00:00Z",
    )


def test_a_row_whose_mapping_fails_is_dead_lettered_with_the_expression() -> None:
    broken = {**ROW, "built_at": "yesterday"}
    d = Decoder({}, 1 << 20, [mapping(
        topic="t", entity="building", id="bldg_no",
        fields={"validFrom": {"expr": "built_at", "convert": "timestamp"}},
    )])  # fmt: skip
    result = d.decode(Rec("t", None, envelope("u", after=broken)))
    assert isinstance(result, Rejection)
    assert result.reason is Reason.MAPPING_FAILED
    assert result.message.startswith("validFrom: 'built_at': timestamp expects an integer")


def test_a_truncate_deletes_nothing_and_is_finished() -> None:
    result = decoder().decode(Rec("cafm.public.buildings", None, envelope("t", table="buildings")))
    assert result == Skip("truncate")


def test_filter_and_ignored_deletes_are_skips() -> None:
    d = Decoder({}, 1 << 20, [mapping(
        topic="t", entity="building", id="bldg_no", fields={"name": "bldg_name"},
        filter="site_no == 'S-1'", on_delete="ignore",
    )])  # fmt: skip
    other_site = {**ROW, "site_no": "S-9"}
    assert d.decode(Rec("t", KEY, envelope("u", after=other_site))) == Skip("filtered")
    assert d.decode(Rec("t", KEY, envelope("d", before=ROW))) == Skip("delete_ignored")
    assert d.decode(Rec("t", KEY, None)) == Skip("tombstone_after_delete")


@pytest.mark.parametrize(
    "key",
    [b'{"buildingId":"B-11"}', b'{"schema":{"type":"struct"},"payload":{"buildingId":"B-11"}}',
     b"Struct{buildingId=B-11}"],
)  # fmt: skip
def test_unmapped_debezium_keys_are_the_id_and_agree_with_the_row(key: bytes) -> None:
    d = Decoder({}, 1 << 20)
    row = {"buildingId": "B-11", "name": "Tower"}
    result = d.decode(Rec("cafm.public.buildings", key, envelope("u", after=row)))
    assert isinstance(result, Change)
    assert result.external_id == "B-11"
    d.decode(Rec("cafm.public.buildings", key, envelope("d", before=row)))
    assert d.decode(Rec("cafm.public.buildings", key, None)) == Skip("tombstone_after_delete")


def test_an_unmapped_tombstone_on_a_debezium_topic_finds_its_entity_by_table() -> None:
    result = Decoder({}, 1 << 20).decode(
        Rec("cafm.public.buildings", b'{"buildingId":"B-2"}', None)
    )
    assert isinstance(result, Change)
    assert (result.entity.endpoint, result.kind, result.external_id) == (
        "building", "Deleted", "B-2",
    )  # fmt: skip


def test_every_bad_mapping_is_a_config_problem_with_its_key_path(tmp_path: Path) -> None:
    config = {
        "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
        "mappings": [
            {"topic": "a", "entity": "building", "id": "bldg_no", "fields": {"name": "x["}},
            {"topic": "b", "entity": "rocket", "id": "id"},
            {"entity": "floor", "id": "f"},
            {"topic": "c", "entity": "floor", "id": "f", "fields": {"floorId": "f"}},
        ],
    }
    path = tmp_path / "connector.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    text = str(caught.value)
    assert "mappings.0" in text
    assert "fields.name: 'x[' is not a valid JMESPath" in text
    assert "mappings.1.entity" in text
    assert "unknown entity 'rocket'" in text
    assert "mappings.2" in text
    assert "exactly one of topic" in text
    assert "mappings.3" in text
    assert "the external ID comes from `id`" in text
