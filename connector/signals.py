"""Stop signals from the first instant of `run`: SIGTERM, SIGINT and SIGHUP all mean "drain
and exit 0".

Python kills a process on SIGTERM or SIGHUP until a handler is installed, and `run` spends
its first second loading the configuration and importing the clients. `EarlySignals.install`
is therefore the first thing `run` does: it only remembers which signals came. Once the event
loop runs, `run_connector` listens itself (`SIGNALS`) and acts on what was remembered. SIGHUP is
a drain too, not a reload: the configuration is read once, at start, so a terminal that closes
(or a supervisor that sends HUP) stops the connector cleanly instead of killing it.

Must not: do anything in the handler but remember the signal.
"""

from __future__ import annotations

import signal
from typing import Any, ClassVar

__all__ = ["SIGNALS", "EarlySignals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class EarlySignals:
    """Which stop signals arrived before the event loop took over (one per process)."""

    _current: ClassVar[EarlySignals | None] = None

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}

    @classmethod
    def install(cls) -> EarlySignals:
        """Remember SIGTERM, SIGINT and SIGHUP from now on, instead of dying of them.

        Idempotent: a second call returns the instance installed first, with what it heard."""
        if cls._current is None:
            early = cls()
            for signum in SIGNALS:
                early._previous[signum] = signal.signal(signum, early._remember)
            cls._current = early
        return cls._current

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if EarlySignals._current is self:
            EarlySignals._current = None

    def _remember(self, signum: int, _frame: Any) -> None:
        self.received.append(signal.Signals(signum))
