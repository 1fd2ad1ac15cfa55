"""Raw Kafka records: any bytes in the key, the value, the header keys and the header values.

aiokafka's producer insists on `str` header keys (it encodes them as UTF-8) and its consumer
decodes every header key as UTF-8, so a record whose header key is not UTF-8, which Kafka's
protocol allows and other clients write, can be neither produced nor read through aiokafka's
public API. This module does both on the wire format itself:

- `RawBatch` encodes a v2 record batch from bytes only; `produce_raw` hands it to an ordinary
  `AIOKafkaProducer` through the public `send_batch()` (the producer's sender needs only
  `BatchBuilder`'s duck type: `_build`, `size`, `record_count`, `closed`, `close`).
- `read_raw` fetches a topic's record batches with a plain `FetchRequest` and decodes them
  into `StoredRecord`s of bytes, so a test can read what the connector wrote (a dead letter
  keeps the original's headers) whatever those bytes are.
- `create_topic_with` creates a topic with topic-level configs (`max.message.bytes`), so a
  test knows the size limit it writes up to, whatever the broker's default.

Must not: be used with an idempotent or transactional producer (the batch carries no
producer id or sequence), or compress (the broker stores what it is given).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import calc_crc32c, encode_varint

from tests.kafka_fixtures import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "RawBatch",
    "RawRecord",
    "StoredRecord",
    "create_topic_with",
    "produce_raw",
    "read_raw",
]

Header = tuple[bytes, bytes | None]


@dataclass(frozen=True)
class RawRecord:
    """One record exactly as it should be stored; a header value may be None (Kafka allows it)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    def size(self) -> int:
        """Bytes of payload this record carries (key, value, header keys and values)."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(k) + len(v or b"") for k, v in self.headers)
        )


@dataclass(frozen=True)
class StoredRecord:
    """A record as the broker stores it, read without decoding anything as text."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    def header(self, name: str) -> bytes | None:
        """The last value of the header `name` (None when absent or null)."""
        wanted = name.encode()
        found = [v for k, v in self.headers if k == wanted]
        return found[-1] if found else None


# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
_HEADER = struct.Struct(">qiibIhiqqqhii")
_CRC_AT = 17  # offset of the crc field; the crc covers every byte after it
_LENGTH_AFTER = 12  # batchLength counts the bytes after baseOffset and batchLength
_COMPRESSION_MASK = 0x07
_CONTROL_BIT = 0x20


def _put_bytes(out: bytearray, data: bytes | None) -> None:
    if data is None:
        encode_varint(-1, out.append)
    else:
        encode_varint(len(data), out.append)
        out += data


@dataclass
class RawBatch:
    """A v2 record batch built from raw bytes, accepted by `AIOKafkaProducer.send_batch`."""

    records: Sequence[RawRecord]
    timestamp_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _buffer: bytearray | None = None

    def _encode(self) -> bytearray:
        body = bytearray()
        for delta, rec in enumerate(self.records):
            one = bytearray(b"\x00")  # attributes
            encode_varint(0, one.append)  # timestamp delta
            encode_varint(delta, one.append)  # offset delta
            _put_bytes(one, rec.key)
            _put_bytes(one, rec.value)
            encode_varint(len(rec.headers), one.append)
            for h_key, h_value in rec.headers:
                _put_bytes(one, h_key)
                _put_bytes(one, h_value)
            encode_varint(len(one), body.append)
            body += one
        buffer = bytearray(_HEADER.size) + body
        _HEADER.pack_into(
            buffer, 0,
            0, len(buffer) - _LENGTH_AFTER, -1, 2, 0, 0, len(self.records) - 1,
            self.timestamp_ms, self.timestamp_ms, -1, -1, -1, len(self.records),
        )  # fmt: skip
        struct.pack_into(">I", buffer, _CRC_AT, calc_crc32c(bytes(buffer[_CRC_AT + 4 :])))
        return buffer

    # ---- the part of aiokafka's BatchBuilder that the producer's sender uses
    def _build(self) -> bytearray:
        if self._buffer is None:
            self._buffer = self._encode()
        return self._buffer

    def size(self) -> int:
        return len(self._build())

    def record_count(self) -> int:
        return len(self.records)

    def closed(self) -> bool:
        return True  # full from the start: the producer never appends `send()` records to it

    def close(self) -> None:
        return

    def append(self, **_: Any) -> None:
        return  # a closed batch takes no more records (BatchBuilder returns None too)


