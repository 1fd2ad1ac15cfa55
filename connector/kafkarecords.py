"""Reading Kafka record batches that aiokafka cannot decode, instead of crashing on them.

aiokafka decodes every header key as UTF-8 while it parses a fetched batch, inside
`consumer.getmany`. One record with a non-UTF-8 header key (Kafka's wire format allows any
bytes; the Java client writes what it is given) raises `UnicodeDecodeError` there, which loses
what that call had drained from every partition and, on the next call, raises again at the
same offset: the whole consumer is stuck, and every restart dies on the same record. The rest
of that record's batch is unreachable too, since aiokafka parses a batch front to back.

`install()` puts `TolerantRecords` in place of aiokafka's fetch-response parser. Each batch is
still parsed by aiokafka's own (C) parser; only a batch that fails to decode is parsed again by
a lenient copy of aiokafka's pure-Python reader, which keeps header keys as
`surrogateescape` strings, so no byte is lost and the records after it in the batch arrive.
`undecodable_header_keys` finds such keys (the app dead-letters the record) and `raw_key`
gives their original bytes back.

Must not: change what aiokafka hands over for any batch it can decode itself.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    _DefaultRecordBatchPy,
    _DefaultRecordPy,
)
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.util import decode_varint

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["TolerantRecords", "install", "raw_key", "undecodable_header_keys"]

_LENGTH_OFFSET = 8  # base offset (int64), then the batch length (int32)
_LOG_OVERHEAD = 12
_MAGIC_OFFSET = 16  # after the length: partition leader epoch (int32), then magic (int8)


def raw_key(header_key: str) -> bytes:
    """The original bytes of a header key read by this module (the inverse of its decoding)."""
    return header_key.encode("utf-8", "surrogateescape")


def undecodable_header_keys(headers: Iterable[tuple[str, Any]]) -> list[str]:
    """The header keys that were not valid UTF-8 on the wire (their bytes are kept as
    surrogate escapes); empty for every record aiokafka could decode itself."""
    bad = []
    for key, _ in headers:
        if not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                bad.append(key)
    return bad


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc] # final only for typing
    """aiokafka's pure-Python v2 batch reader, with header keys decoded `surrogateescape`.

    `_read_msg` is aiokafka's own (0.14), with that one change."""

    def _read_msg(self, decode_varint: Any = decode_varint) -> _DefaultRecordPy:
        buffer = self._buffer
        pos: int = self._pos  # type: ignore[has-type]
        length, pos = decode_varint(buffer, pos)
        start_pos = pos
        _, pos = decode_varint(buffer, pos)  # attributes: unused in v2 records
        ts_delta, pos = decode_varint(buffer, pos)
        if self.timestamp_type == self.LOG_APPEND_TIME:
            timestamp = self.max_timestamp
        else:
            timestamp = self.first_timestamp + ts_delta
        offset_delta, pos = decode_varint(buffer, pos)
        key_len, pos = decode_varint(buffer, pos)
        key = None
        if key_len >= 0:
            key = bytes(buffer[pos : pos + key_len])
            pos += key_len
        value_len, pos = decode_varint(buffer, pos)
        value = None
        if value_len >= 0:
            value = bytes(buffer[pos : pos + value_len])
            pos += value_len
        header_count, pos = decode_varint(buffer, pos)
        if header_count < 0:
            raise ValueError(f"invalid number of record headers {header_count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(header_count):
            h_key_len, pos = decode_varint(buffer, pos)
            if h_key_len < 0:
                raise ValueError(f"invalid negative header key size {h_key_len}")
            h_key = bytes(buffer[pos : pos + h_key_len]).decode("utf-8", "surrogateescape")
            pos += h_key_len
            h_value_len, pos = decode_varint(buffer, pos)
            h_value = None
            if h_value_len >= 0:
                h_value = bytes(buffer[pos : pos + h_value_len])
                pos += h_value_len
            headers.append((h_key, h_value))
        if pos - start_pos != length:
            raise ValueError(f"record size {length} but {pos - start_pos} bytes read")
        self._pos = pos
        return _DefaultRecordPy(
            self.base_offset + offset_delta, timestamp, self.timestamp_type, key, value, headers
        )


class _TolerantBatch:
    """One v2 batch: aiokafka's parser while it can, the lenient one from the first record it
    cannot decode. Everything else (CRC, control and transaction flags) is aiokafka's."""

    __slots__ = ("_fast", "_lenient", "_next_offset", "_raw")

    def __init__(self, raw: memoryview) -> None:
        self._raw = raw
        self._fast: Any = DefaultRecordBatch(raw)
        self._lenient: _LenientBatch | None = None
        self._next_offset = -1  # records below this were already handed over

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)

    def validate_crc(self) -> bool:
        return bool(self._fast.validate_crc())

    def __iter__(self) -> _TolerantBatch:
        iter(self._fast)  # decompresses, as aiokafka's own iteration does
        return self

    def __next__(self) -> Any:
        if self._lenient is None:
            try:
                record = next(self._fast)
            except (UnicodeDecodeError, CorruptRecordException) as exc:
                # the C parser raises the decode error, the pure-Python one wraps it
                cause = exc if isinstance(exc, UnicodeDecodeError) else exc.__cause__
                if not isinstance(cause, UnicodeDecodeError):
                    raise
                self._lenient = _LenientBatch(bytes(self._raw))
                iter(self._lenient)
            else:
                self._next_offset = record.offset + 1
                return record
        while True:
            record = next(self._lenient)
            if record.offset >= self._next_offset:
                return record


class TolerantRecords:
    """Drop-in for aiokafka's `MemoryRecords` (one fetch response's data for one partition)."""

    __slots__ = ("_buffer", "_next", "_pos")

    def __init__(self, data: bytes) -> None:
        self._buffer = data
        self._pos = 0
        self._next: memoryview | None = None
        self._cache_next()

    def _cache_next(self) -> None:
        # a trailing partial batch is left for the fetcher to notice, as aiokafka does
        remaining = len(self._buffer) - self._pos
        self._next = None
        if remaining < _LOG_OVERHEAD:
            return
        (length,) = struct.unpack_from(">i", self._buffer, self._pos + _LENGTH_OFFSET)
        end = self._pos + _LOG_OVERHEAD + length
        if end > len(self._buffer) or length < 0:
            return
        self._next = memoryview(self._buffer)[self._pos : end]
        self._pos = end

    def size_in_bytes(self) -> int:
        return len(self._buffer)

    def has_next(self) -> bool:
        return self._next is not None

    def next_batch(self) -> Any:
        raw = self._next
        if raw is None:
            return None
        self._cache_next()
        if len(raw) <= _MAGIC_OFFSET:
            raise CorruptRecordException(f"a record batch of only {len(raw)} bytes")
        magic = raw[_MAGIC_OFFSET]
        if magic >= 2:
            return _TolerantBatch(raw)
        return LegacyRecordBatch(raw, magic)


def install() -> None:
    """Make every aiokafka consumer of this process parse fetches with `TolerantRecords`.

    Idempotent. The parser is a module global of aiokafka's fetcher, so this is process-wide;
    it changes nothing for batches aiokafka decodes itself."""
    fetcher.MemoryRecords = TolerantRecords
