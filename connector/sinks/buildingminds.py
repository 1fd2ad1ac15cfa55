"""The BuildingMinds Digital Twin Integration API client (seed 000, DESIGN.md §4).

Owns the HTTP exchange for one submission and the mapping of the API's answers:

| answer                      | result                                                       |
|-----------------------------|--------------------------------------------------------------|
| 200 + batchId               | `SubmitResult` with no failures                              |
| 400 + failedMessages        | `SubmitResult` whose `failed` names the rejected records     |
| 400 naming no record        | `RequestRejected` (the pipeline splits the array)            |
| 401 (after one renewal)     | `Unauthorized` (the auth middleware already renewed once)    |
| 403 / 404 / 405             | `EndpointMisconfigured` (hold the data, alert)               |
| 413                         | `RequestRejected(status=413)` (split)                        |
| 429                         | `RateLimited(retry_after=...)`                               |
| 5xx, timeouts, resets       | `ServerError`                                                |

Must not: retry, sleep or count budget (the pipeline does), or touch the Authorization header
(the `BearerAuth` middleware owns it).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from connector.errors import (
    TLS_HINT,
    EndpointMisconfigured,
    RateLimited,
    RequestRejected,
    ServerError,
    Unauthorized,
)
from connector.ratelimit import retry_after_seconds
from connector.sinks.base import SubmitResult

__all__ = ["BuildingMindsSink"]

_REQUEST_ID_HEADERS = ("x-request-id", "x-ms-request-id", "request-id", "x-correlation-id")


def _request_id(response: aiohttp.ClientResponse) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        if value := response.headers.get(name):
            return value
    return None


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
        self, session: aiohttp.ClientSession, base_url: str, *, max_retry_after: float = 120.0
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.max_retry_after = max_retry_after

    async def submit(
        self, endpoint: str, body: bytes, ids: list[str], id_field: str
    ) -> SubmitResult:
        url = f"{self.base_url}/{endpoint}"
        try:
            async with self.session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                raw = await response.read()
                return self._result(response, raw, ids, id_field)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _certificate_error(url, exc) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise ServerError(f"POST /{endpoint} failed: {type(exc).__name__}: {exc}") from exc

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
        url = f"{self.base_url}/{path}"
        try:
            async with self.session.get(url, params=params) as response:
                raw = await response.read()
                if response.status == 200:
                    return _json(raw) or {}
                self._raise(response, raw, f"GET /{path}")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _certificate_error(url, exc) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise ServerError(f"GET /{path} failed: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover - _raise always raises

    def _result(
        self, response: aiohttp.ClientResponse, raw: bytes, ids: list[str], id_field: str
    ) -> SubmitResult:
        payload = _json(raw)
        status = response.status
        request_id = _request_id(response)
        batch_id = payload.get("batchId") if isinstance(payload, dict) else None
        batch_id = str(batch_id) if batch_id is not None else None
        if status in (200, 201, 202):
            return SubmitResult(status, batch_id, {}, request_id)
        if status == 400 and isinstance(payload, dict):
            failed = _failed_indexes(payload.get("failedMessages"), ids, id_field)
            if failed:
                return SubmitResult(status, batch_id, failed, request_id)
        self._raise(response, raw, f"POST {response.url.path}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise(self, response: aiohttp.ClientResponse, raw: bytes, what: str) -> None:
        status = response.status
        request_id = _request_id(response)
        text = _message(_json(raw), response.reason or "")
        message = f"{what} answered {status}: {text}"
        if status == 429:
            retry_after = retry_after_seconds(
                response.headers.get("Retry-After"), default=60.0, maximum=self.max_retry_after
            )
            raise RateLimited(message, retry_after=retry_after, request_id=request_id)
        if status == 401:
            raise Unauthorized(message, status=status, request_id=request_id)
        if status in (403, 404, 405):
            raise EndpointMisconfigured(message, status=status, request_id=request_id)
        if status in (400, 413, 422):
            raise RequestRejected(message, status=status, request_id=request_id)
        raise ServerError(message, status=status, request_id=request_id)


def _certificate_error(url: str, exc: Exception) -> EndpointMisconfigured:
    """Not transient: hold the data and say how to fix it."""
    return EndpointMisconfigured(
        f"TLS certificate verification failed for {url}: {exc}; {TLS_HINT}", status=None
    )


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


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
        named = record.get(id_field) if isinstance(record, dict) else None
        for index in where.get(str(named), []):
            failed[index] = text
    return failed
