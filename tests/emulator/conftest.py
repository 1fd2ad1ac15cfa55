"""Fixtures for the emulator's contract tests: a fake clock and a running emulator.

`start_emulator(options)` serves `create_app(options, clock=...)` on a real loopback socket
(`aiohttp.test_utils.TestServer`) and returns an `Emulator` with an `aiohttp.ClientSession`
on it. Time moves only when a test calls `clock.advance(...)`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from twin_emulators.buildingminds import (
    API_PREFIX,
    DEFAULT_TENANT,
    STATE_KEY,
    EmulatorState,
    create_app,
)
from twin_emulators.buildingminds_model import ENTITIES

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
    """A response read completely: status, headers (names match case-insensitively) and the
    JSON body (None if not JSON)."""

    status: int
    headers: Mapping[str, str]
    body: Any


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Reply:
    """One request, read completely."""
    kwargs: dict[str, Any] = {"data": data, "headers": headers, "params": params}
    if timeout is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
    async with session.request(method, path, **kwargs) as response:
        raw = await response.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        return Reply(response.status, CIMultiDict(response.headers), parsed)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[tuple[TestServer, aiohttp.ClientSession]]:
    """`app` on a real loopback socket and a session on it, both closed afterwards."""
    server = TestServer(app)
    await server.start_server()
    session = aiohttp.ClientSession(base_url=server.make_url("/"))
    try:
        yield server, session
    finally:
        await session.close()
        await server.close()


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


StartEmulator = Callable[..., Awaitable[Emulator]]
T = TypeVar("T")


@contextlib.asynccontextmanager
async def starter(
    make_app: Callable[[Any], web.Application],
    wrap: Callable[[TestServer, aiohttp.ClientSession, web.Application], T],
) -> AsyncIterator[Callable[..., Awaitable[T]]]:
    """`start(options)` serves `make_app(options)` and wraps it; all are closed afterwards."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(options: Any = None) -> T:
            app = make_app(options)
            server, session = await stack.enter_async_context(serving(app))
            return wrap(server, session, app)

        yield start


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def start_emulator(clock: FakeClock) -> AsyncIterator[StartEmulator]:
    """Start emulators with given options on the test's clock; all are closed afterwards."""

    def wrap(server: TestServer, session: aiohttp.ClientSession, app: web.Application) -> Emulator:
        return Emulator(server, session, clock, app[STATE_KEY])

    async with starter(functools.partial(create_app, clock=clock), wrap) as start:
        yield start


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    """An emulator with the default options (100 requests per 60 s, 2 s processing)."""
    return await start_emulator()
