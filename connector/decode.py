"""Decode: one Kafka record in, one platform change (or one rejection with its reason) out.

Accepts the event formats of docs/design.md §3.3:
- native records: a JSON object in the platform's own shape with `eventType`
  (`BuildingAdded`, `MeterUpdated`, ...); without `eventType`, a topic mapped to an entity
  gives `<Entity>Updated` (the platform upserts by external ID);
- CDC envelopes (Debezium style, with or without the `payload` wrapper): op c/r → Added,
  u → Updated, d → Deleted (from `before`); the entity from the topic mapping or `source.table`;
- tombstones (null value with a key) → Deleted, where the topic maps to an entity;
- Avro and JSON Schema values in the Schema Registry wire format (a zero byte, a 4-byte
  schema ID): read with their schema from the `SchemaCache` (`connector.schemas`; filled by
  `connector.schemaregistry` before the batch is decoded), then decoded as the JSON value
  they stand for. A value that does not decode with its schema, or names a schema the
  registry served but the connector cannot use, is dead-lettered as `undecodable_record`
  naming the schema ID; without `schema_registry.url`, the same, with that hint.

The external ID is the Kafka key when it is a plain string, else the entity's ID field; when
both are present they must agree. An ID must not be blank and must not hold a control character
(U+0000-U+001F, U+007F-U+009F): such a record is dead-lettered as `invalid_record`, naming the rule.

Numbers are passed on exactly as they came. orjson reads integers beyond 64 bits as floats
(`123456789012345678901234567890` would become `1.2345678901234568e+29`) and cannot write them,
so a value holding a run of 20 digits (or `-` and 19) is read and written again with the
standard library's `json`, whose integers have no bound. Only such records take that slower
path; the search for the digit run is the one cost every record pays. Floats stay IEEE
doubles (17 significant digits), as in every JSON parser the platform may use.

Owns the rejection reasons for bad input. Must not: do I/O, log per record, or raise for bad
input: every bad record becomes a `Rejection`, so it never stops the records behind it.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from connector.debezium import OPS, Key, Row, parse_key, read_row, unwrap
from connector.entities import Entity, entity_for_event_type, find_entity
from connector.mapping import MappingFailed, schema_conversions
from connector.schemas import SchemaUnusable, schema_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from connector.mapping import CompiledMapping, MappingRule
    from connector.schemas import SchemaCache

__all__ = ["Change", "Decoder", "Reason", "RecordLike", "Rejection", "SchemaNotFetched", "Skip"]

MAX_ID_LENGTH = 50

# A JSON integer orjson may not hold exactly is beyond 2**64 - 1 (20 digits) or below -2**63
# (a minus and 19 digits): 20 characters of [-0-9] in a row. Mapping those characters to "0"
# and looking for 20 of them costs ~0.5 us a record; a regular expression costs 2-4 us. A run
# inside a string (or "12-345...") matches too; it only costs the exact path.
_DIGITS_TO_ZERO = bytes.maketrans(b"-123456789", b"0" * 10)
_LONG_RUN = b"0" * 20
# C0 and C1 control characters (tab, newline and NUL included), which no external ID may hold.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class Reason(enum.StrEnum):
    """The fixed set of dead-letter reasons (docs/design.md §3.4)."""

    INVALID_JSON = "invalid_json"
    MISSING_ID = "missing_id"
    UNKNOWN_ENTITY = "unknown_entity"
    INVALID_RECORD = "invalid_record"
    RECORD_TOO_LARGE = "record_too_large"
    API_REJECTED = "api_rejected"
    BATCH_FAILED = "batch_failed"
    BATCH_LOST = "batch_lost"
    UNDECODABLE_RECORD = "undecodable_record"
    MAPPING_FAILED = "mapping_failed"


class SchemaNotFetched(LookupError):
    """A wire-format value reached the decoder before its schema was fetched (a wiring
    fault: `connector.schemaregistry.SchemaGate.admit` runs before every batch is decoded)."""


class RecordLike(Protocol):
    """What decoding reads of a consumed record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class Change(NamedTuple):
    """A record ready to submit: its entity, external ID, serialized JSON object and kind.

    (A NamedTuple: one is made per record, and a frozen dataclass costs 2.7 times as much to
    make.)"""

    entity: Entity
    external_id: str
    payload: bytes
    kind: str = "Updated"  # Added, Updated or Deleted (its eventType's suffix)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that cannot be submitted, and why."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that changes nothing on the platform and is finished as it is: the tombstone
    Debezium writes after a delete, a truncate, a row the mapping's filter leaves out. `why`
    is one of the small fixed set below (it labels `connector_records_skipped_total`)."""

    why: str


TOMBSTONE_AFTER_DELETE = "tombstone_after_delete"
TRUNCATE = "truncate"  # nothing is deleted (docs/mapping.md)
MESSAGE = "message"  # a logical decoding message
FILTERED = "filtered"  # left out by the mapping's filter
DELETE_IGNORED = "delete_ignored"  # on_delete: ignore


class Decoder:
    """Turns consumed records into `Change`s, `Rejection`s or `Skip`s.

    `topic_entities` maps topic names to entity names (`{"meter-changes": "meter"}`);
    `max_record_bytes` bounds one record's value; `mappings` are the compiled mappings of the
    config (`connector.mapping`), found by topic, then by the table a record names;
    `schemas` the schemas of wire-format values (None: no registry configured). Raises
    `SchemaNotFetched` for a wire-format value whose schema is not in `schemas`: the intake
    fetches every schema a batch names before decoding it, so that is a wiring fault.

    Keeps one fact per partition: the key of a delete it has just decoded there, so the
    tombstone Debezium writes right after that delete (same key, next offset) is finished with
    it instead of being sent again or dead-lettered.
    """

    def __init__(
        self,
        topic_entities: Mapping[str, str],
        max_record_bytes: int,
        mappings: Sequence[MappingRule] = (),
        *,
        schemas: SchemaCache | None = None,
    ) -> None:
        self.schemas = schemas
        self.topic_entities: dict[str, Entity] = {}
        for topic, name in topic_entities.items():
            entity = find_entity(name)
            if entity is None:
                raise ValueError(f"unknown entity {name!r} for topic {topic!r}")
            self.topic_entities[topic] = entity
        self.max_record_bytes = max_record_bytes
        self._by_topic: dict[str, tuple[Entity, CompiledMapping]] = {}
        self._by_table: dict[str, tuple[Entity, CompiledMapping]] = {}
        for rule in mappings:
            entity = find_entity(rule.entity)
            if entity is None:
                raise ValueError(f"unknown entity {rule.entity!r} in a mapping")
            target = self._by_topic if rule.topic else self._by_table
            target[rule.topic or rule.table or ""] = (entity, rule.compiled)
        self._last_delete: dict[tuple[str, int], bytes] = {}
        # a registry schema's Connect schema is one object for all its records: its
        # conversions are worked out once (a JSON record's schema is new each time)
        self._memo: tuple[Any, dict[str, Any]] = (None, {})

    def decode(self, record: RecordLike) -> Change | Rejection | Skip:
        after_delete = None
        if self._last_delete:  # (most records follow no delete: no lookup for them)
            after_delete = self._last_delete.pop(_slot(record), None)
        result = self._decode(record, after_delete)
        if record.key and (
            (isinstance(result, Change) and result.kind == "Deleted")
            or (isinstance(result, Skip) and result.why == DELETE_IGNORED)
        ):
            self._last_delete[_slot(record)] = record.key
        return result

    def _decode(  # noqa: PLR0911 - one return per shape of record reads best
        self, record: RecordLike, after_delete: bytes | None
    ) -> Change | Rejection | Skip:
        value = record.value
        if value is None:
            key = parse_key(record.key)
            if key is not None and key.is_struct and after_delete == record.key:
                return Skip(TOMBSTONE_AFTER_DELETE)
            return self._tombstone(record.topic, key, record.key)
        if len(value) > self.max_record_bytes:
            return Rejection(
                Reason.RECORD_TOO_LARGE,
                f"value is {len(value)} bytes; the limit is {self.max_record_bytes}",
            )
        # a JSON value never starts with a zero byte: the Schema Registry's wire format does
        obj = _parse(value) if not value or value[0] else self._from_registry(value)
        if isinstance(obj, Rejection):
            return obj
        if not isinstance(obj, dict):
            return Rejection(
                Reason.INVALID_RECORD, f"value is a JSON {type(obj).__name__}, not an object"
            )
        if "eventType" in obj and not self._by_topic:  # the common case: a native record
            return self._native(obj, parse_key(record.key), self.topic_entities.get(record.topic))
        row = read_row(obj)
        found = self._mapping_for(record.topic, row.table if row is not None else None)
        if row is None:
            if found is not None:  # a plain JSON row on a mapped topic
                return self._mapped(found, Row("u", "Updated", obj, None, None, False), record.key)
            native = unwrap(obj)[1]  # a native record inside JsonConverter's wrapper too
            return self._native(
                native, parse_key(record.key), self.topic_entities.get(record.topic)
            )
        if row.op not in OPS:
            return Rejection(Reason.INVALID_RECORD, f"CDC envelope with unknown op {row.op!r}")
        if row.kind is None:
            return Skip(TRUNCATE if row.op == "t" else MESSAGE)
        if found is not None:
            return self._mapped(found, row, record.key)
        return self._cdc(record.topic, row, parse_key(record.key))

    def _from_registry(self, value: bytes) -> Any:
        """A wire-format value read with its schema, or a Rejection naming the schema ID."""
        ident = schema_id(value)
        if ident is None or ident < 0:
            return Rejection(
                Reason.UNDECODABLE_RECORD,
                f"value starts with the Schema Registry wire format's zero byte but has "
                f"{len(value)} bytes, fewer than its 5-byte header",
            )
        if self.schemas is None:
            return Rejection(
                Reason.UNDECODABLE_RECORD,
                f"value is in the Schema Registry wire format (schema ID {ident}, Avro or "
                "JSON Schema): set schema_registry.url to decode it, then replay it",
            )
        schema = self.schemas.get(ident)
        if schema is None:
            raise SchemaNotFetched(f"schema {ident} was not fetched before decoding")
        if isinstance(schema, SchemaUnusable):
            return Rejection(Reason.UNDECODABLE_RECORD, str(schema))
        try:
            return schema.read(value)
        except ValueError as exc:
            kind = "Avro" if schema.type == "AVRO" else "JSON Schema"
            return Rejection(Reason.UNDECODABLE_RECORD, f"{kind} schema ID {ident}: {exc}")

    def _conversions(self, schema: Any) -> dict[str, Any]:
        if schema is not self._memo[0]:
            self._memo = (schema, schema_conversions(schema))
        return self._memo[1]

    def _mapping_for(self, topic: str, table: str | None) -> tuple[Entity, CompiledMapping] | None:
        found = self._by_topic.get(topic)
        if found is None and self._by_table:
            found = self._by_table.get(table or _table_of(topic))
        return found

    def _tombstone(
        self, topic: str, key: Key | None, raw_key: bytes | None
    ) -> Change | Rejection | Skip:
        if key is None:
            return Rejection(Reason.MISSING_ID, "tombstone (null value) without a key")
        found = self._mapping_for(topic, None)
        if found is not None:
            return self._mapped(found, Row("d", "Deleted", None, None, None, False), raw_key)
        mapped = self.topic_entities.get(topic) or find_entity(_table_of(topic))
        if mapped is None:
            return Rejection(
                Reason.UNKNOWN_ENTITY,
                f"tombstone on topic {topic!r}, which is not mapped to an entity "
                "(kafka.topic_entities or mappings)",
            )
        ident = _key_id(key, mapped, {})
        if ident is None:
            return Rejection(
                Reason.MISSING_ID,
                f"tombstone whose key {key.fields!r} is not one field: "
                "add a mapping with an id template",
            )
        return self._finish(mapped, "Deleted", {}, ident)

    def _cdc(self, topic: str, row: Row, key: Key | None) -> Change | Rejection:
        """A Debezium change whose row already has the platform's fields (no mapping)."""
        entity = self.topic_entities.get(topic)
        if entity is None:
            entity = find_entity(row.table or _table_of(topic))
            if entity is None:
                return Rejection(
                    Reason.UNKNOWN_ENTITY,
                    f"CDC change for table {row.table!r}: not an entity, and neither "
                    "kafka.topic_entities nor mappings name its topic",
                )
        kind = row.kind or "Updated"
        body = row.row
        ident = _key_id(key, entity, body or {})
        if body is None:
            if kind != "Deleted" or ident is None:
                side = "before" if kind == "Deleted" else "after"
                return Rejection(
                    Reason.INVALID_RECORD, f"CDC envelope op={row.op!r} has no {side!r} object"
                )
            body = {}
        return self._finish(entity, kind, body, ident)

    def _mapped(
        self, found: tuple[Entity, CompiledMapping], row: Row, raw_key: bytes | None
    ) -> Change | Rejection | Skip:
        """A row through its mapping. Only a delete reads the record's key (its `before` may
        hold only the key columns), so only a delete parses it (a key costs 8,000 instructions,
        a tenth of mapping a row)."""
        entity, mapping = found
        kind = row.kind or "Updated"
        data = row.row or {}
        key = None
        if kind == "Deleted":
            if mapping.on_delete == "ignore":
                return Skip(DELETE_IGNORED)
            key = parse_key(raw_key)
            # a delete's `before` may hold only the key columns (or be absent): the key fills in
            if key is not None and key.fields:
                data = {**key.fields, **data}
        elif mapping.filter_expression is not None:
            keep = mapping.keep(data)
            if isinstance(keep, MappingFailed):
                return Rejection(Reason.MAPPING_FAILED, str(keep))
            if not keep:
                return Skip(FILTERED)
        ident = mapping.external_id(data)
        if isinstance(ident, MappingFailed):
            if kind == "Deleted" and key is not None and key.single() is not None:
                ident = key.single() or ""
            else:
                return Rejection(Reason.MAPPING_FAILED, str(ident))
        body: dict[str, Any] = {}
        if kind != "Deleted":
            made = (
                mapping.plain_record(data)
                if row.schema is None
                else mapping.record(data, self._conversions(row.schema))
            )
            if isinstance(made, MappingFailed):
                return Rejection(Reason.MAPPING_FAILED, str(made))
            body = made
        body.pop(entity.id_field, None)
        return self._finish(entity, kind, body, ident)

    def _native(
        self, obj: dict[str, Any], key: Key | None, mapped: Entity | None
    ) -> Change | Rejection:
        event_type = obj.get("eventType")
        if event_type is None:
            if mapped is None:
                return Rejection(
                    Reason.UNKNOWN_ENTITY,
                    "record has no eventType and its topic is not mapped to an entity",
                )
            return self._finish(mapped, "Updated", obj, _key_id(key, mapped, obj))
        if not isinstance(event_type, str):
            return Rejection(Reason.INVALID_RECORD, "eventType must be a string")
        found = entity_for_event_type(event_type)
        if found is None:
            return Rejection(Reason.UNKNOWN_ENTITY, f"unknown eventType {event_type!r}")
        entity, kind = found
        return self._finish(entity, kind, obj, _key_id(key, entity, obj))

    def _finish(  # noqa: PLR0911 - one return per rejection reads best
        self, entity: Entity, kind: str, body: dict[str, Any], key: str | None
    ) -> Change | Rejection:
        if kind == "Deleted" and not entity.deletable:
            return Rejection(Reason.INVALID_RECORD, f"{entity.name} records cannot be deleted")
        own = body.get(entity.id_field)
        if isinstance(own, int) and not isinstance(own, bool):
            own = str(own)
        if own is not None and not isinstance(own, str):
            return Rejection(Reason.INVALID_RECORD, f"{entity.id_field} must be a string")
        if key is not None and own is not None and key != own:
            return Rejection(
                Reason.INVALID_RECORD,
                f"the Kafka key {key!r} and {entity.id_field} {own!r} disagree",
            )
        external_id = own if own is not None else key
        if not external_id:
            return Rejection(
                Reason.MISSING_ID, f"no {entity.id_field} in the record and no Kafka key"
            )
        if len(external_id) > MAX_ID_LENGTH:
            return Rejection(
                Reason.INVALID_RECORD,
                f"{entity.id_field} is {len(external_id)} characters; the limit is {MAX_ID_LENGTH}",
            )
        if external_id.isspace():
            return Rejection(Reason.INVALID_RECORD, f"{entity.id_field} must not be blank")
        control = None if external_id.isprintable() else _CONTROL.search(external_id)
        if control is not None:
            return Rejection(
                Reason.INVALID_RECORD,
                f"{entity.id_field} contains a control character U+{ord(control.group()):04X}",
            )
        body[entity.id_field] = external_id
        body["eventType"] = entity.name + kind
        if kind != "Deleted":
            # (a comprehension is a call of its own: only when the entity requires a field)
            missing = entity.required and [
                f for f in entity.required if body.get(f) in (None, "", [])
            ]
            if missing:
                return Rejection(
                    Reason.INVALID_RECORD,
                    f"{entity.name} record {external_id!r} misses required "
                    f"field{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                )
            if entity.any_of and not any(body.get(f) for f in entity.any_of):
                return Rejection(
                    Reason.INVALID_RECORD,
                    f"{entity.name} record {external_id!r} needs one of {', '.join(entity.any_of)}",
                )
        return Change(entity, external_id, _dumps(body), kind)


def _parse(value: bytes) -> Any:
    """The JSON `value` with every number as written, or a Rejection."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if _LONG_RUN not in value.translate(_DIGITS_TO_ZERO):
            return Rejection(Reason.INVALID_JSON, f"value is not JSON: {exc}")
        return _loads_exact(value)  # an integer of more than 308 digits is "infinity" to orjson
    if _LONG_RUN in value.translate(_DIGITS_TO_ZERO):
        return _loads_exact(value)
    return obj


class _NotJson(ValueError):
    """What the standard library reads but JSON (and orjson) does not: NaN, Infinity, 1e400."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJson(f"number {text[:20]} is infinity when parsed as double")
    return number


def _loads_exact(value: bytes) -> Any:
    """`value` parsed with every integer exact (the standard library's parser), or a Rejection.

    As strict as orjson: UTF-8 without a BOM, no NaN or Infinity, no float beyond a double, no
    lone surrogate (a string the platform could not be sent)."""
    try:
        obj = json.loads(
            value.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite
        )
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        return Rejection(Reason.INVALID_JSON, f"value is not JSON: not UTF-8 ({exc.reason})")
    except (json.JSONDecodeError, _NotJson) as exc:
        return Rejection(Reason.INVALID_JSON, f"value is not JSON: {exc}")
    except ValueError as exc:  # an integer beyond Python's 4,300-digit conversion limit
        return Rejection(Reason.INVALID_RECORD, f"value holds a number that cannot be read: {exc}")
    return obj


def _dumps(body: dict[str, Any]) -> bytes:
    """`body` as compact JSON; integers beyond 64 bits (which orjson refuses) exactly."""
    try:
        # orjson's result keeps a ~4 KB buffer whatever its length; a pending record lives
        # for minutes, so keep an exact-size copy (measured: 4,097 -> 114 bytes a record)
        return memoryview(orjson.dumps(body)).tobytes()
    except orjson.JSONEncodeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _slot(record: RecordLike) -> tuple[str, int]:
    return record.topic, getattr(record, "partition", 0)


def _table_of(topic: str) -> str:
    """The table a Debezium topic is named for: `prefix.schema.table` -> `table`."""
    return topic.rsplit(".", 1)[-1]


def _key_id(key: Key | None, entity: Entity, body: Mapping[str, Any]) -> str | None:
    """The external ID a key gives, to be checked against the body's own ID field.

    A plain string key is the ID. A struct key gives its field named like the entity's ID
    field; else, when the body has no ID of its own, its only field (Debezium's key of a table
    whose primary key is one column); else nothing (the body's ID field is the ID).
    """
    if key is None:
        return None
    if key.fields is None:
        return key.text
    own = _own_id(key.fields, entity)
    if own is not None:
        return own
    return None if entity.id_field in body else key.single()


def _own_id(fields: Mapping[str, Any], entity: Entity) -> str | None:
    """The entity's ID field of a struct key, when the key has it."""
    value = fields.get(entity.id_field)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None
