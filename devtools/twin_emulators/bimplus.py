"""An emulator of the Bimplus API v2, its Keycloak-style OIDC server and its legacy login.

Owns the HTTP surface of one emulated Bimplus installation, behaving as the public
documentation describes it and, where that is
silent, as documented in docs/bimplus.md ("inferred"), plus the admin API and the command
line. Data, credentials and tokens live in `bimplus_state`; the fault profiles, the rolling
rate window and the request log are the BuildingMinds emulator's (`faults`,
`buildingminds_auth.RateLimiter`, `buildingminds_state.LogEntry`), and the front door, fault
responses, admin views and command line are shared by every emulator (`common`), so the
emulators cannot drift apart.

Must not: reach the network beyond its own socket, read the wall clock for decisions (time
comes from the injected `clock`), or start tasks of its own.

URLs
    GET  /v2/.well-known/openid-configuration          OIDC discovery (also under the realm)
    POST /realms/bimplus/protocol/openid-connect/token  client_credentials | password |
                                                        refresh_token (form)
    GET|POST /realms/bimplus/protocol/openid-connect/userinfo   {sub, preferred_username,
                                                        email (users)} for an OIDC token
    POST /realms/bimplus/protocol/openid-connect/revoke token= (RFC 7009): 200, empty
    GET  /realms/bimplus/protocol/openid-connect/certs  {"keys": []} (HS256, not published)
    GET  /realms/bimplus/protocol/openid-connect/auth   400: no browser login
    POST /v2/authorize                                  legacy login (JSON) -> BimPlus token
    GET  /v2/teams | /v2/teams/{slug}                   the user's teams
    GET  /v2/{team}/projects | /v2/{team}/projects/{id}
    GET  /v2/{team}/projects/{id}/topology              the topology tree, nested
    GET  /v2/{team}/objects/{id}                        one node: parent, type, attributes,
                                                        children (one level)
    GET  /_emulator/health | requests[?limit=] | faults | data
    POST /_emulator/faults {"profile": ...} | reset | teams {slug, name, member}
    POST /_emulator/projects {team, name, shortDescr, address, id}
    PATCH|DELETE /_emulator/projects/{id}               PATCH {name, shortDescr, address}
    POST /_emulator/projects/{id}/touch                 bump `changed` only
    POST /_emulator/projects/{id}/nodes {parent, type, name, id, attributes, bump}
    PATCH|DELETE /_emulator/projects/{id}/nodes/{node}  PATCH {name, type, attributes, bump}

Responses
    token 200   {"access_token": "<JWT>", "expires_in", "refresh_expires_in",
                 "refresh_token"?, "token_type": "Bearer", "id_token": "<JWT>",
                 "not-before-policy": 0, "scope"}; a refresh token for the password grant
                 (offline with scope offline_access: refresh_expires_in 0) and the
                 refresh_token grant, none for client_credentials (refresh_expires_in 0)
    token 4xx   Keycloak's {"error", "error_description"}: 400 invalid_request,
                 unauthorized_client, unsupported_grant_type, invalid_grant (a refresh
                 token unknown, expired, revoked or another client's); 401 invalid_client,
                 invalid_grant (user or password); outage 503 temporarily_unavailable
    authorize   200 {"access_token", "expires_in", "client_id", "token_type": "BimPlus"};
                 400 invalid_request (a mandatory field missing), invalid_client (unknown
                 application_id); 401 invalid_grant (user or password) (inferred shapes)
    API errors  {"code": N, "message": "..."} (inferred): 401 (no, unknown, expired token or
                 the wrong scheme), 403 (a team the user is not a member of), 404 (unknown
                 team, project or object), 429 with Retry-After (the inferred rate limit)

Order of checks for an API request: fault profile, token (401), rate budget (429, per user or
client), route and team (404/403). Discovery, token and authorize requests see only the
`token-outage` profile (all three answer 503), and are not rate limited.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from twin_emulators import common
from twin_emulators.bimplus_state import (
    BIMPLUS_KEY,
    DEMO_APPLICATION_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_TEAM,
    DEMO_USER,
    REALM,
    AuthProblem,
    BimplusOptions,
    BimplusState,
    Issued,
    Project,
    Team,
)
from twin_emulators.common import (
    Caller,
    Gate,
    admit,
    bad_options,
    basic_credentials,
    front_door,
    json_response,
    root_url,
    shared_options,
)
from twin_emulators.requestlog import LogEntry

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping

    from aiohttp.typedefs import Handler

__all__ = [
    "ADMIN_PREFIX",
    "API_PREFIX",
    "BIMPLUS_KEY",
    "DEFAULTS",
    "RATE_BUDGET",
    "SUMMARY",
    "BimplusOptions",
    "BimplusState",
    "add_cli_arguments",
    "create_app",
    "options_from_args",
    "run_from_args",
]

API_PREFIX: Final = "/v2"
ADMIN_PREFIX: Final = "/_emulator"
REALM_PREFIX: Final = f"/realms/{REALM}"
OIDC_PREFIX: Final = f"{REALM_PREFIX}/protocol/openid-connect"
DISCOVERY_PATH: Final = f"{API_PREFIX}/.well-known/openid-configuration"
AUTHORIZE_PATH: Final = f"{API_PREFIX}/authorize"

_ENTRY: Final = web.RequestKey("bimplus_log_entry", LogEntry)
_ISSUED: Final = web.RequestKey("bimplus_issued", Issued)


_json = json_response


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json({"code": status, "message": message}, status, headers)


def _oauth_error(problem: AuthProblem) -> web.Response:
    return _json({"error": problem.error, "error_description": problem.description}, problem.status)


_OUTAGE = AuthProblem("temporarily_unavailable", "The authorization server is unavailable", 503)


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    """Run the handler; aiohttp's own 404 and 405 become the JSON error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)


