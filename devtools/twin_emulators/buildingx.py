"""An emulator of the Siemens Building X Openness APIs (Structure, Point Value Ingest) and their
Auth0 token endpoint.

Owns the HTTP surface of one emulated tenant, behaving as Siemens' public developer
documentation describes (choices where it is silent are marked inferred in
`docs/buildingx.md`), plus the admin API and the command line. The rules live beside it:
locations and point values (`buildingx_model`), machine users, tokens and options
(`buildingx_state`); faults, the request budget and the request log are the BuildingMinds
emulator's own pieces, reused.

Must not: reach the network beyond its own socket, read the wall clock for decisions (time
comes from the injected `clock`), or start tasks of its own.

URLs
    POST /oauth/token                          Auth0 client credentials, JSON (or form) body
    GET|POST   /api/openness/structure/partitions/{p}/locations
               ?filter[externalId]&filter[type]&page[limit] (1..100, default 20)&page[after]
    GET|PATCH|DELETE /api/openness/structure/partitions/{p}/locations/{id}
    POST /api/openness/point-value-ingest/partitions/{p}/points/{pointId}/values[?overwrite=true]
    GET  /_emulator/health | locations[?partition=] | point-values[?partition=&point=]
         | requests[?limit=] | faults
    POST /_emulator/faults {"profile": NAME, ...}  |  POST /_emulator/reset

Responses
    token 200   {"access_token": "<JWT>", "scope"?, "expires_in": 86400, "token_type": "Bearer"};
                the JWT (HS256, the emulator's own key) carries iss, sub, aud, azp, iat, exp
                (iat + expires_in), gty, jti and the scope asked for; the API checks its
                signature, exp and aud
    token 4xx   {"error": "invalid_request" | "invalid_client" | "access_denied" |
                 "unauthorized_client", "error_description": "..."} (401 bad client or
                 secret, 403 unknown audience); token-outage: 503 temporarily_unavailable
    list 200    {"data": [Location...], "links": {"self": ..., "next"?: ...}} (links are
                 relative to the host, as `links.next` is documented to be followed)
    create 201, get/patch 200  {"data": Location}; delete 204
    ingest 204, or 202 {"meta": {"duplicates": [0-based indices]}} (inferred member name)
    errors      {"errors": [{"id", "status", "code", "title", "detail", "source":
                 {"pointer" | "parameter"}}]}; 429 and injected 503s carry Retry-After
    Every response carries X-Request-Id; API bodies are `application/vnd.api+json`.

Order of checks for an API request: fault profile, bearer token (401), rate budget (429, per
client and API: structure and point-value-ingest are counted apart), partition (403), route
(404/405), media type of a write (415), body (400/409).
"""

from __future__ import annotations

import base64
import functools
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from twin_emulators import common
from twin_emulators.buildingx_model import MAX_VALUES, ApiProblem, parse_values
from twin_emulators.buildingx_state import (
    DEMO_USER,
    STATE_KEY,
    BuildingXOptions,
    BuildingXState,
    GrantError,
    Token,
    load_users,
)
from twin_emulators.common import REQUEST_ID, json_response
from twin_emulators.requestlog import LogEntry

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping

    from aiohttp.typedefs import Handler

    from twin_emulators.buildingx_model import Location

__all__ = [
    "API_ROOT",
    "DEFAULTS",
    "INGEST",
    "MEDIA_TYPE",
    "RATE_BUDGET",
    "STATE_KEY",
    "STRUCTURE",
    "SUMMARY",
    "BuildingXOptions",
    "BuildingXState",
    "add_cli_arguments",
    "create_app",
    "options_from_args",
    "run_from_args",
]

API_ROOT: Final = "/api/openness"
STRUCTURE: Final = "structure"
INGEST: Final = "point-value-ingest"
ADMIN_PREFIX: Final = "/_emulator"
MEDIA_TYPE: Final = "application/vnd.api+json"
MAX_PAGE: Final = 100  # inferred: the largest page[limit] a community exporter uses
DEFAULT_PAGE: Final = 20  # inferred

_ENTRY: Final = web.RequestKey("buildingx_log_entry", LogEntry)
_CLIENT: Final = web.RequestKey("buildingx_client", str)


# -- responses --------------------------------------------------------------------------------


def _document(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status, content_type=MEDIA_TYPE)


