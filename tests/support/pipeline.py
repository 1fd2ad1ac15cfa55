"""The connector in-process for a block, and what the hostile tests look at around it.

`running_connector(settings)` is the linear form of `tests.integration.helpers.run_until`:
the block runs while the connector does, so a scenario reads top to bottom (serve junk, check
nothing was committed, pass through, check everything arrived). Leaving the block drains the
connector as SIGTERM would. A connector that crashes cancels the block and its error is
raised; `until()` also fails if the connector stopped by itself.

`captured_logs()` routes the connector's logging through its production handler (JSON lines,
with the redaction filter `setup_logging` installs) into a buffer, so a test sees exactly the
lines an operator would, and restores the loggers afterwards.

Must not: reach into the pipeline's internals: tests read `Pipeline.stats` and the outside
world (the emulator, the topics, the committed offsets).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from connector.app import Pipeline, run_connector
from connector.logs import setup_logging

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from connector.config import Settings

__all__ = [
    "LogCapture",
    "captured_logs",
    "eventually",
    "exported_counts",
    "reconciles",
    "running_connector",
    "until",
]


@contextlib.asynccontextmanager
async def running_connector(settings: Settings) -> AsyncIterator[Pipeline]:
    """The connector running for the block; drained (like SIGTERM) when the block ends.

    A failure of the block, or a crash of the connector, is raised as itself rather than in
    a task group's exception group: anyio's pytest runner survives only plain failures.
    """
    try:
        async with anyio.create_task_group() as tg:
            pipeline: Pipeline = await tg.start(
                lambda task_status: run_connector(
                    settings, handle_signals=False, task_status=task_status
                )
            )
            try:
                yield pipeline
            finally:
                pipeline.begin_drain()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 or not isinstance(group, ExceptionGroup):
            raise group.exceptions[0] from None
        raise


async def until(
    pipeline: Pipeline,
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    what: str | Callable[[], str],
    timeout: float = 20.0,
    interval: float = 0.05,
) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` s, or at once if the
    connector stopped without being asked to. `what` may be a function, to say in the failure
    what the world looked like then."""
    deadline = time.monotonic() + timeout
    while True:
        if pipeline.stopped.is_set() and not pipeline.draining:
            pytest.fail(f"the connector stopped by itself while waiting for {_say(what)}")
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {_say(what)}")
        await anyio.sleep(interval)


def _say(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


async def eventually(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
) -> bool:
    """Whether `predicate` came true within `timeout` s; never fails the test by itself."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await anyio.sleep(interval)


_COUNTERS = ("consumed", "delivered", "dead_lettered", "coalesced", "skipped")


def exported_counts(pipeline: Pipeline) -> dict[str, float]:
    """The `connector_records_*_total` counters on /metrics, summed over their labels."""
    totals = dict.fromkeys(_COUNTERS, 0.0)
    for family in pipeline.metrics.registry.collect():
        for sample in family.samples:
            for name in _COUNTERS:
                if sample.name == f"connector_records_{name}_total":
                    totals[name] += sample.value
    return totals


def reconciles(pipeline: Pipeline) -> str | None:
    """None when consumed = delivered + dead-lettered + coalesced + skipped, in the pipeline's
    stats and in the exported metrics alike, and the two agree; else what does not add up."""
    st = pipeline.stats
    stats = {name: float(getattr(st, name)) for name in _COUNTERS}
    problems = []
    for where, c in (("stats", stats), ("metrics", exported_counts(pipeline))):
        if c["consumed"] != c["delivered"] + c["dead_lettered"] + c["coalesced"] + c["skipped"]:
            problems.append(
                f"{where}: consumed {c['consumed']:g} != delivered {c['delivered']:g} "
                f"+ dead-lettered {c['dead_lettered']:g} + coalesced {c['coalesced']:g} "
                f"+ skipped {c['skipped']:g}"
            )
    if (exported := exported_counts(pipeline)) != stats:
        problems.append(f"the metrics {exported} disagree with the stats {stats}")
    return "; ".join(["counters do not reconcile", *problems]) if problems else None


class LogCapture:
    """The JSON lines the connector wrote, as an operator's log collector would get them."""

    def __init__(self, buffer: io.StringIO) -> None:
        self.buffer = buffer

    def text(self) -> str:
        return self.buffer.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                found.append(orjson.loads(line))
        return found

    def connector_text(self) -> str:
        """The lines of the connector itself; the in-process emulators' own lines left out."""
        return "\n".join(
            orjson.dumps(line).decode()
            for line in self.lines()
            if not str(line.get("logger", "")).startswith("twin_emulators")
        )


@contextlib.contextmanager
def captured_logs(level: str = "DEBUG") -> Iterator[LogCapture]:
    """The connector's production log handler, writing into a buffer, for the block."""
    names = ("connector", "aiokafka", "aiohttp")
    before = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    buffer = io.StringIO()
    handler = setup_logging(level, "json", buffer)
    try:
        yield LogCapture(buffer)
    finally:
        for name, (lvl, propagate) in before.items():
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(lvl)
            logger.propagate = propagate
