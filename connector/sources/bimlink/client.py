"""BIMlink (BIMcollab Twin) Public API as a polling source: its building structure as
BuildingMinds Address, Site, Building, Floor and Space records.

Owns reading one user's view of BIMlink completely (domain accounts -> locations -> projects ->
project phases -> spatial structure elements, every list paged by `limit`/`offset` until its
`Pagination-Result` total is read), retrying single requests on 429/5xx/resets, and mapping
what was read to `Item`s (`map_locations`, pure). Auth is a refresh-token grant
(`connector.sources.bimlink.auth`) behind the shared `TokenProvider` and `BearerAuth`.

Mapping (docs/bimlink.md has the full table; choices the public docs leave open are inferred):

    location                      -> Address (from its address) + Site
    project                       -> Building (siteId = its location's site)
    storey of the project's phase -> Floor (buildingId)
    space below a storey          -> Space (floorId = nearest storey above it)

External IDs are `bimlink:<kind>:<BIMlink id>` (kind: adr, loc, prj, sse), or
`bimlink:<kind>:#<blake2b-128 hex of the id>` when that would exceed the platform's 50
characters; both are stable across polls and cannot collide with other systems' IDs.

Every request goes through `connector.http.send` (no redirects, a capped body, transport
errors mapped once; `STATUSES` says what each failure status raises).

Must not: return a partial snapshot (any failed request fails the poll), log record contents,
or send the token anywhere but base_url (the auth middleware is added per request).
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import aiohttp
import anyio
import orjson
from aiohttp import hdrs

from connector.auth import BearerAuth, TokenProvider
from connector.entities import ENTITIES
from connector.errors import (
    EndpointMisconfigured,
    RateLimited,
    RequestRejected,
    ServerError,
    Unauthorized,
)
from connector.http import StatusTable, send
from connector.logs import get_logger, redact
from connector.ratelimit import Backoff
from connector.sources.base import Item
from connector.sources.bimlink.auth import RefreshTokenFile, RefreshTokenGrant

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from connector.ratelimit import Clock
    from connector.sources.bimlink.settings import BimlinkSourceSettings

__all__ = ["BimlinkSource", "choose_phase", "external_id", "map_locations"]

log = get_logger(__name__)

ID_MAX: Final = 50
SITE_NAME_MAX: Final = 50
NAME_MAX: Final = 200
ADDRESS, SITE, BUILDING, FLOOR, SPACE = (
    ENTITIES[name] for name in ("Address", "Site", "Building", "Floor", "Space")
)
STOREY_TYPES: Final = frozenset({"storey", "buildingstorey", "ifcbuildingstorey", "floor"})
SPACE_TYPES: Final = frozenset({"space", "ifcspace", "room"})

STATUSES: Final = StatusTable(
    {
        401: Unauthorized, 403: EndpointMisconfigured, 404: EndpointMisconfigured,
        405: EndpointMisconfigured, 408: ServerError, 429: RateLimited,
    },
    client=RequestRejected,
    retry_after=None,  # absent: the jittered backoff decides
)  # fmt: skip
"""The API's failure statuses: another 4xx is the request's fault (e.g. `limit` above the
maximum), anything else is retried."""


def external_id(kind: str, raw: object) -> str:
    """The platform ID of BIMlink object `raw` of `kind`: prefixed, at most 50 characters."""
    text = str(raw)
    candidate = f"bimlink:{kind}:{text}"
    if len(candidate) <= ID_MAX:
        return candidate
    return f"bimlink:{kind}:#{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"


def choose_phase(project: Mapping[str, Any], names: Sequence[str]) -> Mapping[str, Any] | None:
    """The phase whose spatial structure a project's building gets: the first phase matching
    `names` in their order of preference (case-insensitive), else the last phase listed."""
    phases = [p for p in project.get("projectPhases") or [] if isinstance(p, dict) and "id" in p]
    for wanted in names:
        for phase in phases:
            if str(phase.get("name", "")).strip().lower() == wanted.lower():
                return phase
    return phases[-1] if phases else None


def _name(value: object, fallback: str, limit: int) -> str:
    text = str(value).strip() if value is not None else ""
    return (text or fallback)[:limit]


def _address(
    location: Mapping[str, Any], settings: BimlinkSourceSettings, address_id: str
) -> dict[str, Any]:
    raw = location.get("address")
    given: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    country = str(given.get("country") or "").strip().upper()
    record: dict[str, Any] = {
        "addressId": address_id,
        "city": _name(given.get("city"), settings.default_city, 100),
        "country": country if len(country) == 2 and country.isalpha() else settings.default_country,
    }
    for key in ("street", "houseNumber", "postalCode"):
        value = given.get(key)
        if isinstance(value, str) and value.strip():
            record[key] = value.strip()
    return record


def map_locations(
    account_id: str,
    locations: Sequence[Mapping[str, Any]],
    elements: Mapping[str, Sequence[Mapping[str, Any]]],
    settings: BimlinkSourceSettings,
) -> list[Item]:
    """The items of one domain account. `elements` maps a phase ID to its spatial structure
    (only the phases `choose_phase` picked are read). Pure: the same input, the same items."""
    items: list[Item] = []
    provenance = {"domainAccountId": account_id}
    for location in locations:
        loc_id = str(location["id"])
        address_id, site_id = external_id("adr", loc_id), external_id("loc", loc_id)
        items.append(Item(ADDRESS, address_id, _address(location, settings, address_id)))
        site = {
            "siteId": site_id,
            "name": _name(location.get("name"), loc_id, SITE_NAME_MAX),
            "addressIds": [address_id],
            "type": settings.site_type,
            "validFrom": settings.valid_from,
            "validUntil": settings.valid_until,
            "extensionData": {"bimlink": {**provenance, "locationId": loc_id}},
        }
        items.append(Item(SITE, site_id, site))
        for project in location.get("projects") or []:
            items.extend(
                _project_items(
                    project,
                    site_id=site_id,
                    address_id=address_id,
                    elements=elements,
                    settings=settings,
                    provenance=provenance,
                )
            )
    return items


def _project_items(
    project: Mapping[str, Any],
    *,
    site_id: str,
    address_id: str,
    elements: Mapping[str, Sequence[Mapping[str, Any]]],
    settings: BimlinkSourceSettings,
    provenance: dict[str, str],
) -> list[Item]:
    project_id = str(project["id"])
    building_id = external_id("prj", project_id)
    phase = choose_phase(project, settings.phase_names)
    phase_id = str(phase["id"]) if phase is not None else None
    extension: dict[str, Any] = {**provenance, "projectId": project_id}
    if project.get("number"):
        extension["projectNumber"] = str(project["number"])
    if phase is not None:
        extension["projectPhaseId"], extension["projectPhase"] = phase_id, phase.get("name")
    building = {
        "buildingId": building_id,
        "siteId": site_id,
        "addressIds": [address_id],
        "name": _name(project.get("name"), project_id, NAME_MAX),
        "validFrom": settings.valid_from,
        "extensionData": {"bimlink": extension},
    }
    items = [Item(BUILDING, building_id, building)]
    if phase_id is None:
        return items
    structure = list(elements.get(phase_id, ()))
    by_id = {str(e["id"]): e for e in structure if "id" in e}
    for element in structure:
        kind = str(element.get("type", "")).strip().lower()
        element_id = str(element.get("id", ""))
        if not element_id:
            continue
        if kind in STOREY_TYPES:
            floor_id = external_id("sse", element_id)
            floor = {
                "floorId": floor_id,
                "buildingId": building_id,
                "name": _name(element.get("name"), element_id, NAME_MAX),
                "validFrom": settings.valid_from,
                "validUntil": settings.valid_until,
                "extensionData": {"bimlink": {"spatialStructureElementId": element_id,
                                              "elevation": element.get("elevation")}},
            }  # fmt: skip
            items.append(Item(FLOOR, floor_id, floor))
        elif kind in SPACE_TYPES:
            storey = _storey_above(element, by_id)
            if storey is None:
                continue  # a space outside any storey has no floor to hang from
            space_id = external_id("sse", element_id)
            space = {
                "spaceId": space_id,
                "floorId": external_id("sse", storey),
                "name": _name(element.get("name"), element_id, NAME_MAX),
                "extensionData": {"bimlink": {"spatialStructureElementId": element_id}},
            }
            items.append(Item(SPACE, space_id, space))
    return items


def _storey_above(element: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The ID of the nearest storey among `element`'s ancestors (cycles end the search)."""
    seen: set[str] = set()
    parent = element.get("parentId")
    while parent is not None and str(parent) not in seen:
        seen.add(str(parent))
        node = by_id.get(str(parent))
        if node is None:
            return None
        if str(node.get("type", "")).strip().lower() in STOREY_TYPES:
            return str(parent)
        parent = node.get("parentId")
    return None


