"""Helpers of the BIMlink tests: the emulator on a real loopback socket, the login driven the
way a browser would drive it, and source settings pointing at the emulator.

The emulator's authorize endpoint approves at once, so "the browser" is an aiohttp client that
follows the printed authorize URL: the emulator's 302 lands on the login command's own
listener, over real sockets.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import anyio
import orjson
from aiohttp.test_utils import TestServer

from connector.sources.bimlink.auth import LoginFailed, login
from connector.sources.bimlink.settings import BimlinkSourceSettings
from tests.kafka_fixtures import wait_until
from tests.support.served import Reply
from twin_emulators.bimlink import STATE_KEY, BimlinkOptions, BimlinkState, create_app
from twin_emulators.bimlink_auth import DEMO_CLIENT, OAuthClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path


def free_port() -> int:
    """A loopback port nobody listens on right now (for a whitelisted redirect URI)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def options_for(port: int, **overrides: Any) -> BimlinkOptions:
    """Emulator options whose demo client whitelists http://127.0.0.1:`port`/callback."""
    client = OAuthClient(
        DEMO_CLIENT.client_id,
        DEMO_CLIENT.client_secret,
        frozenset({f"http://127.0.0.1:{port}/callback"}),
        refresh_tokens=overrides.pop("refresh_tokens", True),
    )
    return BimlinkOptions(clients=(client,), **overrides)


@dataclass
class Bimlink:
    """A running BIMlink emulator: its root URL, a plain HTTP session and its state."""

    url: str
    http: aiohttp.ClientSession
    state: BimlinkState
    redirect_port: int
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.redirect_port}/callback"

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> Reply:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.url + path, headers=headers, allow_redirects=False, **kwargs
        ) as r:
            raw = await r.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode()
            return Reply(r.status, dict(r.headers), body)

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        reply = await self.call(method, f"/_emulator{path}", json=body)
        assert reply.status in (200, 201), reply
        return reply.body

    async def authorize(self, **overrides: str) -> tuple[Reply, str]:
        """GET /connect/authorize with a valid PKCE request (overridable); the reply and the
        verifier."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = {
            "response_type": "code", "client_id": "demo-client",
            "redirect_uri": self.redirect_uri, "scope": "bimlink_publicapi offline_access",
            "state": "st-1", "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }  # fmt: skip
        query.update(overrides)
        query = {k: v for k, v in query.items() if v != "<omit>"}
        return await self.call("GET", f"/connect/authorize?{urlencode(query)}"), verifier

    async def token(self, **form: str) -> Reply:
        base = {"client_id": "demo-client", "client_secret": "demo-secret"}
        return await self.call("POST", "/connect/token", data={**base, **form})

    async def tokens(self, scope: str = "bimlink_publicapi offline_access") -> dict[str, Any]:
        """A full code exchange: the token response."""
        reply, verifier = await self.authorize(scope=scope)
        code = redirect_params(reply)["code"]
        answer = await self.token(
            grant_type="authorization_code", code=code, redirect_uri=self.redirect_uri,
            code_verifier=verifier,
        )  # fmt: skip
        assert answer.status == 200, answer
        body: dict[str, Any] = answer.body
        return body


def redirect_params(reply: Reply) -> dict[str, str]:
    assert reply.status == 302, reply
    query = parse_qs(urlsplit(reply.headers["Location"]).query)
    return {k: v[0] for k, v in query.items()}


@contextlib.asynccontextmanager
async def running_bimlink(
    options: BimlinkOptions | None = None,
    *,
    clock: Callable[[], float] | None = None,
    port: int | None = None,
) -> AsyncIterator[Bimlink]:
    """The emulator on a loopback socket for the block; its demo client whitelists
    http://127.0.0.1:`port`/callback (a fresh free port unless given)."""
    port = port or free_port()
    options = options or options_for(port)
    app = create_app(options) if clock is None else create_app(options, clock=clock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield Bimlink(str(server.make_url("")).rstrip("/"), http, app[STATE_KEY], port)
    finally:
        await http.close()
        await server.close()


def source_settings(emu: Bimlink, token_file: Path, **overrides: Any) -> BimlinkSourceSettings:
    raw: dict[str, Any] = {
        "type": "bimlink", "base_url": emu.url, "authority_url": emu.url,
        "client_id": "demo-client", "client_secret": "demo-secret",
        "refresh_token_file": str(token_file), "redirect_port": emu.redirect_port,
        "login_timeout_seconds": 10, "request_timeout_seconds": 5, "page_limit": 2,
    }  # fmt: skip
    raw.update(overrides)
    return BimlinkSourceSettings.model_validate(raw)


@dataclass
class LoginResult:
    path: Path | None
    error: LoginFailed | None
    output: str
    pages: list[tuple[int, str]]  # what "the browser" saw: status and body of each page


async def drive_login(
    settings: BimlinkSourceSettings,
    *,
    wait_seconds: float = 10,
    tamper: Callable[[str], str] = lambda url: url,
) -> LoginResult:
    """Run `login` while "a browser" follows the authorize URL it announces (`tamper` may
    change the URL first, e.g. its state)."""
    urls: list[str] = []
    pages: list[tuple[int, str]] = []
    out = io.StringIO()
    outcome: dict[str, Any] = {}

    async def run_login() -> None:
        try:
            outcome["path"] = await login(
                settings, out=out, browser=urls.append, wait_seconds=wait_seconds
            )
        except LoginFailed as exc:
            outcome["error"] = exc

    async def browse() -> None:
        await wait_until(lambda: bool(urls), what="the authorize URL")
        async with aiohttp.ClientSession() as browser, browser.get(tamper(urls[0])) as page:
            pages.append((page.status, await page.text()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_login)
        tg.start_soon(browse)
    return LoginResult(outcome.get("path"), outcome.get("error"), out.getvalue(), pages)
