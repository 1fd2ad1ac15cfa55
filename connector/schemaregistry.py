"""Schema Registry: fetch the schemas a fetched batch names, before it is decoded.

    SchemaGate.admit(batches, consumer) -> batches      the pre-step of the consume loop
      ├── collects the schema IDs of wire-format values (`connector.schemas`) not cached yet
      ├── starts a try for them, a task of the pipeline's task group, and waits for it at
      │   most `FIRST_WAIT_SECONDS` (0.2 s); the try asks one ID after another:
      │   RegistryClient.fetch(id)                       GET {url}/schemas/ids/{id}, through
      │                                                  `connector.http.send` (no redirects,
      │                                                  body cap, TLS, basic or bearer auth)
      └── holds a partition whose record names a schema not cached by then (the try failed, or
          has not answered yet): that partition's records from the first such record on are
          not handed over; the partition is sought back to that record and paused, and
          resumed by the first call after its schemas came; a failed try is tried again with
          exponential backoff

A schema by ID never changes, so each is fetched once and cached for the life of the process
(`SchemaCache`). A schema the registry serves but the connector cannot use (Protobuf, not
valid Avro) is cached as `SchemaUnusable`: its records are dead-lettered by the decoder, naming
the schema ID.

Whatever stops a fetch holds the records and never dead-letters them: the registry down, a 5xx,
a timeout, a 401/403 (a credential to fix), and a 404 (40403, "schema not found": a registry
replica may not have caught up with the producer's registration). The hold lasts as long as the
failure does: the records wait in Kafka, the other partitions flow, the hold is logged on each
failed try (WARNING, at most one line per try) and counted in
`connector_schema_registry_requests_total{outcome}` and `connector_schema_held_partitions`;
a hold of minutes shows as consumer lag, which the lag alert reports.

A registry that accepts connections and does not answer costs the consume loop
`FIRST_WAIT_SECONDS` per try, not `request_timeout_seconds`: the try goes on in the background
while the records naming its schemas are held, the other partitions flow and the loop's
heartbeat moves. Until the try ends nothing is logged and the backoff stays where it was; if
the timeout ends it, it counts and logs as any failed try. One try runs at a time (a registry
hung for one ID is for all: one connection waits, not one per schema); IDs seen meanwhile are
held and asked by the next try, which starts as soon as this one ended.

`SchemaLookup` is the same client and cache for the commands that decode records outside the
consume loop (`dry-run`, `dead-letters replay`): asked one record at a time, it holds nothing
and retries nothing; a schema it could not fetch is a message for that record.

Must not: sleep in the consume loop (a held partition is paused, never waited for), wait for
the registry longer than `FIRST_WAIT_SECONDS` per try, read records it holds twice into the
pipeline, or dead-letter for a failed fetch.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from connector.errors import ApiError, ConnectorError, RateLimited, ServerError
from connector.http import StatusTable, host_of, send
from connector.logs import get_logger
from connector.ratelimit import Backoff
from connector.schemas import (
    HEADER_BYTES,
    Schema,
    SchemaCache,
    SchemaUnusable,
    parse_schema,
    schema_id,
)
from connector.sessions import http_session

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import aiohttp
    from aiokafka import TopicPartition

    from connector.config import SchemaRegistrySettings
    from connector.metrics import Metrics

__all__ = [
    "FIRST_WAIT_SECONDS",
    "RegistryClient",
    "RegistryRefused",
    "SchemaGate",
    "SchemaLookup",
    "SchemaNotFound",
    "build_gate",
    "build_lookup",
]

log = get_logger(__name__)


class SchemaNotFound(ApiError):
    """404: the registry does not know the ID (yet: a replica may lag the registration)."""

    retriable = True


class RegistryRefused(ApiError):
    """401 / 403 / another 4xx: a credential or URL to fix; the records are held meanwhile."""

    retriable = True


_STATUSES = StatusTable(
    errors={401: RegistryRefused, 403: RegistryRefused, 404: SchemaNotFound, 429: RateLimited},
    client=RegistryRefused,
    server=ServerError,
    retry_after=None,
)

_OUTCOMES: dict[type[Exception], str] = {
    SchemaNotFound: "not_found",
    RegistryRefused: "refused",
}


class RegistryClient:
    """GET /schemas/ids/{id} of a Confluent-compatible registry (Confluent, Apicurio's
    `/apis/ccompat/v7`, Redpanda, Karapace)."""

    def __init__(self, settings: SchemaRegistrySettings) -> None:
        if settings.url is None:
            raise ValueError("schema_registry.url is not set")
        self.settings = settings
        self.url = settings.url
        self.max_body = settings.max_schema_bytes
        self._headers: dict[str, str] = {"Accept": "application/vnd.schemaregistry.v1+json"}
        if settings.username is not None and settings.password is not None:
            pair = f"{settings.username}:{settings.password.get_secret_value()}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif settings.token is not None:
            self._headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"

    def session(self) -> aiohttp.ClientSession:
        """A new session (TLS and timeouts of the settings); fetches are rare: one per ID."""
        s = self.settings
        return http_session(
            verify=s.tls_verify, ca_file=s.ca_file, timeout=s.request_timeout_seconds
        )

    async def fetch(self, session: aiohttp.ClientSession, ident: int) -> Schema | SchemaUnusable:
        """The schema `ident` names, or why it cannot be used.

        Raises `SchemaNotFound` (404), `RegistryRefused` (401, 403, other 4xx), `RateLimited`,
        `ServerError` (5xx, transport, timeouts, a body over the cap, an answer that is no
        schema), `EndpointMisconfigured` / `RedirectRefused` (TLS, URL, a 3xx)."""
        what = f"GET {host_of(self.url)}/schemas/ids/{ident}"
        answer = await send(
            session, "GET", f"{self.url}/schemas/ids/{ident}", what=what,
            headers=self._headers, max_body=self.max_body,
        )  # fmt: skip
        body = answer.json()
        if not answer.ok:
            said = body.get("message") if isinstance(body, dict) else None
            code = body.get("error_code") if isinstance(body, dict) else None
            detail = f": {said} (error_code {code})" if said else ""
            error = _STATUSES.error(
                answer, f"{what} answered {answer.status}{detail}", max_retry_after=300.0
            )
            assert error is not None  # noqa: S101 - a non-2xx always maps to a class
            raise error
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise ServerError(f"{what} answered {answer.status} without a schema string")
        if body.get("references"):
            return SchemaUnusable(
                f"schema {ident} refers to other schemas (references), which the connector "
                "does not resolve"
            )
        try:
            return parse_schema(ident, body["schema"], body.get("schemaType"))
        except SchemaUnusable as exc:
            return exc


class _Consumer(Protocol):
    """What the gate uses of aiokafka's consumer."""

    def assignment(self) -> Iterable[TopicPartition]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...


