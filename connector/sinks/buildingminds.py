"""The BuildingMinds Digital Twin Integration API client (seed 000, docs/design.md §4).

Owns the mapping of the API's answers (`STATUSES`, plus the rows only this API has); every
request goes through `connector.http.send`, which owns redirects, body caps and transport
errors:

| answer                      | result                                                       |
|-----------------------------|--------------------------------------------------------------|
| 200 + batchId               | `SubmitResult` with no failures                              |
| 2xx without a batchId       | `InvalidResponse` (retried: nothing shows the records landed)|
| 3xx                         | `RedirectRefused` (never followed; hold the data, alert)     |
| 400 + failedMessages        | `SubmitResult` whose `failed` names the rejected records     |
| 400 naming no record        | `RequestRejected` (the pipeline splits the array)            |
| 401 (after one renewal)     | `Unauthorized` (the auth middleware already renewed once)    |
| 403 / 404 / 405             | `EndpointMisconfigured` (hold the data, alert)               |
| 413                         | `RequestRejected(status=413)` (split)                        |
| 429                         | `RateLimited(retry_after=...)`                               |
| 5xx, timeouts, resets       | `ServerError`                                                |
| a body over `max_body`      | `ResponseTooLarge` (a `ServerError`)                         |

Every platform text that reaches an exception or a dead letter is passed through `redact`.

Must not: retry, sleep or count budget (the pipeline does), or touch the Authorization header
(the `BearerAuth` middleware owns it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from connector.errors import (
    ApiError,
    EndpointMisconfigured,
    InvalidResponse,
    RateLimited,
    RequestRejected,
    ServerError,
    Unauthorized,
)
from connector.http import DEFAULT_MAX_BODY, Answer, StatusTable, send
from connector.logs import redact
from connector.sinks.base import SubmitResult

if TYPE_CHECKING:
    import aiohttp

__all__ = ["STATUSES", "BuildingMindsSink"]

STATUSES: Final = StatusTable(
    {
        400: RequestRejected, 413: RequestRejected, 422: RequestRejected,
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


class BuildingMindsSink:
    """Submissions and the read-only batch listing, over one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        max_retry_after: float = 120.0,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        """`max_body` caps each answer's body, compressed and decompressed."""
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.max_retry_after = max_retry_after
        self.max_body = max_body

    async def submit(
        self, endpoint: str, body: bytes, ids: list[str], id_field: str
    ) -> SubmitResult:
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
