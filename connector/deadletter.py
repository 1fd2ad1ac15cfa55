"""Dead letters: bad records, with the reason, to the dead-letter topic (DESIGN.md §3.4).

Each dead letter carries the original key and headers plus `error.reason`, `error.message`,
`error.http_status`, `error.batch_id`, `error.request_id`, `source.topic`, `source.partition`,
`source.offset` and `error.timestamp`. The value is the original value for records that
failed decoding, and the record exactly as submitted for records the platform rejected (the
platform's own shape, so an operator can fix it and produce it again as a native record).
A value larger than `max_value_bytes` (a `record_too_large` record) is left out, and the header
`error.value_omitted` gives its size; `source.*` say where the original is.

Must not: report a record written before the broker acknowledged it; `write` returns only
then, and the caller finishes the record's offset after it returns. Secrets never appear
here: nothing of the request's headers is copied.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from connector.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from connector.decode import Reason

__all__ = ["DeadLetter", "DeadLetterWriter"]

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 4096


class DeadLetter:
    """One dead letter, built from what we know of the record and the failure."""

    __slots__ = ("headers", "key", "value")

    def __init__(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
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
        omitted = value is not None and max_value_bytes is not None and len(value) > max_value_bytes
        self.value = None if omitted else value
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
        if omitted and value is not None:
            extra["error.value_omitted"] = f"{len(value)} bytes"
        own = [(k, v) for k, v in headers if k not in extra]
        self.headers = own + [(k, v.encode()) for k, v in extra.items()]


class DeadLetterWriter:
    """Writes dead letters through an idempotent producer and waits for the broker's ack."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        *,
        on_written: Callable[[Reason], None] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.on_written = on_written

    async def write(self, letter: DeadLetter, reason: Reason) -> None:
        """Send and wait for the acknowledgement; raises the producer's error if it fails."""
        await self.producer.send_and_wait(
            self.topic, key=letter.key, value=letter.value, headers=letter.headers
        )
        if self.on_written is not None:
            self.on_written(reason)
