"""An emulator of the BuildingMinds Digital Twin Integration API and its Entra ID token endpoint.

Owns the HTTP surface of one emulated tenant on one server, behaving as the platform documents
(its public Digital Twin Integration API and Entra ID documentation; docs/emulator.md says
where we chose), not as the connector would like, plus the admin API and the command line.
The rules live beside it: entities (`buildingminds_model`), batches and the entity store
(`buildingminds_ingest`), credentials, tokens and the rate budget (`buildingminds_auth`),
faults (`faults`), and the options and state that tie them together
(`buildingminds_state`).

Must not: reach the network beyond its own socket, read the wall clock for decisions (time
comes from the injected `clock`), or start tasks of its own.

URLs
    POST /{tenant}/oauth2/v2.0/token                 Entra ID client credentials (the tenants
                                                      of the options; default
                                                      buildingminds.onmicrosoft.com)
    POST /api/digitaltwinintegration/{entity}         JSON array of records (see ENTITIES)
    GET  /api/digitaltwinintegration/batch            ?batchId&createdFrom&createdTo&createdAt
                                                      &skip&limit (dates yyyy-mm-dd)
    GET  /api/digitaltwinintegration/batch/{batchId}/inbound
                                                      ?status&missingDependencies&skip&limit
    GET  /_emulator/health | entities[?entity=] | requests[?limit=] | faults
    POST /_emulator/faults {"profile": NAME, ...}  |  POST /_emulator/reset
    POST /_emulator/forget {"batchId": ID} | {"next": N}   a batch lost by the platform

Responses (bodies are JSON)
    token 200   {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                 "access_token": "<opaque>"}
    token 400   {"error": "invalid_client", "error_description": "AADSTS7000215: ...\\r\\n
                 Trace ID: ...", "error_codes": [7000215], "timestamp": "...", "trace_id":
                 "...", "correlation_id": "...", "error_uri": "..."}; an unknown tenant:
                 400 invalid_request AADSTS90002; token-outage: 503 with error
                 "temporarily_unavailable"
    POST 200    {"batchId": "<uuid>"}
    POST 400    {"error": "Request validation failed", "failedMessages": [{"message": <the
                 record as sent>, "error": "<every problem, '; '-joined>"}, ...],
                 "batchId": "<uuid of the batch of the valid records>" | null}
                 A body that is not a non-empty JSON array: {"error": "Request validation
                 failed"} alone. A bad query string adds "details".
    GET /batch  {"message": "Success", "totalCount": N, "data": [{"batchId", "entity",
                 "endpoint", "clientId", "createdAt", "recordCount", "statusCounts": {"New",
                 "InProgress", "Completed", "Published", "FailedValidation"}}]}, newest first
    inbound     {"message": "Success", "totalCount": N, "data": [{"batchId", "index",
                 "entity", "externalId", "eventType", "status", "missingDependencies":
                 [{"entity": "site", "id": "S-1"}], "message": str | null, "createdAt",
                 "updatedAt"}]} in submission order; `missingDependencies=true` keeps records
                 whose list is non-empty
    errors      {"code": 401|403|404|405|413|429|5xx, "message": "..."}; 429 and injected
                 503s carry Retry-After (whole seconds)

Order of checks for an API request: fault profile, bearer token (401), rate budget (429, per
client, every admitted API request counts, including failed ones), permission (403), route
(404/405), body size (413), validation (400). Timestamps are ISO-8601 UTC, derived from the
injected clock.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from twin_emulators import common
from twin_emulators.buildingminds_auth import DEMO_CLIENT, Token, TokenError, load_clients
from twin_emulators.buildingminds_model import (
    COMPLETED,
    DOCUMENTED_STATUSES,
    ENTITIES,
    FAILED_VALIDATION,
    IN_PROGRESS,
    NEW,
    PUBLISHED,
)
from twin_emulators.buildingminds_state import (
    DEFAULT_TENANT,
    STATE_KEY,
    EmulatorOptions,
    EmulatorState,
)
from twin_emulators.common import basic_credentials, json_response
from twin_emulators.requestlog import LogEntry

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping

    from aiohttp.typedefs import Handler

    from twin_emulators.buildingminds_ingest import Batch, InboundRecord
    from twin_emulators.buildingminds_model import EntitySpec

__all__ = [
    "API_PREFIX",
    "DEFAULTS",
    "DEFAULT_TENANT",
    "RATE_BUDGET",
    "STATE_KEY",
    "SUMMARY",
    "EmulatorOptions",
    "EmulatorState",
    "add_cli_arguments",
    "create_app",
    "options_from_args",
    "run_from_args",
]

API_PREFIX: Final = "/api/digitaltwinintegration"
ADMIN_PREFIX: Final = "/_emulator"
VALIDATION_FAILED: Final = "Request validation failed"
MAX_PAGE = 1000
DEFAULT_PAGE = 100


_ENTRY: Final = web.RequestKey("buildingminds_log_entry", LogEntry)


# -- responses ------------------------------------------------------------------------------


_json = json_response


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json({"code": status, "message": message}, status, headers)


def _invalid(details: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": VALIDATION_FAILED}
    if details is not None:
        body["details"] = details
    return _json(body, 400)


_REASONS = {
    404: "Resource not found",
    405: "Method not allowed",
    413: "Request body too large",
}


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    """Run the handler; aiohttp's own errors (404, 405, 413) become the platform's JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = _REASONS.get(exc.status, exc.reason)
        if exc.status == 413:
            limit = request.app[STATE_KEY].options.max_body_bytes
            message = f"{message}: the limit is {limit} bytes"
        return _error(exc.status, message, headers)


