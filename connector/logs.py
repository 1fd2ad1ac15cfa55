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

_SECRET_WORDS = ("client_secret", "access_token", "refresh_token", "password")

# userinfo in a URL: scheme://user:password@host
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@\"']+@")

# Live secrets (tokens as they are issued, configured client secrets and passwords): masked
# wherever they appear, whatever surrounds them. Secrets shorter than this are not registered,
# so that a one-character "secret" cannot mask every line.
_MIN_SECRET_LENGTH = 6
# Tokens are kept newest first up to this many: a token replaced 64 renewals ago has expired
# long since, and each one costs every `redact` a substring search (~50 ns).
MAX_LIVE_TOKENS = 64
_permanent_secrets: dict[str, None] = {}  # configured secrets: a handful, never dropped
_live_tokens: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
_live_secrets: tuple[str, ...] = ()  # both, longest first, so a secret inside another goes too


def register_secret(value: str | None, *, permanent: bool = False) -> None:
    """Remember `value` as a secret: `redact` masks it from now on, in every log line and in
    every dead-letter message.

    Called with each token as it is issued (the newest `MAX_LIVE_TOKENS` are kept) and, with
    `permanent=True`, with every configured secret when the settings are loaded (kept for the
    life of the process). Idempotent; values shorter than 6 characters are ignored.
    """
    global _live_secrets  # noqa: PLW0603 - one process-wide registry, swapped whole
    if not value or len(value) < _MIN_SECRET_LENGTH or value in _permanent_secrets:
        return
    if not permanent and value == next(reversed(_live_tokens), None):
        return  # already the newest: nothing to reorder (a grant re-registers at every call)
    if permanent:
        _permanent_secrets[value] = None
        _live_tokens.pop(value, None)
    else:
        _live_tokens.pop(value, None)
        _live_tokens[value] = None
        while len(_live_tokens) > MAX_LIVE_TOKENS:
            del _live_tokens[next(iter(_live_tokens))]
    # a new tuple, never one changed in place: a `redact` in another thread reads either one
    _live_secrets = tuple(sorted({*_permanent_secrets, *_live_tokens}, key=len, reverse=True))


def redact(text: str) -> str:
    """Mask live secrets, bearer tokens, URL userinfo and `secret=value` pairs in free text."""
    for secret in _live_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    # Each pattern only where its literal part occurs: a substring test costs ~50 ns, a
    # pattern's scan of a log line microseconds, and most lines hold none of these.
    if "@" in text and "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}***@", text)
    low = text.lower()
    if "bearer" in low or "bimplus" in low:
        text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} ***", text)
    if any(word in low for word in _SECRET_WORDS):
        text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return text


def get_logger(name: str) -> logging.Logger:
    """The logger for a module of the connector: `get_logger(__name__)`."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class RedactingFilter(logging.Filter):
    """Rewrites each record with secrets masked: its message, exception and stack text, and
    every `extra=` field (both formatters print those). A string field is redacted as it is;
    a list, tuple or dict keeps its shape with its strings redacted; any other value (an
    exception, a URL object) is replaced by its redacted `str` when that holds a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in _extras(record).items():
            masked = _redact_value(value)
            if masked is not value:
                setattr(record, key, masked)
        return True


_PLAIN = (int, float, bool, type(None))


def _redact_value(value: Any, depth: int = 0) -> Any:
    """`value` with secrets masked; the same object when it held none (the common case)."""
    if isinstance(value, str):
        cleaned = redact(value)
        return value if cleaned == value else cleaned
    if isinstance(value, _PLAIN):
        return value
    if depth < _MAX_DEPTH and isinstance(value, list | tuple):
        items = [_redact_value(v, depth + 1) for v in value]
        same = all(a is b for a, b in zip(items, value, strict=True))
        return value if same else items
    if depth < _MAX_DEPTH and isinstance(value, dict):
        pairs = {k: _redact_value(v, depth + 1) for k, v in value.items()}
        keys = {k: _redact_value(k, depth + 1) if isinstance(k, str) else k for k in value}
        if all(pairs[k] is value[k] for k in value) and all(keys[k] is k for k in value):
            return value
        return {keys[k]: v for k, v in pairs.items()}
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


_MAX_DEPTH = 4  # deeper than this, a value is judged by its str() alone


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
