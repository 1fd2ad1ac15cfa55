"""An emulator of the BIMlink (BIMcollab Twin) Public API and its IdentityServer-style auth server.

Owns the HTTP surface of one emulated BIMlink installation, behaving as the public quickstart
describes, with the undocumented details
inferred (docs/bimlink.md lists them), plus the admin API and the command line. The rules live
beside it: OAuth2 (`bimlink_auth`) and the data with its per-user visibility
(`bimlink_data`). Faults and the rolling-window rate limit are the BuildingMinds emulator's
(`faults.FaultInjector`, `buildingminds_auth.RateLimiter`), reused as they are.

Must not: reach the network beyond its own socket, read the wall clock for decisions (time
comes from the injected `clock`), or start tasks of its own.

URLs
    GET  /connect/authorize   response_type=code, client_id, redirect_uri (whitelisted, exact),
                              scope (must include bimlink_publicapi), state, code_challenge,
                              code_challenge_method=S256. Nobody can click a login page in a
                              test, so the configured user (`--user`, admin `login`) approves at
                              once: 302 to redirect_uri?code=...&scope=...&state=..., or
                              ?error=access_denied|invalid_scope|invalid_request|
                              unsupported_response_type&error_description=...&state=... An
                              unknown client or a redirect URI not whitelisted cannot be
                              redirected to: 400 with the OAuth2 error as JSON.
    POST /connect/token       form: grant_type=authorization_code (code, redirect_uri,
                              code_verifier, client_id, client_secret) or refresh_token
                              (refresh_token, client_id, client_secret); client credentials
                              also as HTTP Basic. 200 {access_token (JWT-shaped, exp + sub),
                              expires_in, token_type: Bearer, scope, refresh_token (with
                              offline_access; rotated), id_token (with openid)}; 400
                              {error, error_description}; token-outage: 503
                              temporarily_unavailable
    GET  /api/v1/domainaccounts
    GET  /api/v1/domainaccounts/{domainAccountId}/locations
    GET  /api/v1/domainaccounts/{domainAccountId}/projectphases/{phaseId}/spatialstructureelements
                              JSON arrays, paged by ?limit&offset with Pagination-Limit,
                              Pagination-Offset and Pagination-Result (the total) headers
    GET  /_emulator/health | requests[?limit=] | faults | data
    POST /_emulator/faults {"profile": NAME, ...} | login {"user", "approve"} | revoke
         {"user"?} | reset
    PUT  /_emulator/data/{kind}/{id} {fields}  |  DELETE /_emulator/data/{kind}/{id}
         kind: domainaccount, location, project, phase, element (a delete cascades)
    POST /_emulator/access {"user", "domainAccountId", "locations": [ids] | null}

API errors are ASP.NET problem details (inferred): {"type", "title", "status", "detail"}.
Order of checks for an API request: fault profile, bearer token (401), rate budget per user
(429 + Retry-After), visibility (403: a domain account or location the user may not see),
route (404), paging (400: limit above the action's maximum, or not a number).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from connector.logs import get_logger
from twin_emulators import common
from twin_emulators.bimlink_auth import DEMO_CLIENT, AccessGrant, AuthServer, OAuthClient
from twin_emulators.bimlink_data import DEMO_USER, DataStore, Forbidden, NotFound, demo_store
from twin_emulators.common import basic_credentials, json_response, retry_after
from twin_emulators.faults import FaultInjector, FaultSettings
from twin_emulators.limits import RateLimiter
from twin_emulators.requestlog import REQUEST_LOG_SIZE, LogEntry, iso_utc

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence

    from aiohttp.typedefs import Handler

__all__ = [
    "API_PREFIX",
    "DEFAULTS",
    "MAX_LIMITS",
    "RATE_BUDGET",
    "STATE_KEY",
    "SUMMARY",
    "BimlinkOptions",
    "BimlinkState",
    "add_cli_arguments",
    "create_app",
    "options_from_args",
    "run_from_args",
]

log = get_logger(__name__)

API_PREFIX: Final = "/api/v1"
ADMIN_PREFIX: Final = "/_emulator"
# The largest `limit` each list action takes, and the page size without one (inferred: the
# quickstart says the maximum "depends on the action" and is in the Swagger documentation).
MAX_LIMITS: Final = {"domainaccounts": 100, "locations": 100, "spatialstructureelements": 1000}
DEFAULT_LIMIT: Final = 25


@dataclass(frozen=True)
class BimlinkOptions:
    """Everything that shapes one emulator instance. Raises ValueError on nonsense values."""

    token_lifetime_seconds: int = 3600
    refresh_token_lifetime_seconds: int = 1_296_000  # 15 days, sliding (IdentityServer's default)
    code_lifetime_seconds: int = 300
    rate_limit_requests: int = 300
    rate_limit_seconds: float = 60.0
    fault_profile: str = "none"
    fault_rate: float | None = None
    seed: int = 0
    clients: Sequence[OAuthClient] = (DEMO_CLIENT,)
    user: str = DEMO_USER  # who the authorize endpoint logs in without asking
    data: Callable[[], DataStore] = demo_store

    def __post_init__(self) -> None:
        lifetimes = (
            self.token_lifetime_seconds,
            self.refresh_token_lifetime_seconds,
            self.code_lifetime_seconds,
        )
        if min(lifetimes) <= 0:
            raise ValueError("token and code lifetimes must be positive")
        if self.rate_limit_requests <= 0 or self.rate_limit_seconds <= 0:
            raise ValueError("the rate limit needs positive requests and seconds")
        if not self.clients:
            raise ValueError("need at least one client")
        object.__setattr__(self, "clients", tuple(self.clients))
        self.fault_settings()  # validates profile and rate

    def fault_settings(self) -> FaultSettings:
        return FaultSettings(profile=self.fault_profile, rate=self.fault_rate)


@dataclass
class BimlinkState:
    """The emulated installation: reachable as `app[STATE_KEY]`."""

    options: BimlinkOptions
    clock: Callable[[], float]
    data: DataStore = field(init=False)
    auth: AuthServer = field(init=False)
    limiter: RateLimiter = field(init=False)
    faults: FaultInjector = field(init=False)
    requests: deque[LogEntry] = field(init=False)
    user: str = field(init=False)
    approve: bool = field(init=False)
    _epoch: float = field(init=False)

    def __post_init__(self) -> None:
        options = self.options
        self._epoch = time.time() - self.clock()
        self.data = options.data()
        self.auth = AuthServer(
            options.clients,
            access_lifetime=options.token_lifetime_seconds,
            refresh_lifetime=options.refresh_token_lifetime_seconds,
            code_lifetime=options.code_lifetime_seconds,
            wall=self.wall,
            emails=self.data.emails,
        )
        self.limiter = RateLimiter(options.rate_limit_requests, options.rate_limit_seconds)
        self.faults = FaultInjector(options.fault_settings(), seed=options.seed, now=self.clock())
        self.requests = deque(maxlen=REQUEST_LOG_SIZE)
        self.user, self.approve = options.user, True

    def wall(self, at: float) -> float:
        """Unix time at clock value `at`."""
        return self._epoch + at

    def iso(self, at: float) -> str:
        return iso_utc(self._epoch + at)

    def set_faults(self, settings: FaultSettings) -> None:
        # `revoked-tokens` revokes access and refresh tokens issued before the switch.
        self.faults.configure(settings, now=self.clock(), token_serial=self.auth.next_serial)
        log.info("fault profile switched", extra={"profile": settings.profile})

    def reset(self) -> None:
        """Back to the configured data, login, faults; forget the log and rate windows.
        Issued tokens stay valid so a running client is not disturbed."""
        self.data = self.options.data()
        self.user, self.approve = self.options.user, True
        self.limiter.reset()
        self.requests.clear()
        self.set_faults(self.options.fault_settings())


STATE_KEY: Final = web.AppKey("bimlink_emulator", BimlinkState)
_ENTRY: Final = web.RequestKey("bimlink_log_entry", LogEntry)
_GRANT: Final = web.RequestKey("bimlink_grant", AccessGrant)


# -- responses ------------------------------------------------------------------------------


_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip


def _problem(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {
        "type": f"https://httpstatuses.io/{status}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": message,
    }
    return json_response(body, status, headers, content_type="application/problem+json")


# -- the front door: request log, faults, auth, budget -----------------------------------------


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _problem(exc.status, exc.reason)


def _caller(
    state: BimlinkState, authorization: str | None, now: float
) -> common.Caller[AccessGrant] | str:
    grant = state.auth.resolve(authorization, now)
    if isinstance(grant, str):
        return grant
    return common.Caller(grant, grant.client_id, budget=grant.user_id, serial=grant.serial)


async def _api_gate(request: web.Request, handler: Handler, entry: LogEntry) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    caller = await common.admit(
        request, state, entry, error=_problem, lookup=functools.partial(_caller, state),
        challenge='Bearer error="invalid_token"', revoked="the access token was revoked",
        throttled="Rate limit exceeded: {requests} requests per {seconds:g} seconds per user.",
    )  # fmt: skip
    if not isinstance(caller, common.Caller):
        return caller
    request[_GRANT] = caller.credential
    return await _answer(handler, request)


def _gate(path: str) -> common.Gate | None:
    return _api_gate if path.startswith(API_PREFIX + "/") else None


_front_door = common.front_door(
    STATE_KEY, _ENTRY, admin_prefix=ADMIN_PREFIX, answer=_answer, gate=_gate
)


# -- the auth server ----------------------------------------------------------------------------


async def _authorize(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    query = {k: v for k, v in request.query.items() if isinstance(v, str)}
    outcome = state.auth.authorize(
        query, user_id=state.user, approve=state.approve, now=state.clock()
    )
    if isinstance(outcome, str):
        return web.Response(status=302, headers={"Location": outcome})
    return json_response(outcome.body(), outcome.status)


async def _token(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.clock()
    entry = request[_ENTRY]
    if state.faults.token_outage(now):
        entry.fault = "token-outage"
        body = {"error": "temporarily_unavailable", "error_description": "Try again later"}
        return json_response(body, 503, retry_after(1))
    posted = await request.post()
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    basic = basic_credentials(request.headers.get("Authorization"))
    if basic is not None:
        form.setdefault("client_id", basic[0])
        form.setdefault("client_secret", basic[1])
    entry.client_id = form.get("client_id")
    answer = state.auth.token(
        form, now=now, revoked=lambda serial: state.faults.token_revoked(serial, now)
    )
    if not isinstance(answer, dict):
        return json_response(answer.body(), answer.status)
    return json_response(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# -- the API ----------------------------------------------------------------------------------


def _paged(request: web.Request, action: str, items: list[dict[str, Any]]) -> web.Response:
    highest = MAX_LIMITS[action]
    values: dict[str, int] = {}
    for name, default in (("limit", DEFAULT_LIMIT), ("offset", 0)):
        raw = request.query.get(name)
        if raw is None:
            values[name] = default
        elif not raw.isdigit():
            return _problem(400, f"{name} must be a whole number")
        else:
            values[name] = int(raw)
    limit, offset = values["limit"], values["offset"]
    if not 1 <= limit <= highest:
        return _problem(400, f"limit must be between 1 and {highest} for this action")
    headers = {
        "Pagination-Limit": str(limit),
        "Pagination-Offset": str(offset),
        "Pagination-Result": str(len(items)),
    }
    return json_response(items[offset : offset + limit], headers=headers)


async def _domain_accounts(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return _paged(request, "domainaccounts", state.data.domain_accounts(request[_GRANT].user_id))


def _forbidden(account_id: str) -> web.Response:
    return _problem(403, f"The user has no access to domain account {account_id}.")


async def _locations(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    account = request.match_info["domainAccountId"]
    try:
        found = state.data.locations(request[_GRANT].user_id, account)
    except Forbidden:
        return _forbidden(account)
    return _paged(request, "locations", found)


async def _elements(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    account, phase = request.match_info["domainAccountId"], request.match_info["phaseId"]
    try:
        found = state.data.elements(request[_GRANT].user_id, account, phase)
    except Forbidden:
        return _problem(403, f"The user has no access to project phase {phase}.")
    except NotFound:
        return _problem(404, f"Project phase {phase} not found in domain account {account}.")
    return _paged(request, "spatialstructureelements", found)


# -- admin API --------------------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


async def _admin_health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.clock()
    return json_response(
        {
            "status": "ok",
            "fault_profile": state.faults.active(now).profile,
            "user": state.user,
            "approve": state.approve,
            "refresh_tokens": state.auth.refresh_tokens_alive(now),
        }
    )


async def _admin_data(request: web.Request) -> web.StreamResponse:
    data = request.app[STATE_KEY].data
    return json_response({kind: list(records.values()) for kind, records in data.records.items()})


async def _admin_put(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if body is None:
        return json_response(
            {"error": "the body must be a JSON object of the record's fields"}, 400
        )
    kind, record_id = request.match_info["kind"], request.match_info["id"]
    try:
        created = request.app[STATE_KEY].data.upsert(kind, {**body, "id": record_id})
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    record = request.app[STATE_KEY].data.records[kind][record_id]
    return json_response(record, 201 if created else 200)


async def _admin_delete(request: web.Request) -> web.StreamResponse:
    kind, record_id = request.match_info["kind"], request.match_info["id"]
    try:
        removed = request.app[STATE_KEY].data.delete(kind, record_id)
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)
    if not removed:
        return json_response({"error": f"no {kind} {record_id}"}, 404)
    return json_response({"deleted": removed})


async def _admin_access(request: web.Request) -> web.StreamResponse:
    body = await _body(request) or {}
    user, account, locations = body.get("user"), body.get("domainAccountId"), body.get("locations")
    if not isinstance(user, str) or not isinstance(account, str):
        return json_response({"error": "needs user and domainAccountId (strings)"}, 400)
    if locations is not None and not isinstance(locations, list):
        return json_response({"error": "locations must be a list of IDs or null"}, 400)
    visible = None if locations is None else frozenset(str(x) for x in locations)
    request.app[STATE_KEY].data.grant(user, account, visible)
    return json_response({"user": user, "domainAccountId": account, "locations": locations})


async def _admin_login(request: web.Request) -> web.StreamResponse:
    body = await _body(request) or {}
    state = request.app[STATE_KEY]
    user, approve = body.get("user", state.user), body.get("approve", True)
    if not isinstance(user, str) or not isinstance(approve, bool):
        return json_response({"error": "user must be a string and approve a boolean"}, 400)
    state.user, state.approve = user, approve
    return json_response({"user": user, "approve": approve})


async def _admin_revoke(request: web.Request) -> web.StreamResponse:
    body = await _body(request) or {}
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        return json_response({"error": "user must be a string"}, 400)
    return json_response({"revoked": request.app[STATE_KEY].auth.revoke_refresh_tokens(user)})


# -- the application --------------------------------------------------------------------------


def create_app(
    options: BimlinkOptions | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[STATE_KEY]`.

    `clock` (seconds, monotonic) drives token and code expiry, the sliding refresh-token
    lifetime, rate windows and fault durations, so tests move time instead of sleeping.
    """
    options = options or BimlinkOptions()
    app = web.Application(middlewares=[_front_door])
    app[STATE_KEY] = BimlinkState(options, clock)
    router = app.router
    router.add_get("/connect/authorize", _authorize)
    router.add_post("/connect/token", _token)
    accounts = f"{API_PREFIX}/domainaccounts"
    router.add_get(accounts, _domain_accounts)
    router.add_get(accounts + "/{domainAccountId}/locations", _locations)
    router.add_get(
        accounts + "/{domainAccountId}/projectphases/{phaseId}/spatialstructureelements", _elements
    )
    admin = ADMIN_PREFIX
    router.add_get(f"{admin}/health", _admin_health)
    router.add_get(f"{admin}/data", _admin_data)
    router.add_put(admin + "/data/{kind}/{id}", _admin_put)
    router.add_delete(admin + "/data/{kind}/{id}", _admin_delete)
    router.add_post(f"{admin}/access", _admin_access)
    router.add_post(f"{admin}/login", _admin_login)
    router.add_post(f"{admin}/revoke", _admin_revoke)
    common.add_admin_routes(router, admin, STATE_KEY)  # requests, faults, reset
    return app


