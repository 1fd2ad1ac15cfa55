"""The state of one emulated Bimplus installation: users, teams, projects, topology, tokens.

Owns `BimplusOptions` (validated once), the data of the emulated tenants (teams, their projects
and each project's topology tree), the OIDC (Keycloak) and legacy (`POST /v2/authorize`)
credential checks with the tokens they issue (OIDC: JWT access and ID tokens, refresh tokens
and their grant, revocation, userinfo), and `BimplusState`, which ties them to the rate
limiter, fault injector and request log reused from the BuildingMinds emulator
(`buildingminds_auth.RateLimiter`, `faults.FaultInjector`,
`buildingminds_state.LogEntry`). Reachable as `app[BIMPLUS_KEY]`.

Must not: know about HTTP (problems are returned as `AuthProblem` values the HTTP layer turns
into Keycloak's error JSON), read the clock itself (methods take `now`), or print a secret.
"""

from __future__ import annotations

import hmac
import random
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from connector.logs import get_logger
from twin_emulators.faults import FaultInjector, FaultSettings
from twin_emulators.jwt import JwtSigner
from twin_emulators.limits import RateLimiter
from twin_emulators.requestlog import REQUEST_LOG_SIZE, LogEntry

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "BIMPLUS_KEY",
    "DEMO_APPLICATION_ID",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_PASSWORD",
    "DEMO_TEAM",
    "DEMO_USER",
    "PUBLIC_CLIENT_ID",
    "REALM",
    "AuthProblem",
    "BimplusOptions",
    "BimplusState",
    "Issued",
    "Node",
    "OidcTokens",
    "Project",
    "Team",
]

log = get_logger(__name__)

REALM: Final = "bimplus"
DEMO_USER: Final = "demo@bimplus.net"
DEMO_PASSWORD: Final = "demo-password"  # noqa: S105 - the documented demo credential of a local emulator
DEMO_CLIENT_ID: Final = "demo-client"
DEMO_CLIENT_SECRET: Final = "demo-secret"  # noqa: S105 - the same
PUBLIC_CLIENT_ID: Final = "bimplus-web"  # a browser client: no secret, no service account
DEMO_APPLICATION_ID: Final = "6C12345D9B0C4F3C23ABB5721D098F7B"  # the seed's example
DEMO_TEAM: Final = "bimplus-demo"

LEGACY_LIFETIME: Final = 7200  # 2 h, the authorization service's default validity
REMEMBER_ME_LIFETIME: Final = 28 * 24 * 3600  # "about 4 weeks"
OFFLINE_SCOPE: Final = "offline_access"
OFFLINE_LIFETIME: Final = 30 * 24 * 3600  # Keycloak's default offline session idle time


@dataclass(frozen=True)
class BimplusOptions:
    """Everything that shapes one emulator instance. Raises ValueError on nonsense values."""

    # Bimplus documents no rate limit; the emulator's is inferred.
    rate_limit_requests: int = 100
    rate_limit_seconds: float = 60.0
    token_lifetime_seconds: int = 300  # Keycloak's default access-token lifespan
    refresh_token_lifetime_seconds: int = 1800  # Keycloak's default SSO session idle time
    legacy_lifetime_seconds: int = LEGACY_LIFETIME
    projects: int = 2  # demo projects generated in the demo team
    fault_profile: str = "none"
    fault_rate: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate_limit_requests <= 0 or self.rate_limit_seconds <= 0:
            raise ValueError("the rate limit needs positive requests and seconds")
        lifetimes = (
            self.token_lifetime_seconds,
            self.legacy_lifetime_seconds,
            self.refresh_token_lifetime_seconds,
        )
        if min(lifetimes) <= 0:
            raise ValueError("token lifetimes must be positive")
        if self.projects < 0:
            raise ValueError("projects must not be negative")
        self.fault_settings()  # validates profile and rate

    def fault_settings(self) -> FaultSettings:
        return FaultSettings(profile=self.fault_profile, rate=self.fault_rate)


# -- data -------------------------------------------------------------------------------------


@dataclass
class Team:
    id: str
    slug: str
    name: str
    member: bool = True  # False: exists, but the demo user may not see it (403)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "slug": self.slug, "name": self.name, "owner": None,
            "totalStorage": 0, "storageStats": None, "status": "Active",
            "dataStorageStatus": "Online",
        }  # fmt: skip


