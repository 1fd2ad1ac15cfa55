"""Logs: JSON off a terminal, context from `extra=`, and no secret ever in a line."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import orjson
import pytest
from pydantic import SecretStr

from connector.logs import get_logger, redact, setup_logging

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIs.payload.signature"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = setup_logging("DEBUG", "json", buffer)
    yield buffer
    for name in ("connector", "aiokafka", "aiohttp"):
        logging.getLogger(name).removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_context_from_extra(stream: io.StringIO) -> None:
    get_logger("sink").info(
        "batch submitted: %d records", 500, extra={"endpoint": "building", "batch_id": "b-1"}
    )
    (entry,) = lines(stream)
    assert entry["msg"] == "batch submitted: 500 records"
    assert entry["logger"] == "connector.sink"
    assert entry["level"] == "info"
    assert entry["endpoint"] == "building"
    assert entry["batch_id"] == "b-1"


def test_secrets_and_bearer_tokens_never_reach_a_line(stream: io.StringIO) -> None:
    log = get_logger("auth")
    log.warning("request failed: Authorization: Bearer %s", TOKEN)
    log.info("settings %s", SecretStr("client-secret-value"))
    log.error("token endpoint said client_secret=abc123&scope=x")
    try:
        raise RuntimeError(f"header was Bearer {TOKEN}")
    except RuntimeError:
        log.exception("call failed")
    text = stream.getvalue()
    assert TOKEN not in text
    assert "client-secret-value" not in text
    assert "abc123" not in text
    assert len(lines(stream)) == 4


def test_redact_keeps_the_rest_of_the_text() -> None:
    assert redact("GET /batch with Bearer abc.def-ghi ok") == "GET /batch with Bearer *** ok"
    assert redact('{"access_token": "xyz", "expires_in": 3599}') == (
        '{"access_token": "***", "expires_in": 3599}'
    )
