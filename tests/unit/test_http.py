"""The one HTTP layer (`connector.http`) and what the platform clients make of it, against
scripted `TestServer`s on real loopback sockets.

The hostile-server matrix (every client x redirect / huge body / gzip bomb) is in
tests/integration/test_http_hostile.py; here: the layer's edges (exactly at the cap, codings,
transport errors, Retry-After), the BuildingMinds 2xx without a batchId, a token echoed by
the API, and the BIMlink refresh-token file.
"""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import socket
import stat
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import SecretStr

from connector.auth import BearerAuth, ClientCredentials, TokenProvider
from connector.errors import (
    CredentialsRejected,
    EndpointMisconfigured,
    InvalidResponse,
    RateLimited,
    RedirectRefused,
    ResponseTooLarge,
    ServerError,
    Unauthorized,
)
from connector.http import ACCEPT_ENCODING, PLAIN_HTTP_HINT, Answer, StatusTable, send
from connector.logs import register_secret
from connector.sessions import http_session
from connector.sinks.buildingminds import BuildingMindsSink
from connector.sources.bimlink.auth import LoginFailed, RefreshTokenFile, _exchange
from connector.sources.bimlink.settings import BimlinkSourceSettings
from tests.support.batches import batch_of
from twin_devtools.devbroker import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(verify=True, ca_file=None, timeout=5) as plain:
        yield plain


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def answering(
    body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, headers=headers or {})

    return handler


# --- the body cap and codings ----------------------------------------------------------------


@pytest.mark.parametrize("coding", ["identity", "gzip", "deflate"])
async def test_a_body_exactly_at_the_cap_is_read_and_decoded(
    session: aiohttp.ClientSession, coding: str
) -> None:
    plain = secrets.token_bytes(1000) * 10  # 10 000 bytes, compressible
    wire = {"identity": plain, "gzip": gzip.compress(plain), "deflate": zlib.compress(plain)}
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Accept-Encoding"))
        headers = {} if coding == "identity" else {"Content-Encoding": coding}
        return web.Response(body=wire[coding], headers=headers)

    server = await serve(handler)
    try:
        answer = await send(session, "GET", str(server.make_url("/x")), max_body=len(plain))
        with pytest.raises(ResponseTooLarge, match="cap of 9999 bytes"):
            await send(session, "GET", str(server.make_url("/x")), max_body=len(plain) - 1)
    finally:
        await server.close()
    assert answer.body == plain
    assert seen == [ACCEPT_ENCODING, ACCEPT_ENCODING]


async def test_a_compressed_body_is_counted_after_inflation_not_only_on_the_wire(
    session: aiohttp.ClientSession,
) -> None:
    inflated = bytes(1_000_000)
    server = await serve(answering(gzip.compress(inflated), headers={"Content-Encoding": "gzip"}))
    try:
        with pytest.raises(ResponseTooLarge, match="gzip-decoded") as caught:
            await send(session, "GET", str(server.make_url("/")), max_body=100_000)
    finally:
        await server.close()
    assert caught.value.retriable
    assert caught.value.status == 200