# -- command line -----------------------------------------------------------------------------


# What `emulate bimlink` shows and takes (`common.Emulator`).
SUMMARY = "the BIMlink (BIMcollab Twin) Public API and its IdentityServer-style auth server"
RATE_BUDGET = "per user"
DEFAULTS = BimlinkOptions()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only `emulate bimlink` has (`common.add_shared_arguments` adds the rest)."""
    defaults = DEFAULTS
    group = parser.add_argument_group("BIMlink")
    group.add_argument(
        "--redirect-uri",
        action="append",
        default=None,
        metavar="URI",
        help="redirect URI whitelisted for the demo client (repeatable; default: "
        f"{', '.join(sorted(DEMO_CLIENT.redirect_uris))})",
    )
    group.add_argument(
        "--refresh-token-lifetime",
        type=int,
        default=defaults.refresh_token_lifetime_seconds,
        metavar="SECONDS",
        help="sliding refresh token lifetime, reset at each use "
        f"(default: {defaults.refresh_token_lifetime_seconds}, 15 days)",
    )
    group.add_argument(
        "--login-user",
        default=defaults.user,
        metavar="USER",
        help=f"the user the login page approves at once (default: {defaults.user}; "
        "other-user sees another domain account)",
    )


def options_from_args(args: argparse.Namespace) -> BimlinkOptions:
    """BimlinkOptions from parsed arguments; ConfigError lists what is wrong."""
    client = DEMO_CLIENT
    if args.redirect_uri:
        client = OAuthClient(DEMO_CLIENT.client_id, DEMO_CLIENT.client_secret,
                             frozenset(args.redirect_uri))  # fmt: skip
    with common.bad_options():
        return BimlinkOptions(
            **common.shared_options(args),
            refresh_token_lifetime_seconds=args.refresh_token_lifetime,
            clients=(client,),
            user=args.login_user,
        )


def _announcement(options: BimlinkOptions, host: str, port: int) -> str:
    client = options.clients[0]
    return (
        f"BIMlink emulator listening on {host}:{port} | base_url and authority_url "
        f"{common.root_url(host, port)} | client_id={client.client_id} client_secret="
        f"{client.client_secret} | redirect URIs {', '.join(sorted(client.redirect_uris))} | "
        f"login user {options.user}"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve on args.host:args.port until SIGINT/SIGTERM; the exit code (2: bad options)."""
    return common.run_from_args(args, options_from_args, create_app, _announcement)
