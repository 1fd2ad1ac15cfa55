"""Fixtures of the Building X tests: the emulator on a real loopback socket, on a fake clock.

`start_bx(options)` serves `create_app(options, clock=...)` through
`aiohttp.test_utils.TestServer` and returns a `BuildingX` with a client session on it. Time
moves only when a test calls `clock.advance(...)`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.emulator.conftest import FakeClock, Reply, clock, fetch, starter
from twin_emulators.buildingx import (
    API_ROOT,
    INGEST,
    MEDIA_TYPE,
    STATE_KEY,
    STRUCTURE,
    BuildingXState,
    create_app,
)
from twin_emulators.buildingx_state import DEMO_PARTITION

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

__all__ = ["BuildingX", "Reply", "StartBuildingX", "bx", "clock", "start_bx"]

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


@pytest.fixture
async def start_bx(clock: FakeClock) -> AsyncIterator[StartBuildingX]:
    """Start emulators with given options on the test's clock; all are closed afterwards."""

    def wrap(server: TestServer, session: aiohttp.ClientSession, app: web.Application) -> BuildingX:
        return BuildingX(server, session, clock, app[STATE_KEY])

    async with starter(functools.partial(create_app, clock=clock), wrap) as start:
        yield start


@pytest.fixture
async def bx(start_bx: StartBuildingX) -> BuildingX:
    """An emulator with the default options (10 requests per second per client and API)."""
    return await start_bx()
