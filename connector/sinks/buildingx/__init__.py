"""The Siemens Building X Openness API client (seed 002, docs/buildingx.md): locations and
point values.

Owns the platform end to end: its wire format, its answers, its budget (10 requests/s per
API), its `probe` (`check`) and its construction (`build`). Records reach every sink in the
BuildingMinds-native shape, decoded, with their change kind; one submission (the batch of one
endpoint) becomes several Building X requests, each one record or one point's values:

| endpoint                 | Building X                                                      |
|--------------------------|-----------------------------------------------------------------|
| site / building / floor / space | Location Campus / Building / Floor / Room, upserted by   |
|                          | `externalId` (GET `filter[externalId]`, then PATCH or POST); the |
|                          | parent by `isBuildingOf` (Building -> Campus) or `isPartOf`     |
| Deleted (those four)     | DELETE of the location with that externalId (absent: done)      |
| operational-measurement  | point values, grouped by point (`point_field`, mapped through    |
|                          | `point_ids`), 1-100 per POST                                     |
| anything else            | dead-lettered: Building X has no place for it                   |

Answers, per request:

| answer                          | result                                                  |
|---------------------------------|---------------------------------------------------------|
| 2xx                             | the record is delivered                                 |
| 400 / 409 / 422 JSON:API errors | the record (or the values the pointers name) fails:     |
|                                 | `SubmitResult.failed`, the rest goes on                 |
| 401 (after one renewal)         | `Unauthorized`                                          |
| 403 / 405 / 415, 404 of a list  | `EndpointMisconfigured` (hold the data, alert)          |
| 429                             | `RateLimited` (only this API's limiter is blocked)      |
| 5xx, timeouts, resets           | `ServerError`                                           |
| parent not there yet            | `ParentPending` (retriable), until `parent_wait`        |

A submission that raises is sent again by the pipeline; what this sink already settled for
the same record version is remembered (not sent twice) until the submission returns.

Settles at once: a result never `settles_later`.

Pacing: each API (structure, point-value-ingest) has its own `RollingWindowLimiter`; every
request takes a slot first. The submission itself takes no slot of a pipeline budget
(`limiter` is None), and a 429 blocks only the API that answered it (`rate_limited` leaves the
other API alone), so a throttled structure API never slows point values. The `X-Request-Id`
of every answer is logged (DEBUG, WARNING for failures) and reaches `SubmitResult.request_id`
and the dead letters.

Every request goes through `connector.http.send` (no redirects: a 3xx is `RedirectRefused`;
bodies capped at `max_body`; transport errors mapped once).

Must not: sleep other than in its limiters, retry a failed request (the pipeline does), or
touch the Authorization header (the `BearerAuth` middleware owns it).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from connector.auth import ClientCredentials
from connector.errors import (
    ApiError,
    AuthError,
    CredentialsRejected,
    EndpointMisconfigured,
    RateLimited,
    ServerError,
    Unauthorized,
)
from connector.http import DEFAULT_MAX_BODY, StatusTable, send
from connector.logs import get_logger, redact
from connector.sinks.base import SubmitResult
from connector.sinks.buildingx.settings import BuildingXSinkSettings
from connector.sinks.common import TokenSink, authed_session, budget_limiter

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TextIO

    import aiohttp

    from connector.auth import TokenProvider
    from connector.ratelimit import Clock, RollingWindowLimiter
    from connector.sinks.base import SinkContext
    from connector.window import Batch

__all__ = [
    "APIS",
    "INGEST",
    "LOCATIONS",
    "MAX_VALUES",
    "MEDIA_TYPE",
    "STATUSES",
    "STRUCTURE",
    "BuildingXSink",
    "ParentPending",
    "build",
    "error_text",
]

log = get_logger(__name__)

STRUCTURE: Final = "structure"
INGEST: Final = "point-value-ingest"
APIS: Final = (STRUCTURE, INGEST)
MEDIA_TYPE: Final = "application/vnd.api+json"
MAX_VALUES: Final = 100
READINGS: Final = "operational-measurement"


@dataclass(frozen=True, slots=True)
class _LocationKind:
    type: str  # the Building X location type
    parent_field: str | None = None  # the native field naming the parent's external ID
    parent_endpoint: str | None = None
    relationship: str | None = None


LOCATIONS: Final[dict[str, _LocationKind]] = {
    "site": _LocationKind("Campus"),
    # isBuildingOf is the Building -> Campus relationship of the API spec mirror; isPartOf,
    # the inverse of the documented hasParts, is inferred for the rest.
    "building": _LocationKind("Building", "siteId", "site", "isBuildingOf"),
    "floor": _LocationKind("Floor", "buildingId", "building", "isPartOf"),
    "space": _LocationKind("Room", "floorId", "floor", "isPartOf"),
}
_TEXT_ATTRIBUTES: Final = ("description", "timeZone")

STATUSES: Final = StatusTable(
    {401: Unauthorized, 429: RateLimited}, client=None, server=ServerError, retry_after=1.0
)
"""What raises at once; every other 4xx is read by the sink (a record's failure, or
`EndpointMisconfigured` through `_misconfigured`)."""
_CACHE_SIZE: Final = 100_000


class ParentPending(ServerError):
    """A location's parent is not in Building X yet: the submission is tried again later."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    payload: Any
    request_id: str | None