# -- the front door: request log, faults, tokens, budget -------------------------------------


async def _auth_gate(request: web.Request, handler: Handler, entry: LogEntry) -> web.StreamResponse:
    """Discovery, token and authorize requests see only the token-outage profile."""
    state = request.app[BIMPLUS_KEY]
    if state.faults.token_outage(state.clock()):
        entry.fault = "token-outage"
        return _oauth_error(_OUTAGE)
    return await _answer(handler, request)


def _caller(state: BimplusState, authorization: str | None, now: float) -> Caller[Issued] | str:
    issued = state.resolve(authorization, now)
    if isinstance(issued, str):
        return issued
    return Caller(issued, issued.subject, budget=issued.key, serial=issued.serial)


async def _api_gate(request: web.Request, handler: Handler, entry: LogEntry) -> web.StreamResponse:
    state = request.app[BIMPLUS_KEY]
    caller = await admit(
        request, state, entry, error=_error, lookup=functools.partial(_caller, state),
        challenge='Bearer realm="bimplus", BimPlus realm="bimplus"',
        revoked="Access token revoked",
        throttled="Too many requests: {requests} per {seconds:g} s. Try again in {wait} s.",
    )  # fmt: skip
    if not isinstance(caller, Caller):
        return caller
    request[_ISSUED] = caller.credential
    return await _answer(handler, request)


def _gate(path: str) -> Gate | None:
    if path in (DISCOVERY_PATH, AUTHORIZE_PATH) or path.startswith("/realms/"):
        return _auth_gate
    return _api_gate if path.startswith(API_PREFIX + "/") else None


_front_door = front_door(BIMPLUS_KEY, _ENTRY, admin_prefix=ADMIN_PREFIX, answer=_answer, gate=_gate)


# -- OIDC and the legacy login --------------------------------------------------------------


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


