"""Bimplus (Allplan) read as a polling source: projects and their topology as BuildingMinds
Sites, Buildings, Floors and Spaces (docs/bimplus.md).

Owns talking to the Bimplus API v2: finding the token endpoint by OIDC discovery, the two
kinds of credential (OIDC client credentials or password grant, and the obsolete
`POST /v2/authorize` with its `BimPlus <token>` scheme), choosing the team, and turning
projects and topology nodes into `Item`s. Tokens come from `connector.auth.TokenProvider`
(single-flight renewal) and are put on each request by `BearerAuth`, as a per-request
middleware on the plain session the app gives us.

What one snapshot reads: `GET /teams` once per process, `GET /{team}/projects` every poll,
and `GET /{team}/projects/{id}/topology` only for a project whose `changed` (or `created`,
for a project never changed) differs from the poll that last read it; the items of the other
projects are reused from memory. The `Poller` then publishes only what differs.

Mapping (all IDs `bimplus:<GUID>`, 44 characters; see `external_id`):
    project                  -> Address `bimplus:addr:<GUID>` + Site `bimplus:<GUID>`
    IfcBuilding node         -> Building (siteId: its project's Site)
    IfcBuildingStorey node   -> Floor (buildingId: the nearest Building above it)
    IfcSpace node            -> Space (floorId: the nearest Floor above it)
Other nodes (IfcSite, walls, divisions) are walked through, not mapped.

Errors: a credential or configuration a human must fix raises `CredentialsRejected` or
`EndpointMisconfigured` (a wrong discovery URL, unknown or ambiguous team); network failures,
5xx, 401 after renewal and 429 raise the retriable `ServerError`, `Unauthorized` and
`RateLimited`. A snapshot is complete or raises.

Every request (discovery, token, API) goes through `connector.http.send`: no redirects, a
capped body, transport errors mapped once.

Must not: log a token, a password or a record's content; re-read a topology that did not change.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import hdrs

from connector.auth import BearerAuth, ClientCredentials, TokenProvider, auth_error
from connector.entities import ENTITIES
from connector.errors import (
    ApiError,
    CredentialsRejected,
    EndpointMisconfigured,
    InvalidResponse,
    RateLimited,
    ServerError,
    TokenEndpointUnavailable,
    Unauthorized,
)
from connector.http import StatusTable, send
from connector.logs import get_logger, redact
from connector.sources.base import Item

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import SecretStr

    from connector.auth import Grant
    from connector.ratelimit import Clock
    from connector.sources.bimplus.settings import BimplusSourceSettings

__all__ = [
    "BimplusSource",
    "LegacyGrant",
    "PasswordGrant",
    "external_id",
    "map_project",
    "map_topology",
]

log = get_logger(__name__)

PREFIX: Final = "bimplus:"
ADDRESS_PREFIX: Final = "bimplus:addr:"
ID_MAX: Final = 50
SITE_NAME_MAX: Final = 50
NAME_MAX: Final = 200
OPEN_END: Final = "9999-12-31T23:59:59Z"  # Floor.validUntil: mandatory, unknown in Bimplus
EPOCH: Final = "1970-01-01T00:00:00Z"  # validFrom when a project has no `created`
MAX_RETRY_AFTER: Final = 300.0

_BUILDING = frozenset({"ifcbuilding", "building"})
_STOREY = frozenset({"ifcbuildingstorey", "buildingstorey", "storey", "floor"})
_SPACE = frozenset({"ifcspace", "space", "room"})
_POSTCODE = re.compile(r"^[\d\s-]+")

STATUSES: Final = StatusTable(
    {401: Unauthorized, 403: EndpointMisconfigured, 404: EndpointMisconfigured, 429: RateLimited},
    client=ServerError,
    retry_after=60.0,
)
"""The API's failure statuses; any other failure is a `ServerError` (retried next poll)."""


# -- credentials ------------------------------------------------------------------------------


