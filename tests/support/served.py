"""In-process aiohttp apps on real loopback sockets, and requests read completely.

`serving(app)` runs an app with `aiohttp.test_utils.TestServer` and opens a session on it;
`starter(make_app, wrap)` does that for every `start(options)` a test calls and closes them
all afterwards; `fetch` sends one request and returns a `Reply` (JSON body parsed, or None).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

__all__ = ["Reply", "fetch", "serving", "starter"]

T = TypeVar("T")


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
