"""Debezium's shapes, as the real connector wrote them (captured from Debezium 3.6 on PostgreSQL
15 through Connect's JsonConverter and StringConverter)."""

from __future__ import annotations

import orjson
import pytest

from connector.debezium import Key, parse_key, read_row

SCHEMA_KEY = (
    b'{"schema":{"type":"struct","fields":[{"type":"string","optional":false,"field":"bldg_no"}],'
    b'"optional":false,"name":"p1.public.buildings.Key"},"payload":{"bldg_no":"B-11"}}'
)
ENVELOPE_DELETE = (
    b'{"before":{"bldg_no":"B-11","bldg_name":"Tower A2","site_no":"S-1",'
    b'"built_at":946684799123456,"area":"AeI6"},"after":null,"source":{"version":"3.6.1.Final",'
    b'"connector":"postgresql","name":"p0","ts_ms":1796170321456,"snapshot":"false","db":"cafm",'
    b'"sequence":"[\\"26401704\\",\\"26401704\\"]","ts_us":1796170321456426,'
    b'"ts_ns":1796170321456426000,"schema":"public","table":"buildings","txId":742,'
    b'"lsn":26401704,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"d",'
    b'"ts_ms":1796170321699,"ts_us":1796170321699888,"ts_ns":1796170321699888442}'
)
FLAT_DELETE = (
    b'{"bldg_no":"B-11","bldg_name":"Tower A2","site_no":"S-1","built_at":946684799123456,'
    b'"area":"AeI6","__deleted":"true","__op":"d","__table":"buildings"}'
)
FLAT_SNAPSHOT = (
    b'{"bldg_no":"B-11","bldg_name":"Tower A","site_no":"S-1","built_at":946684799123456,'
    b'"area":"AeI6","__deleted":"false","__op":"r","__table":"buildings"}'
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"bldg_no":"B-11"}', Key(fields={"bldg_no": "B-11"})),
        (SCHEMA_KEY, Key(fields={"bldg_no": "B-11"})),
        (b"Struct{floorId=F-31}", Key(fields={"floorId": "F-31"})),
        (b"Struct{site=S-1,floor=F-3}", Key(fields={"site": "S-1", "floor": "F-3"})),
        (b"b-7", Key(text="b-7")),
        (b'{"schema":{"type":"string"},"payload":"b-7"}', Key(text="b-7")),
        (b"\xff\xfe", None),
        (b"", None),
        (None, None),
    ],
)
def test_keys(raw: bytes | None, expected: Key | None) -> None:
    assert parse_key(raw) == expected


def test_a_one_field_key_is_the_id_and_a_two_field_key_is_not() -> None:
    assert Key(fields={"bldg_no": "B-11"}).single() == "B-11"
    assert Key(fields={"id": 42}).single() == "42"
    assert Key(fields={"a": "1", "b": "2"}).single() is None


def test_an_envelope_delete_reads_its_before_side_and_table() -> None:
    row = read_row(orjson.loads(ENVELOPE_DELETE))
    assert row is not None
    assert (row.op, row.kind, row.table, row.snapshot) == ("d", "Deleted", "buildings", False)
    assert row.row is not None
    assert row.row["bldg_name"] == "Tower A2"


def test_flattened_rows_carry_their_operation_in_the_double_underscore_fields() -> None:
    deleted = read_row(orjson.loads(FLAT_DELETE))
    assert deleted is not None
    assert (deleted.kind, deleted.table) == ("Deleted", "buildings")
    assert deleted.row is not None
    assert "__deleted" not in deleted.row
    snap = read_row(orjson.loads(FLAT_SNAPSHOT))
    assert snap is not None
    assert (snap.kind, snap.snapshot) == ("Added", True)


def test_the_schema_wrapper_is_removed_and_its_schema_kept() -> None:
    schema = {"type": "struct", "fields": [{"field": "bldg_no", "type": "string"}]}
    wrapped = {"schema": schema, "payload": orjson.loads(FLAT_SNAPSHOT)}
    row = read_row(wrapped)
    assert row is not None
    assert row.schema == schema
    assert row.row is not None
    assert row.row["bldg_no"] == "B-11"


def test_truncate_changes_no_row_and_an_unknown_op_is_reported_as_such() -> None:
    truncate = read_row({"op": "t", "source": {"table": "buildings"}, "before": None})
    assert truncate is not None
    assert (truncate.op, truncate.kind) == ("t", None)
    odd = read_row({"op": "x", "after": {}})
    assert odd is not None
    assert (odd.op, odd.kind) == ("x", None)


def test_a_native_record_is_not_a_debezium_shape() -> None:
    assert read_row({"eventType": "BuildingAdded", "buildingId": "b-1"}) is None
