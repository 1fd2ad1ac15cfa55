"""The sink contract: what the pipeline needs from a platform, and nothing of any platform.

The pipeline hands a sink one `Batch` (window.py): the decoded records of one endpoint, each
with the Kafka records it stands for. The sink serialises them in its platform's own wire
format, paces its own API, and answers for every record:

- `submit` returns a `SubmitResult` when the platform took the request: every record it does
  not name in `failed` (index -> the platform's message) is accepted;
- or raises one of the `connector.errors` classes, which carries its disposition (wait for
  Retry-After, back off, hold the endpoint, split; `connector.delivery.disposition`), so the
  pipeline branches on types, never on a status or a message;
- a platform that settles later (BuildingMinds' `batchId`) answers `settles_later=True`: the
  accepted records stay in flight, and the sink reports each one's terminal outcome once, as
  a `Settlement`, to `Reports.settled` (given to `run`). A platform that settles at once
  (Building X) never sets it.

Budget: `limiter` is the budget a submission takes one slot of before `submit` is called
(None: the sink paces each request itself, as Building X does per API); `budgets` are every
limiter of the credential, which a replica shares with the others in its consumer group on
rebalance (`ratelimit.BudgetShare`). A sink that is told `RateLimited` blocks what it owns
(`limiter.block_for`) itself only when the pipeline does not: see `Sink.rate_limited`.

A new platform is one package under `connector/sinks/` with a `build(context) -> Sink` and
one entry in `connector.sinks.SINKS`; nothing outside `sinks/` names it.

Must not: know Kafka, offsets or dead letters: the pipeline commits, dead-letters and retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from typing import TextIO

    import aiohttp

    from connector.config import Settings
    from connector.metrics import Metrics
    from connector.ratelimit import RollingWindowLimiter
    from connector.window import Batch

__all__ = ["BatchHistory", "Reports", "Settlement", "Sink", "SinkContext", "SubmitResult"]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The platform took the request: `failed` maps record indexes to the platform's message.

    `settles_later`: the accepted records reach their terminal status later, and the sink
    reports it (`Reports.settled`) for this batch, under `batch_id`."""

    status: int
    batch_id: str | None
    failed: dict[int, str] = field(default_factory=dict)
    request_id: str | None = None
    settles_later: bool = False


@dataclass(slots=True)
class Settlement:
    """How an accepted batch ended on the platform, by record index.

    `failed`: (the platform's status, its message) of the records that failed; `waiting`: the
    records the platform holds until their parent arrives (counted as finished); `lost`: the
    records of a batch the platform no longer shows (`lost_for` seconds), sent again for the
    `resubmissions`th time so far; `statuses`: the platform's own counts, for the log line;
    `refused`: the records the platform refused when it accepted the batch (dead-lettered
    then, so neither delivered nor onboarded now)."""

    failed: dict[int, tuple[str, str]] = field(default_factory=dict)
    waiting: set[int] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    lost: tuple[int, ...] = ()
    resubmissions: int = 0
    lost_for: float = 0.0
    refused: frozenset[int] = frozenset()


class Reports(Protocol):
    """What a sink that settles later tells the pipeline, and asks it."""

    async def settled(self, batch: Batch, batch_id: str, settlement: Settlement) -> None:
        """Once per batch answered with `settles_later`: dead-letters and finishes records."""
        ...

    def submissions_waiting(self) -> bool:
        """Whether a submission is ready to go (status polls then yield the budget)."""
        ...

    def blocked(self) -> bool:
        """Whether a pending record waits for an unsettled batch (of an earlier version of
        its ID): then settling sooner is worth a poll even while submissions wait."""
        ...


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink's `build` gets: the settings, the metrics bundle and the plain session
    (TLS, timeouts, pool) that its token endpoint is called through; the sink makes its own
    authenticated session on the same pool, and closes it in `aclose`."""

    settings: Settings
    metrics: Metrics
    session: aiohttp.ClientSession


class Sink:
    """The one extension point for a platform (see the module docstring).

    Subclasses implement `submit` and `probe`; the rest has defaults for a platform that
    settles at once, has no token and no budget of its own."""

    limiter: RollingWindowLimiter | None = None
    budgets: tuple[RollingWindowLimiter, ...] = ()

    async def submit(self, batch: Batch) -> SubmitResult:
        """Deliver `batch`; return what the platform took or raise (module docstring).

        A result is returned only for an answer that shows the platform took the records;
        anything else raises, so nothing is committed on its strength. May be called again
        with the same batch after it raised (a retry) or with half of it (a split)."""
        raise NotImplementedError

    async def probe(self, out: TextIO, err: TextIO) -> bool:
        """`check`: prove the credential and one read-only call, sending no data. Prints one
        `...: ok` line per step to `out`, or `FAILED: ...` with its fix to `err`."""
        raise NotImplementedError

    async def run(self, reports: Reports) -> None:
        """Background work (status polls) until cancelled, in the pipeline's task group.
        Started before the first `submit`; returns at once for a sink with none."""
        del reports

    def rate_limited(self, seconds: float) -> None:
        """A submission raised `RateLimited`: block the submissions' budget for `seconds`.

        The default blocks `limiter`; a sink that paces its APIs itself (and blocked the
        one API that answered 429) leaves the others alone by overriding this."""
        if self.limiter is not None:
            self.limiter.block_for(seconds)

    def has_token(self) -> bool:
        """Whether the sink holds a credential now (/readyz)."""
        return True

    async def warm_up(self) -> None:
        """Get what the first request needs (a token) at start; failures only logged."""

    async def aclose(self) -> None:
        """Close what the sink opened (its authenticated session)."""


@runtime_checkable
class BatchHistory(Protocol):
    """A sink whose platform keeps a history of batches (`batches` lists it)."""

    async def batches(self, limit: int, batch_id: str | None, out: TextIO, err: TextIO) -> bool:
        """Print the `limit` most recent batches, or one batch with its failed records.
        Returns False after printing `FAILED:`; raises `ApiError` / `AuthError`."""
        ...
