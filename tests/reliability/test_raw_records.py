"""Arbitrary raw Kafka records against the real pipeline: nothing stops it, nothing is lost.

Records are written to a real broker as raw bytes (`tests.support.rawkafka`), so a key, a
value, a header key or a header value may be anything Kafka's wire format allows: not UTF-8,
empty, null, the connector's own header names, or as large as the topic's configured limit.
They are mixed with valid building records, then the connector runs in-process against the
emulator until every partition is committed to its end. For every record it must hold:

- the connector never exits, and commits every partition to its end;
- each record is either dead-lettered with a known reason and its source coordinates, or is
  a valid record whose newest version the emulator stores (or coalesced into that version);
- the counters reconcile: consumed = delivered + dead-lettered + coalesced, and consumed is
  every record written.

The named cases are the minimal reproductions of each class of hostile record; the property
test mixes all of them at small sizes.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from connector.decode import Reason
from tests.integration.helpers import (
    committed_offsets,
    end_offsets,
    running_emulator,
    settings_for,
)
from tests.support.hostile import MIB
from tests.support.pipeline import reconciles, running_connector, until
from tests.support.rawkafka import RawRecord, create_topic_with, produce_raw, read_raw
from tests.support.report import Report, Row
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from connector.app import Pipeline
    from tests.support.rawkafka import Header, StoredRecord

pytestmark = [pytest.mark.kafka]

LIMIT = 4 * MIB  # the topics' max.message.bytes: the largest record a producer may write
PARTITIONS = 3
REASONS = {r.value.encode() for r in Reason}


@dataclass(frozen=True)
class Item:
    """One record to write: where, what, and (for a valid building) its ID and revision."""

    partition: int
    record: RawRecord
    building: str | None = None
    revision: int | None = None


def valid(
    building: str, revision: int, headers: tuple[Header, ...] = (), *, name: str = "B"
) -> Item:
    """A valid building record on the partition its ID hashes to (as a keyed producer's).

    The emulator accepts every one; with `name="__fail_async__"` it fails it later, in the
    batch's status (FailedValidation), so it is dead-lettered after it was accepted."""
    value = orjson.dumps(
        {"buildingId": building, "eventType": "BuildingUpdated", "name": name, "revision": revision}
    )
    partition = int(building.rsplit("-", 1)[1]) % PARTITIONS
    return Item(partition, RawRecord(building.encode(), value, headers), building, revision)


def raw(
    partition: int, key: bytes | None, value: bytes | None, headers: tuple[Header, ...] = ()
) -> Item:
    return Item(partition, RawRecord(key, value, headers))


def batches(items: Sequence[Item]) -> list[tuple[int, list[RawRecord]]]:
    """Consecutive records of a partition share a batch up to 512 KiB; large ones go alone."""
    out: list[tuple[int, list[RawRecord]]] = []
    for item in items:
        last = out[-1] if out else None
        if (
            last is not None
            and last[0] == item.partition
            and sum(r.size() for r in last[1]) + item.record.size() < 512 * 1024
        ):
            last[1].append(item.record)
        else:
            out.append((item.partition, [item.record]))
    return out


# what every run of `check_raw_records` in this module saw, for the README's reliability table
_TOTALS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_row(report: Report) -> Iterator[None]:
    yield
    if _TOTALS["sent"]:
        report.add(Row(
            "arbitrary raw records (any bytes in key, value, header keys and values; up to "
            "the topic's 4 MiB limit), 7 named cases + 8 hypothesis examples",
            _TOTALS["sent"], _TOTALS["lost"], 0, _TOTALS["dead_lettered"], None,
        ))  # fmt: skip


async def check_raw_records(bootstrap: str, items: Sequence[Item]) -> None:
    """Write `items`, run the connector until all is committed, check every record's fate."""
    run = uuid.uuid4().hex[:10]
    topic, dlq, group = f"raw-{run}", f"raw-{run}.dlq", f"g-raw-{run}"
    limits = {"max.message.bytes": str(LIMIT)}
    await create_topic_with(bootstrap, topic, PARTITIONS, limits)
    await create_topic_with(bootstrap, dlq, 1, limits)
    await produce_raw(bootstrap, topic, batches(items), max_request_size=2 * LIMIT)
    # offsets follow the order of writing within each partition
    coordinates: dict[tuple[int, int], Item] = {}
    next_offset: Counter[int] = Counter()
    for item in items:
        coordinates[(item.partition, next_offset[item.partition])] = item
        next_offset[item.partition] += 1
    ends = await end_offsets(bootstrap, topic)
    assert ends == {p: next_offset[p] for p in range(PARTITIONS)}, "the writes did not land"

    options = EmulatorOptions(processing_delay_seconds=0, rate_limit_requests=100_000)
    async with running_emulator(options) as emu:
        config = settings_for(
            emu, bootstrap, [topic], group, dlq,
            sink={"rate_limit": {"requests": 20_000, "per_seconds": 1}},
            pipeline={"commit_interval_seconds": 0.2, "shutdown_grace_seconds": 3},
        )  # fmt: skip

        committed: dict[int, int | None] = {}

        async def all_committed() -> bool:
            committed.update(await committed_offsets(bootstrap, topic, group))
            return all((committed.get(p) or 0) == end for p, end in ends.items())

        pipeline: Pipeline
        async with running_connector(config) as pipeline:
            await until(
                pipeline, all_committed, timeout=25,
                what=lambda: (
                    f"every partition committed to its end {ends}; committed {committed}, "
                    f"{pipeline.stats}"
                ),
            )  # fmt: skip
        stored = await emu.entities("building")
    letters = await read_raw(bootstrap, dlq)
    problems = fates(topic, coordinates, letters, stored)
    if (mismatch := reconciles(pipeline)) is not None:
        problems.append(mismatch)
    if pipeline.stats.consumed != len(items):
        problems.append(f"consumed {pipeline.stats.consumed} of {len(items)} records written")
    # a record not accounted for (neither delivered nor dead-lettered) is one of the problems
    _TOTALS.update(sent=len(items), dead_lettered=len(letters), lost=len(problems))
    assert problems == [], "\n".join(problems)


def fates(
    topic: str,
    coordinates: dict[tuple[int, int], Item],
    letters: list[StoredRecord],
    stored: dict[str, dict[str, Any]],
) -> list[str]:
    """What does not add up between the records written, the dead letters and the platform."""
    lettered, problems = read_letters(topic, letters)
    newest: dict[str, int] = {}
    for item in coordinates.values():
        if item.building is not None and item.revision is not None:
            newest[item.building] = max(newest.get(item.building, -1), item.revision)
    for at, item in sorted(coordinates.items()):
        if at in lettered:
            continue
        if item.building is None:
            described = repr(item.record)[:200]
            problems.append(f"record {at} neither delivered nor dead-lettered: {described}")
            continue
        if _newest_lettered(item.building, newest, coordinates, lettered):
            continue  # an older version was sent before, or coalesced into the dead letter
        found = stored.get(item.building)
        if found is None:
            problems.append(f"valid record {at} ({item.building}) not stored, not dead-lettered")
        elif found.get("revision") != newest[item.building]:
            problems.append(
                f"{item.building}: stored revision {found.get('revision')}, newest written "
                f"{newest[item.building]}"
            )
    unknown = sorted(set(lettered) - set(coordinates))
    if unknown:
        problems.append(f"dead letters for records never written: {unknown}")
    return problems


def read_letters(
    topic: str, letters: list[StoredRecord]
) -> tuple[dict[tuple[int, int], StoredRecord], list[str]]:
    """The dead letters by the (partition, offset) they name, and what is wrong with them."""
    problems: list[str] = []
    lettered: dict[tuple[int, int], StoredRecord] = {}
    for letter in letters:
        reasons = [v for k, v in letter.headers if k == b"error.reason"]
        where = (letter.header("source.partition"), letter.header("source.offset"))
        if len(reasons) != 1 or reasons[0] not in REASONS:
            problems.append(f"dead letter for {where!r} has error.reason {reasons}, not one known")
        if not letter.header("error.message"):
            problems.append(f"dead letter for {where!r} has no error.message")
        if letter.header("source.topic") != topic.encode():
            problems.append(f"dead letter for {where!r} names {letter.header('source.topic')!r}")
        try:
            at = (int(where[0] or b""), int(where[1] or b""))
        except ValueError:
            problems.append(f"dead letter with unreadable source coordinates {where!r}")
            continue
        if at in lettered:
            problems.append(f"record {at} dead-lettered twice")
        lettered[at] = letter
    return lettered, problems


def _newest_lettered(
    building: str,
    newest: dict[str, int],
    coordinates: dict[tuple[int, int], Item],
    lettered: dict[tuple[int, int], StoredRecord],
) -> bool:
    """The newest version of `building` was dead-lettered (so an older one may be stored)."""
    return any(
        at in lettered
        for at, item in coordinates.items()
        if item.building == building and item.revision == newest[building]
    )


def filler(n: int, start: int = 0) -> list[Item]:
    """`n` valid records over a few IDs, so some versions coalesce."""
    return [valid(f"valid-{i % 4}", start + i) for i in range(n)]


NOT_UTF8 = b"\xff\xfe\xc3("
NAMED_CASES: dict[str, list[Item]] = {
    # aiokafka's consumer decodes header keys as UTF-8 and fails the whole fetch on one that
    # is not: the records around it (same batch, same partition) must still arrive
    "a header key that is not UTF-8": [
        *filler(4),
        valid("valid-0", 100, ((NOT_UTF8, b"v"), (b"ok", b"v"))),
        raw(0, b"k", b"not json", ((NOT_UTF8, None),)),
        valid("valid-3", 101),
        *filler(4, start=200),
    ],
    "null header values, empty header keys, the connector's own header names": [
        valid("valid-1", 1, ((b"", None), (b"error.reason", b"forged"), (b"source.offset", b"-1"))),
        raw(1, b"x", b"{not json", ((b"error.reason", b"forged"), (b"", b""), (b"h", None))),
        raw(2, None, None, ((b"source.topic", b"elsewhere"),)),
        *filler(3, start=10),
    ],
    "a key near the topic's limit": [
        *filler(2),
        raw(0, b"k" * (LIMIT - 64 * 1024), b'{"buildingId": "x", "eventType": "BuildingAdded"}'),
        *filler(2, start=10),
    ],
    "a header value near the topic's limit, on a valid record": [
        *filler(2),
        valid("valid-2", 5, ((b"blob", b"h" * (LIMIT - 64 * 1024)),)),
        *filler(2, start=10),
    ],
    "a header value near the topic's limit, on a record that is dead-lettered": [
        *filler(2),
        raw(2, b"bad", b"not json", ((b"blob", b"h" * (LIMIT - 64 * 1024)),)),
        *filler(2, start=10),
    ],
    "accepted, then failed in the batch's status (counted once)": [
        *filler(3),
        valid("valid-5", 50, name="__fail_async__"),
        valid("valid-7", 51, ((NOT_UTF8, b"v"),), name="__fail_async__"),
        *filler(3, start=10),
    ],
    "a value near the topic's limit": [
        *filler(2),
        raw(1, b"big", b'{"buildingId": "big", "x": "' + b"v" * (LIMIT - 64 * 1024) + b'"}'),
        *filler(2, start=10),
    ],
}


@pytest.mark.anyio
async def test_the_harness_writes_and_reads_raw_records_byte_for_byte(kafka_bootstrap: str) -> None:
    """Without this, a raw test could pass on records that were never what it says."""
    topic = f"raw-roundtrip-{uuid.uuid4().hex[:8]}"
    await create_topic_with(kafka_bootstrap, topic, 2, {"max.message.bytes": str(LIMIT)})
    written = [
        RawRecord(None, None, ()),
        RawRecord(b"", b"", ((b"", b""), (b"", None))),
        RawRecord(NOT_UTF8, b"\x00\xff", ((NOT_UTF8, NOT_UTF8), (b"k", None), (b"k", b"2"))),
        RawRecord(b"big", b"v" * (LIMIT - 64 * 1024), ()),
    ]
    await produce_raw(
        kafka_bootstrap, topic, [(1, written[:3]), (1, written[3:]), (0, written[:1])]
    )
    read = await read_raw(kafka_bootstrap, topic)
    assert [(r.partition, r.offset) for r in read] == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert [RawRecord(r.key, r.value, r.headers) for r in read if r.partition == 1] == written


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(NAMED_CASES))
async def test_each_kind_of_hostile_record_is_accounted_for_and_committed(
    kafka_bootstrap: str, case: str
) -> None:
    await check_raw_records(kafka_bootstrap, NAMED_CASES[case])