# -- the front door: request log, faults, auth, budget, permission --------------------------


def _caller(
    state: EmulatorState, authorization: str | None, now: float
) -> common.Caller[Token] | str:
    token = state.tokens.resolve(authorization, now)
    if isinstance(token, str):
        return token
    client_id = token.client.client_id
    return common.Caller(token, client_id, budget=client_id, serial=token.serial)


async def _api_gate(request: web.Request, handler: Handler, entry: LogEntry) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    caller = await common.admit(
        request, state, entry, error=_error, lookup=functools.partial(_caller, state),
        challenge='Bearer error="invalid_token"',
        revoked="Access denied due to revoked access token. Request a new token.",
        throttled="Rate limit is exceeded: {requests} requests per {seconds:g} seconds per "
        "credential. Try again in {wait} seconds.",
    )  # fmt: skip
    if not isinstance(caller, common.Caller):
        return caller
    endpoint = request.path[len(API_PREFIX) :].strip("/").split("/", 1)[0]
    if (endpoint in ENTITIES or endpoint == "batch") and not caller.credential.client.permits(
        endpoint
    ):
        return _error(403, f"The credential has no access to /{endpoint}.")
    return await _answer(handler, request)


def _gate(path: str) -> common.Gate | None:
    return _api_gate if path == API_PREFIX or path.startswith(API_PREFIX + "/") else None


_front_door = common.front_door(
    STATE_KEY, _ENTRY, admin_prefix=ADMIN_PREFIX, answer=_answer, gate=_gate
)


# -- token endpoint -------------------------------------------------------------------------


def _entra_error(state: EmulatorState, problem: TokenError) -> web.Response:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    # Entra's own timestamp format, e.g. "2024-05-01 12:00:00Z".
    moment = state.iso(state.clock())[:19].replace("T", " ") + "Z"
    description = (
        f"{problem.description}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}"
        f"\r\nTimestamp: {moment}"
    )
    body = {
        "error": problem.error,
        "error_description": description,
        "error_codes": [problem.code],
        "timestamp": moment,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={problem.code}",
    }
    return _json(body, problem.status)


_OUTAGE = TokenError(
    "temporarily_unavailable",
    90033,
    "AADSTS90033: A transient error has occurred. Please try again.",
    status=503,
)


def _unknown_tenant(tenant: str) -> TokenError:
    return TokenError(
        "invalid_request",
        90002,
        f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct "
        "tenant ID and are signing into the correct cloud. Check with your subscription "
        "administrator, this may happen if there are no active subscriptions for the tenant.",
    )


