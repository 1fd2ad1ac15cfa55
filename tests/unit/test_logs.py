"""Logs: JSON off a terminal, context from `extra=`, and no secret ever in a line."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import orjson
import pytest
from pydantic import SecretStr

from connector import logs
from connector.logs import MAX_LIVE_TOKENS, get_logger, redact, register_secret, setup_logging

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


# --- secrets in `extra=` fields, URLs and the live-secret registry -------------------------

URL_SECRET = "Url-Pass-5f3a"
URL = f"https://svc-user:{URL_SECRET}@api.example.com/api/digitaltwinintegration"


class Echo:
    """An object whose str() holds a secret, as an exception or a URL object's does."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


@pytest.fixture(params=["json", "text"])
def any_stream(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = setup_logging("DEBUG", request.param, buffer)
    yield buffer
    for name in ("connector", "aiokafka", "aiohttp"):
        logging.getLogger(name).removeHandler(handler)


def test_extra_fields_are_redacted_in_both_formats(any_stream: io.StringIO) -> None:
    """The probe saw a URL's password in 14 lines: it came through `extra=` and messages."""
    register_secret("live-token-0a1b2c3d")
    log = get_logger("sink")
    log.warning("request failed", extra={"url": URL, "endpoint": "building"})
    log.warning("request failed: %s", URL)
    log.error("failed", extra={"error": Echo(f"POST {URL} failed"), "attempt": 3})
    log.error("failed", extra={"request": {"url": URL, "headers": ["Bearer " + TOKEN]}})
    log.error("failed", extra={"urls": (URL, "https://ok.example.com"), "n": None})
    log.info("echoed", extra={"body": '{"detail": "token live-token-0a1b2c3d refused"}'})
    log.info("k", extra={"by_url": {URL: 1}})
    text = any_stream.getvalue()
    assert len(text.splitlines()) == 7
    for line in text.splitlines():
        assert URL_SECRET not in line, line
        assert "svc-user" not in line, line
        assert TOKEN not in line, line
        assert "live-token-0a1b2c3d" not in line, line
    assert "endpoint" in text
    assert "https://***@api.example.com/api/digitaltwinintegration" in text
    assert "https://ok.example.com" in text


def test_extra_fields_without_secrets_keep_their_type(stream: io.StringIO) -> None:
    get_logger("sink").info("x", extra={"records": 500, "ids": ["b-1"], "ok": True})
    (entry,) = lines(stream)
    assert (entry["records"], entry["ids"], entry["ok"]) == (500, ["b-1"], True)


def test_the_live_secret_registry_keeps_configured_secrets_and_the_newest_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a registry of its own, so the 164 tokens below do not push out other tests' secrets
    for name, empty in (("_permanent_secrets", {}), ("_live_tokens", {}), ("_live_secrets", ())):
        monkeypatch.setattr(logs, name, empty)
    register_secret("configured-secret-77", permanent=True)
    tokens = [f"issued-token-{n:04d}" for n in range(MAX_LIVE_TOKENS + 36)]
    for token in tokens:
        register_secret(token)
    assert redact("configured-secret-77") == "***"
    assert all(redact(f"said {t}!") == "said ***!" for t in tokens[-MAX_LIVE_TOKENS:])
    assert redact(tokens[0]) == tokens[0], "the oldest tokens are dropped"
    register_secret("configured-secret-77")  # a token equal to a configured secret stays kept
    for n in range(MAX_LIVE_TOKENS):
        register_secret(f"later-token-{n:04d}")
    assert redact("configured-secret-77") == "***"
