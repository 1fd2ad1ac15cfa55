"""Properties of decode and coalescing, over generated input (hypothesis)."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.decode import Change, Decoder, Rejection
from connector.entities import ENTITIES
from connector.offsets import OffsetTracker, TopicPartitionKey
from connector.window import Batch, Ref, Window
from tests.support.clock import FakeClock


@dataclass
class Rec:
    topic: str
    key: bytes | None
    value: bytes | None


DECODER = Decoder({"mapped": "floor"}, max_record_bytes=4096)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(2**63, 2**70)
    | st.floats()  # NaN and infinities too: written as NaN / Infinity, which JSON refuses
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "x\udfff"]),  # lone surrogates: orjson refuses them
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["eventType", "buildingId", "floorId", "name", "op", "after", "before", "source", "payload"]
)
records = st.dictionaries(field_names, json_values | st.sampled_from(
    ["BuildingAdded", "FloorUpdated", "MeterDeleted", "AddressDeleted", "c", "u", "d"]
), max_size=6)  # fmt: skip


@settings(max_examples=400)
@given(
    topic=st.sampled_from(["mapped", "other"]),
    key=st.none() | st.binary(max_size=60),
    value=st.none()
    | st.binary(max_size=200)
    | records.map(lambda r: json.dumps(r).encode())
    # a run of 24 digits sends any value, valid or not, through the exact (stdlib) path
    | st.tuples(st.binary(max_size=80), st.binary(max_size=80)).map(
        lambda t: t[0] + b"123456789012345678901234" + t[1]
    ),
)
def test_decode_never_raises_and_every_change_is_well_formed(
    topic: str, key: bytes | None, value: bytes | None
) -> None:
    result = DECODER.decode(Rec(topic, key, value))
    assert isinstance(result, Change | Rejection)
    if isinstance(result, Change):
        body = json.loads(result.payload)  # not orjson: it reads integers beyond 64 bits as floats
        assert body[result.entity.id_field] == result.external_id
        assert 1 <= len(result.external_id) <= 50
        assert not result.external_id.isspace()
        assert all(unicodedata.category(ch) != "Cc" for ch in result.external_id)
        assert body["eventType"] in result.entity.event_types
    else:
        assert result.message


@settings(max_examples=300)
@given(number=st.integers() | st.integers(2**63, 2**80) | st.integers(-(2**80), -(2**63)))
def test_every_integer_reaches_the_payload_as_written(number: int) -> None:
    value = b'{"eventType": "MeterUpdated", "meterId": "m-1", "buildingId": "b", "n": %d}' % number
    result = DECODER.decode(Rec("other", None, value))
    assert isinstance(result, Change), result
    assert json.loads(result.payload)["n"] == number


@settings(max_examples=300)
@given(
    number=st.integers(10**19, 10**40) | st.integers(-(10**40), -(10**19)),
    text=st.text(st.characters(blacklist_categories=()), max_size=8)
    | st.sampled_from(["\ud800", "a\udfffb"]),  # lone surrogates, which orjson refuses
    real=st.floats(),  # NaN and infinities are written as NaN / Infinity, which JSON refuses
    tail=st.sampled_from(["", ', "g": 1e400', ', "g": -1e999']),  # beyond a double
)
def test_the_exact_path_never_raises_and_sends_only_json(
    number: int, text: str, real: float, tail: str
) -> None:
    record = {"eventType": "BuildingAdded", "buildingId": "b", "n": number, "s": text, "f": real}
    value = (json.dumps(record)[:-1] + tail + "}").encode()
    result = DECODER.decode(Rec("other", None, value))
    assert isinstance(result, Change | Rejection)
    if isinstance(result, Change):
        body = json.loads(result.payload, parse_constant=lambda c: pytest.fail(f"sent {c}"))
        assert body["n"] == number
        assert all(abs(v) != float("inf") for v in body.values() if isinstance(v, float))
        result.payload.decode("utf-8")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("finish"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(ops)
def test_coalescing_sends_the_newest_version_once_in_flight_and_finishes_every_record(
    steps: list[tuple[str, int]],
) -> None:
    clock = FakeClock(0.0)
    window = Window(max_records=3, max_request_bytes=10_000, max_wait=0, clock=clock)
    building, tp = ENTITIES["Building"], TopicPartitionKey("t", 0)
    offsets = OffsetTracker()
    newest: dict[str, int] = {}
    sent_last: dict[str, int] = {}
    in_flight: list[Batch] = []
    offset = 0
    for step, n in [*steps, *[("drain", 0)] * 40]:
        if step == "add":
            eid = f"b-{n}"
            window.add(
                Change(building, eid, orjson.dumps({"buildingId": eid, "rev": offset})),
                Ref(tp, offset, 0),
            )
            offsets.track(tp, offset)
            newest[eid] = offset
            offset += 1
        elif step in ("take", "drain"):
            batch = window.take(building)
            if batch is not None:
                ids = [s.change.external_id for s in batch.slots]
                flying = {s.change.external_id for b in in_flight for s in b.slots}
                assert not set(ids) & flying, "two versions of one ID in flight"
                in_flight.append(batch)
        if step in ("finish", "drain") and in_flight:
            done = in_flight.pop(0)
            for slot in done.slots:
                sent_last[slot.change.external_id] = orjson.loads(slot.change.payload)["rev"]
                for ref in slot.refs:
                    offsets.finish(ref.tp, ref.offset)
            window.finish(done)
    assert window.pending_records == 0
    assert window.unsent_records == 0
    assert sent_last == newest, "the newest version of every ID is what was sent last"
    assert offsets.position(tp) == (offset or None)


def test_the_soak_attributes_each_429_to_the_fault_running_then() -> None:
    from tests.reliability.soak import _by_phase  # noqa: PLC0415 - the soak's own helper

    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    phases = [(start + 60, "errors"), (start + 120, "kill -9"), (start + 180, "catching up")]
    stamps = [
        "2026-01-01T00:00:30.000Z", "2026-01-01T00:01:00.000Z", "2026-01-01T00:02:59.999Z",
        "2026-01-01T00:02:30.5Z", "2026-01-01T00:05:00Z",
    ]  # fmt: skip
    assert _by_phase(stamps, phases) == {
        "before the first fault": 1, "errors": 1, "kill -9": 2, "catching up": 1,
    }  # fmt: skip