async def _discovery(request: web.Request) -> web.StreamResponse:
    issuer = _origin(request) + REALM_PREFIX
    oidc = _origin(request) + OIDC_PREFIX
    return _json(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{oidc}/auth",
            "token_endpoint": f"{oidc}/token",
            "userinfo_endpoint": f"{oidc}/userinfo",
            "revocation_endpoint": f"{oidc}/revoke",
            "jwks_uri": f"{oidc}/certs",
            # What the token endpoint grants; no authorization_code, as there is no browser
            # login (`authorization_endpoint`, which discovery requires, answers an error).
            "grant_types_supported": ["client_credentials", "password", "refresh_token"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["HS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "scopes_supported": ["openid", "offline_access", "profile", "email"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "preferred_username", "email"],
        }
    )


async def _certs(request: web.Request) -> web.StreamResponse:
    del request
    return _json({"keys": []})


async def _browser_login(request: web.Request) -> web.StreamResponse:
    del request
    return _oauth_error(
        AuthProblem("invalid_request", "The emulator has no browser login; use the token endpoint")
    )


async def _token(request: web.Request) -> web.StreamResponse:
    state = request.app[BIMPLUS_KEY]
    posted = await request.post()
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    basic = basic_credentials(request.headers.get("Authorization"))
    request[_ENTRY].client_id = basic[0] if basic else form.get("client_id")
    granted = state.oidc_grant(form, basic, state.clock(), issuer=_origin(request) + REALM_PREFIX)
    if isinstance(granted, AuthProblem):
        return _oauth_error(granted)
    body: dict[str, Any] = {
        "access_token": granted.access_token,
        "expires_in": state.options.token_lifetime_seconds,
        "refresh_expires_in": granted.refresh_expires_in,
    }
    if granted.refresh_token is not None:
        body["refresh_token"] = granted.refresh_token
    body.update(
        {
            "token_type": "Bearer",
            "id_token": granted.id_token,
            "not-before-policy": 0,
            "scope": granted.scope,
        }
    )
    return _json(body)


async def _revoke(request: web.Request) -> web.StreamResponse:
    """RFC 7009 token revocation: 200 with an empty body, whether the token was live or not."""
    state = request.app[BIMPLUS_KEY]
    posted = await request.post()
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    basic = basic_credentials(request.headers.get("Authorization"))
    request[_ENTRY].client_id = basic[0] if basic else form.get("client_id")
    problem = state.revoke(form, basic)
    return web.Response(status=200) if problem is None else _oauth_error(problem)


async def _userinfo(request: web.Request) -> web.StreamResponse:
    """OIDC UserInfo (GET or POST) for an OIDC access token; Keycloak's 401 otherwise."""
    state = request.app[BIMPLUS_KEY]
    claims = state.userinfo(request.headers.get("Authorization"), state.clock())
    if isinstance(claims, str):
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{claims}"'
        return _json(
            {"error": "invalid_token", "error_description": claims},
            401,
            {"WWW-Authenticate": challenge},
        )
    request[_ENTRY].client_id = claims["sub"]
    return _json(claims)


async def _authorize(request: web.Request) -> web.StreamResponse:
    state = request.app[BIMPLUS_KEY]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return _oauth_error(AuthProblem("invalid_request", "The body must be a JSON object"))
    if isinstance(body.get("user_id"), str):
        request[_ENTRY].client_id = body["user_id"]
    granted = state.legacy_authorize(body, state.clock())
    if isinstance(granted, AuthProblem):
        return _oauth_error(granted)
    token, issued, lifetime = granted
    return _json(
        {
            "access_token": token,
            "expires_in": lifetime,
            "client_id": issued.client_id,
            "token_type": "BimPlus",
        }
    )


# -- the API ------------------------------------------------------------------------------


def _team(request: web.Request) -> Team | web.Response:
    state = request.app[BIMPLUS_KEY]
    slug = request.match_info["team"]
    team = state.teams.get(slug)
    if team is None:
        return _error(404, f"Team '{slug}' not found")
    if not team.member:
        return _error(403, f"The user is not a member of team '{slug}'")
    return team


def _project(request: web.Request) -> Project | web.Response:
    team = _team(request)
    if isinstance(team, web.Response):
        return team
    project = request.app[BIMPLUS_KEY].projects.get(request.match_info["project"])
    if project is None or project.team != team.slug:
        return _error(404, f"Project '{request.match_info['project']}' not found")
    return project


async def _teams(request: web.Request) -> web.StreamResponse:
    state = request.app[BIMPLUS_KEY]
    return _json([t.to_json() for t in state.teams.values() if t.member])


async def _one_team(request: web.Request) -> web.StreamResponse:
    team = _team(request)
    return team if isinstance(team, web.Response) else _json(team.to_json())


async def _projects(request: web.Request) -> web.StreamResponse:
    state = request.app[BIMPLUS_KEY]
    team = _team(request)
    if isinstance(team, web.Response):
        return team
    return _json([state.project_json(p) for p in state.team_projects(team.slug)])


async def _one_project(request: web.Request) -> web.StreamResponse:
    project = _project(request)
    if isinstance(project, web.Response):
        return project
    return _json(request.app[BIMPLUS_KEY].project_json(project))


async def _topology(request: web.Request) -> web.StreamResponse:
    project = _project(request)
    return project if isinstance(project, web.Response) else _json(project.tree())


async def _object(request: web.Request) -> web.StreamResponse:
    state = request.app[BIMPLUS_KEY]
    team = _team(request)
    if isinstance(team, web.Response):
        return team
    object_id = request.match_info["object"]
    for project in state.team_projects(team.slug):
        node = project.nodes.get(object_id)
        if node is not None:
            children = [project.nodes[c] for c in node.children]
            return _json(
                {
                    "id": node.id, "name": node.name, "type": node.type, "parent": node.parent,
                    "attributes": node.attributes,
                    "children": [{"id": c.id, "name": c.name, "type": c.type} for c in children],
                }
            )  # fmt: skip
    return _error(404, f"Object '{object_id}' not found")


# -- admin API ------------------------------------------------------------------------------


class _BadRequest(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{name} must be a non-empty string")
    return value


def _admin(handler: Callable[[web.Request, BimplusState], Any]) -> Handler:
    """An admin handler: its `_BadRequest` becomes 400, a missing project or node 404."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[BIMPLUS_KEY]
        try:
            result = await handler(request, state)
        except _BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        except KeyError as exc:
            return _json({"error": f"not found: {exc.args[0]}"}, 404)
        return result if isinstance(result, web.StreamResponse) else _json(result)

    return wrapped


async def _admin_health(request: web.Request, state: BimplusState) -> Any:
    del request
    now = state.clock()
    return {
        "status": "ok", "time": state.iso(now), "fault_profile": state.faults.active(now).profile,
        "teams": len(state.teams), "projects": len(state.projects),
    }  # fmt: skip


async def _admin_data(request: web.Request, state: BimplusState) -> Any:
    del request
    return {
        "teams": [{**t.to_json(), "member": t.member} for t in state.teams.values()],
        "projects": [
            {**state.project_json(p), "topology": p.tree(),
             "nodes": {n.id: n.attributes for n in p.nodes.values()}}
            for p in state.projects.values()
        ],
    }  # fmt: skip


async def _admin_add_team(request: web.Request, state: BimplusState) -> Any:
    data = await _body(request)
    slug = _text(data, "slug", required=True)
    assert slug is not None  # noqa: S101 - required above
    member = data.get("member", True)
    if not isinstance(member, bool):
        raise _BadRequest("member must be true or false")
    team = Team(state.new_id(), slug, _text(data, "name") or slug, member=member)
    state.teams[slug] = team
    return {**team.to_json(), "member": team.member}


async def _admin_add_project(request: web.Request, state: BimplusState) -> Any:
    data = await _body(request)
    team = _text(data, "team") or DEMO_TEAM
    if team not in state.teams:
        raise _BadRequest(f"unknown team {team!r}")
    project = state.add_project(
        team, _text(data, "name", required=True) or "", short_descr=_text(data, "shortDescr"),
        address=_text(data, "address"), project_id=_text(data, "id"),
    )  # fmt: skip
    return state.project_json(project)


async def _admin_change_project(request: web.Request, state: BimplusState) -> Any:
    project = state.projects[request.match_info["project"]]
    if request.method == "DELETE":
        del state.projects[project.id]
        return {"deleted": project.id}
    data = await _body(request)
    if "name" in data:
        project.name = _text(data, "name", required=True) or project.name
        project.nodes[project.id].name = project.name
    if "shortDescr" in data:
        project.short_descr = _text(data, "shortDescr")
    if "address" in data:
        project.address = _text(data, "address")
    state.bump(project)
    return state.project_json(project)


async def _admin_touch(request: web.Request, state: BimplusState) -> Any:
    project = state.projects[request.match_info["project"]]
    state.bump(project)
    return state.project_json(project)


def _bump(state: BimplusState, project: Project, data: dict[str, Any]) -> None:
    bump = data.get("bump", True)
    if not isinstance(bump, bool):
        raise _BadRequest("bump must be true or false")
    if bump:
        state.bump(project)


def _attributes(data: dict[str, Any]) -> dict[str, Any] | None:
    attributes = data.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise _BadRequest("attributes must be a JSON object")
    return attributes


async def _admin_add_node(request: web.Request, state: BimplusState) -> Any:
    project = state.projects[request.match_info["project"]]
    data = await _body(request)
    parent = _text(data, "parent") or project.id
    if parent not in project.nodes:
        raise _BadRequest(f"unknown parent node {parent!r}")
    node = state.add_node(
        project, parent, _text(data, "type", required=True) or "",
        _text(data, "name", required=True) or "", node_id=_text(data, "id"),
        attributes=_attributes(data),
    )  # fmt: skip
    _bump(state, project, data)
    return {"id": node.id, "project": state.project_json(project)}


async def _admin_change_node(request: web.Request, state: BimplusState) -> Any:
    project = state.projects[request.match_info["project"]]
    node = project.nodes[request.match_info["node"]]
    data = await _body(request)
    if request.method == "DELETE":
        if node.parent is None:
            raise _BadRequest("the root node goes with its project")
        removed = project.remove(node.id)
        _bump(state, project, data)
        return {"removed": removed, "project": state.project_json(project)}
    node.name = _text(data, "name") or node.name
    node.type = _text(data, "type") or node.type
    attributes = _attributes(data)
    if attributes is not None:
        node.attributes = attributes
    _bump(state, project, data)
    return {"id": node.id, "project": state.project_json(project)}


# -- the application --------------------------------------------------------------------------


def create_app(
    options: BimplusOptions | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[BIMPLUS_KEY]`.

    `clock` (seconds, monotonic) drives token expiry, rate windows, `created`/`changed` and
    fault durations, so tests move time instead of sleeping.
    """
    options = options or BimplusOptions()
    app = web.Application(middlewares=[_front_door])
    app[BIMPLUS_KEY] = BimplusState(options, clock)
    router = app.router
    router.add_get(DISCOVERY_PATH, _discovery)
    router.add_get(f"{REALM_PREFIX}/.well-known/openid-configuration", _discovery)
    router.add_post(f"{OIDC_PREFIX}/token", _token)
    router.add_get(f"{OIDC_PREFIX}/certs", _certs)
    router.add_get(f"{OIDC_PREFIX}/userinfo", _userinfo)
    router.add_post(f"{OIDC_PREFIX}/revoke", _revoke)
    router.add_post(f"{OIDC_PREFIX}/userinfo", _userinfo)
    router.add_get(f"{OIDC_PREFIX}/auth", _browser_login)
    router.add_post(AUTHORIZE_PATH, _authorize)
    router.add_get(f"{API_PREFIX}/teams", _teams)
    router.add_get(API_PREFIX + "/teams/{team}", _one_team)
    router.add_get(API_PREFIX + "/{team}/projects", _projects)
    router.add_get(API_PREFIX + "/{team}/projects/{project}", _one_project)
    router.add_get(API_PREFIX + "/{team}/projects/{project}/topology", _topology)
    router.add_get(API_PREFIX + "/{team}/objects/{object}", _object)
    admin = ADMIN_PREFIX
    router.add_get(f"{admin}/health", _admin(_admin_health))
    common.add_admin_routes(router, admin, BIMPLUS_KEY)  # requests, faults, reset
    router.add_get(f"{admin}/data", _admin(_admin_data))
    router.add_post(f"{admin}/teams", _admin(_admin_add_team))
    router.add_post(f"{admin}/projects", _admin(_admin_add_project))
    project = admin + "/projects/{project}"
    router.add_patch(project, _admin(_admin_change_project))
    router.add_delete(project, _admin(_admin_change_project))
    router.add_post(f"{project}/touch", _admin(_admin_touch))
    router.add_post(f"{project}/nodes", _admin(_admin_add_node))
    router.add_patch(project + "/nodes/{node}", _admin(_admin_change_node))
    router.add_delete(project + "/nodes/{node}", _admin(_admin_change_node))
    return app


# -- command line -----------------------------------------------------------------------------


# What `emulate bimplus` shows and takes (`common.Emulator`).
SUMMARY = "the Bimplus API v2, its Keycloak-style OIDC server and its legacy login"
RATE_BUDGET = "per user or client"
DEFAULTS = BimplusOptions()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only `emulate bimplus` has (`common.add_shared_arguments` adds the rest; its
    --token-lifetime is that of OIDC tokens)."""
    defaults = DEFAULTS
    group = parser.add_argument_group("Bimplus")
    group.add_argument(
        "--projects",
        type=int,
        default=defaults.projects,
        metavar="N",
        help=f"demo projects in the demo team (default: {defaults.projects})",
    )
    group.add_argument(
        "--refresh-token-lifetime",
        type=int,
        default=defaults.refresh_token_lifetime_seconds,
        metavar="SECONDS",
        help="lifetime of refresh tokens of the password grant; offline ones (scope "
        f"offline_access) last 30 days (default: {defaults.refresh_token_lifetime_seconds})",
    )
    group.add_argument(
        "--legacy-lifetime",
        type=int,
        default=defaults.legacy_lifetime_seconds,
        metavar="SECONDS",
        help="lifetime of tokens from POST /v2/authorize "
        f"(default: {defaults.legacy_lifetime_seconds})",
    )


def options_from_args(args: argparse.Namespace) -> BimplusOptions:
    """BimplusOptions from parsed arguments; ConfigError says what is wrong."""
    with bad_options():
        return BimplusOptions(
            **shared_options(args),
            legacy_lifetime_seconds=args.legacy_lifetime,
            refresh_token_lifetime_seconds=args.refresh_token_lifetime,
            projects=args.projects,
        )


def _announcement(options: BimplusOptions, host: str, port: int) -> str:
    del options
    root = root_url(host, port)
    return (
        f"Bimplus emulator listening on {host}:{port} | base URL {root}{API_PREFIX} | "
        f"discovery {root}{DISCOVERY_PATH} | team {DEMO_TEAM} | OIDC client_id="
        f"{DEMO_CLIENT_ID} client_secret={DEMO_CLIENT_SECRET} | legacy user {DEMO_USER} "
        f"password {DEMO_PASSWORD} application_id {DEMO_APPLICATION_ID}"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve on args.host:args.port until SIGINT/SIGTERM; the exit code (2: bad options)."""
    return common.run_from_args(args, options_from_args, create_app, _announcement)