# ---------------------------------------------------------------- the property
header_keys = st.binary(max_size=12) | st.sampled_from(
    [NOT_UTF8, b"", b"error.reason", b"source.offset", "ключ".encode()]
)
headers = st.lists(st.tuples(header_keys, st.none() | st.binary(max_size=40)), max_size=4).map(
    tuple
)
near_json = st.dictionaries(
    st.sampled_from(["buildingId", "eventType", "name", "op", "after", "source", "payload"]),
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=8)
    | st.sampled_from(["BuildingAdded", "c"]),
    max_size=4,
).map(orjson.dumps)
raw_items = st.builds(
    raw,
    partition=st.integers(0, PARTITIONS - 1),
    key=st.none() | st.binary(max_size=60),
    value=st.none() | st.binary(max_size=120) | near_json,
    headers=headers,
)
# (ID, headers, name): revisions are numbered in order of writing, by `numbered`; one name in
# four is the emulator's marker for a record it accepts and then fails in the batch's status
ValidEntry = tuple[str, tuple["Header", ...], str]
valid_items = st.builds(
    lambda i, h, name: (f"valid-{i}", h, name),
    st.integers(0, 5),
    headers,
    st.sampled_from(["B", "B", "B", "__fail_async__"]),
)
mixes = st.lists(st.one_of(raw_items, valid_items, valid_items), min_size=1, max_size=30)
# at most two records per example with one field past the connector's own 1 MiB record limit
# or near the topic's limit (a record has to fit the topic's limit as a whole)
big = st.sampled_from([MIB + 1, LIMIT - 64 * 1024]).map(lambda n: b"z" * n)
small_value = st.none() | st.binary(max_size=120)
big_items = st.one_of(
    st.builds(raw, partition=st.integers(0, 2), key=big, value=small_value, headers=headers),
    st.builds(raw, partition=st.integers(0, 2), key=st.none(), value=big, headers=headers),
    st.builds(
        raw, partition=st.integers(0, 2), key=st.none() | st.binary(max_size=10),
        value=small_value, headers=st.tuples(st.tuples(header_keys, big)).map(tuple),
    ),
)  # fmt: skip


