"""A platform that exists only in the tests: proof that a sink is one class and one registry
entry, and a sink the pipeline's own tests can hold, release and inspect.

`MemorySink` keeps the newest payload of every ID it accepted. With `settle_later` it answers
like a platform with asynchronous acceptance: each accepted batch gets an ID and is settled
by `run` through the contract's `Reports.settled`. `hold()` makes submissions wait until
`release()` (a request in flight for as long as a test wants).

Must not: import a concrete sink or anything of `connector.sinks` but the contract.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio

from connector.sinks import register
from connector.sinks.base import Settlement, Sink, SubmitResult

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import TextIO

    from connector.config import Settings
    from connector.sinks.base import Reports, SinkContext
    from connector.window import Batch

__all__ = ["MemorySink", "memory_sink"]

NAME = "memory"


class MemorySink(Sink):
    def __init__(self, *, settle_later: bool = False, refuse: frozenset[str] = frozenset()):
        self.settle_later = settle_later
        self.refuse = refuse  # external IDs answered as failed, with a message
        self.stored: dict[str, dict[str, bytes]] = {}  # endpoint -> external ID -> payload
        self.requests = 0
        self.settled = 0
        self._open = anyio.Event()
        self._open.set()
        self._accepted: list[tuple[Batch, str]] = []  # to be settled by `run`
        self._wake = anyio.Event()

    def hold(self) -> None:
        self._open = anyio.Event()

    def release(self) -> None:
        self._open.set()

    async def submit(self, batch: Batch) -> SubmitResult:
        await self._open.wait()
        self.requests += 1
        failed = {
            i: f"memory refused {s.change.external_id}"
            for i, s in enumerate(batch.slots)
            if s.change.external_id in self.refuse
        }
        store = self.stored.setdefault(batch.entity.endpoint, {})
        for i, slot in enumerate(batch.slots):
            if i not in failed:
                store[slot.change.external_id] = slot.change.payload
        if not self.settle_later:
            return SubmitResult(200, None, failed)
        batch_id = f"memory-{self.requests}"
        self._accepted.append((batch, batch_id))
        self._wake.set()
        return SubmitResult(200, batch_id, failed, settles_later=True)

    async def run(self, reports: Reports) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._accepted:
                batch, batch_id = self._accepted.pop(0)
                await reports.settled(batch, batch_id, Settlement(statuses={"Done": 1}))
                self.settled += 1

    async def probe(self, out: TextIO, err: TextIO) -> bool:
        del err
        print("memory: ok", file=out)
        return True


@contextlib.contextmanager
def memory_sink(settings: Settings, sink: MemorySink) -> Iterator[Settings]:
    """`settings` with `sink.type: memory`, built as `sink` while the block runs."""

    def build(context: SinkContext) -> Sink:
        del context
        return sink

    register(NAME, build)
    # the config knows only the shipped types; the test's type is set past its validation
    yield settings.model_copy(update={"sink": settings.sink.model_copy(update={"type": NAME})})
