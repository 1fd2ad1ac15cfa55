"""Dead letters always fit their topic, always have a key or a value, carry no empty headers,
and are logged once per reason per interval."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from connector.deadletter import DeadLetter, DeadLetterLog, DeadLetterWriter
from connector.decode import Reason

pytestmark = pytest.mark.anyio


def letter(**overrides: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "key": b"k", "value": b"v", "headers": [], "reason": Reason.INVALID_JSON,
        "message": "bad", "topic": "t", "partition": 0, "offset": 7, "now": 0.0,
    }  # fmt: skip
    fields.update(overrides)
    return DeadLetter(**fields)


def headers(dl: DeadLetter) -> dict[str, bytes | None]:
    return dict(dl.headers)


def test_headers_without_an_api_answer_are_left_out() -> None:
    dl = letter()
    assert {"error.http_status", "error.batch_id", "error.request_id"}.isdisjoint(headers(dl))
    assert headers(dl)["source.offset"] == b"7"
    rejected = letter(http_status=400, batch_id="b-1", request_id="r-1")
    assert headers(rejected)["error.http_status"] == b"400"
    assert headers(rejected)["error.batch_id"] == b"b-1"


def test_a_too_large_record_without_a_key_still_makes_a_writable_letter() -> None:
    dl = letter(key=None, value=b"x" * 5000, reason=Reason.RECORD_TOO_LARGE, max_value_bytes=1000)
    assert dl.key is None
    assert dl.value == b"", "the producer needs a key or a value"
    assert headers(dl)["error.value_omitted"] == b"5000 bytes"


def test_a_letter_is_shrunk_to_the_topic_limit_value_first_then_long_headers() -> None:
    original = [("trace", b"t" * 50_000), ("small", b"s")]
    dl = letter(value=b"v" * 200_000, headers=original)
    assert dl.fit(20_000)
    assert dl.size() <= 20_000
    assert dl.value is None or dl.value == b""
    assert dl.key == b"k"
    got = headers(dl)
    assert got["error.value_omitted"] == b"200000 bytes"
    assert got["small"] == b"s"
    assert got["trace"] is not None
    assert 0 < len(got["trace"]) < 50_000
    assert got["source.topic"] == b"t"
    assert not letter().fit(20_000), "a letter that fits is left as it is"


def test_a_header_key_that_was_not_utf8_is_written_escaped() -> None:
    bad = b"\xff\xfeid".decode("utf-8", "surrogateescape")
    dl = letter(headers=[(bad, b"1")])
    assert headers(dl)[r"\xff\xfeid"] == b"1"
    for key, _ in dl.headers:
        key.encode("utf-8")  # the producer must be able to write every key


class _Producer:
    """Refuses records larger than `limit`, as a broker's max.message.bytes does."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[bytes | None, bytes | None]] = []

    async def send_and_wait(self, topic: str, *, key: Any, value: Any, headers: Any) -> None:
        del topic
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
        if size > self.limit:
            raise MessageSizeTooLargeError
        self.sent.append((key, value))


async def test_the_writer_shrinks_to_its_limit_and_again_if_the_broker_refuses() -> None:
    producer = _Producer(limit=6000)
    written: list[Reason] = []
    writer = DeadLetterWriter(producer, "dlq", on_written=written.append, max_bytes=1_000_000)
    await writer.write(letter(value=b"v" * 500_000), Reason.INVALID_JSON)
    assert producer.sent == [(b"k", None)]
    assert written == [Reason.INVALID_JSON]


def test_dead_letters_are_logged_once_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    dl_log = DeadLetterLog(10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="connector")
    for offset in range(37):
        dl_log.written(letter(offset=offset), Reason.INVALID_JSON)
        now[0] += 0.1
    dl_log.written(letter(offset=99, topic="u"), Reason.MISSING_ID)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "dead-lettered 1 record (invalid_json); first at t/0/0",
        "dead-lettered 1 record (missing_id); first at u/0/99",
    ]
    now[0] = 110.0
    dl_log.tick()
    assert caplog.records[-1].getMessage() == (
        "dead-lettered 36 records (invalid_json) in the last 10 s; first at t/0/1"
    )
    dl_log.tick(force=True)
    assert len(caplog.records) == 3, "nothing was pending"
