"""Dead letters: bad records, with the reason, to the dead-letter topic (docs/design.md §3.4).

Each dead letter carries the original key and headers plus `error.reason`, `error.message`,
`source.topic`, `source.partition`, `source.offset` and `error.timestamp`, and, where the
failure came from an API answer, `error.http_status`, `error.batch_id` and `error.request_id`
(left out when there is none). The value is the original value for records that failed
decoding, and the record exactly as submitted for records the platform rejected (the
platform's own shape, so an operator can fix it and produce it again as a native record).

A dead letter always fits the dead-letter topic: a value larger than `max_value_bytes` (a
`record_too_large` record), or one that would take the letter over what the topic and the
producer accept (`DeadLetterWriter.max_bytes`), is left out, and the header
`error.value_omitted` gives its size; then long original headers are cut, then the key is left
out (`error.key_omitted`). `source.*` say where the original is. A letter with neither key nor
value gets an empty value, since Kafka's producer needs one of them. A header key that was not
UTF-8 on the wire (`undecodable_record`) is written with its bytes escaped (`\\xff`).

Must not: report a record written before the broker acknowledged it; `write` returns only
then, and the caller finishes the record's offset after it returns. Secrets never appear
here: nothing of the request's headers is copied.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from connector.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from connector.decode import Reason

__all__ = ["DeadLetter", "DeadLetterLog", "DeadLetterWriter"]

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 4096
# a record's framing in a v2 batch (length, attributes, deltas, lengths: varints of at most
# 5 bytes), and the batch's own header: what Kafka counts beyond the bytes we hand it
_RECORD_OVERHEAD = 32
_HEADER_OVERHEAD = 10
_BATCH_OVERHEAD = 61
MIN_LETTER_BYTES = 4096  # below this a topic cannot hold even our own headers
_CUT_HEADER_BYTES = 256  # an original header value longer than this is cut when space is short


def _header_key(key: str) -> str:
    """The key as the producer can write it: a non-UTF-8 key (kept by the tolerant reader as
    surrogate escapes) becomes its bytes escaped, `\\xff`."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return key


class DeadLetter:
    """One dead letter, built from what we know of the record and the failure."""

    __slots__ = ("_extra", "_own", "headers", "key", "offset", "partition", "topic", "value")

    def __init__(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        reason: Reason,
        message: str,
        topic: str,
        partition: int,
        offset: int,
        http_status: int | None = None,
        batch_id: str | None = None,
        request_id: str | None = None,
        now: float | None = None,
        max_value_bytes: int | None = None,
    ) -> None:
        self.key = key
        self.value = value
        self.topic, self.partition, self.offset = topic, partition, offset
        stamp = time.time() if now is None else now
        extra = {
            "error.reason": reason.value,
            "error.message": message.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore"),
            "error.http_status": "" if http_status is None else str(http_status),
            "error.batch_id": batch_id or "",
            "error.request_id": request_id or "",
            "source.topic": topic,
            "source.partition": str(partition),
            "source.offset": str(offset),
            "error.timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)),
        }
        self._extra = {k: v for k, v in extra.items() if v}
        self._own: list[tuple[str, bytes | None]] = [
            (_header_key(k), v) for k, v in headers if k not in extra
        ]
        if value is not None and max_value_bytes is not None and len(value) > max_value_bytes:
            self._omit_value()
        self._assemble()

    @property
    def message(self) -> str:
        return self._extra.get("error.message", "")

    @property
    def batch_id(self) -> str | None:
        return self._extra.get("error.batch_id")

    def _omit_value(self) -> None:
        if self.value is not None:
            self._extra["error.value_omitted"] = f"{len(self.value)} bytes"
            self.value = None

    def _assemble(self) -> None:
        self.headers = self._own + [(k, v.encode()) for k, v in self._extra.items()]
        if self.key is None and self.value is None:
            self.value = b""  # the producer needs a key or a value

    def size(self) -> int:
        """What the letter takes in a record batch of its own, overhead included."""
        return (
            _BATCH_OVERHEAD + _RECORD_OVERHEAD + len(self.key or b"") + len(self.value or b"")
            + sum(_HEADER_OVERHEAD + len(k.encode()) + len(v or b"") for k, v in self.headers)
        )  # fmt: skip

    def fit(self, max_bytes: int) -> bool:
        """Shrink the letter until it takes at most `max_bytes`: value, long headers, key.

        Returns whether it had to shrink. What stays is always enough to find the original."""
        if self.size() <= max_bytes:
            return False
        if self.value:
            self._omit_value()
            self._assemble()
        if self.size() > max_bytes:
            if any(v is not None and len(v) > _CUT_HEADER_BYTES for _, v in self._own):
                self._extra["error.headers_cut"] = "original header values cut"
            self._own = [(k, None if v is None else v[:_CUT_HEADER_BYTES]) for k, v in self._own]
            self._assemble()
        while self.size() > max_bytes and self._own:
            self._own.pop()  # the last original headers go first
            self._extra["error.headers_cut"] = "original headers cut"
            self._assemble()
        if self.size() > max_bytes and self.key:
            self._extra["error.key_omitted"] = f"{len(self.key)} bytes"
            self.key = None
            self._assemble()
        return True


