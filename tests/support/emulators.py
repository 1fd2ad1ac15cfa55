"""Handles on the emulators running in-process on a fake clock, for their contract tests and
the platform clients' tests: a client session, the clock and the emulator's state, with
helpers that speak each platform's requests. The fixtures that start them live in the suites'
conftest files; this module is plain code that any test imports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from connector.sources.bimplus.settings import BimplusSourceSettings
from tests.support.served import Reply, fetch
from twin_emulators.bimplus_state import (
    DEMO_APPLICATION_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USER,
)
from twin_emulators.buildingminds import API_PREFIX, DEFAULT_TENANT
from twin_emulators.buildingminds_model import ENTITIES
from twin_emulators.buildingx import API_ROOT, INGEST, MEDIA_TYPE, STRUCTURE
from twin_emulators.buildingx_state import DEMO_PARTITION

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.test_utils import TestServer

    from tests.support.clock import FakeClock
    from twin_emulators.bimplus import BimplusState
    from twin_emulators.buildingminds import EmulatorState
    from twin_emulators.buildingx_state import BuildingXState

# ---------------------------------------------------------------- BuildingMinds
TOKEN_PATH = f"/{DEFAULT_TENANT}/oauth2/v2.0/token"
DEMO_FORM = {
    "client_id": "demo-client",
    "client_secret": "demo-secret",
    "scope": "api://buildingminds-emulator/.default",
    "grant_type": "client_credentials",
}


@dataclass
class BuildingMinds:
    """A running BuildingMinds emulator (in-process, on a fake clock) and a session on it."""

    server: TestServer
    session: aiohttp.ClientSession
    clock: FakeClock
    state: EmulatorState

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        body = orjson.dumps(json) if json is not None else data
        return await fetch(self.session, method, path, data=body, headers=headers, timeout=timeout)

    async def token_reply(self, **overrides: str | None) -> Reply:
        """POST the demo credential's form to the token endpoint; None drops a field."""
        form = {**DEMO_FORM, **overrides}
        return await self.request(
            "POST", TOKEN_PATH, data={k: v for k, v in form.items() if v is not None}
        )

    async def token(self, **overrides: str | None) -> str:
        reply = await self.token_reply(**overrides)
        assert reply.status == 200, reply.body
        token: str = reply.body["access_token"]
        return token

    async def api(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json: Any = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> Reply:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return await self.request(
            method, API_PREFIX + path, json=json, data=data, headers=headers, timeout=timeout
        )

    async def post(self, entity: str, records: list[Any], token: str) -> Reply:
        return await self.api("POST", f"/{entity}", token=token, json=records)

    async def inbound(self, batch_id: str, token: str, query: str = "") -> list[dict[str, Any]]:
        reply = await self.api("GET", f"/batch/{batch_id}/inbound{query}", token=token)
        assert reply.status == 200, reply.body
        data: list[dict[str, Any]] = reply.body["data"]
        return data

    async def set_faults(self, **settings: Any) -> Reply:
        return await self.request("POST", "/_emulator/faults", json=settings)

    async def entities(self, entity: str) -> dict[str, dict[str, Any]]:
        """The stored entities of one kind, by external ID, as the admin API shows them."""
        reply = await self.request("GET", f"/_emulator/entities?entity={entity}")
        assert reply.status == 200, reply.body
        id_field = ENTITIES[entity].id_field  # only to index the result
        return {e[id_field]: e for e in reply.body["entities"][entity]}


StartBuildingMinds = Callable[..., Awaitable[BuildingMinds]]


# ---------------------------------------------------------------- Building X
TOKEN_BODY = {
    "client_id": "demo-client",
    "client_secret": "demo-secret",
    "audience": "https://horizon.siemens.com",
    "grant_type": "client_credentials",
}
LOCATIONS = f"{API_ROOT}/{STRUCTURE}/partitions/{DEMO_PARTITION}/locations"


def values_path(point: str, partition: str = DEMO_PARTITION) -> str:
    return f"{API_ROOT}/{INGEST}/partitions/{partition}/points/{point}/values"


def location(label: str, kind: str = "Building", **attributes: Any) -> dict[str, Any]:
    """A create document for one location."""
    return {
        "data": {"type": "Location", "attributes": {"label": label, "type": kind, **attributes}}
    }


def point_values(*stamps: str, value: float = 1.0) -> dict[str, Any]:
    return {
        "data": [
            {"type": "PointValue", "attributes": {"timestamp": t, "value": value}} for t in stamps
        ]
    }


@dataclass
class BuildingX:
    """A running Building X emulator and a client session on it."""

    server: TestServer
    session: aiohttp.ClientSession
    clock: FakeClock
    state: BuildingXState

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        data = None if json is None else orjson.dumps(json)
        return await fetch(
            self.session, method, path, data=data, headers=headers, params=params, timeout=timeout
        )

    async def token_reply(self, **overrides: str | None) -> Reply:
        body = {k: v for k, v in {**TOKEN_BODY, **overrides}.items() if v is not None}
        headers = {"Content-Type": "application/json"}
        return await self.request("POST", "/oauth/token", json=body, headers=headers)

    async def token(self, **overrides: str | None) -> str:
        reply = await self.token_reply(**overrides)
        assert reply.status == 200, reply.body
        token: str = reply.body["access_token"]
        return token

    async def api(
        self,
        method: str,
        path: str,
        token: str | None,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        media_type: str | None = MEDIA_TYPE,
        timeout: float | None = None,
    ) -> Reply:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if json is not None and media_type is not None:
            headers["Content-Type"] = media_type
        return await self.request(
            method, path, json=json, headers=headers, params=params, timeout=timeout
        )

    async def admin(self, path: str, **params: str) -> Any:
        reply = await self.request("GET", f"/_emulator/{path}", params=params or None)
        assert reply.status == 200, reply.body
        return reply.body

    async def set_faults(self, **settings: Any) -> Reply:
        return await self.request("POST", "/_emulator/faults", json=settings)


StartBuildingX = Callable[..., Awaitable[BuildingX]]


# ---------------------------------------------------------------- Bimplus
BIMPLUS_TOKEN_PATH = "/realms/bimplus/protocol/openid-connect/token"
CLIENT_FORM = {
    "grant_type": "client_credentials",
    "client_id": DEMO_CLIENT_ID,
    "client_secret": DEMO_CLIENT_SECRET,
}
LEGACY_BODY = {
    "user_id": DEMO_USER,
    "password": DEMO_PASSWORD,
    "application_id": DEMO_APPLICATION_ID,
}


@dataclass
class Bimplus:
    """A running Bimplus emulator and a plain client session on it."""

    server: TestServer
    session: aiohttp.ClientSession
    clock: FakeClock
    state: BimplusState

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def request(
        self, method: str, path: str, *, json: Any = None, data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:  # fmt: skip
        body = orjson.dumps(json) if json is not None else data
        async with self.session.request(
            method, self.url + path, data=body, headers=headers
        ) as response:
            raw = await response.read()
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = None
            return Reply(response.status, dict(response.headers), parsed)

    async def token(self, **overrides: str | None) -> str:
        form = {k: v for k, v in {**CLIENT_FORM, **overrides}.items() if v is not None}
        reply = await self.request("POST", BIMPLUS_TOKEN_PATH, data=form)
        assert reply.status == 200, reply.body
        token: str = reply.body["access_token"]
        return token

    async def legacy_token(self) -> str:
        reply = await self.request("POST", "/v2/authorize", json=LEGACY_BODY)
        assert reply.status == 200, reply.body
        token: str = reply.body["access_token"]
        return token

    async def api(self, path: str, token: str | None, scheme: str = "Bearer") -> Reply:
        headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
        return await self.request("GET", "/v2" + path, headers=headers)

    async def admin(self, method: str, path: str, **body: Any) -> Any:
        reply = await self.request(method, "/_emulator" + path, json=body or None)
        assert reply.status == 200, reply.body
        return reply.body

    async def requests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self.admin("GET", "/requests"))["requests"]
        return found

    def settings(self, **overrides: Any) -> BimplusSourceSettings:
        raw: dict[str, Any] = {
            "type": "bimplus", "base_url": f"{self.url}/v2", "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET, "request_timeout_seconds": 5,
        }  # fmt: skip
        raw.update(overrides)
        return BimplusSourceSettings.model_validate({k: v for k, v in raw.items() if v is not None})


StartBimplus = Callable[..., Awaitable[Bimplus]]
