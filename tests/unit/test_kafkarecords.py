"""A record whose header key is not UTF-8 is read (bytes intact), as are the records after it
in its batch; aiokafka's own parser raises on it."""

from __future__ import annotations

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy

from connector.kafkarecords import TolerantRecords, raw_key, undecodable_header_keys
from tests.support.rawkafka import RawBatch, RawRecord

BAD_KEY = b"\xff\xfeid"
RECORDS = [
    RawRecord(b"k0", b"v0"),
    RawRecord(b"k1", b"v1", ((BAD_KEY, b"x"), (b"ok", None))),
    RawRecord(b"k2", b"v2", ((b"trace", b"t"),)),
]


def batches() -> bytes:
    first = RawBatch(RECORDS)._build()
    second = bytearray(RawBatch([RawRecord(b"k3", b"v3")])._build())
    second[0:8] = (3).to_bytes(8, "big")  # the second batch's base offset, as the broker sets
    return bytes(first) + bytes(second)


Read = list[tuple[int, bytes | None, list[tuple[str, bytes | None]]]]


def read(records: object) -> Read:
    out: Read = []
    while records.has_next():  # type: ignore[attr-defined]
        batch = records.next_batch()  # type: ignore[attr-defined]
        assert batch.validate_crc()
        out.extend((r.offset, r.key, list(r.headers)) for r in batch)
    return out


@pytest.mark.parametrize("aiokafka_records", [MemoryRecords, _MemoryRecordsPy])
def test_aiokafka_alone_cannot_read_the_batch(aiokafka_records: type) -> None:
    with pytest.raises((UnicodeDecodeError, CorruptRecordException)):
        read(aiokafka_records(batches()))


def test_every_record_is_read_and_the_bad_key_keeps_its_bytes() -> None:
    got = read(TolerantRecords(batches()))
    assert [(offset, key) for offset, key, _ in got] == [
        (0, b"k0"),
        (1, b"k1"),
        (2, b"k2"),
        (3, b"k3"),
    ]
    headers = got[1][2]
    assert undecodable_header_keys(headers) == [headers[0][0]]
    assert raw_key(headers[0][0]) == BAD_KEY
    assert headers[1] == ("ok", None)
    assert got[2][2] == [("trace", b"t")]
    assert undecodable_header_keys(got[2][2]) == []
