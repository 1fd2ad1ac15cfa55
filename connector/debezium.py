"""Debezium as it really is: struct keys, schema wrappers, envelopes and flattened rows.

Reads the shapes Debezium and Kafka Connect put on a topic, so decoding can treat them as
changes of one row:
- keys: a JSON struct (`{"bldg_no": "B-11"}`), the same inside JsonConverter's
  `{"schema": …, "payload": …}` wrapper, Connect's StringConverter text (`Struct{bldg_no=B-11}`),
  or a plain string;
- values: the change envelope (`op`, `before`, `after`, `source`), with or without the wrapper,
  and `ExtractNewRecordState`'s flat rows with `__deleted` / `__op` / `__table`;
- `op`: c and r (snapshot) -> Added, u -> Updated, d -> Deleted, t (truncate) and m (message)
  -> no row change (`Row.kind` None).

Owns recognising these shapes. Must not: decide what a change means for the platform (that is
`decode`'s and the mapping's), do I/O, or raise for bad input.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

import orjson

__all__ = ["OPS", "Key", "Row", "parse_key", "read_row", "unwrap"]

Kind = Literal["Added", "Updated", "Deleted"]

# Debezium operations; a value of None changes no row
OPS: dict[str, Kind | None] = {
    "c": "Added",
    "r": "Added",
    "u": "Updated",
    "d": "Deleted",
    "t": None,
    "m": None,
}

# JsonConverter's envelope around a value with its schema (`schema` may be absent or null)
_WRAPPER = frozenset({"schema", "payload"})

_STRUCT_TEXT = re.compile(r"^Struct\{(.*)\}$", re.DOTALL)


class Key(NamedTuple):
    """A record's key: `text` for a plain string key, `fields` for a struct key.

    (A NamedTuple: one is made per record, and it is the cheapest immutable record.)"""

    text: str | None = None
    fields: dict[str, Any] | None = None

    def single(self) -> str | None:
        """The key as one ID: the plain string, or the only field of a one-field struct."""
        if self.text is not None:
            return self.text
        if self.fields is not None and len(self.fields) == 1:
            (value,) = self.fields.values()
            if isinstance(value, str):
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
        return None

    @property
    def is_struct(self) -> bool:
        return self.fields is not None


def parse_key(raw: bytes | None) -> Key | None:
    """The key of a record (None when it has none, or it is not text, or a JSON array)."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    first = text[0]
    if first == "{":
        return _json_key(raw, text)
    if first == "[":
        return None
    if first == "S" and text.startswith("Struct{"):  # most keys are plain IDs: cheap tests
        struct = _STRUCT_TEXT.match(text)
        if struct:
            return Key(None, _struct_text_fields(struct.group(1)))
    return Key(text)


def _json_key(raw: bytes, text: str) -> Key:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Key(text=text)
    if not isinstance(obj, dict):
        return Key(text=text)
    if "payload" in obj and obj.keys() <= _WRAPPER:
        wrapped = obj["payload"]
        if isinstance(wrapped, dict):
            return Key(fields=wrapped)
        if wrapped is not None:
            return Key(text=str(wrapped))  # a primitive key with its schema
    return Key(fields=obj)


def _struct_text_fields(body: str) -> dict[str, Any]:
    """`floorId=F-31,buildingId=B-1` -> fields (StringConverter's rendering of a Struct)."""
    fields: dict[str, Any] = {}
    for part in body.split(","):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip()] = value
    return fields


class Row(NamedTuple):
    """One row change read from a value (its `row` is the decoded JSON's own dict, not a copy:
    the decoder owns it).

    `kind` is None for an operation that changes no row (truncate, message) and for an
    unknown `op` (`op not in OPS`: the caller rejects it). `row` is the
    state after (or, for a delete, before) the change; `schema` is the row's Connect schema
    when the value carried one; `table` comes from `source.table` or `__table`.
    """

    op: str
    kind: Kind | None
    row: dict[str, Any] | None
    table: str | None
    schema: Any
    snapshot: bool


def unwrap(obj: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(schema, value) of JsonConverter's `{"schema": …, "payload": {…}}`; else (None, obj)."""
    wrapped = obj.get("payload")
    if isinstance(wrapped, dict) and obj.keys() <= _WRAPPER:
        return obj.get("schema"), wrapped
    return None, obj


def read_row(obj: dict[str, Any]) -> Row | None:
    """The row change `obj` stands for, or None when it is not a Debezium shape.

    `obj` is a decoded JSON object; the `{"schema", "payload"}` wrapper is removed here.
    """
    schema, body = unwrap(obj) if "payload" in obj else (None, obj)
    op = body.get("op")
    if isinstance(op, str) and ("after" in body or "before" in body or "source" in body):
        return _envelope(op, body, schema)
    if "__deleted" in body or "__op" in body:
        return _flat(body, schema)
    if body is not obj and schema is not None and "eventType" not in body:
        # a flattened row inside the wrapper, without the __ fields: an upsert of the row
        return Row("u", "Updated", body, None, schema, snapshot=False)
    return None


def _envelope(op: str, body: dict[str, Any], schema: Any) -> Row:
    kind = OPS.get(op)
    source = body.get("source")
    table = None
    snapshot = op == "r"
    if isinstance(source, dict):
        table = source.get("table")
        if not isinstance(table, str):
            table = None
        snapshot = snapshot or source.get("snapshot") not in (None, False, "false")
    side = body.get("before" if kind == "Deleted" else "after")
    return Row(op, kind, side if isinstance(side, dict) else None, table, schema, snapshot)


def _flat(body: dict[str, Any], schema: Any) -> Row:
    row = {k: v for k, v in body.items() if not k.startswith("__")}
    deleted = str(body.get("__deleted", "false")).lower() == "true"
    op = body.get("__op")
    op_text = op if isinstance(op, str) else ("d" if deleted else "u")
    kind: Kind | None = "Deleted" if deleted else OPS.get(op_text, "Updated")
    table = body.get("__table")
    return Row(
        op_text, kind, row, table if isinstance(table, str) else None, schema,
        snapshot=op_text == "r",
    )  # fmt: skip