FIRST_WAIT_SECONDS = 0.2
"""How long `admit` waits for a try it started: a registry that answers at all answers well
within it; one that accepts and never answers costs the consume loop no more than this per try
(not `request_timeout_seconds`)."""


@dataclass
class _Hold:
    """A partition held at `offset` until the schemas `ids` are in the cache."""

    offset: int
    ids: set[int]


@dataclass
class _Try:
    """One round of requests (`SchemaGate._run`): `ids` asked one after another."""

    ids: list[int]
    retry: bool  # held IDs whose backoff was over are among them: a failure lengthens it
    held_before: int  # partitions held when it began, for its WARNING line
    done: anyio.Event = field(default_factory=anyio.Event)
    failed: set[int] = field(default_factory=set)


@dataclass
class SchemaGate:
    """The consume loop's pre-step: hands over a batch only as far as its schemas are cached.

    Owns the holds, the backoff and the one try in flight. A try runs as a task of the
    pipeline's task group (`start`, which also cancels it at shutdown); without `start` (tools,
    tests) it is awaited inline, which a registry that never answers blocks for the timeout."""

    client: RegistryClient
    cache: SchemaCache
    metrics: Metrics
    backoff: Backoff
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] | None = None  # backoff jitter (tests pass a fixed one)
    start: Callable[..., object] | None = None  # `Pipeline.start`: runs a try in the task group
    first_wait: float = FIRST_WAIT_SECONDS
    _held: dict[TopicPartition, _Hold] = field(default_factory=dict)
    # One try in flight at a time, for every ID: a registry that is down or hung for one ID is
    # for all, so a try is one request round (one WARNING line per try, not one per partition)
    # and a hung registry holds one connection, not one per schema. IDs seen meanwhile wait
    # for the next try, which starts as soon as this one ends.
    _try: _Try | None = None
    # one backoff for every hold: the IDs whose last try failed are tried again together
    _failed: set[int] = field(default_factory=set)
    _attempt: int = 0
    _retry_at: float = 0.0

    @property
    def held(self) -> int:
        """How many partitions are held."""
        return len(self._held)

    async def admit(
        self, batches: dict[Any, list[Any]], consumer: _Consumer
    ) -> dict[Any, list[Any]]:
        """`batches` (aiokafka's `getmany` answer) as far as each partition's schemas are known.

        Called after every fetch, an empty one too (held partitions are paused: their retry
        comes from here), before its records are taken in. Starts a try for the schemas not
        cached yet (and for the held ones once their backoff is over) and waits for it at most
        `first_wait`; a partition whose schema is not cached by then (the try failed, or has not
        answered yet) is cut before its first such record, sought back to it and paused, and
        resumed by a later call once its schemas came. Never raises for a registry failure (it
        holds instead)."""
        if self._held:
            self._forget_revoked(consumer)
        if self._try is not None and self._try.done.is_set():
            self._settle()
        if self._held:
            self._resume_ready(consumer)
        missing: dict[int, None] = {}
        known = self.cache
        for tp, records in batches.items():
            if tp in self._held:
                continue
            for rec in records:  # (inlined `schema_id`: this runs per record)
                value = rec.value
                if value and value[0] == 0 and len(value) >= HEADER_BYTES:
                    ident = int.from_bytes(value[1:HEADER_BYTES], "big")
                    if ident not in known:
                        missing[ident] = None
        if self._try is None and (self._held or missing):
            await self._begin(missing)
        unknown = {i for i in missing if i not in known}
        if not self._held and not unknown:
            return batches
        admitted = self._cut(batches, unknown, consumer)
        if self._held:  # after the cut: a partition held at the scan was not scanned
            self._resume_ready(consumer)
        self._failed &= {i for hold in self._held.values() for i in hold.ids}
        self.metrics.set_schema_held(len(self._held))
        return admitted

    async def _begin(self, missing: dict[int, None]) -> None:
        """Start a try for `missing` and the held IDs not asked yet, with the failed ones if
        their backoff is over; wait for it at most `first_wait`."""
        due = bool(self._failed) and self.clock() >= self._retry_at
        wanted = {i for hold in self._held.values() for i in hold.ids if i not in self.cache}
        wanted.update(missing)
        if not due:
            wanted -= self._failed
        if not wanted:
            return
        attempt = _Try(sorted(wanted), due, len(self._held))
        self._try = attempt
        if self.start is None:
            await self._run(attempt)
        else:
            self.start(self._run, attempt)
            with anyio.move_on_after(self.first_wait):
                await attempt.done.wait()
        if attempt.done.is_set():
            self._settle()
        # else: held as a failed try holds, with no failure logged and the backoff as it was;
        # a later call settles it

    def _settle(self) -> None:
        """The finished try's outcome: a failure starts the backoff, a failed retry lengthens
        it (a new ID that fails while it runs joins it)."""
        attempt, self._try = self._try, None
        assert attempt is not None  # noqa: S101 - called once a try is done
        if attempt.failed:
            if attempt.retry:
                self._retry_at = self._next_try(self._attempt)
                self._attempt += 1
            elif not self._failed:
                self._retry_at, self._attempt = self._next_try(0), 1
        self._failed = {i for i in self._failed | attempt.failed if i not in self.cache}

    def _forget_revoked(self, consumer: _Consumer) -> None:
        assigned = set(consumer.assignment())
        for tp in [tp for tp in self._held if tp not in assigned]:
            del self._held[tp]  # revoked: its next owner reads it from the commit
        if not self._held:
            self._failed.clear()
            self.metrics.set_schema_held(0)

    def _resume_ready(self, consumer: _Consumer) -> None:
        """Resume the held partitions whose schemas are all cached now."""
        for tp, hold in list(self._held.items()):
            if all(i in self.cache for i in hold.ids):
                del self._held[tp]
                consumer.resume(tp)
                log.info(
                    "schema registry: %s partition %d resumed at offset %d",
                    tp.topic, tp.partition, hold.offset,
                )  # fmt: skip
        self.metrics.set_schema_held(len(self._held))

    def _cut(
        self, batches: dict[Any, list[Any]], unknown: set[int], consumer: _Consumer
    ) -> dict[Any, list[Any]]:
        """The records before each partition's first one naming an `unknown` schema (not
        cached); those partitions are held there."""
        admitted: dict[Any, list[Any]] = {}
        for tp, records in batches.items():
            hold = self._held.get(tp)
            if hold is not None:  # resumed by backpressure meanwhile: read again later
                if records:
                    consumer.seek(tp, hold.offset)
                    consumer.pause(tp)
                continue
            cut = _first_failed(records, unknown) if unknown else None
            if cut is None:
                admitted[tp] = records
                continue
            first = records[cut]
            ids = {i for r in records[cut:] if (i := _id_of(r)) in unknown}
            self._held[tp] = _Hold(first.offset, ids)
            consumer.seek(tp, first.offset)
            consumer.pause(tp)
            if cut:
                admitted[tp] = records[:cut]
        return admitted

    def _next_try(self, attempt: int) -> float:
        delay = self.backoff.delay(attempt) if self.rand is None else (
            self.backoff.delay(attempt, self.rand)
        )  # fmt: skip
        return self.clock() + delay

    async def _run(self, attempt: _Try) -> None:
        """Fetch `attempt.ids` into the cache; the IDs that could not be fetched into
        `attempt.failed`, logged in one WARNING line.

        After a failure that is not about one ID (the registry down, refusing, throttling)
        the rest are not asked this try."""
        failed = attempt.failed
        error: ConnectorError | None = None
        try:
            async with self.client.session() as session:
                for ident in attempt.ids:
                    if error is not None and not isinstance(error, SchemaNotFound):
                        failed.add(ident)
                        continue
                    try:
                        schema = await self.client.fetch(session, ident)
                    except ConnectorError as exc:
                        error = exc
                        failed.add(ident)
                        self.metrics.schema_fetched(_OUTCOMES.get(type(exc), "unavailable"))
                        continue
                    self.cache.put(ident, schema)
                    outcome = "unusable" if isinstance(schema, SchemaUnusable) else "found"
                    self.metrics.schema_fetched(outcome)
                    if isinstance(schema, SchemaUnusable):
                        log.error("schema registry: %s; its records are dead-lettered", schema)
        finally:  # cancelled at shutdown too: nothing waits for it then, but keep it settled
            attempt.done.set()
        if error is not None:
            held = attempt.held_before
            log.warning(
                "schema registry: schema%s %s not fetched (%s); holding the records that "
                "name them, %d partition%s held before this try",
                "s" if len(failed) > 1 else "", ", ".join(map(str, sorted(failed))), error,
                held, "" if held == 1 else "s",
            )  # fmt: skip