@dataclass
class LegacyGrant:
    """The obsolete Bimplus authorization service: `POST /v2/authorize` with a JSON body.

    The first answer's `client_id` is sent with every later request, as the documentation
    advises, so a renewal regenerates this client's token instead of opening a new session.
    """

    token_url: str
    username: str
    password: SecretStr
    application_id: str
    scheme: str = "BimPlus"
    as_json: bool = True
    session_client_id: str | None = field(default=None, repr=False)

    @property
    def client_id(self) -> str:
        """Who asks, for messages: the user (the legacy service has no client credential)."""
        return self.username

    def fields(self) -> dict[str, str]:
        fields = {
            "user_id": self.username,
            "password": self.password.get_secret_value(),
            "application_id": self.application_id,
        }
        if self.session_client_id:
            fields["client_id"] = self.session_client_id
        return fields

    def secrets(self) -> tuple[str, ...]:
        return (self.password.get_secret_value(),)

    def accepted(self, payload: dict[str, Any]) -> None:
        client_id = payload.get("client_id")
        if isinstance(client_id, str) and client_id:
            self.session_client_id = client_id

    def fix(self, error: str, status: int) -> str | None:
        del status
        if error == "invalid_grant":
            return (
                "Bimplus refused the user name or password: check username and password "
                "(or password_file) of this source"
            )
        if error == "invalid_client":
            return "Bimplus does not know the application_id: use the ID Bimplus registered"
        return None


@dataclass(frozen=True)
class PasswordGrant:
    """OIDC resource-owner password grant (Keycloak's "direct access"), for a Bimplus user."""

    token_url: str
    client_id: str
    username: str
    password: SecretStr
    client_secret: SecretStr | None = None
    scope: str | None = None
    scheme: str = "Bearer"
    as_json: bool = False

    def fields(self) -> dict[str, str]:
        fields = {
            "grant_type": "password",
            "client_id": self.client_id,
            "username": self.username,
            "password": self.password.get_secret_value(),
        }
        if self.client_secret is not None:
            fields["client_secret"] = self.client_secret.get_secret_value()
        if self.scope:
            fields["scope"] = self.scope
        return fields

    def secrets(self) -> tuple[str, ...]:
        secret = self.client_secret.get_secret_value() if self.client_secret else ""
        return (self.password.get_secret_value(), secret)

    def accepted(self, payload: dict[str, Any]) -> None:
        del payload

    def fix(self, error: str, status: int) -> str | None:
        del status
        if error == "invalid_grant":
            return "the user name or password was refused: check username and password"
        if error in ("invalid_client", "unauthorized_client"):
            return (
                "the client was refused or may not use the password grant: check client_id "
                "and client_secret, and that the client allows direct access grants"
            )
        return None


# -- mapping ----------------------------------------------------------------------------------


