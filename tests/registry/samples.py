"""The schemas and rows the Schema Registry tests share: a Debezium change of a `buildings`
row as Debezium's AvroConverter and Confluent's JsonSchemaConverter describe it, and the
mapping that onboards it."""

from __future__ import annotations

import datetime as dt
from typing import Any

# epoch days of 2021-03-04, epoch µs of 2019-05-06T07:08:09.5Z: how Debezium writes a DATE and
# a TIMESTAMP(6) column (io.debezium.time.Date, io.debezium.time.MicroTimestamp)
PERMIT_DAYS = (dt.date(2021, 3, 4) - dt.date(1970, 1, 1)).days
BUILT_MICROS = int(dt.datetime(2019, 5, 6, 7, 8, 9, 500000, tzinfo=dt.UTC).timestamp() * 1e6)
PERMIT_ISO = "2021-03-04T00:00:00Z"
BUILT_ISO = "2019-05-06T07:08:09Z"

MAPPING: dict[str, Any] = {
    "table": "buildings", "entity": "building", "id": "bldg_no",
    "fields": {"name": "bldg_name", "buildingPermitDate": "permit_date",
               "constructionDate": "built_at", "usableArea": "area_m2",
               "opened": "opened"},
}  # fmt: skip
"""No `convert`: the conversions come from the schema's logical types."""


def avro_envelope(namespace: str = "shop.public.buildings") -> dict[str, Any]:
    """Debezium's Avro value schema of a change of `buildings`: Debezium's own logical types
    (a `connect.name` on a plain int or long), a Connect Decimal (bytes with `logicalType`
    decimal) and an Avro `date` logical type without a `connect.name`."""
    value = {
        "type": "record", "name": "Value", "namespace": namespace,
        "fields": [
            {"name": "bldg_no", "type": "string"},
            {"name": "bldg_name", "type": ["null", "string"], "default": None},
            {"name": "permit_date", "type": ["null", {
                "type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"}],
             "default": None},
            {"name": "built_at", "type": ["null", {
                "type": "long", "connect.version": 1,
                "connect.name": "io.debezium.time.MicroTimestamp"}], "default": None},
            {"name": "area_m2", "type": ["null", {
                "type": "bytes", "scale": 2, "precision": 10, "connect.version": 1,
                "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
                "connect.name": "org.apache.kafka.connect.data.Decimal",
                "logicalType": "decimal"}], "default": None},
            {"name": "opened", "type": ["null", {"type": "int", "logicalType": "date"}],
             "default": None},
        ],
    }  # fmt: skip
    source = {
        "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
        "fields": [{"name": "table", "type": "string"}, {"name": "snapshot",
                   "type": ["null", "string"], "default": None}],
    }  # fmt: skip
    return {
        "type": "record", "name": "Envelope", "namespace": namespace,
        "connect.name": f"{namespace}.Envelope",
        "fields": [
            {"name": "before", "type": ["null", value], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": source},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
        ],
    }  # fmt: skip


def avro_change(bldg_no: str, name: str, op: str = "c") -> dict[str, Any]:
    """A change as the Avro writer takes it (the decimal as its unscaled big-endian bytes)."""
    row = {
        "bldg_no": bldg_no, "bldg_name": name, "permit_date": PERMIT_DAYS,
        "built_at": BUILT_MICROS, "area_m2": (123450).to_bytes(3, "big", signed=True),
        "opened": dt.date(2020, 1, 2),
    }  # fmt: skip
    before, after = (row, None) if op == "d" else (None, row)
    return {"before": before, "after": after, "source": {"table": "buildings"}, "op": op,
            "ts_ms": 1}  # fmt: skip


def json_schema() -> dict[str, Any]:
    """Confluent's JsonSchemaConverter's schema of the same change: the Connect type of each
    field in `connect.type`, its logical type's name in `title`."""
    row = {
        "type": "object", "title": "shop.public.buildings.Value",
        "properties": {
            "bldg_no": {"type": "string", "connect.index": 0},
            "bldg_name": {"oneOf": [{"type": "null"}, {"type": "string"}], "connect.index": 1},
            "permit_date": {"oneOf": [{"type": "null"}, {
                "type": "integer", "connect.type": "int32", "connect.version": 1,
                "title": "io.debezium.time.Date"}], "connect.index": 2},
            "built_at": {"oneOf": [{"type": "null"}, {
                "type": "integer", "connect.type": "int64", "connect.version": 1,
                "title": "io.debezium.time.MicroTimestamp"}], "connect.index": 3},
            "area_m2": {"oneOf": [{"type": "null"}, {
                "type": "number", "connect.type": "bytes", "connect.version": 1,
                "connect.parameters": {"scale": "2"},
                "title": "org.apache.kafka.connect.data.Decimal"}], "connect.index": 4},
        },
    }  # fmt: skip
    return {
        "type": "object", "title": "shop.public.buildings.Envelope",
        "properties": {
            "before": {"oneOf": [{"type": "null"}, row]},
            "after": {"oneOf": [{"type": "null"}, row]},
            "source": {"type": "object", "properties": {"table": {"type": "string"}}},
            "op": {"type": "string"},
        },
    }  # fmt: skip


def json_change(bldg_no: str, name: str) -> dict[str, Any]:
    row = {"bldg_no": bldg_no, "bldg_name": name, "permit_date": PERMIT_DAYS,
           "built_at": BUILT_MICROS, "area_m2": 1234.5}  # fmt: skip
    return {"before": None, "after": row, "source": {"table": "buildings"}, "op": "c"}