@pytest.mark.parametrize(
    ("body", "coding", "says"),
    [
        (b"not gzip at all", "gzip", "corrupt gzip"),
        (gzip.compress(b'{"a": 1}')[:-6], "gzip", "ends before its end"),
        (b"{}", "br", "Content-Encoding 'br'"),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_a_server_error(
    session: aiohttp.ClientSession, body: bytes, coding: str, says: str
) -> None:
    server = await serve(answering(body, headers={"Content-Encoding": coding}))
    try:
        with pytest.raises(ServerError, match=says) as caught:
            await send(session, "GET", str(server.make_url("/")))
    finally:
        await server.close()
    assert caught.value.retriable


# --- redirects ------------------------------------------------------------------------------


async def test_a_redirect_names_only_the_target_host(session: aiohttp.ClientSession) -> None:
    location = "https://user:pa55word@elsewhere.example:8443/steal?token=abc#frag"
    server = await serve(answering(b"", status=307, headers={"Location": location}))
    try:
        with pytest.raises(RedirectRefused) as caught:
            await send(session, "POST", str(server.make_url("/api/building")), data=b"[]")
    finally:
        await server.close()
    message = str(caught.value)
    assert "https://elsewhere.example:8443" in message
    for leak in ("pa55word", "user", "steal", "token=abc", "frag"):
        assert leak not in message
    assert not caught.value.retriable, "a configuration problem: hold the data, alert"
    assert isinstance(caught.value, EndpointMisconfigured)
    assert caught.value.status == 307


# --- transport errors, mapped once -----------------------------------------------------------


async def test_connection_refused_is_a_retriable_server_error(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(ServerError, match="unreachable") as caught:
        await send(session, "GET", f"http://127.0.0.1:{free_port()}/x")
    assert caught.value.retriable


async def test_https_to_a_plain_http_port_says_so(session: aiohttp.ClientSession) -> None:
    server = await serve(answering(b"{}"))
    try:
        with pytest.raises(EndpointMisconfigured) as caught:
            await send(session, "GET", f"https://127.0.0.1:{server.port}/x")
    finally:
        await server.close()
    assert PLAIN_HTTP_HINT in str(caught.value)
    assert not caught.value.retriable


async def test_a_timeout_is_a_retriable_server_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = listener.getsockname()[1]
    try:
        async with http_session(verify=True, ca_file=None, timeout=0.3) as slow:
            with pytest.raises(ServerError, match=r"unreachable: .*Timeout"):
                await send(slow, "GET", f"http://127.0.0.1:{port}/x")
    finally:
        listener.close()


# --- the status table ------------------------------------------------------------------------


def answer_with(status: int, **headers: str) -> Answer:
    return Answer(status, "", CIMultiDictProxy(CIMultiDict(headers)), b"")


TABLE = StatusTable({401: Unauthorized, 429: RateLimited}, client=None, retry_after=7.0)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "9999"}, 60.0),  # bounded by the caller's maximum
        ({"Retry-After": "soon"}, 7.0),  # unreadable: the table's default
        ({}, 7.0),
        ({"Retry-After": "date in 30 s"}, 30.0),  # an HTTP-date, made when the test runs
    ],
)
def test_a_429_carries_the_wait_from_the_one_retry_after_parser(
    headers: dict[str, str], wait: float
) -> None:
    if headers.get("Retry-After") == "date in 30 s":
        when = datetime.now(UTC) + timedelta(seconds=30)
        headers = {"Retry-After": format_datetime(when, usegmt=True)}
    error = TABLE.error(answer_with(429, **headers), "slow down", max_retry_after=60.0)
    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(wait, abs=2.0)


def test_statuses_the_table_leaves_to_the_caller_are_not_errors() -> None:
    assert TABLE.error(answer_with(200), "ok", max_retry_after=1) is None
    assert TABLE.error(answer_with(409), "conflict", max_retry_after=1) is None
    assert isinstance(TABLE.error(answer_with(503), "down", max_retry_after=1), ServerError)
    assert isinstance(TABLE.error(answer_with(401), "no", max_retry_after=1), Unauthorized)


def test_the_message_of_a_table_error_is_redacted() -> None:
    secret = "registered-" + secrets.token_hex(8)
    register_secret(secret)
    error = TABLE.error(answer_with(401), f"you sent {secret}", max_retry_after=1)
    assert error is not None
    assert secret not in str(error)


# --- BuildingMinds: a 2xx without a batchId ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"{}"),
        (200, b"<html>captive portal</html>"),
        (202, b'{"batchId": ""}'),
        (204, b""),
        (200, b'{"batchId": {"id": "b-1"}}'),
        (200, b'{"batchId": null}'),
        (200, b"[]"),
    ],
)
async def test_a_2xx_without_a_batch_id_is_a_failed_request(
    session: aiohttp.ClientSession, status: int, body: bytes
) -> None:
    server = await serve(answering(body, status=status))
    try:
        sink = BuildingMindsSink(session, str(server.make_url("/api")))
        with pytest.raises(InvalidResponse, match="batchId") as caught:
            await sink.submit(batch_of("building", [{"buildingId": "B-1"}]))
    finally:
        await server.close()
    assert caught.value.retriable, "retried with backoff; the records are not finished"


async def test_a_2xx_with_a_batch_id_is_accepted(session: aiohttp.ClientSession) -> None:
    server = await serve(answering(b'{"batchId": "b-1"}', headers={"x-request-id": "r-1"}))
    try:
        sink = BuildingMindsSink(session, str(server.make_url("/api")))
        result = await sink.submit(batch_of("building", [{"buildingId": "B-1"}]))
    finally:
        await server.close()
    assert (result.status, result.batch_id, result.failed, result.request_id) == (
        200, "b-1", {}, "r-1",
    )  # fmt: skip


# --- a token echoed by the API ---------------------------------------------------------------


