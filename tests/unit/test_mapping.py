"""Mappings: expressions compiled once, Debezium's logical types converted, failures named."""

from __future__ import annotations

import base64

import jmespath
import jmespath.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.mapping import (
    CompiledMapping,
    MappingFailed,
    compile_mapping,
    convert,
    schema_conversions,
)

ROW = {
    "bldg_no": "B-11",
    "bldg_name": "Tower A",
    "site_no": "S-1",
    "built_at": 946684799123456,
    "area": "AeI6",
    "addr": {"city": "Berlin"},
    "status": "active",
}


def test_plain_and_nested_paths_and_expressions_map_a_row() -> None:
    mapping = compile_mapping(
        entity="building",
        id_template="bldg_no",
        fields={"name": "bldg_name", "siteId": "site_no", "city": "addr.city",
                "label": "join(' / ', [site_no, bldg_name])"},
        constants={"country": "DE"},
    )  # fmt: skip
    assert mapping.external_id(ROW) == "B-11"
    assert mapping.record(ROW, {}) == {
        "country": "DE", "name": "Tower A", "siteId": "S-1", "city": "Berlin",
        "label": "S-1 / Tower A",
    }  # fmt: skip


def test_a_template_makes_the_id_from_several_fields_and_names_a_missing_one() -> None:
    mapping = compile_mapping(entity="building", id_template="{site_no}-{bldg_no}", fields={})
    assert mapping.external_id(ROW) == "S-1-B-11"
    failed = mapping.external_id({"site_no": "S-1"})
    assert isinstance(failed, MappingFailed)
    assert str(failed) == "id: '{site_no}-{bldg_no}': bldg_no is missing or empty"


def test_every_bad_expression_is_reported_at_once() -> None:
    with pytest.raises(ValueError, match=r"fields\.name") as caught:
        compile_mapping(
            entity="building", id_template="{}", filter_expression="status ==",
            fields={"name": "bldg_name[", "validFrom": {"expr": "built_at", "convert": "epoch"}},
        )  # fmt: skip
    message = str(caught.value)
    for part in ("fields.name", "fields.validFrom.convert", "filter", "id:"):
        assert part in message


def test_schema_logical_types_convert_the_columns_they_name() -> None:
    schema = {
        "type": "struct",
        "fields": [
            {"type": "string", "field": "bldg_no"},
            {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "field": "built_at"},
            {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
             "parameters": {"scale": "2"}, "field": "area"},
        ],
    }  # fmt: skip
    conversions = schema_conversions(schema)
    mapping = compile_mapping(
        entity="building", id_template="bldg_no",
        fields={"validFrom": "built_at", "area": "area"},
    )  # fmt: skip
    assert mapping.record(ROW, conversions) == {
        "validFrom": "1999-12-31T23:59:59Z",
        "area": 1234.5,
    }


@pytest.mark.parametrize(
    ("value", "how", "expected"),
    [
        (19000, "date", "2022-01-08T00:00:00Z"),
        (1_700_000_000_000, "timestamp", "2023-11-14T22:13:20Z"),
        (1_700_000_000_123_456, "micro_timestamp", "2023-11-14T22:13:20Z"),
        (1_700_000_000_123_456_789, "nano_timestamp", "2023-11-14T22:13:20Z"),
        ("2023-11-14T23:13:20+01:00", "zoned_timestamp", "2023-11-14T22:13:20Z"),
        (base64.b64encode((-12345).to_bytes(2, "big", signed=True)).decode(), "decimal", -123.45),
        (None, "date", None),
    ],
)
def test_conversions(value: object, how: str, expected: object) -> None:
    scale = 2 if how == "decimal" else 0
    assert convert(value, how, scale=scale) == expected


def test_a_decimal_a_float_cannot_hold_stays_exact_as_text() -> None:
    digits = 123456789012345678901234567890
    raw = base64.b64encode(digits.to_bytes(13, "big", signed=True)).decode()
    assert convert(raw, "decimal", scale=2) == "1234567890123456789012345678.90"