def _problems(
    request: web.Request,
    problems: list[ApiProblem],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON:API error document; its status is the first problem's."""
    errors = []
    for problem in problems:
        error: dict[str, Any] = {
            "id": request.get(REQUEST_ID, ""),
            "status": str(problem.status),
            "code": problem.code,
            "title": problem.title,
        }
        if problem.detail is not None:
            error["detail"] = problem.detail
        if problem.pointer is not None:
            error["source"] = {"pointer": problem.pointer}
        elif problem.parameter is not None:
            error["source"] = {"parameter": problem.parameter}
        errors.append(error)
    return json_response({"errors": errors}, problems[0].status, headers, MEDIA_TYPE)


_TITLES = {
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not Found"),
    405: ("method-not-allowed", "Method Not Allowed"),
    413: ("payload-too-large", "Payload Too Large"),
    415: ("unsupported-media-type", "Unsupported Media Type"),
    429: ("too-many-requests", "Too Many Requests"),
}


def _error(
    request: web.Request, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    code, title = _TITLES.get(status, ("server-error", "Server Error"))
    return _problems(request, [ApiProblem(status, code, title, detail)], headers)


def _parameter_problem(name: str, detail: str) -> ApiProblem:
    return ApiProblem(400, "invalid-parameter", "Invalid query parameter", detail, parameter=name)


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    """Run the handler; aiohttp's own errors (404, 405, 413) become JSON:API errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(request, exc.status, exc.reason, headers)


# -- the front door: request id, request log, faults, auth, budget, partition ---------------


def _api_of(path: str) -> str | None:
    for api in (STRUCTURE, INGEST):
        if path.startswith(f"{API_ROOT}/{api}/"):
            return api
    return None


@web.middleware
async def _request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response, admin ones included, carries the X-Request-Id its errors show."""
    request[REQUEST_ID] = request_id = str(uuid.uuid4())
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    return response


def _caller(
    state: BuildingXState, api: str, authorization: str | None, now: float
) -> common.Caller[Token] | str:
    token = state.tokens.resolve(authorization, now)
    if isinstance(token, str):
        return token
    client_id = token.user.client_id
    # structure and point-value-ingest are counted apart
    return common.Caller(token, client_id, budget=f"{client_id} {api}", serial=token.serial)


async def _api_gate(
    request: web.Request, handler: Handler, entry: LogEntry, *, api: str
) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    caller = await common.admit(
        request, state, entry, error=functools.partial(_error, request),
        lookup=functools.partial(_caller, state, api),
        challenge='Bearer error="invalid_token"', revoked="The access token has been revoked.",
        throttled="Rate limit exceeded: {requests} requests per {seconds:g} s per client and API",
    )  # fmt: skip
    if not isinstance(caller, common.Caller):
        return caller
    user = caller.credential.user
    request[_CLIENT] = user.client_id
    parts = request.path[len(f"{API_ROOT}/{api}/") :].split("/")
    if len(parts) >= 2 and parts[0] == "partitions" and parts[1] not in user.partitions:
        return _error(request, 403, f"The client may not use partition {parts[1]!r}.")
    # only where a route exists: an unknown URL is a 404 whatever its body
    if (
        request.method in ("POST", "PATCH")
        and request.content_type != MEDIA_TYPE
        and request.match_info.http_exception is None
    ):
        return _error(
            request, 415, f"Content-Type must be {MEDIA_TYPE}, not {request.content_type!r}"
        )
    return await _answer(handler, request)


def _gate(path: str) -> common.Gate | None:
    api = _api_of(path)
    return None if api is None else functools.partial(_api_gate, api=api)


_front_door = common.front_door(
    STATE_KEY, _ENTRY, admin_prefix=ADMIN_PREFIX, answer=_answer, gate=_gate
)


# -- token endpoint ---------------------------------------------------------------------------


async def _token(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.clock()
    if state.faults.token_outage(now):
        request[_ENTRY].fault = "token-outage"
        return _grant_error(GrantError(503, "temporarily_unavailable", "Try again later."))
    if request.content_type == "application/json":
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
    else:  # Auth0 also takes a form
        body = dict(await request.post())
    if not isinstance(body, dict):
        return _grant_error(GrantError(400, "invalid_request", "The body must be a JSON object."))
    if isinstance(body.get("client_id"), str):
        request[_ENTRY].client_id = body["client_id"]
    granted = state.tokens.grant(body, now, issuer=f"{request.url.origin()}/")
    if isinstance(granted, GrantError):
        return _grant_error(granted)
    scope = {} if granted.scope is None else {"scope": granted.scope}
    return json_response(
        {
            "access_token": granted.access_token,
            **scope,
            "expires_in": state.options.token_lifetime_seconds,
            "token_type": "Bearer",
        }
    )


def _grant_error(problem: GrantError) -> web.Response:
    return json_response(
        {"error": problem.error, "error_description": problem.description}, problem.status
    )


# -- Structure API ----------------------------------------------------------------------------


def _locations_url(partition: str) -> str:
    return f"{API_ROOT}/{STRUCTURE}/partitions/{partition}/locations"


def _resource(state: BuildingXState, partition: str, location: Location) -> dict[str, Any]:
    relationships = {
        name: {"data": None if target is None else {"type": "Location", "id": target}}
        for name, target in location.relationships.items()
        if name != "hasPostalAddress"
    }
    return {
        "type": "Location",
        "id": location.id,
        "attributes": location.attributes,
        "relationships": relationships,
        "meta": {
            "createdAt": state.iso(location.created_at),
            "updatedAt": state.iso(location.updated_at),
            "createdBy": location.created_by,
            "updatedBy": location.updated_by,
        },
        "links": {"self": f"{_locations_url(partition)}/{location.id}"},
    }


_LIST_PARAMETERS = frozenset({"filter[externalId]", "filter[type]", "page[limit]", "page[after]"})


def _cursor(location_id: str) -> str:
    return base64.urlsafe_b64encode(location_id.encode()).decode().rstrip("=")


def _uncursor(cursor: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _list_query(query: Mapping[str, str]) -> tuple[int, str | None] | ApiProblem:
    unknown = sorted(set(query) - _LIST_PARAMETERS)
    if unknown:
        known = ", ".join(sorted(_LIST_PARAMETERS))
        return _parameter_problem(unknown[0], f"unknown query parameter; known: {known}")
    raw = query.get("page[limit]", str(DEFAULT_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        return _parameter_problem("page[limit]", f"must be a whole number from 1 to {MAX_PAGE}")
    after = query.get("page[after]")
    if after is not None:
        after = _uncursor(after)
        if after is None:
            return _parameter_problem("page[after]", "not a cursor from a links.next")
    return int(raw), after


async def _list_locations(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    partition = request.match_info["partition"]
    query = request.query
    parsed = _list_query(query)
    if isinstance(parsed, ApiProblem):
        return _problems(request, [parsed])
    limit, after = parsed
    types = query.get("filter[type]")
    found = state.structure.find(
        partition,
        external_id=query.get("filter[externalId]"),
        types=None if types is None else frozenset(types.split(",")),
    )
    start = 0
    if after is not None:
        start = next((i + 1 for i, x in enumerate(found) if x.id == after), len(found))
    page = found[start : start + limit]
    links = {"self": str(request.rel_url)}
    if start + limit < len(found):
        following = request.rel_url.update_query({"page[after]": _cursor(page[-1].id)})
        links["next"] = str(following)
    data = [_resource(state, partition, x) for x in page]
    return _document({"data": data, "links": links})


async def _json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None


def _data(body: Any) -> Any:
    return body.get("data") if isinstance(body, dict) else None


async def _create_location(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    partition = request.match_info["partition"]
    request[_ENTRY].record_count = 1
    created = state.structure.create(
        partition,
        _data(await _json_body(request)),
        client=request[_CLIENT],
        now=state.clock(),
    )
    if isinstance(created, list):
        return _problems(request, created)
    response = _document({"data": _resource(state, partition, created)}, 201)
    response.headers["Location"] = f"{_locations_url(partition)}/{created.id}"
    return response


async def _get_location(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    partition, location_id = request.match_info["partition"], request.match_info["id"]
    location = state.structure.locations(partition).get(location_id)
    if location is None:
        return _error(request, 404, f"location {location_id!r} does not exist")
    return _document({"data": _resource(state, partition, location)})


async def _update_location(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    partition, location_id = request.match_info["partition"], request.match_info["id"]
    request[_ENTRY].record_count = 1
    updated = state.structure.update(
        partition,
        location_id,
        _data(await _json_body(request)),
        client=request[_CLIENT],
        now=state.clock(),
    )
    if isinstance(updated, list):
        return _problems(request, updated)
    return _document({"data": _resource(state, partition, updated)})


async def _delete_location(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    partition, location_id = request.match_info["partition"], request.match_info["id"]
    if not state.structure.delete(partition, location_id):
        return _error(request, 404, f"location {location_id!r} does not exist")
    return web.Response(status=204)


# -- Point Value Ingest API -------------------------------------------------------------------


async def _ingest(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    partition, point = request.match_info["partition"], request.match_info["point"]
    unknown = sorted(set(request.query) - {"overwrite"})
    overwrite = request.query.get("overwrite", "false")
    if unknown or overwrite not in ("true", "false"):
        name = unknown[0] if unknown else "overwrite"
        return _problems(request, [_parameter_problem(name, "only overwrite=true|false")])
    known = state.options.known_points
    if known is not None and point not in known:
        return _error(request, 404, f"point {point!r} does not exist in partition {partition!r}")
    parsed = parse_values(await _json_body(request))
    if parsed and isinstance(parsed[0], ApiProblem):
        return _problems(request, [p for p in parsed if isinstance(p, ApiProblem)])
    values = [v for v in parsed if not isinstance(v, ApiProblem)]
    request[_ENTRY].record_count = len(values)
    dropped = state.values.store(partition, point, values, overwrite=overwrite == "true")
    if dropped:
        return _document({"meta": {"duplicates": dropped}}, 202)
    return web.Response(status=204)


# -- admin API --------------------------------------------------------------------------------


async def _admin_health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return json_response(
        {
            "status": "ok",
            "time": state.iso(state.clock()),
            "fault_profile": state.faults.active(state.clock()).profile,
            "locations": sum(len(x) for x in state.structure.partitions.values()),
        }
    )


async def _admin_locations(request: web.Request) -> web.StreamResponse:
    """Every stored location as the API shows it, by partition."""
    state = request.app[STATE_KEY]
    wanted = request.query.get("partition")
    found = {
        partition: [_resource(state, partition, x) for x in locations.values()]
        for partition, locations in state.structure.partitions.items()
        if wanted is None or partition == wanted
    }
    return json_response({"count": sum(len(x) for x in found.values()), "locations": found})


async def _admin_point_values(request: web.Request) -> web.StreamResponse:
    """Stored values as `{partition: {point: [{timestamp, value, qualityOfValue}]}}`."""
    state = request.app[STATE_KEY]
    partition_wanted, point_wanted = request.query.get("partition"), request.query.get("point")
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (partition, point), stored in state.values.points.items():
        if partition_wanted not in (None, partition) or point_wanted not in (None, point):
            continue
        found.setdefault(partition, {})[point] = [
            {
                "timestamp": _iso_ms(ms),
                "value": stored[ms].value,
                "qualityOfValue": stored[ms].quality,
            }
            for ms in sorted(stored)
        ]
    return json_response({"points": found})


def _iso_ms(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# -- the application --------------------------------------------------------------------------


def create_app(
    options: BuildingXOptions | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[STATE_KEY]`.

    `clock` (seconds, monotonic) drives token expiry, rate windows and fault durations, so
    tests can move time instead of sleeping. Injected latency and hangs are real sleeps.
    """
    options = options or BuildingXOptions()
    app = web.Application(
        middlewares=[_request_id, _front_door], client_max_size=options.max_body_bytes
    )
    app[STATE_KEY] = BuildingXState(options, clock)
    router = app.router
    router.add_post("/oauth/token", _token)
    locations = f"{API_ROOT}/{STRUCTURE}/partitions/{{partition}}/locations"
    router.add_get(locations, _list_locations)
    router.add_post(locations, _create_location)
    router.add_get(locations + "/{id}", _get_location)
    router.add_patch(locations + "/{id}", _update_location)
    router.add_delete(locations + "/{id}", _delete_location)
    router.add_post(
        f"{API_ROOT}/{INGEST}/partitions/{{partition}}/points/{{point}}/values", _ingest
    )
    for name, admin in (
        ("health", _admin_health),
        ("locations", _admin_locations),
        ("point-values", _admin_point_values),
    ):
        router.add_get(f"{ADMIN_PREFIX}/{name}", admin)
    common.add_admin_routes(router, ADMIN_PREFIX, STATE_KEY)
    return app


# -- command line -----------------------------------------------------------------------------


# What `emulate buildingx` shows and takes (`common.Emulator`).
SUMMARY = (
    "the Siemens Building X Openness APIs (Structure, Point Value Ingest) and their "
    "Auth0 token endpoint"
)
RATE_BUDGET = "per client and API"
DEFAULTS = BuildingXOptions()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only `emulate buildingx` has (`common.add_shared_arguments` adds the rest)."""
    group = parser.add_argument_group("Building X")
    group.add_argument(
        "--clients",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON list of machine users: client_id, client_secret, partitions "
        f"(default: the demo machine user {DEMO_USER.client_id} / {DEMO_USER.client_secret}, "
        f"partition {min(DEMO_USER.partitions)})",
    )


def options_from_args(args: argparse.Namespace) -> BuildingXOptions:
    """Options from the `emulate buildingx` arguments; ConfigError lists what is wrong."""
    users = load_users(args.clients) if args.clients is not None else [DEMO_USER]
    with common.bad_options():
        return BuildingXOptions(**common.shared_options(args), users=users)


def _announcement(options: BuildingXOptions, host: str, port: int) -> str:
    root = common.root_url(host, port)
    if DEMO_USER in options.users:
        who = (
            f"demo machine user client_id={DEMO_USER.client_id} "
            f"client_secret={DEMO_USER.client_secret} "
            f"partition_id={min(DEMO_USER.partitions)}"
        )
    else:
        who = f"{len(options.users)} machine user(s) from --clients"
    return (
        f"Building X emulator listening on {host}:{port} | base URL {root}{API_ROOT} | "
        f"token URL {root}/oauth/token | audience {options.audience} | {who} | "
        f"{MAX_VALUES} values per ingest request"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve on args.host:args.port until SIGINT/SIGTERM; the exit code (2: bad options)."""
    return common.run_from_args(args, options_from_args, create_app, _announcement)