@dataclass
class Node:
    """One topology node. `children` keeps their order; `parent` is None for the root."""

    id: str
    name: str
    type: str
    parent: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class Project:
    """A project with its topology: `nodes[id]` is the root (type `Project`)."""

    id: str
    team: str
    name: str
    short_descr: str | None
    address: str | None
    created: float
    changed: float | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    def tree(self, node_id: str | None = None) -> dict[str, Any]:
        """The topology as the emulated Project Service returns it: nested nodes."""
        node = self.nodes[node_id or self.id]
        return {
            "id": node.id, "name": node.name, "type": node.type, "parent": node.parent,
            "children": [self.tree(child) for child in node.children],
        }  # fmt: skip

    def remove(self, node_id: str) -> int:
        """Delete a node and its subtree; the number of nodes removed."""
        node = self.nodes.pop(node_id)
        if node.parent is not None and node.parent in self.nodes:
            self.nodes[node.parent].children.remove(node_id)
        return 1 + sum(self.remove(child) for child in list(node.children))


# -- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthProblem:
    """A refused token or authorize request: the `error` code, its text and the status."""

    error: str
    description: str
    status: int = 400


@dataclass(frozen=True, slots=True)
class Issued:
    """What a token stands for. `key` is the rate-limit key (client or user)."""

    kind: Literal["oidc", "legacy"]
    subject: str
    client_id: str
    expires_at: float
    serial: int

    @property
    def key(self) -> str:
        return self.subject


@dataclass(frozen=True, slots=True)
class _Refresh:
    """What a refresh token stands for; `offline` for one issued for `offline_access`."""

    subject: str
    client_id: str
    scope: str
    offline: bool
    expires_at: float
    serial: int


@dataclass(frozen=True, slots=True)
class OidcTokens:
    """A granted OIDC token request: the tokens (refresh token None when the grant gives none),
    what the access token stands for, and the numbers of Keycloak's token response."""

    access_token: str = field(repr=False)
    id_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    refresh_expires_in: int  # 0: no refresh token, or an offline one (no fixed end)
    issued: Issued
    scope: str


@dataclass(frozen=True, slots=True)
class _Client:
    client_id: str
    secret: str | None  # None: a public client
    service_account: bool
    direct_access: bool


_CLIENTS: Final = {
    c.client_id: c
    for c in (
        _Client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, service_account=True, direct_access=True),
        _Client(PUBLIC_CLIENT_ID, None, service_account=False, direct_access=True),
    )
}
_USERS: Final = {DEMO_USER: DEMO_PASSWORD}
_APPLICATIONS: Final = frozenset({DEMO_APPLICATION_ID})

_INVALID_CLIENT = AuthProblem("invalid_client", "Invalid client or Invalid client credentials", 401)
_INVALID_USER = AuthProblem("invalid_grant", "Invalid user credentials", 401)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


# -- the state --------------------------------------------------------------------------------


