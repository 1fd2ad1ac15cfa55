"""Fixtures of the Bimplus tests: the emulator on a real loopback socket, on a fake clock.

`start_bimplus(options)` serves `create_app(options, clock=...)` with
`aiohttp.test_utils.TestServer` and returns a `Bimplus` handle: its URL, a plain client session,
the clock and the emulator's state. Time moves only when a test calls `clock.advance(...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from connector.config import BimplusSourceSettings
from tests.emulator.conftest import FakeClock, Reply
from twin_emulators.bimplus import BIMPLUS_KEY, BimplusOptions, BimplusState, create_app
from twin_emulators.bimplus_state import (
    DEMO_APPLICATION_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USER,
)

TOKEN_PATH = "/realms/bimplus/protocol/openid-connect/token"
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
        reply = await self.request("POST", TOKEN_PATH, data=form)
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_bimplus(clock: FakeClock) -> AsyncIterator[StartBimplus]:
    started: list[Bimplus] = []

    async def start(options: BimplusOptions | None = None) -> Bimplus:
        app = create_app(options, clock=clock)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        emulator = Bimplus(server, aiohttp.ClientSession(), clock, app[BIMPLUS_KEY])
        started.append(emulator)
        return emulator

    try:
        yield start
    finally:
        for emulator in started:
            await emulator.session.close()
            await emulator.server.close()


@pytest.fixture
async def bimplus(start_bimplus: StartBimplus) -> Bimplus:
    return await start_bimplus()
