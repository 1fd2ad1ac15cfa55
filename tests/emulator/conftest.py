"""Fixtures for the emulator's contract tests: a fake clock and a running emulator.

`start_emulator(options)` serves `create_app(options, clock=...)` on a real loopback socket
(`aiohttp.test_utils.TestServer`) and returns an `Emulator` with an `aiohttp.ClientSession`
on it. Time moves only when a test calls `clock.advance(...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from connector.emulators.buildingminds import (
    API_PREFIX,
    DEFAULT_TENANT,
    STATE_KEY,
    EmulatorOptions,
    EmulatorState,
    create_app,
)
from connector.emulators.buildingminds_model import ENTITIES

TOKEN_PATH = f"/{DEFAULT_TENANT}/oauth2/v2.0/token"
DEMO_FORM = {
    "client_id": "demo-client",
    "client_secret": "demo-secret",
    "scope": "api://buildingminds-emulator/.default",
    "grant_type": "client_credentials",
}


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    """A response read completely: status, headers and the JSON body (None if not JSON)."""

    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Emulator:
    """A running emulator and a client session on it."""

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
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.session.request(
            method, path, data=body, headers=headers, **kwargs
        ) as response:
            raw = await response.read()
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = None
            return Reply(response.status, dict(response.headers), parsed)

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


StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_emulator(clock: FakeClock) -> AsyncIterator[StartEmulator]:
    """Start emulators with given options on the test's clock; all are closed afterwards."""
    started: list[Emulator] = []

    async def start(options: EmulatorOptions | None = None) -> Emulator:
        app = create_app(options, clock=clock)
        server = TestServer(app)
        await server.start_server()
        session = aiohttp.ClientSession(base_url=server.make_url("/"))
        emulator = Emulator(server, session, clock, app[STATE_KEY])
        started.append(emulator)
        return emulator

    try:
        yield start
    finally:
        for emulator in started:
            await emulator.session.close()
            await emulator.server.close()


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    """An emulator with the default options (100 requests per 60 s, 2 s processing)."""
    return await start_emulator()