def numbered(mix: list[Item | ValidEntry]) -> list[Item]:
    return [
        entry if isinstance(entry, Item) else valid(entry[0], revision, entry[1], name=entry[2])
        for revision, entry in enumerate(mix)
    ]


# One example is a broker topic and a whole pipeline run (about 2 s), so: few examples, the
# same ones on every run (derandomize), and no shrinking (minutes); the named cases above are
# the small reproductions of each kind of record this can find.
@settings(
    max_examples=8,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the broker's address is the same for every run
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(mix=mixes, bigs=st.lists(big_items, max_size=2), at=st.integers(0, 30))
def test_any_mix_of_raw_records_is_delivered_or_dead_lettered_and_committed(
    kafka_bootstrap: str,
    mix: list[Item | ValidEntry],
    bigs: list[Item],
    at: int,
) -> None:
    items = numbered(mix)
    items[at:at] = bigs
    for item in items:  # what the examples covered: --hypothesis-show-statistics
        for h_key, _ in item.record.headers:
            if not _utf8(h_key):
                event("a header key that is not UTF-8")
        if item.record.size() > MIB:
            event("a record over 1 MiB")
        if item.record.key is None and item.record.value is None:
            event("a record with neither key nor value")
        if b"__fail_async__" in (item.record.value or b""):
            event("a record the platform fails after accepting it")
    anyio.run(check_raw_records, kafka_bootstrap, items)


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