@dataclass(slots=True)
class _Failure:
    message: str
    status: int
    request_id: str | None


@dataclass(slots=True)
class _Outcome:
    """What one submission settled: failures by index, and the answers it saw."""

    failed: dict[int, _Failure] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # parents waited for
    last_status: int = 200
    last_request_id: str | None = None

    def saw(self, answer: _Answer) -> None:
        self.last_status, self.last_request_id = answer.status, answer.request_id

    def result(self) -> SubmitResult:
        if not self.failed:
            return SubmitResult(self.last_status, None, {}, self.last_request_id)
        first = self.failed[min(self.failed)]
        messages = {
            i: f.message
            if f.request_id in (None, first.request_id)
            else f"{f.message} (X-Request-Id {f.request_id})"
            for i, f in self.failed.items()
        }
        return SubmitResult(first.status, None, messages, first.request_id)


def error_text(payload: Any, fallback: str) -> str:
    """A JSON:API error document as one line: `title: detail (at pointer)`, '; '-joined."""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list) or not errors:
        return fallback
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        text = ": ".join(str(error[k]) for k in ("title", "detail") if error.get(k))
        source = error.get("source")
        if not isinstance(source, dict):
            source = {}
        if source.get("pointer"):
            text += f" (at {source['pointer']})"
        elif source.get("parameter"):
            text += f" (parameter {source['parameter']})"
        parts.append(text or str(error.get("code") or fallback))
    # a platform message may echo what was sent, a token included
    return redact("; ".join(parts) or fallback)


def _pointers(payload: Any) -> list[str | None]:
    errors = payload.get("errors") if isinstance(payload, dict) else None
    found: list[str | None] = []
    for error in errors if isinstance(errors, list) else []:
        source = error.get("source") if isinstance(error, dict) else None
        pointer = source.get("pointer") if isinstance(source, dict) else None
        found.append(pointer if isinstance(pointer, str) else None)
    return found


def _digest(record: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(record), digest_size=16).digest()


