"""Every platform client and token endpoint against a hostile server, over real sockets.

The hostile server answers whatever it is asked with a redirect to a second server (which
records every request it gets: it must get none), a 400 MB body (streamed, never held), or a
gzip bomb (10 MB that would inflate to 10 GiB, also streamed). A good token server issues the
tokens, so every API request really carries a bearer token worth stealing.

Each case runs one client the way the connector runs it: the sinks over a session with the
`BearerAuth` middleware, the sources with their own token provider, the token endpoints with
their grant. Memory is measured twice: what Python holds at the peak of the request
(`tracemalloc`), and how far the process's peak RSS (`ru_maxrss`) grew; a body read whole
would push either past a gigabyte.
"""

from __future__ import annotations

import resource
import struct
import tracemalloc
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from connector.auth import BearerAuth, ClientCredentials, TokenProvider
from connector.errors import (
    ConnectorError,
    CredentialsRejected,
    RedirectRefused,
    ResponseTooLarge,
    TokenEndpointUnavailable,
)
from connector.http import DEFAULT_MAX_BODY
from connector.ratelimit import RollingWindowLimiter
from connector.sessions import http_session
from connector.sinks.buildingminds import BuildingMindsSink
from connector.sinks.buildingx import APIS, BuildingXSink
from connector.sources.bimlink.auth import RefreshTokenFile
from connector.sources.bimlink.client import BimlinkSource
from connector.sources.bimlink.settings import BimlinkSourceSettings
from connector.sources.bimplus.client import BimplusSource
from connector.sources.bimplus.settings import BimplusSourceSettings
from tests.support.batches import batch_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TOKEN = "hostile-test-access-token-0123456789"
SECRET = "hostile-test-client-secret-abcdef"
REFRESH = "hostile-test-refresh-token-fedcba"
HUGE = 400 * 1000 * 1000
MIB = 1 << 20
RSS_LIMIT = 200 * MIB
HELD_LIMIT = 2 * 16 * MIB  # the 16 MiB cap, the bytearray slack and chunks in flight


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gzip_bomb(inflated_mib: int) -> Iterator[bytes]:
    """A valid gzip stream of about `inflated_mib` MiB of zeros, ~1 KiB per MiB, built as it
    is sent.

    After a full flush deflate starts afresh, so every further MiB of zeros compresses to the
    same bytes: one segment, repeated. Only the trailer's CRC needs the whole length; it is
    computed when (if ever) the stream gets that far."""
    block = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    batch = segment * 256  # 256 MiB inflated per write keeps the loop short
    rounds = (inflated_mib - 1) // 256
    for _ in range(rounds):
        yield batch
    crc = 0
    for _ in range(1 + 256 * rounds):
        crc = zlib.crc32(block, crc)
    size = (1 + 256 * rounds) * MIB
    # the compressor's own trailer counts the two blocks it saw: replace CRC32 and ISIZE
    yield compressor.flush()[:-8] + struct.pack("<II", crc, size & 0xFFFFFFFF)


@dataclass
class Servers:
    """The three servers of a test, and what the hostile one does (`mode`)."""

    good: TestServer | None = None
    hostile: TestServer | None = None
    target: TestServer | None = None
    mode: str = "redirect-302"
    stolen: list[dict[str, Any]] = field(default_factory=list)  # requests the target got
    hostile_auth: list[str | None] = field(default_factory=list)

    def url(self, which: str, path: str = "") -> str:
        server = getattr(self, which)
        assert isinstance(server, TestServer)
        return str(server.make_url(path)).rstrip("/")

    @property
    def target_port(self) -> int | None:
        return self.target.port if self.target is not None else None


def good_app() -> web.Application:
    """A token endpoint (every grant) and an OIDC discovery document."""

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer",
             "refresh_token": REFRESH}
        )  # fmt: skip

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"token_endpoint": str(request.url.with_path("/token"))})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/connect/token", token)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    return app