async def _token(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.clock()
    if state.faults.token_outage(now):
        request[_ENTRY].fault = "token-outage"
        return _entra_error(state, _OUTAGE)
    tenant = request.match_info["tenant"]
    if not state.options.knows_tenant(tenant):
        # Entra looks the directory up before it reads the form.
        return _entra_error(state, _unknown_tenant(tenant))
    posted = await request.post()
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    basic = basic_credentials(request.headers.get("Authorization"))
    if basic is not None:
        form.setdefault("client_id", basic[0])
        form.setdefault("client_secret", basic[1])
    if "client_id" in form:
        request[_ENTRY].client_id = form["client_id"]
    granted = state.tokens.grant(form, tenant=tenant, now=now)
    if isinstance(granted, TokenError):
        return _entra_error(state, granted)
    access_token, _ = granted
    lifetime = state.options.token_lifetime_seconds
    return _json(
        {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }
    )


# -- the platform API -------------------------------------------------------------------------


def _submit_handler(spec: EntitySpec) -> Handler:
    async def submit(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        entry = request[_ENTRY]
        body = await request.read()
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _invalid()
        if not isinstance(records, list) or not records:
            return _invalid()
        entry.record_count = len(records)
        # A decoded string can contain the marker only if the raw body does, or if the body
        # uses escapes; skipping the per-field search otherwise keeps large POSTs cheap.
        marker = state.options.async_failure_marker.encode()
        result = state.ingest.submit(
            spec,
            records,
            now=state.now(),
            client_id=entry.client_id or "",
            may_contain_marker=marker in body or b"\\" in body,
        )
        batch_id = None if result.batch is None else result.batch.batch_id
        if not result.failures:
            return _json({"batchId": batch_id})
        failed = [{"message": record, "error": error} for record, error in result.failures]
        return _json(
            {"error": VALIDATION_FAILED, "failedMessages": failed, "batchId": batch_id}, 400
        )

    return submit


def _page(query: Mapping[str, str]) -> tuple[int, int]:
    """`skip` and `limit` from the query string; ValueError says what is wrong."""
    values = []
    for name, default, highest in (("skip", 0, None), ("limit", DEFAULT_PAGE, MAX_PAGE)):
        raw = query.get(name)
        if raw is None:
            values.append(default)
            continue
        if not raw.isdigit() or (highest is not None and not 0 < int(raw) <= highest):
            bound = f" between 1 and {highest}" if highest else ""
            raise ValueError(f"{name} must be a whole number{bound}")
        values.append(int(raw))
    return values[0], values[1]


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(query: Mapping[str, str], name: str) -> date | None:
    raw = query.get(name)
    if raw is None:
        return None
    problem = f"{name} must be a date yyyy-mm-dd"
    if not _DAY.fullmatch(raw):
        raise ValueError(problem)
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(problem) from None


def _created_range(
    query: Mapping[str, str], state: EmulatorState
) -> tuple[float | None, float | None]:
    """The clock range [start, end) the created* filters allow (days are whole UTC days)."""
    created_from, created_to, created_at = (
        _day(query, n) for n in ("createdFrom", "createdTo", "createdAt")
    )
    if created_at is not None:
        created_from = max(created_from or created_at, created_at)
        created_to = min(created_to or created_at, created_at)
    start = None if created_from is None else state.clock_at(created_from)
    end = None if created_to is None else state.clock_at(created_to + timedelta(days=1))
    return start, end


def _envelope(total: int, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"message": "Success", "totalCount": total, "data": data}


_COUNTED = (NEW, IN_PROGRESS, COMPLETED, PUBLISHED, FAILED_VALIDATION)


def _batch_json(state: EmulatorState, batch: Batch, now: float) -> dict[str, Any]:
    counts = state.ingest.counts(batch, now)
    return {
        "batchId": batch.batch_id,
        "entity": batch.entity,
        "endpoint": f"/{batch.entity}",
        "clientId": batch.client_id,
        "createdAt": state.iso(batch.created_at),
        "recordCount": len(batch.records),
        "statusCounts": {status: counts.get(status, 0) for status in _COUNTED},
    }


async def _list_batches(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.now()
    query = request.query
    try:
        skip, limit = _page(query)
        start, end = _created_range(query, state)
    except ValueError as exc:
        return _invalid(str(exc))
    batches = state.ingest.batches_between(start, end)
    wanted = query.get("batchId")
    if wanted is not None:
        batches = [b for b in batches if b.batch_id == wanted]
    page = batches[skip : skip + limit]
    return _json(_envelope(len(batches), [_batch_json(state, b, now) for b in page]))


_STATUS_NAMES = {s.lower(): s for s in DOCUMENTED_STATUSES}


def _inbound_filters(query: Mapping[str, str]) -> tuple[str | None, bool | None]:
    status = query.get("status")
    if status is not None:
        if status.lower() not in _STATUS_NAMES:
            raise ValueError(f"status must be one of {', '.join(DOCUMENTED_STATUSES)}")
        status = _STATUS_NAMES[status.lower()]
    missing = query.get("missingDependencies")
    if missing is None:
        return status, None
    if missing.lower() not in ("true", "false"):
        raise ValueError("missingDependencies must be true or false")
    return status, missing.lower() == "true"


def _inbound_json(
    state: EmulatorState, record: InboundRecord, status: str, updated: float
) -> dict[str, Any]:
    entity, external_id = record.key
    return {
        "batchId": record.batch.batch_id,
        "index": record.index,
        "entity": entity,
        "externalId": external_id,
        "eventType": record.event_type,
        "status": status,
        "missingDependencies": [
            {"entity": e, "id": i} for e, i in state.ingest.missing_parents(record)
        ],
        "message": record.message if status == FAILED_VALIDATION else None,
        "createdAt": state.iso(record.accepted_at),
        "updatedAt": state.iso(updated),
    }


async def _inbound(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.now()
    batch = state.ingest.listed(request.match_info["batchId"])
    if batch is None:
        return _error(404, "Resource not found")
    try:
        skip, limit = _page(request.query)
        wanted_status, wanted_missing = _inbound_filters(request.query)
    except ValueError as exc:
        return _invalid(str(exc))
    ingest = state.ingest
    matches: list[tuple[InboundRecord, str, float]] = []
    for record in batch.records:
        status, updated = ingest.status_at(record, now)
        if wanted_status is not None and status != wanted_status:
            continue
        if wanted_missing is not None and (record.ready_at is None) != wanted_missing:
            continue  # held records (no ready time yet) are exactly those missing a parent
        matches.append((record, status, updated))
    page = matches[skip : skip + limit]
    return _json(_envelope(len(matches), [_inbound_json(state, *m) for m in page]))


# -- admin API ------------------------------------------------------------------------------


async def _admin_health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.now()
    return _json(
        {
            "status": "ok",
            "time": state.iso(now),
            "fault_profile": state.faults.active(now).profile,
            "batches": len(state.ingest.batches),
            "pending_records": state.ingest.pending(),
        }
    )


async def _admin_entities(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    entity = request.query.get("entity")
    if entity is not None and entity not in ENTITIES:
        return _json({"error": f"unknown entity {entity!r}; known: {', '.join(ENTITIES)}"}, 400)
    found = state.entities(entity)
    return _json({"count": sum(len(v) for v in found.values()), "entities": found})


async def _admin_forget(request: web.Request) -> web.StreamResponse:
    """`{"batchId": ID}`: forget that batch now; `{"next": N}`: forget the next N accepted.

    A forgotten batch is neither listed nor found by ID (inbound answers 404); its records
    are processed as before. Tests use it to lose a batch the connector tracks."""
    ingest = request.app[STATE_KEY].ingest
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    batch_id = body.get("batchId") if isinstance(body, dict) else None
    upcoming = body.get("next") if isinstance(body, dict) else None
    if isinstance(batch_id, str):
        if not ingest.forget(batch_id):
            return _json({"error": f"no batch {batch_id!r}"}, 404)
    elif isinstance(upcoming, int) and not isinstance(upcoming, bool) and upcoming >= 0:
        ingest.forget_next = upcoming
    else:
        return _json({"error": 'the body must be {"batchId": "<id>"} or {"next": <count>}'}, 400)
    return _json({"forgotten": sorted(ingest.forgotten), "next": ingest.forget_next})


# -- the application --------------------------------------------------------------------------


def create_app(
    options: EmulatorOptions | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[STATE_KEY]`.

    `clock` (seconds, monotonic) drives token expiry, rate windows, batch progress and fault
    durations, so tests can move time instead of sleeping. Injected latency and hangs are real
    sleeps: they model the network, which a fake clock cannot slow down.
    """
    options = options or EmulatorOptions()
    app = web.Application(middlewares=[_front_door], client_max_size=options.max_body_bytes)
    app[STATE_KEY] = EmulatorState(options, clock)
    router = app.router
    router.add_post("/{tenant}/oauth2/v2.0/token", _token)
    for spec in ENTITIES.values():
        router.add_post(f"{API_PREFIX}/{spec.name}", _submit_handler(spec))
    router.add_get(f"{API_PREFIX}/batch", _list_batches)
    router.add_get(API_PREFIX + "/batch/{batchId}/inbound", _inbound)
    router.add_get(f"{ADMIN_PREFIX}/health", _admin_health)
    router.add_get(f"{ADMIN_PREFIX}/entities", _admin_entities)
    router.add_post(f"{ADMIN_PREFIX}/forget", _admin_forget)
    common.add_admin_routes(router, ADMIN_PREFIX, STATE_KEY)
    return app


# -- command line -----------------------------------------------------------------------------


# What `emulate buildingminds` shows and takes (`common.Emulator`).
SUMMARY = "the BuildingMinds Digital Twin Integration API and its Entra ID token endpoint"
RATE_BUDGET = "per credential"
DEFAULTS = EmulatorOptions()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only `emulate buildingminds` has (`common.add_shared_arguments` adds the rest)."""
    defaults = DEFAULTS
    group = parser.add_argument_group("BuildingMinds")
    group.add_argument(
        "--processing-delay",
        type=float,
        default=defaults.processing_delay_seconds,
        metavar="SECONDS",
        help="time from acceptance to Completed; InProgress after half "
        f"(default: {defaults.processing_delay_seconds:g})",
    )
    group.add_argument(
        "--clients",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON list of client_id, client_secret, scope, optional allowed_endpoints "
        f"(default: the demo credential {DEMO_CLIENT.client_id} / {DEMO_CLIENT.client_secret})",
    )
    group.add_argument(
        "--tenant",
        action="append",
        default=None,
        metavar="NAME",
        dest="tenants",
        help="a tenant the token endpoint serves, as /NAME/oauth2/v2.0/token names it; "
        "repeat for several; others answer AADSTS90002 (default: "
        f"{', '.join(defaults.tenants)})",
    )
    group.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        metavar="BYTES",
        help="larger request bodies are answered 413 (default: 16 MiB)",
    )


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """EmulatorOptions from parsed arguments; ConfigError lists what is wrong."""
    clients = load_clients(args.clients) if args.clients is not None else [DEMO_CLIENT]
    with common.bad_options():
        return EmulatorOptions(
            **common.shared_options(args),
            processing_delay_seconds=args.processing_delay,
            clients=clients,
            max_body_bytes=args.max_body_bytes,
            tenants=args.tenants or DEFAULTS.tenants,
        )


def _announcement(options: EmulatorOptions, host: str, port: int) -> str:
    root = common.root_url(host, port)
    if DEMO_CLIENT in options.clients:
        who = (
            f"demo credential client_id={DEMO_CLIENT.client_id} "
            f"client_secret={DEMO_CLIENT.client_secret} scope={DEMO_CLIENT.scope}"
        )
    else:
        who = f"{len(options.clients)} client credential(s) from --clients"
    return (
        f"BuildingMinds emulator listening on {host}:{port} | base URL {root}{API_PREFIX} | "
        f"token URL {root}/{options.tenants[0]}/oauth2/v2.0/token | {who}"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve on args.host:args.port until SIGINT/SIGTERM; the exit code (2: bad options)."""
    return common.run_from_args(args, options_from_args, create_app, _announcement)