async def produce_raw(
    bootstrap: str,
    topic: str,
    batches: Iterable[tuple[int, Sequence[RawRecord]]],
    *,
    max_request_size: int = 16 * 1024 * 1024,
) -> None:
    """Write each `(partition, records)` as one batch, in order, and wait for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=max_request_size,
        request_timeout_ms=60_000,
    )  # fmt: skip
    await producer.start()
    try:
        for partition, records in batches:
            if records:
                future = await producer.send_batch(RawBatch(records), topic, partition=partition)
                await future
    finally:
        await producer.stop()


async def create_topic_with(
    bootstrap: str, name: str, partitions: int, configs: Mapping[str, str]
) -> None:
    """Create `name` with topic-level `configs` and wait until its metadata is visible."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(configs))])

        async def visible() -> bool:
            described = await admin.describe_topics([name])
            return bool(described and len(described[0]["partitions"]) == partitions)

        await wait_until(visible, what=f"topic {name}")
    finally:
        await admin.close()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at `pos`: (value, next position)."""
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _get_bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buf, pos)
    if length < 0:
        return None, pos
    return bytes(buf[pos : pos + length]), pos + length


def _decode_batches(partition: int, data: bytes) -> tuple[list[StoredRecord], int | None]:
    """The records of every complete batch in `data`, and the offset after the last batch."""
    records: list[StoredRecord] = []
    pos, next_offset = 0, None
    while pos + _LENGTH_AFTER <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + _LENGTH_AFTER + length
        if end > len(data):
            break  # a batch cut off by the fetch's size limit: fetched again from its offset
        fields = _HEADER.unpack_from(data, pos)
        attributes, last_delta, count = fields[5], fields[6], fields[12]
        if attributes & _COMPRESSION_MASK:
            raise NotImplementedError("compressed batches: the connector writes none")
        next_offset = base_offset + last_delta + 1
        if not attributes & _CONTROL_BIT:
            at = pos + _HEADER.size
            for _ in range(count):
                size, at = _varint(data, at)
                rec_end = at + size
                at += 1  # attributes
                _, at = _varint(data, at)  # timestamp delta
                delta, at = _varint(data, at)
                key, at = _get_bytes(data, at)
                value, at = _get_bytes(data, at)
                n_headers, at = _varint(data, at)
                headers: list[Header] = []
                for _ in range(n_headers):
                    h_key, at = _get_bytes(data, at)
                    h_value, at = _get_bytes(data, at)
                    headers.append((h_key or b"", h_value))
                records.append(
                    StoredRecord(partition, base_offset + delta, key, value, tuple(headers))
                )
                at = rec_end
        pos = end
    return records, next_offset


async def _end_offsets(bootstrap: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def read_raw(
    bootstrap: str, topic: str, *, max_bytes: int = 32 * 1024 * 1024
) -> list[StoredRecord]:
    """Every record of `topic`, from the start to the end offsets as of the call, as bytes."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    found: list[StoredRecord] = []
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        partitions = client.cluster.partitions_for_topic(topic) or set()
        ends = await _end_offsets(bootstrap, topic, partitions)
        for partition, end in sorted(ends.items()):
            offset = 0
            while offset < end:
                node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                wanted = [(topic, [(partition, offset, max_bytes)])]
                request = FetchRequest(500, 1, max_bytes, 0, wanted)
                response = await client.send(node, request)
                ((_, parts),) = response.topics
                ((_, error_code, _, *part_data),) = parts
                assert error_code == 0, f"fetch of {topic}:{partition} failed: {error_code}"
                records, after = _decode_batches(partition, part_data[-1] or b"")
                found += [r for r in records if offset <= r.offset < end]
                assert after is not None, f"no complete batch at {topic}:{partition}@{offset}"
                assert after > offset, f"no progress at {topic}:{partition}@{offset}"
                offset = after
    finally:
        await client.close()
    return found