def external_id(raw: str, prefix: str = PREFIX) -> str:
    """`prefix` + the Bimplus ID; an ID that would make it longer than 50 characters (not a
    GUID) is replaced by a 32-character hash of it, so the result always fits."""
    candidate = prefix + raw
    if len(candidate) <= ID_MAX:
        return candidate
    return prefix + hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def iso_datetime(value: object) -> str | None:
    """A Bimplus timestamp (`2013-05-01T09:33:18`, no zone: read as UTC) as BuildingMinds's
    `yyyy-mm-ddThh:mm:ssZ`; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _city(address: str | None, default: str) -> str:
    """The city of a free-text address: its last comma-separated part without a postal code
    (`Hauptstrasse 1, 80331 Muenchen` -> `Muenchen`); `default` when there is none."""
    if not address:
        return default
    last = address.rsplit(",", 1)[-1]
    city = _POSTCODE.sub("", last).strip()
    return city[:100] if city and not city[0].isdigit() else default


def map_project(
    project: dict[str, Any], settings: BimplusSourceSettings
) -> tuple[Item, Item] | None:
    """The Address and the Site of one project (None for a listing entry without an ID)."""
    raw_id = project.get("id")
    if not isinstance(raw_id, str) or not raw_id:
        return None
    address_text = project.get("address") if isinstance(project.get("address"), str) else None
    address_id = external_id(raw_id, ADDRESS_PREFIX)
    address: dict[str, Any] = {
        "city": _city(address_text, settings.default_city),
        "country": settings.default_country,
    }
    if address_text:
        address["additionalInformation"] = address_text[:500]
    name = str(project.get("name") or raw_id)[:SITE_NAME_MAX]
    site = {
        "name": name,
        "addressIds": [address_id],
        "type": settings.site_type,
        "validFrom": iso_datetime(project.get("created")) or EPOCH,
    }
    return (
        Item(ENTITIES["Address"], address_id, address),
        Item(ENTITIES["Site"], external_id(raw_id), site),
    )


def map_topology(
    tree: dict[str, Any], site_id: str, address_id: str, valid_from: str
) -> tuple[list[Item], int]:
    """Buildings, Floors and Spaces of one project's topology tree, and how many storeys and
    spaces had no building or storey above them (they cannot be linked, so they are left out).
    """
    items: list[Item] = []
    orphans = 0
    # (node, building ID above it, floor ID above it); a stack, not recursion: trees are deep
    stack: list[tuple[Any, str | None, str | None]] = [(tree, None, None)]
    while stack:
        node, building, floor = stack.pop()
        if not isinstance(node, dict):
            continue
        raw_id, kind = node.get("id"), str(node.get("type") or "").lower()
        name = str(node.get("name") or "").strip()
        if isinstance(raw_id, str) and raw_id and kind in _BUILDING | _STOREY | _SPACE:
            ext = external_id(raw_id)
            label = (name or f"{node.get('type')} {raw_id[:8]}")[:NAME_MAX]
            if kind in _BUILDING:
                record = {"siteId": site_id, "addressIds": [address_id], "name": label}
                items.append(Item(ENTITIES["Building"], ext, record))
                building, floor = ext, None
            elif kind in _STOREY and building is not None:
                record = {
                    "buildingId": building, "name": label,
                    "validFrom": valid_from, "validUntil": OPEN_END,
                }  # fmt: skip
                items.append(Item(ENTITIES["Floor"], ext, record))
                floor = ext
            elif kind in _SPACE and floor is not None:
                items.append(Item(ENTITIES["Space"], ext, {"floorId": floor, "name": label}))
            else:
                orphans += 1
        children = node.get("children")
        if isinstance(children, list):
            stack.extend((child, building, floor) for child in reversed(children))
    return items, orphans


# -- the source -------------------------------------------------------------------------------


@dataclass
class _Cached:
    marker: str | None
    items: list[Item]


class BimplusSource:
    """One Bimplus installation and team, read as a whole each poll (see the module doc)."""

    def __init__(
        self,
        settings: BimplusSourceSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._session = session
        self._clock = clock
        self._base = settings.base_url
        self._auth: BearerAuth | None = None
        self._token_url: str | None = None
        self._team: str | None = None
        self._topology: dict[str, _Cached] = {}
        if settings.auth == "legacy":
            log.warning(
                "%s: auth: legacy uses Bimplus's obsolete POST /v2/authorize, to be removed in "
                "2026; switch to auth: oidc",
                self.name,
            )

    def __repr__(self) -> str:
        return f"BimplusSource(name={self.name!r}, base_url={self._base!r})"

    @property
    def name(self) -> str:
        return self.settings.name or "bimplus"

    # -- auth
    async def token_url(self) -> str:
        """The OIDC token endpoint from the discovery document, read once and cached.

        Raises `CredentialsRejected` when the document is missing or unusable (the URL needs
        fixing), `TokenEndpointUnavailable` when the server cannot be reached or fails.
        """
        if self._token_url is not None:
            return self._token_url
        url = self.settings.discovery
        fix = (
            "set discovery_url (or base_url) so that it serves the OIDC discovery document, "
            "e.g. https://api-stage.bimplus.net/v2/.well-known/openid-configuration"
        )
        try:
            answer = await send(
                self._session, "GET", url, what=f"OIDC discovery {url}",
                headers={hdrs.ACCEPT: "application/json"},
            )  # fmt: skip
        except ApiError as exc:
            suffix = f"; if this persists, {fix}" if exc.retriable else ""
            raise auth_error(exc, lambda text: f"{redact(text)}{suffix}") from exc
        status = answer.status
        if status == 429 or status >= 500:
            raise TokenEndpointUnavailable(f"OIDC discovery {url} answered {status}", status=status)
        document = answer.json() if status == 200 else None
        endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            what = f"answered {status}" if status != 200 else "has no token_endpoint"
            raise CredentialsRejected(f"OIDC discovery {url} {what}: {fix}", status=status)
        self._token_url = endpoint
        return endpoint

    async def _grant(self) -> Grant:
        s = self.settings
        # The settings validated which fields each kind of auth needs; these only narrow types.
        user, password, client_id = s.username or "", s.password, s.client_id or ""
        if s.auth == "legacy" and password is not None:
            app = s.application_id or ""
            return LegacyGrant(f"{self._base}/authorize", user, password, app)
        token_url = await self.token_url()
        if user and password is not None:
            return PasswordGrant(token_url, client_id, user, password, s.client_secret, s.scope)
        if s.client_secret is None:
            raise CredentialsRejected(f"{self.name}: set client_id and client_secret")
        return ClientCredentials(token_url, client_id, s.client_secret, scope=s.scope)

    async def _bearer(self) -> BearerAuth:
        if self._auth is None:
            provider = TokenProvider(
                self._session,
                await self._grant(),
                skew_seconds=self.settings.token_skew_seconds,
                clock=self._clock,
            )
            self._auth = BearerAuth(provider)
        return self._auth

    # -- requests
    async def _get(self, path: str) -> Any:
        """GET `{base_url}{path}` with the token; the parsed JSON, or the connector's error."""
        auth = await self._bearer()
        url = f"{self._base}{path}"
        answer = await send(
            self._session, "GET", url, what=f"GET {url}",
            headers={hdrs.ACCEPT: "application/json"}, middlewares=(auth,),
        )  # fmt: skip
        payload = answer.json()
        if answer.ok:
            if payload is None:
                raise InvalidResponse(
                    f"GET {url} answered {answer.status} without JSON", status=answer.status
                )
            return payload
        message = f"GET {url} answered {answer.status}: {_message(payload, 'no details')}"
        if answer.status == 401:
            message += "; the token was refused even after renewal"
        error = STATUSES.error(answer, message, max_retry_after=MAX_RETRY_AFTER)
        raise error or ServerError(redact(message), status=answer.status)

    async def team(self) -> str:
        """The team slug to read: `team_slug` if the user belongs to it, else the user's only
        team. Raises `EndpointMisconfigured` listing the user's teams otherwise."""
        if self._team is not None:
            return self._team
        teams = await self._get("/teams")
        slugs = [t["slug"] for t in teams if isinstance(t, dict) and isinstance(t.get("slug"), str)]
        listed = ", ".join(slugs) or "none"
        wanted = self.settings.team_slug
        if wanted is not None and wanted not in slugs:
            raise EndpointMisconfigured(
                f"team_slug {wanted!r} is not a team of this Bimplus user; the user's teams: "
                f"{listed}"
            )
        if wanted is None and len(slugs) != 1:
            raise EndpointMisconfigured(
                f"the Bimplus user belongs to {len(slugs)} teams ({listed}); set team_slug "
                "to the one to read"
                if slugs
                else "the Bimplus user belongs to no team: add the user to a team in the portal"
            )
        self._team = wanted or slugs[0]
        return self._team

    async def probe(self) -> str:
        """For `check`: a token (discovery first, for OIDC) and `GET /teams`, publishing
        nothing. Returns e.g. "team 'bimplus-demo' visible"; raises what `snapshot` raises,
        among them `CredentialsRejected` for a refused credential or a wrong discovery URL and
        `EndpointMisconfigured` listing the user's teams when the team is unknown or ambiguous.
        """
        return f"team {await self.team()!r} visible"

    async def snapshot(self) -> Sequence[Item]:
        """Every project's Address, Site, Buildings, Floors and Spaces; see the module doc."""
        team = await self.team()
        try:
            projects = await self._get(f"/{team}/projects")
        except EndpointMisconfigured:
            self._team = None  # the team may have gone: choose again next time
            raise
        if not isinstance(projects, list):
            raise ServerError(f"GET {self._base}/{team}/projects did not answer a list")
        items: list[Item] = []
        seen: set[str] = set()
        orphans = 0
        for project in projects:
            mapped = map_project(project, self.settings) if isinstance(project, dict) else None
            if mapped is None:
                continue
            address, site = mapped
            project_id = str(project["id"])
            topology = await self._project_items(team, project, site, address)
            if topology is None:
                continue  # deleted between the listing and the topology request
            seen.add(project_id)
            items.extend((address, site, *topology.items))
            orphans += topology.orphans
        for gone in self._topology.keys() - seen:
            del self._topology[gone]
        if orphans:
            log.warning(
                "%s: %d storeys or spaces have no building or storey above them; left out",
                self.name, orphans,
            )  # fmt: skip
        return items

    async def _project_items(
        self, team: str, project: dict[str, Any], site: Item, address: Item
    ) -> _Topology | None:
        project_id = str(project["id"])
        # `changed` is null until a project is first modified; `created` then tells apart a
        # project deleted and re-created under the same ID (it never is, but it costs nothing)
        changed, created = project.get("changed"), project.get("created")
        marker = f"{created}|{changed}" if isinstance(changed or created, str) else None
        cached = self._topology.get(project_id)
        if cached is not None and marker is not None and cached.marker == marker:
            return _Topology(cached.items, 0)
        try:
            tree = await self._get(f"/{team}/projects/{project_id}/topology")
        except EndpointMisconfigured as exc:
            if exc.status == 404:
                return None
            raise
        valid_from = str(site.record["validFrom"])
        found, orphans = map_topology(tree, site.external_id, address.external_id, valid_from)
        self._topology[project_id] = _Cached(marker, found)
        return _Topology(found, orphans)


@dataclass(frozen=True)
class _Topology:
    items: list[Item]
    orphans: int


def _message(payload: Any, fallback: str) -> str:
    if isinstance(payload, dict):
        for key in ("message", "error_description", "error"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value
    return fallback
