"""The emulators' request log: one entry per API or token request (admin requests are not
logged), kept for `GET /_emulator/requests`, and the ISO 8601 time the emulators write."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["REQUEST_LOG_SIZE", "LogEntry", "iso_utc"]

REQUEST_LOG_SIZE = 100_000  # entries kept for GET /_emulator/requests


@dataclass(slots=True)
class LogEntry:
    """One line of the request log (API and token requests; admin requests are not logged)."""

    time: float
    method: str
    path: str
    client_id: str | None = None
    status: int | None = None  # None: the connection was dropped (resets profile)
    record_count: int | None = None
    fault: str | None = None
    request_id: str | None = None  # the X-Request-Id answered (Building X sends one)


def iso_utc(unix_seconds: float) -> str:
    """ISO 8601 UTC with milliseconds and `Z`: how the emulators write time in logs and bodies."""
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