class BimlinkSource:
    """One BIMlink user's building structure, read in full at each `snapshot()`."""

    def __init__(
        self,
        settings: BimlinkSourceSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rand: Callable[[], float] = random.random,
        on_refresh: Callable[[str], None] | None = None,
    ) -> None:
        """`session` is the plain session of this source (TLS, timeouts); the bearer token is
        added per request. `clock`, `sleep` and `rand` drive token renewal and retries."""
        self.settings = settings
        self._session = session
        self._token_file = RefreshTokenFile(settings.refresh_token_file)
        self.grant = RefreshTokenGrant(
            settings.token_url, settings.client_id, settings.client_secret, self._token_file
        )
        self.provider = TokenProvider(
            session, self.grant, skew_seconds=settings.token_skew_seconds, clock=clock,
            on_refresh=on_refresh,
        )  # fmt: skip
        self._auth = BearerAuth(self.provider)
        self._api = f"{settings.base_url}{settings.api_prefix}"
        self._sleep = sleep
        self._rand = rand
        self._backoff = Backoff(base=0.5, cap=min(10.0, settings.max_retry_after_seconds))

    def __repr__(self) -> str:
        return f"BimlinkSource(name={self.name!r}, base_url={self.settings.base_url!r})"

    @property
    def name(self) -> str:
        return self.settings.name or "bimlink"

    async def snapshot(self) -> list[Item]:
        """Everything the user sees in the configured (or all) domain accounts.

        Raises `CredentialsRejected` when the refresh token is no longer valid (the message
        says to run `building-twin-connector auth bimlink` again), `EndpointMisconfigured`
        for a domain account the user may not see or a wrong base_url/api_prefix,
        `RequestRejected` for a page_limit above the API's maximum, or a retriable
        `ServerError`/`RateLimited` after `max_attempts` tries of one request."""
        accounts = list(self.settings.domain_account_ids)
        if not accounts:
            accounts = list(await self._visible_accounts())
        items: list[Item] = []
        for account in accounts:
            base = f"/domainaccounts/{quote(account, safe='')}"
            locations = await self._list(f"{base}/locations", f"domain account {account}")
            _check_ids(locations, account)
            elements: dict[str, list[dict[str, Any]]] = {}
            for location in locations:
                for project in location.get("projects") or []:
                    phase = choose_phase(project, self.settings.phase_names)
                    if phase is None or str(phase["id"]) in elements:
                        continue
                    phase_id = str(phase["id"])
                    elements[phase_id] = await self._list(
                        f"{base}/projectphases/{quote(phase_id, safe='')}/spatialstructureelements",
                        f"project phase {phase_id} of domain account {account}",
                    )
            items.extend(map_locations(account, locations, elements, self.settings))
        return items

    async def probe(self) -> str:
        """For `check`: a token and one read of the domain accounts, publishing nothing.

        Getting the token rotates the refresh token, which is stored exactly as a poll stores
        it; so first make sure it can be, since the old one is revoked the moment it is used.
        Returns e.g. "2 domain accounts visible". Raises what `snapshot` raises; also
        `CredentialsRejected` when the token file could not be replaced by this process, and
        `EndpointMisconfigured` naming the configured `domain_account_ids` the user cannot see.
        """
        self._token_file.ensure_replaceable()
        visible = await self._visible_accounts()
        hidden = [a for a in self.settings.domain_account_ids if a not in visible]
        if hidden:
            seen = ", ".join(f"{name} ({id_})" for id_, name in visible.items())
            raise EndpointMisconfigured(
                f"domain_account_ids lists {', '.join(hidden)}, not among the domain accounts "
                f"the BIMlink user sees ({seen}): remove them from domain_account_ids, or ask the "
                "domain account's administrator for access",
                status=403,
            )
        summary = f"{len(visible)} domain account{'s' if len(visible) != 1 else ''} visible"
        if self.settings.domain_account_ids:
            summary += f", the {len(self.settings.domain_account_ids)} configured among them"
        return summary

    async def _visible_accounts(self) -> dict[str, str]:
        """ID -> name of every domain account the user sees; raises when there is none."""
        listed = await self._list("/domainaccounts", "the domain accounts")
        accounts = {
            str(a["id"]): _name(a.get("name"), str(a["id"]), NAME_MAX) for a in listed if "id" in a
        }
        if not accounts:
            # Likely a permissions change; publishing it would delete everything.
            raise EndpointMisconfigured(
                "the BIMlink user sees no domain accounts: ask the account administrator "
                "for access, or log in as another user (building-twin-connector auth bimlink)"
            )
        return accounts

    async def _list(self, path: str, what: str) -> list[dict[str, Any]]:
        """Every object of one paged list action; raises if the total moved while paging
        (an object may have been skipped, and a missing one would read as deleted)."""
        results: list[dict[str, Any]] = []
        first_total: int | None = None
        offset = 0
        while True:
            page, total, limit = await self._get(path, offset, what)
            if first_total is None:
                first_total = total
            elif total != first_total:
                raise ServerError(
                    f"BIMlink's list of {what} changed while it was read; the next poll reads "
                    "it again"
                )
            results.extend(o for o in page if isinstance(o, dict))
            offset += len(page)
            if total is not None:
                if offset >= total:
                    return results
                if not page:
                    raise ServerError(
                        f"BIMlink returned an empty page at offset {offset} of {total} {what}"
                    )
            elif len(page) < limit:
                return results

    async def _get(self, path: str, offset: int, what: str) -> tuple[list[Any], int | None, int]:
        """One page, retried on 429 (after Retry-After, bounded) and on 5xx/resets/timeouts
        (full-jitter backoff) up to `max_attempts` tries."""
        attempts = self.settings.max_attempts
        for attempt in range(attempts):
            try:
                return await self._get_once(path, offset, what)
            except (RateLimited, ServerError) as exc:
                if attempt + 1 >= attempts:
                    raise
                delay = self._backoff.delay(attempt, self._rand)
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = exc.retry_after  # already bounded by max_retry_after_seconds
                log.warning(
                    "%s: %s; retrying in %.1f s", self.name, exc, delay,
                    extra={"source": self.name, "attempt": attempt + 1},
                )  # fmt: skip
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _get_once(
        self, path: str, offset: int, what: str
    ) -> tuple[list[Any], int | None, int]:
        limit = self.settings.page_limit
        answer = await send(
            self._session, "GET", f"{self._api}{path}", what=f"BIMlink {path}",
            params={"limit": str(limit), "offset": str(offset)},
            headers={hdrs.ACCEPT: "application/json"}, middlewares=(self._auth,),
        )  # fmt: skip
        status = answer.status
        if status == 200:
            return self._page(answer.body, answer.headers, path, limit)
        detail = _detail(answer.body)
        where = f"BIMlink answered {status} for {path}"
        wrong_url = (
            f"{where}: check base_url ({self.settings.base_url}) and api_prefix "
            f"({self.settings.api_prefix!r}) against BIMlink's Swagger; {detail}"
        )
        message = {
            401: f"{where} even with a renewed token: {detail}",
            403: f"{where}: the user may not see {what}; remove it from domain_account_ids or "
            "ask the domain account's administrator for access",
            404: wrong_url,
            405: wrong_url,
        }.get(status, f"{where}: {detail}")
        kind = STATUSES.kind(status)
        if kind is RequestRejected:
            message += f" (if it names the limit, lower page_limit, now {limit})"
        error = STATUSES.error(
            answer, message, max_retry_after=self.settings.max_retry_after_seconds
        )
        raise error or ServerError(redact(message), status=status)

    def _page(
        self, body: bytes, headers: Mapping[str, str], path: str, limit: int
    ) -> tuple[list[Any], int | None, int]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ServerError(f"BIMlink {path} answered 200 with a body that is not JSON") from exc
        if isinstance(data, dict):  # tolerate an envelope around the list
            data = next((data[k] for k in ("items", "data", "results") if k in data), None)
        if not isinstance(data, list):
            raise ServerError(f"BIMlink {path} answered 200 without a JSON list")
        total = _int_header(headers, "Pagination-Result")
        page_limit = _int_header(headers, "Pagination-Limit") or limit
        return data, total, page_limit


def _check_ids(locations: Sequence[Mapping[str, Any]], account: str) -> None:
    """Every location, project and phase has an ID, or the snapshot cannot be trusted."""
    for location in locations:
        projects = location.get("projects") or []
        phases = [
            ph for p in projects if isinstance(p, dict) for ph in p.get("projectPhases") or []
        ]
        if "id" not in location or any(not isinstance(x, dict) or "id" not in x
                                       for x in (*projects, *phases)):  # fmt: skip
            raise ServerError(
                f"BIMlink listed a location, project or phase without an id in domain account "
                f"{account}; the snapshot is not used"
            )


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _detail(body: bytes) -> str:
    """A short reason from a problem-details or OAuth body, for messages."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "no details"
    if isinstance(data, dict):
        for key in ("detail", "title", "error_description", "error", "message"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])[:200]
    return "no details"
