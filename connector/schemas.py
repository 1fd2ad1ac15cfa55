"""Schema Registry formats: the Confluent wire format, and Avro / JSON Schema values read with
their schema into what decoding reads of a JSON value.

The wire format is a zero byte, the schema's ID as a 4-byte big-endian integer, then the
value encoded with that schema (Avro binary, or JSON text for JSON Schema). A JSON value never
starts with a zero byte, so the first byte tells the formats apart.

An Avro value is read with its logical types left as Avro encodes them (a date as epoch days,
a timestamp as epoch milli- or microseconds, a decimal as big-endian unscaled bytes), its bytes
as base64 text: the forms Kafka Connect's JsonConverter writes, which `connector.mapping`
converts. Where the schema names logical types, the value comes wrapped with a Connect-style
schema naming them (`{"schema": …, "payload": …}`, JsonConverter's own wrapper), so mappings
convert an Avro or JSON Schema row exactly as a JSON row with `schemas.enable=true`. Debezium's
own types (`io.debezium.time.Date`, …) are plain ints and longs with a `connect.name`, which
is kept; Avro's logical types without one are named by their Connect equivalent.

JSON Schema values are parsed, not validated against their schema (the connector reads them
as JSON; the producer's serializer validated them).

`SchemaCache` holds each schema by ID forever: a registry never changes the schema an ID names.
It is filled by `connector.schemaregistry` before a batch is decoded; decoding only reads it.

Owns the wire format and reading values with a schema. Must not: do I/O, or raise for bad
input: a schema that cannot be used, or a value that does not decode with its schema, is
reported as a `ValueError` whose message the decoder dead-letters with the schema ID.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Final, Literal

import fastavro
import orjson

__all__ = [
    "HEADER_BYTES",
    "MAGIC",
    "Schema",
    "SchemaCache",
    "SchemaUnusable",
    "parse_schema",
    "schema_id",
]

MAGIC: Final = 0
HEADER_BYTES: Final = 5  # the magic byte and the 4-byte schema ID

SchemaType = Literal["AVRO", "JSON", "PROTOBUF"]

# Avro logical types -> the Connect logical type `connect.mapping` converts
_AVRO_LOGICAL: Final = {
    "date": "org.apache.kafka.connect.data.Date",
    "timestamp-millis": "org.apache.kafka.connect.data.Timestamp",
    "local-timestamp-millis": "org.apache.kafka.connect.data.Timestamp",
    "timestamp-micros": "io.debezium.time.MicroTimestamp",
    "local-timestamp-micros": "io.debezium.time.MicroTimestamp",
    "decimal": "org.apache.kafka.connect.data.Decimal",
}


def schema_id(value: bytes) -> int | None:
    """The schema ID of a wire-format value; None when `value` is not in the wire format.

    A value that starts with the magic byte but is shorter than the header is in no format:
    `-1`, which no registry assigns, so the decoder rejects it naming the header."""
    if not value or value[0] != MAGIC:
        return None
    if len(value) < HEADER_BYTES:
        return -1
    return int.from_bytes(value[1:HEADER_BYTES], "big")


class SchemaUnusable(ValueError):
    """A schema the registry served that this connector cannot read values with."""


@dataclass(frozen=True, slots=True)
class Schema:
    """One registered schema, ready to read values with.

    `connect` is the Connect-style struct schema naming the logical types of its fields (None
    when it names none); `avro` the parsed Avro schema (None for JSON Schema)."""

    id: int
    type: SchemaType
    avro: Any = None
    connect: dict[str, Any] | None = None
    has_bytes: bool = False  # an Avro `bytes` or `fixed` somewhere: values need base64

    def read(self, value: bytes) -> Any:
        """The decoded value of a wire-format record (its 5-byte header included).

        Raises ValueError, naming what is wrong, when the value does not decode with this
        schema (JSON Schema values: when they are not JSON; their top level is not checked)."""
        body = value[HEADER_BYTES:]
        if self.type == "JSON":
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"value is not JSON: {exc}") from exc
        else:
            stream = io.BytesIO(body)
            try:
                obj = fastavro.schemaless_reader(stream, self.avro, None)
            except (EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
                raise ValueError(f"value does not decode as Avro: {_describe(exc)}") from exc
            if stream.tell() != len(body):
                raise ValueError(
                    f"value does not decode as Avro: {len(body) - stream.tell()} bytes "
                    "left after the record (written with another schema?)"
                )
            if self.has_bytes:
                obj = _json_ready(obj)
        if self.connect is not None and isinstance(obj, dict):
            return {"schema": self.connect, "payload": obj}
        return obj


def parse_schema(ident: int, text: str, schema_type: str | None) -> Schema:
    """The schema the registry serves as `text` (`schemaType`: AVRO when absent).

    Raises `SchemaUnusable` for a schema this connector cannot read with: not JSON, not
    valid Avro, Protobuf, or an Avro schema that refers to another (`references`)."""
    kind = (schema_type or "AVRO").upper()
    if kind == "PROTOBUF":
        raise SchemaUnusable(f"schema {ident} is Protobuf, which the connector does not read")
    if kind not in ("AVRO", "JSON"):
        raise SchemaUnusable(f"schema {ident} has the unknown schemaType {schema_type!r}")
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SchemaUnusable(f"schema {ident} is not JSON: {exc}") from exc
    if kind == "JSON":
        return Schema(ident, "JSON", None, _connect_of_json(raw))
    named: dict[str, Any] = {}
    connect = _connect_of_avro(raw, named, None)
    try:
        parsed = fastavro.parse_schema(_strip_logical(raw))
    except (fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaUnusable(f"schema {ident} is not a usable Avro schema: {exc}") from exc
    connect_or_none = connect if _names_any(connect) else None
    return Schema(ident, "AVRO", parsed, connect_or_none, _has_bytes(raw))


class SchemaCache(dict[int, "Schema | SchemaUnusable"]):
    """Schemas by ID, kept forever (an ID's schema never changes), or why one is unusable.

    A dict (lookups run per record): `get(id)` is None for an ID not fetched yet."""

    def put(self, ident: int, schema: Schema | SchemaUnusable) -> None:
        self[ident] = schema


def _json_ready(value: Any) -> Any:
    """An Avro datum with its bytes as base64 text (JsonConverter's form), in place."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list | bytes):
                value[k] = _json_ready(v)
        return value
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _has_bytes(schema: Any) -> bool:
    """Whether an Avro schema (as JSON) has a `bytes` or `fixed` type anywhere."""
    if isinstance(schema, str):
        return schema in ("bytes", "fixed")
    if isinstance(schema, list):
        return any(_has_bytes(s) for s in schema)
    if isinstance(schema, dict):
        return (
            _has_bytes(schema.get("type"))
            or any(
                _has_bytes(f.get("type")) for f in schema.get("fields") or () if isinstance(f, dict)
            )
            or _has_bytes(schema.get("items"))
            or _has_bytes(schema.get("values"))
        )
    return False


def _strip_logical(schema: Any) -> Any:
    """`schema` without its `logicalType`s: fastavro then reads the values as encoded."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(v) for v in schema]
    return schema


def _avro_name(schema: dict[str, Any], namespace: str | None) -> str | None:
    name = schema.get("name")
    if not isinstance(name, str):
        return None
    if "." in name:
        return name
    space = schema.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _connect_of_avro(schema: Any, named: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    """The Connect-style schema of an Avro type: `{"type": "struct", "fields": [...]}` for a
    record, `{"name": <logical type>, "parameters": {"scale": …}}` for a logical type."""
    if isinstance(schema, str):
        known = named.get(schema) or (named.get(f"{namespace}.{schema}") if namespace else None)
        return known if isinstance(known, dict) else {}
    if isinstance(schema, list):  # a union: Debezium's optional fields are ["null", T]
        branches = [b for b in schema if b != "null"]
        return _connect_of_avro(branches[0], named, namespace) if len(branches) == 1 else {}
    if not isinstance(schema, dict):
        return {}
    kind = schema.get("type")
    if isinstance(kind, list | dict):
        return _connect_of_avro(kind, named, namespace)
    if kind == "record":
        full = _avro_name(schema, namespace)
        own_space = full.rsplit(".", 1)[0] if full and "." in full else namespace
        out: dict[str, Any] = {"type": "struct", "fields": []}
        if full:
            named[full] = out  # before fields: a record may refer to itself
        for f in schema.get("fields") or []:
            if isinstance(f, dict) and isinstance(f.get("name"), str):
                inner = _connect_of_avro(f.get("type"), named, own_space)
                out["fields"].append({"field": f["name"], **inner})
        return out
    found: dict[str, Any] = {}
    name = schema.get("connect.name") or _AVRO_LOGICAL.get(str(schema.get("logicalType")))
    if isinstance(name, str):
        found["name"] = name
    if "scale" in schema:
        found["parameters"] = {"scale": schema["scale"]}
    return found


def _connect_of_json(schema: Any) -> dict[str, Any] | None:
    """The Connect-style schema of a JSON Schema (Confluent's JsonSchemaConverter names a
    field's Connect type in its `title`, its scale in `connect.parameters`)."""
    connect = _connect_of_json_node(schema, 0)
    return connect if _names_any(connect) else None


def _connect_of_json_node(schema: Any, depth: int) -> dict[str, Any]:
    if not isinstance(schema, dict) or depth > 32:  # deeper is no row
        return {}
    for union in ("oneOf", "anyOf"):
        branches = schema.get(union)
        if isinstance(branches, list):
            real = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
            return _connect_of_json_node(real[0], depth + 1) if len(real) == 1 else {}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        fields = [
            {"field": name, **_connect_of_json_node(sub, depth + 1)}
            for name, sub in properties.items()
        ]
        return {"type": "struct", "fields": fields}
    found: dict[str, Any] = {}
    name = schema.get("connect.name") or schema.get("title")
    if isinstance(name, str):
        found["name"] = name
    params = schema.get("connect.parameters")
    if isinstance(params, dict) and "scale" in params:
        found["parameters"] = {"scale": params["scale"]}
    return found


def _names_any(connect: dict[str, Any], depth: int = 0) -> bool:
    """Whether a Connect-style schema names a logical type anywhere (else no wrapper)."""
    if depth > 32:  # a self-referring record
        return False
    return any(
        "name" in f or _names_any(f, depth + 1)
        for f in connect.get("fields", ())
        if isinstance(f, dict)
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