def _id_of(record: Any) -> int | None:
    value = record.value
    return schema_id(value) if value and value[0] == 0 else None


def _first_failed(records: list[Any], failed: set[int]) -> int | None:
    for index, record in enumerate(records):
        if _id_of(record) in failed:
            return index
    return None


def build_gate(
    settings: SchemaRegistrySettings,
    *,
    metrics: Metrics,
    clock: Callable[[], float] = time.monotonic,
    start: Callable[..., object] | None = None,
) -> tuple[SchemaGate | None, SchemaCache | None]:
    """The gate and its cache for `settings`; (None, None) when no registry is configured.
    `start` (`Pipeline.start`) runs its fetches as tasks of the pipeline's task group."""
    if settings.url is None:
        return None, None
    cache = SchemaCache()
    backoff = Backoff(base=settings.retry_backoff_seconds, cap=settings.retry_backoff_max_seconds)
    client = RegistryClient(settings)
    return SchemaGate(client, cache, metrics, backoff, clock, start=start), cache


class SchemaLookup:
    """The schemas of records decoded outside the consume loop (`dry-run`, `dead-letters
    replay`): the gate's client and a `SchemaCache` for the decoder, asked one record at a time.

    Nothing is held or retried: a schema that could not be fetched is a message for the record
    that names it, and is not asked for again in the same run. After a failure that is not
    about one ID (the registry down, refusing, throttling) no other ID is asked either: each try
    may wait `request_timeout_seconds`, and a command should not wait that once per record."""

    def __init__(self, client: RegistryClient, cache: SchemaCache | None = None) -> None:
        self.client = client
        self.cache = cache if cache is not None else SchemaCache()
        self._failed: dict[int, str] = {}  # ID -> why it could not be fetched
        self._down: str | None = None  # why the registry is not asked any more this run
        self._session: aiohttp.ClientSession | None = None

    async def unfetched(self, value: bytes | None) -> str | None:
        """Why the schema `value` names could not be fetched, or None: `value` is not in the
        wire format, or its schema is in `cache` now (a usable one or why not: the decoder
        dead-letters an unusable one, as the connector does)."""
        ident = schema_id(value) if value else None
        if ident is None or ident < 0 or ident in self.cache:
            return None
        if (why := self._failed.get(ident)) is None:
            why = self._down or await self._fetch(ident)
            if why is None:
                return None
            self._failed[ident] = why
        return f"schema {ident} could not be fetched: {why}"

    async def _fetch(self, ident: int) -> str | None:
        if self._session is None:
            self._session = self.client.session()
        try:
            self.cache.put(ident, await self.client.fetch(self._session, ident))
        except ConnectorError as exc:
            if not isinstance(exc, SchemaNotFound):
                self._down = f"not asked after an earlier failure ({exc})"
            return str(exc)
        return None

    async def aclose(self) -> None:
        """Close the HTTP session (opened on the first fetch)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def build_lookup(settings: SchemaRegistrySettings) -> SchemaLookup | None:
    """The lookup for `settings`; None when no registry is configured."""
    return None if settings.url is None else SchemaLookup(RegistryClient(settings))