def hostile_app(servers: Servers) -> web.Application:
    async def anything(request: web.Request) -> web.StreamResponse:
        servers.hostile_auth.append(request.headers.get("Authorization"))
        await request.read()
        mode = servers.mode
        if mode.startswith("redirect-"):
            location = servers.url("target", "/stolen?token=steal&x=1")
            return web.Response(status=int(mode.split("-")[1]), headers={"Location": location})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if mode == "huge-declared":
            response.content_length = HUGE
        if mode == "bomb":
            response.headers["Content-Encoding"] = "gzip"
            chunks: Iterator[bytes] = gzip_bomb(10 * 1024)
        else:
            chunks = (b" " * MIB for _ in range(HUGE // MIB))
        await response.prepare(request)
        try:
            for chunk in chunks:
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up at its cap: what the test wants
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def target_app(servers: Servers) -> web.Application:
    async def record(request: web.Request) -> web.Response:
        servers.stolen.append(
            {"path": request.path, "authorization": request.headers.get("Authorization"),
             "body": (await request.read()).decode(errors="replace")}
        )  # fmt: skip
        return web.json_response({"batchId": "from-the-wrong-host", "access_token": "x"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    found = Servers()
    found.good = TestServer(good_app(), host="127.0.0.1")
    found.hostile = TestServer(hostile_app(found), host="127.0.0.1")
    found.target = TestServer(target_app(found), host="127.0.0.1")
    for server in (found.good, found.hostile, found.target):
        await server.start_server()
    try:
        yield found
    finally:
        for server in (found.good, found.hostile, found.target):
            await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The session the connector makes (`connector.sessions.http_session`)."""
    async with http_session(verify=True, ca_file=None, timeout=30) as plain:
        yield plain


def authed(servers: Servers, session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    grant = ClientCredentials(
        servers.url("good", "/token"), "client", SecretStr(SECRET), scope="s/.default"
    )
    auth = BearerAuth(TokenProvider(session, grant))
    return aiohttp.ClientSession(
        connector=session.connector, connector_owner=False, middlewares=(auth,),
        timeout=session.timeout,
    )  # fmt: skip


async def buildingminds_post(servers: Servers, session: aiohttp.ClientSession, _: Path) -> object:
    async with authed(servers, session) as http:
        sink = BuildingMindsSink(http, servers.url("hostile", "/api"))
        return await sink.submit(batch_of("building", [{"buildingId": "B-1"}]))


async def buildingminds_batches(
    servers: Servers, session: aiohttp.ClientSession, _: Path
) -> object:
    async with authed(servers, session) as http:
        return await BuildingMindsSink(http, servers.url("hostile", "/api")).list_batches()


async def buildingminds_inbound(
    servers: Servers, session: aiohttp.ClientSession, _: Path
) -> object:
    async with authed(servers, session) as http:
        return await BuildingMindsSink(http, servers.url("hostile", "/api")).inbound("b-1")


async def buildingx_submit(servers: Servers, session: aiohttp.ClientSession, _: Path) -> object:
    async with authed(servers, session) as http:
        sink = BuildingXSink(
            http, servers.url("hostile", "/api/openness"), "p-1",
            limiters={api: RollingWindowLimiter(100, 1.0) for api in APIS},
        )  # fmt: skip
        return await sink.submit(batch_of("site", [{"siteId": "S-1", "name": "S"}]))


def bimplus_settings(servers: Servers, *, discovery: str) -> BimplusSourceSettings:
    return BimplusSourceSettings.model_validate(
        {"type": "bimplus", "base_url": servers.url("hostile", "/v2"),
         "discovery_url": servers.url(discovery, "/.well-known/openid-configuration"),
         "client_id": "c", "client_secret": SECRET, "team_slug": "t"}
    )  # fmt: skip


async def bimplus_api(servers: Servers, session: aiohttp.ClientSession, _: Path) -> object:
    return await BimplusSource(bimplus_settings(servers, discovery="good"), session).probe()


async def bimplus_discovery(servers: Servers, session: aiohttp.ClientSession, _: Path) -> object:
    source = BimplusSource(bimplus_settings(servers, discovery="hostile"), session)
    return await source.probe()


def bimlink_settings(servers: Servers, tmp: Path, *, authority: str) -> BimlinkSourceSettings:
    path = tmp / "token.json"
    RefreshTokenFile(path).save(REFRESH, token_url="unused", client_id="c")
    return BimlinkSourceSettings.model_validate(
        {"type": "bimlink", "base_url": servers.url("hostile"),
         "authority_url": servers.url(authority), "client_id": "c",
         "client_secret": SECRET, "refresh_token_file": str(path), "max_attempts": 1}
    )  # fmt: skip


async def no_sleep(_: float) -> None:
    await anyio.lowlevel.checkpoint()


async def bimlink_api(servers: Servers, session: aiohttp.ClientSession, tmp: Path) -> object:
    settings = bimlink_settings(servers, tmp, authority="good")
    return await BimlinkSource(settings, session, sleep=no_sleep).snapshot()


async def bimlink_token(servers: Servers, session: aiohttp.ClientSession, tmp: Path) -> object:
    settings = bimlink_settings(servers, tmp, authority="hostile")
    return await BimlinkSource(settings, session, sleep=no_sleep).snapshot()


async def token_endpoint(servers: Servers, session: aiohttp.ClientSession, _: Path) -> object:
    grant = ClientCredentials(
        servers.url("hostile", "/token"), "client", SecretStr(SECRET), scope="s/.default"
    )
    return await TokenProvider(session, grant).token()


API_CLIENTS = {
    "buildingminds-post": buildingminds_post,
    "buildingminds-batches": buildingminds_batches,
    "buildingminds-inbound": buildingminds_inbound,
    "buildingx": buildingx_submit,
    "bimplus": bimplus_api,
    "bimlink": bimlink_api,
}
TOKEN_CLIENTS = {
    "token-endpoint": token_endpoint,
    "bimplus-discovery": bimplus_discovery,
    "bimlink-token": bimlink_token,
}
CLIENTS = {**API_CLIENTS, **TOKEN_CLIENTS}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("client", list(CLIENTS))
async def test_a_redirect_to_another_host_is_refused_and_carries_nothing(
    servers: Servers, session: aiohttp.ClientSession, tmp_path: Path, client: str, status: int
) -> None:
    servers.mode = f"redirect-{status}"
    expected: type[ConnectorError] = (
        RedirectRefused if client in API_CLIENTS else CredentialsRejected
    )
    with pytest.raises(expected) as caught:
        await CLIENTS[client](servers, session, tmp_path)
    assert servers.stolen == [], "the redirect target got a request"
    message = str(caught.value)
    assert f"127.0.0.1:{servers.target_port}" in message, "the message names the target host"
    assert "steal" not in message, "but not its path or query"
    assert TOKEN not in message
    assert SECRET not in message
    if client in API_CLIENTS:
        # the configured host did get the token: the test would prove nothing otherwise
        assert servers.hostile_auth[-1:] == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize("mode", ["huge-declared", "huge", "bomb"])
@pytest.mark.parametrize("client", list(CLIENTS))
async def test_an_oversized_answer_is_refused_at_the_cap_in_bounded_memory(
    servers: Servers, session: aiohttp.ClientSession, tmp_path: Path, client: str, mode: str
) -> None:
    servers.mode = mode
    expected: type[ConnectorError] = (
        ResponseTooLarge if client in API_CLIENTS else TokenEndpointUnavailable
    )
    rss_before = peak_rss()
    tracemalloc.start()
    try:
        with pytest.raises(expected) as caught:
            await CLIENTS[client](servers, session, tmp_path)
        _, held = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"cap of {DEFAULT_MAX_BODY} bytes" in str(caught.value)
    assert caught.value.retriable, "an oversized answer is a failed request: back off, retry"
    # What Python held at the peak (the cap, a copy, chunks in flight); and the process's
    # peak RSS, which only grows, grew by less than the 200 MiB the whole test may use.
    assert held < HELD_LIMIT, f"{held / MIB:.0f} MiB held at the peak"
    assert peak_rss() - rss_before < RSS_LIMIT, f"peak RSS grew {rss_before}->{peak_rss()}"


def test_the_bomb_is_a_bomb() -> None:
    """The generator above really inflates ~1000-fold into a valid gzip stream (checked on
    257 MiB, inflated a step at a time, not on 10 GiB)."""
    compressed = b"".join(gzip_bomb(257))
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    inflated, pending = 0, compressed
    while pending:
        inflated += len(inflater.decompress(pending, MIB))
        pending = inflater.unconsumed_tail
    inflated += len(inflater.flush())
    assert len(compressed) < 300 * 1024
    assert inflated == 257 * MIB
    assert inflater.eof, "the trailer (CRC, size) checked out"