def test_a_value_that_does_not_convert_is_a_named_failure() -> None:
    mapping = compile_mapping(
        entity="building", id_template="bldg_no",
        fields={"validFrom": {"expr": "bldg_name", "convert": "timestamp"}},
    )  # fmt: skip
    failed = mapping.record(ROW, {})
    assert isinstance(failed, MappingFailed)
    assert failed.field == "validFrom"
    assert failed.expression == "bldg_name"
    assert "expects an integer" in failed.message


def test_the_filter_keeps_or_drops_a_row() -> None:
    mapping = compile_mapping(
        entity="building", id_template="bldg_no", fields={},
        filter_expression="status == 'active'",
    )  # fmt: skip
    assert mapping.keep(ROW) is True
    assert mapping.keep({**ROW, "status": "draft"}) is False


@pytest.mark.parametrize(
    ("expression", "row"),
    [
        ("[addr_no]", {"addr_no": "A-1"}),
        ("[addr_no, other]", {"addr_no": "A-1"}),
        ("join('/', [site_no, bldg_no])", {"site_no": "S-1", "bldg_no": "B-1"}),
        ("join('/', [site_no, bldg_no])", {"site_no": "S-1"}),  # null is not a string
        ("join('/', [site_no, n])", {"site_no": "S-1", "n": 5}),
        ("join(', ', [a])", {"a": ""}),
    ],
)
def test_the_fast_paths_agree_with_jmespath_itself(expression: str, row: dict[str, object]) -> None:
    mapping = compile_mapping(entity="building", id_template="id", fields={"f": expression})
    ours = mapping.record(row, {})
    error: str | None = None
    theirs: object = None
    try:
        theirs = jmespath.search(expression, row)
    except jmespath.exceptions.JMESPathError as exc:
        error = str(exc)
    if error is not None:
        assert isinstance(ours, MappingFailed)
        assert ours.message == error
    else:
        assert ours == ({} if theirs is None else {"f": theirs})


# every form the generated `record` unrolls differently: a column, a nested path, an expression,
# a join of columns, each explicit conversion
_FORMS: dict[str, str | dict[str, str]] = {
    "name": "bldg_name", "city": "address.city", "size": "length(bldg_name)",
    "code": "join('/', [site_no, bldg_no])", "one": "join('', [bldg_no])",
    "built": {"expr": "built", "convert": "date"},
    "ts": {"expr": "ts", "convert": "timestamp"},
    "micros": {"expr": "micros", "convert": "micro_timestamp"},
    "nanos": {"expr": "nanos", "convert": "nano_timestamp"},
    "zoned": {"expr": "zoned", "convert": "zoned_timestamp"},
    "amount": {"expr": "amount", "convert": "decimal"},
}  # fmt: skip
_COLUMNS = ["bldg_name", "address", "site_no", "bldg_no", "built", "ts", "micros", "nanos",
            "zoned", "amount"]  # fmt: skip
_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5),
    st.integers(min_value=-(10**20), max_value=10**20), st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.sampled_from(["2024-05-01T10:00:00+02:00", "AAE=", "12.50", "nope"]),
    st.dictionaries(st.sampled_from(["city", "x"]), st.text(max_size=3), max_size=2),
    st.lists(st.text(max_size=2), max_size=2),
)  # fmt: skip


def _mapping_of(fields: dict[str, str | dict[str, str]]) -> CompiledMapping:
    return compile_mapping(
        entity="building", id_template="bldg_no", fields=fields,
        constants={"kind": "office"},
    )  # fmt: skip


@pytest.mark.parametrize("name", [*_FORMS, None])
@settings(max_examples=150, deadline=None)
@given(row=st.dictionaries(st.sampled_from(_COLUMNS), _ANY_VALUE))
def test_the_generated_record_agrees_with_the_field_loop(
    name: str | None, row: dict[str, object]
) -> None:
    # the generated function serves rows without a Connect schema; `_record` is its reference;
    # each form alone (a failure of one field would hide the others), then all of them
    mapping = _mapping_of(_FORMS if name is None else {name: _FORMS[name]})
    assert mapping.record(row, {}) == mapping._record(row, {})