class DeadLetterWriter:
    """Writes dead letters through an idempotent producer and waits for the broker's ack.

    `max_bytes` is the largest letter the topic (`max.message.bytes`) and the producer
    (`max_request_size`) accept; every letter is shrunk to it before it is sent, so a letter is
    never refused for its size. Should the broker refuse one anyway (its limit was lowered
    since start), the letter is shrunk to half, down to `MIN_LETTER_BYTES`, and sent again.
    """

    def __init__(
        self,
        producer: Any,
        topic: str,
        *,
        on_written: Callable[[Reason], None] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.on_written = on_written
        self.max_bytes = max_bytes

    async def write(self, letter: DeadLetter, reason: Reason) -> None:
        """Send and wait for the acknowledgement; raises the producer's error if it fails."""
        limit = self.max_bytes
        while True:
            if limit is not None and letter.fit(limit):
                log.debug(
                    "dead letter of %s/%d/%d shrunk to fit %d bytes",
                    letter.topic, letter.partition, letter.offset, limit,
                )  # fmt: skip
            try:
                await self.producer.send_and_wait(
                    self.topic, key=letter.key, value=letter.value, headers=letter.headers
                )
            except (MessageSizeTooLargeError, RecordTooLargeError):
                current = limit if limit is not None else letter.size()
                if current <= MIN_LETTER_BYTES:
                    raise
                limit = max(current // 2, MIN_LETTER_BYTES)
                continue
            break
        if self.on_written is not None:
            self.on_written(reason)


class DeadLetterLog:
    """At most one WARNING per reason per `interval` seconds, with the count and where the
    first of them came from: `dead-lettered 37 records (invalid_json) in the last 10 s;
    first at topic/0/1234`. The first letter of a quiet reason is logged at once."""

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}  # reason -> when its last line was logged
        self._pending: dict[str, tuple[int, str]] = {}  # reason -> (count, first coordinates)

    def written(self, letter: DeadLetter, reason: Reason) -> None:
        count, first = self._pending.get(reason.value, (0, ""))
        where = f"{letter.topic}/{letter.partition}/{letter.offset}"
        self._pending[reason.value] = (count + 1, first or where)
        last = self._last.get(reason.value)
        if last is None or self.clock() - last >= self.interval:
            self._flush(reason.value)

    def tick(self, *, force: bool = False) -> None:
        """Log what the interval held back (called periodically, and at shutdown with force)."""
        now = self.clock()
        for reason in list(self._pending):
            if force or now - self._last.get(reason, now - self.interval) >= self.interval:
                self._flush(reason)

    def _flush(self, reason: str) -> None:
        count, first = self._pending.pop(reason)
        last = self._last.get(reason)
        now = self.clock()
        self._last[reason] = now
        span = "" if last is None else f" in the last {now - last:.0f} s"
        log.warning(
            "dead-lettered %d record%s (%s)%s; first at %s",
            count, "" if count == 1 else "s", reason, span, first,
            extra={"reason": reason, "records": count, "first": first},
        )  # fmt: skip
