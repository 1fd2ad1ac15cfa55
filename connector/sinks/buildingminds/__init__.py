"""The BuildingMinds Digital Twin Integration API sink (seed 000, docs/design.md §4).

Owns the platform end to end: its wire format (one JSON array per endpoint), the mapping of
its answers (`STATUSES`, plus the rows only this API has), its budget (one rolling window per
credential, shared by submissions and status polls), its asynchronous acceptance (a `batchId`
followed by the status tracker until terminal, reported through the sink contract's
`Reports.settled`), its `probe` (`check`) and its `batches` listing. Every request goes
through `connector.http.send`, which owns redirects, body caps and transport errors:

| answer                      | result                                                       |
|-----------------------------|--------------------------------------------------------------|
| 200 + batchId               | `SubmitResult` with no failures (`settles_later` if tracked) |
| 2xx without a batchId       | `InvalidResponse` (retried: nothing shows the records landed)|
| 3xx                         | `RedirectRefused` (never followed; hold the data, alert)     |
| 400 + failedMessages        | `SubmitResult` whose `failed` names the rejected records     |
| 400 naming no record        | `RequestRejected` (the pipeline splits the array)            |
| 401 (after one renewal)     | `Unauthorized` (the auth middleware already renewed once)    |
| 403 / 404 / 405             | `EndpointMisconfigured` (hold the data, alert)               |
| 413                         | `RequestTooLarge` (split; one record alone is too large)     |
| 429                         | `RateLimited(retry_after=...)`                               |
| 5xx, timeouts, resets       | `ServerError`                                                |
| a body over `max_body`      | `ResponseTooLarge` (a `ServerError`)                         |

Every platform text that reaches an exception or a dead letter is passed through `redact`.

Must not: retry or sleep (the pipeline does; the tracker sleeps between its rounds), or touch
the Authorization header (the `BearerAuth` middleware owns it).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

from connector.auth import ClientCredentials
from connector.errors import (
    ApiError,
    AuthError,
    EndpointMisconfigured,
    InvalidResponse,
    RateLimited,
    RequestRejected,
    RequestTooLarge,
    ServerError,
    Unauthorized,
)
from connector.http import DEFAULT_MAX_BODY, Answer, StatusTable, send
from connector.logs import get_logger, redact
from connector.sinks.base import Settlement, SubmitResult
from connector.sinks.buildingminds.settings import BuildingMindsSinkSettings
from connector.sinks.buildingminds.tracker import FAILED, Outcome, Tracker
from connector.sinks.common import TokenSink, authed_session, budget_limiter

if TYPE_CHECKING:
    from typing import TextIO

    import aiohttp

    from connector.auth import TokenProvider
    from connector.config import TrackingSettings
    from connector.metrics import Metrics
    from connector.ratelimit import RollingWindowLimiter
    from connector.sinks.base import Reports, SinkContext
    from connector.window import Batch

__all__ = ["STATUSES", "BuildingMindsSink", "build"]

log = get_logger(__name__)

STATUSES: Final = StatusTable(
    {
        400: RequestRejected, 413: RequestTooLarge, 422: RequestRejected,
        401: Unauthorized, 429: RateLimited,
        403: EndpointMisconfigured, 404: EndpointMisconfigured, 405: EndpointMisconfigured,
    },
    client=ServerError,
    retry_after=60.0,
)  # fmt: skip
"""The API's failure statuses; any other failure is a `ServerError` (retried)."""

_JSON: Final = {"Content-Type": "application/json"}


