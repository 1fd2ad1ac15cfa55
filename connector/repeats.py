"""Repeated library log lines, rate-limited: the first of each kind, then one summary per
interval.

During a Kafka outage aiokafka logs the same few lines for every connection attempt, fetch
and heartbeat (about 6,000 lines in 90 s), which buries everything else. `RepeatFilter`, on
the log handler, lets the first line of each distinct message (logger, level and message
template) through, drops its repeats, and lets one through per `interval` with the number it
dropped appended: `... [412 more like this in the last 60 s]`. Lines of other loggers pass.

Must not: drop the first line of a message, or hold lines back (a summary rides on the next
repeat, so a message that stops repeating leaves nothing pending).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RepeatFilter"]

_MAX_KINDS = 1024  # distinct messages remembered; more (a message per broker id, ...) reset it


class RepeatFilter(logging.Filter):
    """Passes the first line of each kind, then at most one per `interval` seconds."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka",),
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (passed at, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is None:
            if len(self._seen) >= _MAX_KINDS:
                self._seen.clear()
            self._seen[kind] = (now, 0)
            return True
        passed_at, dropped = seen
        if now - passed_at < self.interval:
            self._seen[kind] = (passed_at, dropped + 1)
            return False
        self._seen[kind] = (now, 0)
        if dropped:
            span = now - passed_at
            record.msg = (
                f"{record.getMessage()} [{dropped} more like this in the last {span:.0f} s]"
            )
            record.args = None
        return True
