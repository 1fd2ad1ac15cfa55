"""The pipeline's lifecycle: one state, one deadline shared by drain and revoke, and one
signal for "work in flight changed" that any number of waiters can wait on.

    STARTING ──run()──► RUNNING ──begin_drain()──► DRAINING ──drained or deadline──► STOPPED

`Deadline` is the time a drain may take (`pipeline.shutdown_grace_seconds`, from the first
signal). A rebalance's revoke waits for the requests in flight up to its own bound, or, while
a drain runs, up to what is left of the drain's deadline, never longer (the model is Quix
Streams' `checkpointing/deadline.py`).

`Changed` replaces a single `anyio.Event` that waiters used to swap for a fresh one: with two
waiters (a drain and a revoke) the second swap left the first waiting on an event nobody
would set, until its grace ran out. Here the notifier swaps, the waiters only read, so each
waiter wakes on the next change and re-checks its own condition.

Must not: know Kafka, sinks or records.
"""

from __future__ import annotations

import enum
import math
import time
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Changed", "Deadline", "State"]


class State(enum.Enum):
    STARTING = "starting"  # built, not running yet
    RUNNING = "running"  # consuming and delivering
    DRAINING = "draining"  # intake stopped: flush, settle, commit
    STOPPED = "stopped"  # every task ended, the last commit made


class Deadline:
    """A point on `clock`'s time line, set once; `remaining()` is inf until it is set."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._at: float | None = None

    @property
    def is_set(self) -> bool:
        return self._at is not None

    def start(self, seconds: float) -> None:
        """Set the deadline `seconds` from now; a second call keeps the first deadline."""
        if self._at is None:
            self._at = self.clock() + seconds

    def remaining(self) -> float:
        """Seconds left (never negative); inf when not set."""
        return math.inf if self._at is None else max(self._at - self.clock(), 0.0)

    def within(self, seconds: float) -> float:
        """`seconds`, or what is left of the deadline if that is sooner."""
        return min(seconds, self.remaining())


class Changed:
    """A broadcast: `notify()` wakes every task in `wait()` at that moment."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()

    async def wait(self) -> None:
        await self._event.wait()

    async def until(self, done: Callable[[], bool]) -> None:
        """Return once `done()` is true, re-checked after every `notify()`."""
        while not done():
            await self._event.wait()