def _message(payload: Any, fallback: str) -> str:
    if isinstance(payload, dict):
        for key in ("error", "message", "title", "detail"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value
    return fallback


class BuildingMindsSink(TokenSink):
    """Submissions, status tracking and the read-only batch listing, over one shared aiohttp
    session (the one `build` makes carries the token)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        max_retry_after: float = 120.0,
        max_body: int = DEFAULT_MAX_BODY,
        limiter: RollingWindowLimiter | None = None,
        provider: TokenProvider | None = None,
    ) -> None:
        """`max_body` caps each answer's body, compressed and decompressed; `limiter` is the
        credential's budget (submissions and polls), `provider` the token behind `session`."""
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.max_retry_after = max_retry_after
        self.max_body = max_body
        self.limiter = limiter
        self.budgets = () if limiter is None else (limiter,)
        self.provider = provider
        self.scope: tuple[str, str] | None = None  # (as configured, as sent), for `probe`
        self.tracker: Tracker | None = None
        self.lost_retries = 0
        self._metrics: Metrics | None = None
        self._reports: Reports | None = None
        # (endpoint, external ID) -> re-submission count, of records of a lost batch that
        # are being sent again: their next batch is tracked with it
        self._lost: dict[tuple[str, str], int] = {}

    def follow(self, tracking: TrackingSettings, metrics: Metrics, *, clock: Any = None) -> None:
        """Track accepted batches until their terminal status (`tracking.enabled`); polls
        take their slots from `limiter`, the budget submissions use."""
        assert self.limiter is not None  # noqa: S101 - tracking polls need the budget
        t = tracking
        self._metrics = metrics
        self.lost_retries = t.lost_retries
        extra = {} if clock is None else {"clock": clock}
        self.tracker = Tracker(
            self, self.limiter, on_terminal=self._terminal,
            submissions_waiting=self._submissions_waiting, blocking=self._blocked,
            poll_interval=t.poll_interval_seconds, max_poll_share=t.max_poll_share,
            parent_patience=t.parent_patience_seconds, on_poll=metrics.polled,
            lost_after=t.lost_after_seconds, **extra,
        )  # fmt: skip

    # ------------------------------------------------------------------ the Sink contract
    async def submit(self, batch: Batch) -> SubmitResult:
        """POST the batch as one JSON array; tracked when `follow` was called and the
        platform named a batch (module docstring)."""
        endpoint = batch.entity.endpoint
        ids = [s.change.external_id for s in batch.slots]
        result = await self.post(endpoint, batch.body(), ids, batch.entity.id_field)
        if self.tracker is None or result.batch_id is None:
            return result
        keys = [(endpoint, external_id) for external_id in ids]
        resubmissions = max((self._lost.get(key, 0) for key in keys), default=0)
        if resubmissions:
            self.tracker.resubmitting(batch, resubmissions)
        self.tracker.track(result.batch_id, batch, frozenset(result.failed))
        for key in keys:
            self._lost.pop(key, None)
        self._tracking_changed()
        return dataclasses.replace(result, settles_later=True)

    async def run(self, reports: Reports) -> None:
        """Poll the tracked batches' statuses until cancelled (nothing to do untracked)."""
        self._reports = reports
        if self.tracker is not None:
            await self.tracker.run()

    def _submissions_waiting(self) -> bool:
        return self._reports is not None and self._reports.submissions_waiting()

    def _blocked(self) -> bool:
        return self._reports is not None and self._reports.blocked()

    def _tracking_changed(self) -> None:
        if self.tracker is not None and self._metrics is not None:
            self._metrics.set_tracking(self.tracker.tracked, self.tracker.waiting_for_parent())

    async def _terminal(self, batch: Batch, batch_id: str, outcome: Outcome) -> None:
        """The tracker's report, told through the contract. Records of a lost batch that the
        pipeline will send again (fewer than `lost_retries` re-submissions) keep their count,
        so that the next batch holding them is tracked with it."""
        assert self._reports is not None  # noqa: S101 - the tracker runs inside `run`
        assert self.tracker is not None  # noqa: S101 - only the tracker calls this
        if outcome.lost and outcome.resubmissions < self.lost_retries:
            for index in outcome.lost:
                key = (batch.entity.endpoint, batch.slots[index].change.external_id)
                self._lost[key] = outcome.resubmissions + 1
        settlement = Settlement(
            failed=outcome.failed, waiting=outcome.waiting, statuses=outcome.statuses,
            lost=outcome.lost, resubmissions=outcome.resubmissions,
            lost_for=self.tracker.lost_after, refused=outcome.refused,
        )  # fmt: skip
        try:
            await self._reports.settled(batch, batch_id, settlement)
        finally:
            self._tracking_changed()

    async def probe(self, out: TextIO, err: TextIO) -> bool:
        """The token, then the read-only `GET /batch`."""
        if self.scope is not None and not self.scope[0].endswith("/.default"):
            print(f"note: sink.scope has no /.default; sending {self.scope[1]!r}", file=out)
        if self.provider is not None and not await self.probe_token(out, err, None):
            return False
        try:
            listing = await self.list_batches(limit=5)
        except ApiError as exc:
            # the sink's message starts with the request ("GET /batch answered 404: ...")
            print(f"FAILED: {exc}\n  fix: {_fix_for(exc)}", file=err)
            return False
        except AuthError as exc:
            print(f"FAILED: GET /batch: {exc}", file=err)
            return False
        total = listing.get("totalCount", len(listing.get("data") or []))
        print(f"GET /batch: ok ({total} batches visible)", file=out)
        return True

    async def batches(self, limit: int, batch_id: str | None, out: TextIO, err: TextIO) -> bool:
        """`batches`: recent batches with their status counts; one batch's failed records.

        Everything is read before anything is printed, so a failure prints only its
        `FAILED:`. Raises `ApiError` / `AuthError` for the caller to print."""
        listing = await self.list_batches(limit=limit, batch_id=batch_id)
        rows = listing.get("data") or []
        if batch_id is not None and not any(r.get("batchId") == batch_id for r in rows):
            print(
                f"FAILED: no batch {batch_id} is listed (GET /batch?batchId={batch_id})\n"
                "  fix: copy the ID from `batches` or from a log line's batch_id; the "
                "platform lists only its recent batches",
                file=err,
            )
            return False
        failed = []
        if batch_id is not None:
            for status in sorted(FAILED):
                failed += [(status, r) for r in await self.inbound(batch_id, status=status)]
        print(f"{'batch':36}  {'endpoint':26}  {'created':24}  {'records':>7}  statuses", file=out)
        for item in rows:
            counts = item.get("statusCounts") or {}
            statuses = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            endpoint = item.get("endpoint", item.get("entity", ""))
            print(
                f"{item.get('batchId', '')!s:36}  {endpoint!s:26}  "
                f"{item.get('createdAt', '')!s:24}  {item.get('recordCount', '')!s:>7}  "
                f"{statuses or item.get('status', '')}",
                file=out,
            )
        for status, record in failed:
            print(f"  {status}: {record.get('externalId')}: {record.get('message')}", file=out)
        print(f"{len(rows)} of {listing.get('totalCount', len(rows))} batches", file=out)
        return True

    # ------------------------------------------------------------------ HTTP
    async def post(self, endpoint: str, body: bytes, ids: list[str], id_field: str) -> SubmitResult:
        """POST one array; see the module docstring for the answers. A 2xx without a
        `batchId` raises `InvalidResponse`: only the batch ID proves the platform took the
        records (a proxy or a captive portal answers 200 too), so they are sent again."""
        what = f"POST /{endpoint}"
        answer = await send(
            self.session, "POST", f"{self.base_url}/{endpoint}", what=what, data=body,
            headers=_JSON, max_body=self.max_body,
        )  # fmt: skip
        payload = answer.json()
        found = payload.get("batchId") if isinstance(payload, dict) else None
        # a batch ID is a non-empty string (a UUID); anything else proves nothing
        batch_id = (found.strip() or None) if isinstance(found, str) else None
        if answer.ok:
            if batch_id is None:
                shape = "" if payload is not None else " (the body is not JSON)"
                raise InvalidResponse(
                    f"{what} answered {answer.status} without a batchId{shape}: nothing shows "
                    "the platform took the records; they are sent again",
                    status=answer.status,
                    request_id=answer.request_id,
                )
            return SubmitResult(answer.status, batch_id, {}, answer.request_id)
        if answer.status == 400 and isinstance(payload, dict):
            failed = _failed_indexes(payload.get("failedMessages"), ids, id_field)
            if failed:
                return SubmitResult(answer.status, batch_id, failed, answer.request_id)
        raise self._error(answer, what)

    async def list_batches(
        self, *, limit: int = 10, skip: int = 0, batch_id: str | None = None
    ) -> dict[str, Any]:
        """`GET /batch`, newest first: `{message, totalCount, data: [...]}`."""
        params = {"limit": str(limit), "skip": str(skip)}
        if batch_id is not None:
            params["batchId"] = batch_id
        data = await self._get("batch", params)
        return data if isinstance(data, dict) else {"data": data}

    async def inbound(
        self,
        batch_id: str,
        *,
        status: str | None = None,
        missing_dependencies: bool | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """`GET /batch/{batchId}/inbound`: the records of one batch, optionally filtered."""
        params = {"limit": str(limit)}
        if status is not None:
            params["status"] = status
        if missing_dependencies is not None:
            params["missingDependencies"] = "true" if missing_dependencies else "false"
        data = await self._get(f"batch/{batch_id}/inbound", params)
        items = data.get("data") if isinstance(data, dict) else data
        return [i for i in items or [] if isinstance(i, dict)]

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        what = f"GET /{path}"
        answer = await send(
            self.session, "GET", f"{self.base_url}/{path}", what=what, params=params,
            max_body=self.max_body,
        )  # fmt: skip
        if answer.status == 200:
            return answer.json() or {}
        raise self._error(answer, what)

    def _error(self, answer: Answer, what: str) -> ApiError:
        text = _message(answer.json(), answer.reason)
        message = f"{what} answered {answer.status}: {text}"
        error = STATUSES.error(answer, message, max_retry_after=self.max_retry_after)
        return error or ServerError(redact(message), status=answer.status)


def _failed_indexes(items: Any, ids: list[str], id_field: str) -> dict[int, str]:
    """Match failedMessages to submitted records by external ID (their order is not promised)."""
    if not isinstance(items, list):
        return {}
    where: dict[str, list[int]] = {}
    for index, external_id in enumerate(ids):
        where.setdefault(external_id, []).append(index)
    failed: dict[int, str] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        record = (
            item.get("message") if isinstance(item.get("message"), dict) else item.get("record")
        )
        found = item.get("error") or item.get("errorMessage") or item.get("validationMessage")
        if isinstance(found, str):
            text = found
        elif isinstance(item.get("message"), str):
            text = str(item["message"])
        else:
            text = "rejected by the platform without a message"
        text = redact(text)  # a message may echo what was sent, a token included
        named = record.get(id_field) if isinstance(record, dict) else None
        for index in where.get(str(named), []):
            failed[index] = text
    return failed


def _fix_for(exc: ApiError) -> str:
    """What to change when `check`'s `GET /batch` failed (the status says which setting)."""
    if isinstance(exc, EndpointMisconfigured) and exc.status == 404:
        return "check sink.base_url: the API answered 404 (no such endpoint)"
    if isinstance(exc, EndpointMisconfigured) and exc.status == 403:
        return (
            "the credential is not permitted for GET /batch: ask your BuildingMinds representative"
        )
    if isinstance(exc, EndpointMisconfigured):
        return f"check sink.base_url: the API answered {exc.status}"
    if isinstance(exc, Unauthorized):
        return "the token was refused: check that sink.scope belongs to this API (sink.base_url)"
    return "the API is unreachable or failing; check sink.base_url and the network, then retry"


def build(context: SinkContext) -> BuildingMindsSink:
    """The sink `sink.type: buildingminds` configures: an Entra client-credentials token, the
    credential's rolling window, and (`tracking.enabled`) the batch status tracker."""
    s = context.settings.sink
    assert isinstance(s, BuildingMindsSinkSettings)  # noqa: S101 - the registry chose by type
    grant = ClientCredentials(s.token_url, s.client_id, s.client_secret, scope=s.token_scope)
    session, provider = authed_session(context, grant)
    sink = BuildingMindsSink(
        session, s.base_url, max_retry_after=s.max_retry_after_seconds,
        limiter=budget_limiter(s.rate_limit), provider=provider,
    )  # fmt: skip
    sink.scope = (s.scope, s.token_scope)
    if context.settings.tracking.enabled:
        sink.follow(context.settings.tracking, context.metrics)
    return sink
