"""Logging: one namespace (`connector`), JSON lines off a terminal, readable text on one.

Owns the formatters and the redaction filter. Components log with lazy `%` arguments and put
context in `extra=`; this module turns that into one line per event.

Must not: let a bearer token, a client secret or an `Authorization` header value reach a log
line. Secrets are `SecretStr` everywhere, so they print masked; the redaction filter here is the
second line of defence for text that arrives from outside (an exception from a library, a
response body that echoes a header).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal, TextIO

import orjson

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "get_logger",
    "redact",
    "register_secret",
    "setup_logging",
]

ROOT = "connector"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer|bimplus)\s+[A-Za-z0-9\-._~+/]+=*"),
    re.compile(
        r"(?i)(client_secret|access_token|refresh_token|password)([\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"
    ),
)


# userinfo in a URL: scheme://user:password@host
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@\"']+@")

# Live secrets (tokens as they are issued, configured client secrets and passwords): masked
# wherever they appear, whatever surrounds them. Secrets shorter than this are not registered,
# so that a one-character "secret" cannot mask every line.
_MIN_SECRET_LENGTH = 6
_live_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember `value` as a secret: `redact` masks it from now on, in every log line and in
    every dead-letter message. Called with each token as it is issued and with configured
    secrets at start. Idempotent; the set is process-wide and small (one entry per token)."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        _live_secrets.add(value)


def redact(text: str) -> str:
    """Mask live secrets, bearer tokens, URL userinfo and `secret=value` pairs in free text."""
    for secret in _live_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}***@", text)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} ***", text)
    return _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def get_logger(name: str) -> logging.Logger:
    """The logger for a module of the connector: `get_logger(__name__)`."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_text:
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_text:
            line += "\n" + record.exc_text
        elif record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def setup_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route the `connector` namespace (and aiokafka's warnings) to `stream` (stderr).

    Called once by the command line. Returns the handler so tests can remove it.
    """
    stream = sys.stderr if stream is None else stream
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RedactingFilter())
    for name, lvl in ((ROOT, level), ("aiokafka", "WARNING"), ("aiohttp", "WARNING")):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_connector", False)]
        handler._connector = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(lvl)
        logger.propagate = False
    return handler