class BuildingXSink(TokenSink):
    """Locations and point values of one partition, over one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        partition_id: str,
        *,
        limiters: Mapping[str, RollingWindowLimiter],
        point_field: str = "meterId",
        point_ids: Mapping[str, str] | None = None,
        overwrite_values: bool = True,
        parent_wait: float = 600.0,
        max_retry_after: float = 120.0,
        max_body: int = DEFAULT_MAX_BODY,
        clock: Clock = time.monotonic,
        on_wait: Callable[[float], None] | None = None,
        provider: TokenProvider | None = None,
    ) -> None:
        """`limiters` holds one limiter per API in `APIS`; `on_wait(seconds)` hears every
        limiter wait. `parent_wait` bounds how long a location waits for its parent;
        `max_body` caps each answer's body, compressed and decompressed."""
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.partition_id = partition_id
        self.limiters = limiters
        self.budgets = tuple(limiters.values())
        self.provider = provider
        self.point_field = point_field
        self.point_ids = dict(point_ids or {})
        self.overwrite_values = overwrite_values
        self.parent_wait = parent_wait
        self.max_retry_after = max_retry_after
        self.max_body = max_body
        self.clock = clock
        self.on_wait = on_wait
        # externalId -> Building X id, of locations seen; also serves parent lookups
        self._ids: OrderedDict[str, str] = OrderedDict()
        # (endpoint, externalId) -> (version digest, failure or None), kept while a
        # submission is retried so what it settled is not sent again
        self._settled: OrderedDict[tuple[str, str], tuple[bytes, _Failure | None]] = OrderedDict()
        self._waiting_since: dict[tuple[str, str], float] = {}

    def _locations_url(self) -> str:
        return f"{self.base_url}/{STRUCTURE}/partitions/{self.partition_id}/locations"

    # ------------------------------------------------------------------ the Sink contract
    async def submit(self, batch: Batch) -> SubmitResult:
        """Deliver one batch record by record; see the module docstring for the answers."""
        endpoint = batch.entity.endpoint
        records = [orjson.loads(slot.change.payload) for slot in batch.slots]
        ids = [slot.change.external_id for slot in batch.slots]
        deleted = [slot.change.kind == "Deleted" for slot in batch.slots]
        outcome = _Outcome()
        keys = [(endpoint, external_id) for external_id in ids]
        if endpoint in LOCATIONS:
            for index, record in enumerate(records):
                await self._location(
                    endpoint, index, record, ids[index], outcome, deleted=deleted[index]
                )
        elif endpoint == READINGS:
            await self._readings(records, ids, deleted, outcome)
        else:
            for index in range(len(records)):
                outcome.failed[index] = _Failure(
                    f"not sent: the buildingx sink has no Building X target for /{endpoint} "
                    "records (supported: site, building, floor, space, operational-measurement)",
                    422,
                    None,
                )
        if outcome.pending:
            waiting = sorted(set(outcome.pending))
            raise ParentPending(
                f"/{endpoint}: {len(outcome.pending)} record(s) wait for parent location(s) "
                f"{', '.join(waiting[:5])}{' ...' if len(waiting) > 5 else ''}"
            )
        for key in keys:
            self._settled.pop(key, None)
            self._waiting_since.pop(key, None)
        return outcome.result()

    def rate_limited(self, seconds: float) -> None:
        """Nothing more to block: `_call` blocked the one API that answered 429 already."""
        del seconds

    async def probe(self, out: TextIO, err: TextIO) -> bool:
        """The token, then the read-only `GET …/locations?page[limit]=1` of the partition."""
        if self.provider is not None and not await self.probe_token(out, err, _token_fix):
            return False
        what = f"GET /structure/partitions/{self.partition_id}/locations"
        try:
            document = await self.list_locations(limit=1)
        except EndpointMisconfigured as exc:
            fix = {
                403: f"the machine user may not use partition {self.partition_id!r}: check "
                "sink.partition_id (the API Manager shows the machine user's partition) and "
                "its user groups",
                404: "check sink.base_url: it must end in /api/openness "
                "(e.g. https://eu.buildingx.siemens.com/api/openness)",
            }.get(exc.status or 0, f"check sink.base_url: the API answered {exc.status}")
            print(f"FAILED: {what}: {exc}\n  fix: {fix}", file=err)
            return False
        except Unauthorized as exc:
            fix = "the token was refused: check that sink.audience belongs to sink.base_url's API"
            print(f"FAILED: {what}: {exc}\n  fix: {fix}", file=err)
            return False
        except (ApiError, AuthError) as exc:
            print(f"FAILED: {what}: {exc}", file=err)
            return False
        found = len(document.get("data") or [])
        more = " and more" if (document.get("links") or {}).get("next") else ""
        print(f"{what}: ok ({found}{more} location(s) visible)", file=out)
        return True

    async def list_locations(
        self, *, limit: int = 1, filters: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """`GET …/locations` (read-only, as `check` uses it): the JSON:API document."""
        params = {f"filter[{k}]": v for k, v in (filters or {}).items()}
        params["page[limit]"] = str(limit)
        answer = await self._call(STRUCTURE, "GET", self._locations_url(), params=params)
        if answer.status != 200:
            self._misconfigured(answer, "GET /locations")
        return answer.payload if isinstance(answer.payload, dict) else {}

    # ------------------------------------------------------------------ locations
    def _remembered(self, key: tuple[str, str], digest: bytes) -> tuple[bool, _Failure | None]:
        """Whether this version was settled by an earlier try, and its failure if it failed."""
        found = self._settled.get(key)
        if found is None or found[0] != digest:
            return False, None
        return True, found[1]

    def _settle(self, key: tuple[str, str], digest: bytes, failure: _Failure | None) -> None:
        self._settled[key] = (digest, failure)
        self._settled.move_to_end(key)
        while len(self._settled) > _CACHE_SIZE:
            self._settled.popitem(last=False)

    def _remember_id(self, external_id: str, location_id: str | None) -> None:
        if location_id is None:
            self._ids.pop(external_id, None)
            return
        self._ids[external_id] = location_id
        self._ids.move_to_end(external_id)
        while len(self._ids) > _CACHE_SIZE:
            self._ids.popitem(last=False)

    async def _location(
        self,
        endpoint: str,
        index: int,
        record: Any,
        external_id: str,
        outcome: _Outcome,
        *,
        deleted: bool,
    ) -> None:
        key, digest = (endpoint, external_id), _digest(record)
        settled, failed = self._remembered(key, digest)
        if settled:
            if failed is not None:
                outcome.failed[index] = failed
            return
        if deleted:
            failure = await self._delete(external_id, outcome)
        else:
            kind = LOCATIONS[endpoint]
            relationships: dict[str, Any] = {}
            if kind.relationship is not None:
                parent = await self._parent(key, kind, record, outcome)
                if parent is False:
                    return  # waits for its parent; settled on a later try
                if isinstance(parent, _Failure):
                    outcome.failed[index] = parent
                    self._settle(key, digest, parent)
                    return
                target = None if parent is None else {"type": "Location", "id": parent}
                relationships[kind.relationship] = {"data": target}
            failure = await self._upsert(external_id, kind, record, relationships, outcome)
        if failure is not None:
            outcome.failed[index] = failure
        self._settle(key, digest, failure)
        self._waiting_since.pop(key, None)

    async def _parent(
        self, key: tuple[str, str], kind: _LocationKind, record: dict[str, Any], outcome: _Outcome
    ) -> str | bool | _Failure | None:
        """The parent's Building X id; None without a parent; False while it is awaited; a
        `_Failure` once `parent_wait` has passed."""
        assert kind.parent_field is not None  # noqa: S101 - every relationship has its field
        parent_external = record.get(kind.parent_field)
        if parent_external in (None, ""):
            return None
        parent_id = await self._find(str(parent_external), outcome)
        if parent_id is not None:
            return parent_id
        now = self.clock()
        since = self._waiting_since.setdefault(key, now)
        if now - since >= self.parent_wait:
            return _Failure(
                f"not sent: parent {kind.parent_endpoint} {parent_external!r} was not found in "
                f"Building X (filter[externalId]) within {self.parent_wait:.0f} s",
                422,
                outcome.last_request_id,
            )
        outcome.pending.append(f"{kind.parent_endpoint} {parent_external!r}")
        return False

    async def _find(self, external_id: str, outcome: _Outcome) -> str | None:
        """The Building X id of the location with this externalId (cached), or None."""
        cached = self._ids.get(external_id)
        if cached is not None:
            return cached
        answer = await self._call(
            STRUCTURE, "GET", self._locations_url(),
            params={"filter[externalId]": external_id, "page[limit]": "1"},
        )  # fmt: skip
        outcome.saw(answer)
        if answer.status != 200:
            self._misconfigured(answer, "GET /locations")
        data = answer.payload.get("data") if isinstance(answer.payload, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            return None
        location_id = str(data[0].get("id"))
        self._remember_id(external_id, location_id)
        return location_id

    async def _upsert(
        self,
        external_id: str,
        kind: _LocationKind,
        record: dict[str, Any],
        relationships: dict[str, Any],
        outcome: _Outcome,
    ) -> _Failure | None:
        resource: dict[str, Any] = {
            "type": "Location",
            "attributes": _attributes(kind, record, external_id),
        }
        if relationships:
            resource["relationships"] = relationships
        for _ in range(2):  # a second round only after a stale id or an externalId conflict
            location_id = await self._find(external_id, outcome)
            if location_id is None:
                answer = await self._call(
                    STRUCTURE, "POST", self._locations_url(), json={"data": resource}
                )
            else:
                answer = await self._call(
                    STRUCTURE, "PATCH", f"{self._locations_url()}/{location_id}",
                    json={"data": {**resource, "id": location_id}},
                )  # fmt: skip
            outcome.saw(answer)
            if answer.status in (200, 201, 204):
                data = answer.payload.get("data") if isinstance(answer.payload, dict) else None
                new_id = data.get("id") if isinstance(data, dict) else location_id
                self._remember_id(external_id, None if new_id is None else str(new_id))
                return None
            stale = location_id is not None and answer.status == 404
            conflict = answer.status == 409 and "/data/attributes/externalId" in _pointers(
                answer.payload
            )
            if stale or conflict:
                self._remember_id(external_id, None)  # look it up again
                continue
            return self._record_failure(answer, "PATCH" if location_id else "POST")
        return self._record_failure(answer, "POST")

    async def _delete(self, external_id: str, outcome: _Outcome) -> _Failure | None:
        location_id = await self._find(external_id, outcome)
        if location_id is None:
            return None  # nothing to delete: a replay, or never created
        answer = await self._call(STRUCTURE, "DELETE", f"{self._locations_url()}/{location_id}")
        outcome.saw(answer)
        self._remember_id(external_id, None)
        if answer.status in (200, 202, 204, 404):
            return None
        return self._record_failure(answer, "DELETE")

    def _record_failure(self, answer: _Answer, what: str) -> _Failure:
        """A refusal of one record: 400/409/422 fail it; anything else is not its fault."""
        if answer.status not in (400, 409, 422):
            self._misconfigured(answer, f"{what} /locations")
        message = error_text(answer.payload, f"answered {answer.status}")
        log.warning(
            "Building X refused a record: %s", message,
            extra={"status": answer.status, "request_id": answer.request_id},
        )  # fmt: skip
        return _Failure(message, answer.status, answer.request_id)

    # ------------------------------------------------------------------ point values
    async def _readings(
        self, records: list[Any], ids: list[str], deleted: list[bool], outcome: _Outcome
    ) -> None:
        groups: dict[str, dict[int, tuple[int, dict[str, Any]]]] = {}
        for index, record in enumerate(records):
            key = (READINGS, ids[index])
            settled, failed = self._remembered(key, _digest(record))
            if settled:
                if failed is not None:
                    outcome.failed[index] = failed
                continue
            value = self._point_value(record, deleted=deleted[index])
            if isinstance(value, str):
                outcome.failed[index] = _Failure(f"not sent: {value}", 422, None)
                continue
            point, millisecond, item = value
            # one value per millisecond: the newest record of the submission stands for it
            groups.setdefault(point, {})[millisecond] = (index, item)
        for point, by_ms in groups.items():
            items = sorted(by_ms.values())
            for start in range(0, len(items), MAX_VALUES):
                await self._post_values(point, items[start : start + MAX_VALUES], outcome)
        for index, record in enumerate(records):
            self._settle((READINGS, ids[index]), _digest(record), outcome.failed.get(index))

    def _point_value(self, record: Any, *, deleted: bool) -> tuple[str, int, dict[str, Any]] | str:
        """(point id, millisecond, PointValue) of a reading, or why it cannot be sent."""
        if deleted:
            return "the Point Value Ingest API cannot delete point values"
        named = record.get(self.point_field)
        if not isinstance(named, str | int) or isinstance(named, bool) or named == "":
            return f"the record has no {self.point_field} to name its point (sink.point_field)"
        raw_time = record.get("measurementDate", record.get("timestamp"))
        moment = _moment(raw_time)
        if moment is None:
            return (
                f"measurementDate {raw_time!r} is not an RFC 3339 date-time with an offset "
                "(e.g. 2024-05-01T12:00:00Z)"
            )
        value = record.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return f"value {value!r} is not a number, string or boolean"
        quality = record.get("qualityOfValue", 0)
        attributes = {"timestamp": moment.isoformat(), "value": value, "qualityOfValue": quality}
        millisecond = int(moment.timestamp() * 1000)
        point = self.point_ids.get(str(named), str(named))
        return point, millisecond, {"type": "PointValue", "attributes": attributes}

    async def _post_values(
        self, point: str, items: list[tuple[int, dict[str, Any]]], outcome: _Outcome
    ) -> None:
        """POST one chunk; values the API's pointers name fail, the rest is sent again."""
        url = f"{self.base_url}/{INGEST}/partitions/{self.partition_id}/points/{point}/values"
        params = {"overwrite": "true"} if self.overwrite_values else None
        while items:
            answer = await self._call(
                INGEST, "POST", url, params=params, json={"data": [item for _, item in items]}
            )
            outcome.saw(answer)
            if answer.status in (200, 201, 204):
                return
            if answer.status == 202:
                meta = answer.payload.get("meta") if isinstance(answer.payload, dict) else None
                dropped = meta.get("duplicates") if isinstance(meta, dict) else None
                log.info(
                    "Building X dropped %d value(s) of point %s as duplicate timestamps",
                    len(dropped) if isinstance(dropped, list) else 0, point,
                    extra={"request_id": answer.request_id},
                )  # fmt: skip
                return
            if answer.status == 404:  # this point does not exist: its readings cannot go
                failure = self._value_failure(answer, point)
                for index, _ in items:
                    outcome.failed[index] = failure
                return
            if answer.status not in (400, 409, 422):
                self._misconfigured(answer, "POST /values")
            named = _value_indexes(answer.payload, len(items))
            failure = self._value_failure(answer, point)
            if not named:  # the request as a whole was refused: all of it fails
                named = set(range(len(items)))
            for position in named:
                outcome.failed[items[position][0]] = failure
            items = [item for position, item in enumerate(items) if position not in named]

    def _value_failure(self, answer: _Answer, point: str) -> _Failure:
        message = f"point {point}: {error_text(answer.payload, f'answered {answer.status}')}"
        log.warning(
            "Building X refused point values: %s", message,
            extra={"status": answer.status, "request_id": answer.request_id},
        )  # fmt: skip
        return _Failure(message, answer.status, answer.request_id)

    # ------------------------------------------------------------------ HTTP
    async def _call(
        self,
        api: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> _Answer:
        """One request after a slot of `api`'s limiter. Raises what `STATUSES` and
        `connector.http.send` raise (401, 429, 5xx, 3xx, transport, a body over the cap);
        returns every other answer."""
        waited = await self.limiters[api].acquire()
        if self.on_wait is not None:
            self.on_wait(waited)
        headers = {"Accept": MEDIA_TYPE}
        data = None
        if json is not None:
            headers["Content-Type"] = MEDIA_TYPE
            data = orjson.dumps(json)
        what = f"{method} {api}"
        answer = await send(
            self.session, method, url, what=what, params=params, data=data, headers=headers,
            max_body=self.max_body,
        )  # fmt: skip
        payload, status, request_id = answer.json(), answer.status, answer.request_id
        log.debug(
            "%s answered %d", what, status, extra={"status": status, "request_id": request_id}
        )
        message = f"{what} answered {status}: {error_text(payload, '')}".rstrip(": ")
        error = STATUSES.error(answer, message, max_retry_after=self.max_retry_after)
        if isinstance(error, RateLimited):
            self.limiters[api].block_for(error.retry_after or 1.0)
        if error is not None:
            raise error
        return _Answer(status, payload, request_id)

    def _misconfigured(self, answer: _Answer, what: str) -> None:
        """Raise for an answer that says the configuration, not the record, is wrong."""
        text = error_text(answer.payload, "")
        hint = {
            403: f"the client may not use partition {self.partition_id!r}: check "
            "sink.partition_id and the machine user's user groups",
            404: "no such endpoint: check sink.base_url (it ends in /api/openness)",
            415: "the API refused the JSON:API media type",
        }.get(answer.status, "unexpected answer")
        raise EndpointMisconfigured(
            f"{what} answered {answer.status}{f': {text}' if text else ''}; {hint}",
            status=answer.status,
            request_id=answer.request_id,
        )


def _attributes(kind: _LocationKind, record: dict[str, Any], external_id: str) -> dict[str, Any]:
    name = record.get("name")
    attributes: dict[str, Any] = {
        "label": name if isinstance(name, str) and name.strip() else external_id,
        "type": kind.type,
        "externalId": external_id,
    }
    for key in _TEXT_ATTRIBUTES:
        if isinstance(record.get(key), str) and record[key].strip():
            attributes[key] = record[key]
    year = record.get("constructionYear")
    if kind.type == "Building" and isinstance(year, str | int) and not isinstance(year, bool):
        digits = str(year)[:4]
        if digits.isdigit():
            attributes["constructionYear"] = int(digits)
    return attributes


def _moment(raw: Any) -> datetime | None:
    if not isinstance(raw, str) or "T" not in raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _value_indexes(payload: Any, count: int) -> set[int]:
    """The positions `/data/{n}/...` pointers name, within the request's `count` values."""
    named = set()
    for pointer in _pointers(payload):
        parts = (pointer or "").split("/")
        if len(parts) >= 3 and parts[1] == "data" and parts[2].isdigit() and int(parts[2]) < count:
            named.add(int(parts[2]))
    return named


def _token_fix(exc: CredentialsRejected) -> str:
    """What to change when Auth0 refused the client credentials (`check`)."""
    if exc.status == 403:
        return (
            "Auth0 refused the audience (or the client has no grant for it): set sink.audience "
            "to the Building X API audience, https://horizon.siemens.com (the default)"
        )
    if exc.status == 401:
        return (
            "re-copy sink.client_id and sink.client_secret of the machine user from the "
            "Building X API Manager"
        )
    return "check sink.token_url (the Auth0 /oauth/token URL) and the credentials"


def build(context: SinkContext) -> BuildingXSink:
    """The sink `sink.type: buildingx` configures: an Auth0 token (a JSON body with an
    audience) and one limiter per API, each `sink.rate_limit` (10 requests/s by default)."""
    s, metrics = context.settings.sink, context.metrics
    assert isinstance(s, BuildingXSinkSettings)  # noqa: S101 - the registry chose by type
    grant = ClientCredentials(
        s.token_url, s.client_id, s.client_secret, audience=s.audience, as_json=True
    )
    session, provider = authed_session(context, grant)
    return BuildingXSink(
        session, s.base_url, s.partition_id,
        limiters={api: budget_limiter(s.rate_limit) for api in APIS},
        point_field=s.point_field, point_ids=s.point_ids,
        overwrite_values=s.overwrite_values, parent_wait=s.parent_wait_seconds,
        max_retry_after=s.max_retry_after_seconds, on_wait=metrics.rate_limit_waited,
        provider=provider,
    )  # fmt: skip