async def test_a_token_echoed_in_a_400_or_401_body_reaches_no_message_or_log(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The token is echoed bare (no "Bearer" prefix a pattern could catch), in the body and
    in the request-ID header: only the live secret registry masks it. A 401 comes back even
    after the renewal, echoing that token."""
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.path == "/token":
            issued.append(f"tok-{secrets.token_hex(16)}")
            return web.json_response({"access_token": issued[-1], "expires_in": 3600})
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if request.path.endswith("/building"):
            failed = [{"message": {"buildingId": "B-1"}, "error": f"token {sent} lacks a role"}]
            echo = {"x-request-id": f"req-{sent}"}
            return web.json_response({"failedMessages": failed}, status=400, headers=echo)
        return web.json_response(
            {"error": f"token {sent} expired", "echo": sent},
            status=401,
            headers={"x-ms-request-id": sent},
        )

    server = await serve(handler)
    secret = "client-secret-" + secrets.token_hex(8)
    grant = ClientCredentials(str(server.make_url("/token")), "c", SecretStr(secret), scope="s")
    auth = BearerAuth(TokenProvider(session, grant))
    try:
        async with aiohttp.ClientSession(middlewares=(auth,)) as authed:
            sink = BuildingMindsSink(authed, str(server.make_url("/api")))
            result = await sink.submit(batch_of("building", [{"buildingId": "B-1"}]))
            with pytest.raises(Unauthorized) as caught:
                await sink.submit(batch_of("space", [{"spaceId": "S-1"}]))
    finally:
        await server.close()
    assert len(issued) == 2, "one renewal after the first 401"
    texts = [
        *result.failed.values(), str(caught.value), caplog.text,
        str(result.request_id), str(caught.value.request_id),
    ]  # fmt: skip
    assert result.failed, "the record failed, with the platform's message"
    for text in texts:
        for value in (*issued, secret):
            assert value not in text
    assert "lacks a role" in result.failed[0]


# --- BIMlink: the login's code exchange ------------------------------------------------------


def bimlink_settings(tmp_path: Path, authority: str) -> BimlinkSourceSettings:
    return BimlinkSourceSettings.model_validate(
        {"type": "bimlink", "authority_url": authority, "client_id": "c",
         "refresh_token_file": str(tmp_path / "token.json")}
    )  # fmt: skip


async def test_the_login_code_exchange_refuses_a_redirect(tmp_path: Path) -> None:
    stolen: list[str] = []

    async def target(request: web.Request) -> web.StreamResponse:
        stolen.append(await request.text())
        return web.json_response({"refresh_token": "x"})

    elsewhere = await serve(target)
    location = str(elsewhere.make_url("/connect/token"))
    server = await serve(answering(b"", status=308, headers={"Location": location}))
    try:
        with pytest.raises(LoginFailed, match=f"127.0.0.1:{elsewhere.port}"):
            await _exchange(bimlink_settings(tmp_path, str(server.make_url(""))), "code", "v")
    finally:
        await server.close()
        await elsewhere.close()
    assert stolen == []


# --- BIMlink: the refresh-token file ---------------------------------------------------------


def saved(path: Path, token: str) -> RefreshTokenFile:
    store = RefreshTokenFile(path)
    store.save(token, token_url="https://login.example/connect/token", client_id="c")
    return store


def test_a_symlinked_token_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    saved(target, "the-target-token")
    target.chmod(0o644)
    link = tmp_path / "token.json"
    link.symlink_to(target)
    with pytest.raises(CredentialsRejected, match="symbolic link") as caught:
        RefreshTokenFile(link).read()
    assert str(link) in str(caught.value)
    assert "refresh_token_file" in str(caught.value), "it says what to do"
    assert "the-target-token" not in str(caught.value)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, "the target was not chmod-ed"


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the file to another user needs root")
def test_a_token_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    store = saved(path, "their-token")
    os.chown(path, 65534, 65534)
    with pytest.raises(CredentialsRejected, match=r"belongs to another user \(uid 65534\)") as e:
        store.read()
    assert str(path) in str(e.value)


def test_a_token_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "token.json"
    os.mkfifo(fifo)  # opening it for reading would block without O_NONBLOCK
    with pytest.raises(CredentialsRejected, match="not a regular file"):
        RefreshTokenFile(fifo).read()


def test_a_readable_token_file_of_ours_is_tightened_and_read(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    store = saved(path, "our-token")
    path.chmod(0o640)
    assert store.read() == "our-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
