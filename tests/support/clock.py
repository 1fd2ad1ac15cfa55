"""The one fake clock of the suite: monotonic time that moves only when a test says so."""

from __future__ import annotations

import anyio
import anyio.lowlevel

__all__ = ["FakeClock"]


class FakeClock:
    """Call it for the time; `advance(s)` (or set `now`) to move it.

    `sleep` is an injectable `anyio.sleep`: with `auto=True` it moves the clock forward by the
    delay at once, so a waiter wakes exactly at its deadline; with `auto=False` sleepers stay
    asleep until `advance` reaches their deadline. `sleeps` lists every delay asked for.
    """

    def __init__(self, start: float = 1000.0, *, auto: bool = True) -> None:
        self.now = start
        self.auto = auto
        self.sleeps: list[float] = []
        self._sleepers: list[anyio.Event] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.auto:
            self.now += seconds
            await anyio.lowlevel.checkpoint()
            return
        deadline = self.now + seconds
        while self.now < deadline:
            moved = anyio.Event()
            self._sleepers.append(moved)
            await moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        sleepers, self._sleepers = self._sleepers, []
        for moved in sleepers:
            moved.set()