@dataclass
class BimplusState:
    """The emulated installation. Every method that depends on time takes `now` (clock)."""

    options: BimplusOptions
    clock: Callable[[], float]
    teams: dict[str, Team] = field(init=False)
    projects: dict[str, Project] = field(init=False)
    limiter: RateLimiter = field(init=False)
    faults: FaultInjector = field(init=False)
    requests: deque[LogEntry] = field(init=False)
    _tokens: dict[str, Issued] = field(init=False)
    _refresh: dict[str, _Refresh] = field(init=False)
    _legacy_sessions: dict[tuple[str, str], str] = field(init=False)
    _serial: int = field(init=False, default=0)
    _signer: JwtSigner = field(init=False)
    _epoch: float = field(init=False)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        options = self.options
        self._epoch = time.time() - self.clock()
        self._signer = JwtSigner()
        # Reproducible demo data, not security: a seeded PRNG is the point.
        self._rng = random.Random(options.seed)  # noqa: S311
        self.limiter = RateLimiter(options.rate_limit_requests, options.rate_limit_seconds)
        self.faults = FaultInjector(options.fault_settings(), seed=options.seed, now=self.clock())
        self.requests = deque(maxlen=REQUEST_LOG_SIZE)
        self._tokens, self._refresh, self._legacy_sessions = {}, {}, {}
        self.teams = {DEMO_TEAM: Team(self.new_id(), DEMO_TEAM, "Bimplus Demo")}
        self.projects = {}
        for index in range(1, options.projects + 1):
            self.add_demo_project(DEMO_TEAM, index)

    # -- time and identifiers
    def iso(self, at: float) -> str:
        """Bimplus's timestamp format: local-looking ISO-8601 without a zone (UTC here)."""
        return datetime.fromtimestamp(self._epoch + at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")

    def wall(self, at: float) -> int:
        return int(self._epoch + at)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    # -- data
    def add_project(
        self, team: str, name: str, *, short_descr: str | None = None,
        address: str | None = None, project_id: str | None = None,
    ) -> Project:  # fmt: skip
        """A new project with an empty topology (the root node only); `changed` is None, as
        the Project Service returns it for a project never modified."""
        pid = project_id or self.new_id()
        project = Project(pid, team, name, short_descr, address, created=self.clock())
        project.nodes[pid] = Node(pid, name, "Project", None)
        self.projects[pid] = project
        return project

    def add_node(
        self, project: Project, parent: str, node_type: str, name: str,
        *, node_id: str | None = None, attributes: dict[str, Any] | None = None,
    ) -> Node:  # fmt: skip
        node = Node(node_id or self.new_id(), name, node_type, parent, dict(attributes or {}))
        project.nodes[node.id] = node
        project.nodes[parent].children.append(node.id)
        return node

    def add_demo_project(self, team: str, index: int) -> Project:
        """Project `index`: one site, one building, two storeys with two rooms each, and a wall
        (a node of a type the connector does not map)."""
        project = self.add_project(
            team, f"Demo project {index}", short_descr=f"Emulated project number {index}",
            address=f"Hauptstrasse {index}, 8033{index % 10} Muenchen",
        )  # fmt: skip
        site = self.add_node(project, project.id, "IfcSite", f"Site {index}")
        building = self.add_node(project, site.id, "IfcBuilding", f"Building {index}")
        for level in range(2):
            storey = self.add_node(
                project, building.id, "IfcBuildingStorey", f"Level {level}",
                attributes={"elevation": 3.0 * level},
            )  # fmt: skip
            for room in range(1, 3):
                self.add_node(
                    project, storey.id, "IfcSpace", f"Room {level}.{room:02d}",
                    attributes={"area": 20.0 + room},
                )  # fmt: skip
            self.add_node(project, storey.id, "IfcWall", f"Wall {level}")
        return project

    def bump(self, project: Project) -> None:
        """Mark a project changed now; strictly later than before even on a frozen clock, since
        `changed` has whole-second resolution."""
        before = project.created if project.changed is None else project.changed
        project.changed = max(self.clock(), before + 1.0)

    def team_projects(self, team: str) -> list[Project]:
        return [p for p in self.projects.values() if p.team == team]

    def project_json(self, project: Project) -> dict[str, Any]:
        team = self.teams[project.team]
        return {
            "id": project.id, "name": project.name, "shortDescr": project.short_descr,
            "address": project.address, "thumbnail": None,
            "created": self.iso(project.created),
            "changed": None if project.changed is None else self.iso(project.changed),
            "teamSlug": team.slug, "teamName": team.name, "disciplines": None,
        }  # fmt: skip

    # -- the OIDC server, Keycloak style
    def oidc_grant(
        self, form: Mapping[str, str], basic: tuple[str, str] | None, now: float, *, issuer: str
    ) -> OidcTokens | AuthProblem:
        """Check a token request as Keycloak does (client first, then the grant); the tokens.

        `client_credentials` gives no refresh token (Keycloak's default, and RFC 6749 §4.4.3);
        `password` gives one, an offline one when the scope asks for `offline_access`;
        `refresh_token` gives new tokens for a refresh token of the same client, which stays
        usable until it expires (Keycloak's default: refresh tokens are not revoked on use).
        """
        grant_type = form.get("grant_type")
        if not grant_type:
            return AuthProblem("invalid_request", "Missing form parameter: grant_type")
        client_id = basic[0] if basic else form.get("client_id")
        secret = basic[1] if basic else form.get("client_secret")
        client = _CLIENTS.get(client_id or "")
        if client is None or (client.secret is not None and not _same(secret, client.secret)):
            return _INVALID_CLIENT
        if grant_type == "refresh_token":
            return self._use_refresh(form, client, now, issuer)
        subject = self._subject(client, grant_type, form)
        if isinstance(subject, AuthProblem):
            return subject
        scope = " ".join(dict.fromkeys(["openid", *form.get("scope", "").split()]))
        refresh = None
        if grant_type == "password":
            refresh = (OFFLINE_SCOPE in scope.split(), scope)
        return self._tokens_for(subject, client.client_id, scope, refresh, now=now, issuer=issuer)

    @staticmethod
    def _subject(client: _Client, grant_type: str, form: Mapping[str, str]) -> str | AuthProblem:
        """Whom a grant of an authenticated client stands for, or why the grant is refused."""
        if grant_type == "client_credentials":
            if not client.service_account:
                return AuthProblem(
                    "unauthorized_client", "Client not enabled to retrieve service account"
                )
            return f"service-account-{client.client_id}"
        if grant_type == "password":
            if not client.direct_access:
                return AuthProblem("unauthorized_client", "Client not allowed for direct access")
            user = form.get("username", "")
            if user not in _USERS or not _same(form.get("password"), _USERS[user]):
                return _INVALID_USER
            return user
        return AuthProblem("unsupported_grant_type", "Unsupported grant_type")

    def _use_refresh(
        self, form: Mapping[str, str], client: _Client, now: float, issuer: str
    ) -> OidcTokens | AuthProblem:
        handle = form.get("refresh_token")
        if not handle:
            return AuthProblem("invalid_request", "Missing parameter: refresh_token")
        grant = self._refresh.get(handle)
        if grant is None:
            return AuthProblem("invalid_grant", "Invalid refresh token")
        if grant.client_id != client.client_id:
            return AuthProblem(
                "invalid_grant", "Invalid refresh token. Token client and authorized client "
                "don't match",
            )  # fmt: skip
        if now >= grant.expires_at or self.faults.token_revoked(grant.serial, now):
            return AuthProblem("invalid_grant", "Token is not active")
        refresh = (grant.offline, grant.scope)
        return self._tokens_for(
            grant.subject, grant.client_id, grant.scope, refresh, now=now, issuer=issuer
        )

    def _tokens_for(
        self, subject: str, client_id: str, scope: str, refresh: tuple[bool, str] | None,
        *, now: float, issuer: str,
    ) -> OidcTokens:  # fmt: skip
        """Access and ID token, and a refresh token when `refresh` is (offline, scope)."""
        lifetime = self.options.token_lifetime_seconds
        issued = self._issue("oidc", subject, client_id, lifetime, now)
        access = self._jwt(issued, scope, issuer)
        self._tokens[access] = issued
        id_token = self._signer.sign(
            {**self._times(now, lifetime), "iss": issuer, "aud": client_id, "sub": subject,
             "typ": "ID", "azp": client_id}
        )  # fmt: skip
        handle, refresh_expires_in = None, 0
        if refresh is not None:
            offline, granted = refresh
            span = OFFLINE_LIFETIME if offline else self.options.refresh_token_lifetime_seconds
            handle = secrets.token_urlsafe(32)
            self._refresh[handle] = _Refresh(
                subject, client_id, granted, offline, now + span, issued.serial
            )
            refresh_expires_in = 0 if offline else span
        return OidcTokens(access, id_token, handle, refresh_expires_in, issued, scope)

    def _issue(
        self, kind: Literal["oidc", "legacy"], subject: str, client_id: str, lifetime: int,
        now: float,
    ) -> Issued:  # fmt: skip
        self._drop_expired(now)
        issued = Issued(kind, subject, client_id, now + lifetime, self._serial)
        self._serial += 1
        return issued

    def _times(self, now: float, lifetime: int) -> dict[str, int]:
        return {"exp": self.wall(now + lifetime), "iat": self.wall(now)}

    def _jwt(self, issued: Issued, scope: str, issuer: str) -> str:
        """A JWT access token (HS256 with the emulator's own key)."""
        lifetime = self.options.token_lifetime_seconds
        return self._signer.sign(
            {**self._times(issued.expires_at - lifetime, lifetime), "jti": str(uuid.uuid4()),
             "iss": issuer, "aud": "account", "sub": issued.subject, "typ": "Bearer",
             "azp": issued.client_id, "scope": scope}
        )  # fmt: skip

    def revoke(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> AuthProblem | None:
        """RFC 7009 revocation of an access or refresh token of the authenticated client; None
        when done. A token unknown, expired or another client's is no error (RFC 7009 §2.2),
        and stays as it was."""
        client_id = basic[0] if basic else form.get("client_id")
        secret = basic[1] if basic else form.get("client_secret")
        client = _CLIENTS.get(client_id or "")
        if client is None or (client.secret is not None and not _same(secret, client.secret)):
            return _INVALID_CLIENT
        token = form.get("token")
        if not token:
            return AuthProblem("invalid_request", "Missing token parameter")
        refresh = self._refresh.get(token)
        if refresh is not None and refresh.client_id == client.client_id:
            del self._refresh[token]
        access = self._tokens.get(token)
        if access is not None and access.kind == "oidc" and access.client_id == client.client_id:
            del self._tokens[token]
        return None

    def userinfo(self, authorization: str | None, now: float) -> dict[str, str] | str:
        """The claims of `GET|POST .../userinfo` for an OIDC access token, or why not."""
        scheme, _, value = (authorization or "").partition(" ")
        issued = self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if issued is None or issued.kind != "oidc" or now >= issued.expires_at:
            return "Token verification failed"
        claims = {"sub": issued.subject, "preferred_username": issued.subject}
        if issued.subject in _USERS:
            claims["email"] = issued.subject  # the demo users sign in with their email address
        return claims

    # -- the legacy authorization service
    def legacy_authorize(
        self, body: Mapping[str, Any], now: float
    ) -> tuple[str, Issued, int] | AuthProblem:
        """The obsolete authorization service: token, what it stands for, and its lifetime.

        A request with a `client_id` regenerates that client's token (the earlier one stops
        working); one without opens a new client session (inferred from the seed's advice to
        "use the client_id ... for having the possibility to login multiple times").
        """
        for name in ("user_id", "password", "application_id"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                return AuthProblem("invalid_request", f"'{name}' is mandatory", 400)
        if body["application_id"] not in _APPLICATIONS:
            return AuthProblem(
                "invalid_client", f"Unknown application_id '{body['application_id']}'", 400
            )
        user = body["user_id"]
        if user not in _USERS or not _same(body["password"], _USERS[user]):
            return AuthProblem("invalid_grant", "Invalid user name or password", 401)
        given = body.get("client_id")
        client_id = given if isinstance(given, str) and given else str(uuid.uuid4()).upper()
        lifetime = (
            REMEMBER_ME_LIFETIME if body.get("remember_me") is True
            else self.options.legacy_lifetime_seconds
        )  # fmt: skip
        issued = self._issue("legacy", user, client_id, lifetime, now)
        token = secrets.token_hex(16)
        earlier = self._legacy_sessions.get((user, client_id))
        if earlier is not None:
            self._tokens.pop(earlier, None)
        self._legacy_sessions[(user, client_id)] = token
        self._tokens[token] = issued
        return token, issued, lifetime

    def resolve(self, authorization: str | None, now: float) -> Issued | str:
        """The token behind an Authorization header, or why it is refused. OIDC tokens go with
        `Bearer`, legacy ones with `BimPlus` (inferred: each scheme accepts only its own)."""
        if not authorization:
            return "Authorization header missing"
        scheme, _, value = authorization.partition(" ")
        issued = self._tokens.get(value.strip())
        if issued is None:
            return "Invalid or revoked access token"
        expected = "bearer" if issued.kind == "oidc" else "bimplus"
        if scheme.lower() != expected:
            return f"Wrong authorization scheme {scheme!r}; use {expected.title()} <token>"
        if now >= issued.expires_at:
            return "Access token expired"
        return issued  # the front door checks the revoked-tokens fault

    def _drop_expired(self, now: float) -> None:
        for store in (self._tokens, self._refresh):
            expired = [t for t, info in store.items() if now >= info.expires_at]
            for token in expired:
                del store[token]

    # -- faults and reset
    def set_faults(self, settings: FaultSettings) -> None:
        self.faults.configure(settings, now=self.clock(), token_serial=self._serial)
        log.info("fault profile switched", extra={"profile": settings.profile})

    def reset(self) -> None:
        """Forget the request log and rate windows; back to the configured faults. Data and
        issued tokens stay."""
        self.limiter.reset()
        self.requests.clear()
        self.set_faults(self.options.fault_settings())


BIMPLUS_KEY: Final = web.AppKey("bimplus_emulator", BimplusState)
