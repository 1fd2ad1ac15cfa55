"""Client credentials and the auth middleware against a scripted token endpoint and resource.

Everything runs over real loopback sockets (`aiohttp.test_utils.TestServer`); only the clock is
fake, so expiry and skew are exact.
"""

from __future__ import annotations

import logging
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from pydantic import SecretStr

from connector.auth import BearerAuth, ClientCredentials, Token, TokenProvider
from connector.errors import AuthError, CredentialsRejected, TokenEndpointUnavailable
from tests.support.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SECRET = "s3cr3t~Value.that-must_never-print"
CLIENT_ID = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
SCOPE = "api://bm-test/.default"
T0 = 5000.0


@dataclass
class Scripted:
    """An answer the token endpoint gives instead of a token."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Platform:
    """A token endpoint (/token) and a protected resource (/resource), scripted per test."""

    server: BaseTestServer | None = None
    expires_in: object = 3600
    replies: list[Scripted] = field(default_factory=list)  # token replies to give before tokens
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_auth_headers: list[str | None] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    reject_all: bool = False
    seen: list[str | None] = field(default_factory=list)  # Authorization at the resource
    # Token requests wait for this, when set, so callers pile up behind one in-flight request.
    gate: anyio.Event | None = None
    token_arrived: anyio.Event = field(default_factory=anyio.Event)
    unauthorized: int = 0
    unauthorized_target: int = 0
    unauthorized_reached: anyio.Event = field(default_factory=anyio.Event)
    refusal_padding: int = 0  # bytes of body on a 401, so it is not read ahead whole

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def revoke(self, value: str) -> None:
        self.valid.discard(value)

    async def token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.token_forms.append({k: str(v) for k, v in form.items()})
        self.token_auth_headers.append(request.headers.get("Authorization"))
        self.token_arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.replies:
            reply = self.replies.pop(0)
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        value = f"tok-{len(self.issued) + 1}-eyJhbGciOi.payload.sig"
        self.issued.append(value)
        self.valid.add(value)
        body = {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": value}
        return web.json_response(body)

    async def resource(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        self.seen.append(header)
        if not self.reject_all and header in {f"Bearer {v}" for v in self.valid}:
            return web.json_response({"ok": True})
        self.unauthorized += 1
        if self.unauthorized == self.unauthorized_target:
            self.unauthorized_reached.set()
        body = {"error": "invalid token", "padding": "x" * self.refusal_padding}
        return web.json_response(body, status=401)


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    scripted = Platform()
    app = web.Application()
    app.router.add_post("/token", scripted.token)
    app.router.add_get("/resource", scripted.resource)
    async with TestServer(app) as server:
        scripted.server = server
        yield scripted
        if scripted.gate is not None:
            scripted.gate.set()  # let a held handler finish so the server can close


@dataclass
class Client:
    session: aiohttp.ClientSession
    provider: TokenProvider
    clock: FakeClock
    outcomes: list[str]
    # URLs that passed through the session's middleware chain
    via_middleware: list[str]

    async def get(self, url: str) -> int:
        async with self.session.get(url) as response:
            await response.read()
            return response.status


@asynccontextmanager
async def connect(
    platform: Platform,
    *,
    token_url: str | None = None,
    timeout: float | None = None,
    skew_seconds: float = 300.0,
    connections: int = 100,
) -> AsyncIterator[Client]:
    """A session whose own middleware chain holds BearerAuth, and whose provider uses it too."""
    clock = FakeClock(T0)
    outcomes: list[str] = []
    via: list[str] = []
    auth: list[BearerAuth] = []

    async def chain(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        # Records what goes through the session's middlewares, then hands over to BearerAuth
        # (built after the provider, which needs this very session).
        via.append(str(request.url))
        return await auth[0](request, handler)

    session_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else aiohttp.ClientTimeout()
    async with aiohttp.ClientSession(
        middlewares=(chain,),
        timeout=session_timeout,
        connector=aiohttp.TCPConnector(limit=connections),
    ) as session:
        provider = TokenProvider(
            session,
            ClientCredentials(
                token_url or platform.url("/token"), CLIENT_ID, SecretStr(SECRET), scope=SCOPE
            ),
            skew_seconds=skew_seconds,
            clock=clock,
            on_refresh=outcomes.append,
        )
        auth.append(BearerAuth(provider))
        yield Client(session, provider, clock, outcomes, via)


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[Client]:
    async with connect(platform) as connected:
        yield connected


def entra_error(code: int, error: str, text: str) -> bytes:
    """An Entra ID error body, shaped as the token endpoint sends it."""
    return orjson.dumps(
        {
            "error": error,
            "error_description": (
                f"AADSTS{code}: {text}\r\nTrace ID: 7d3c1e5a-0000\r\n"
                "Correlation ID: 1a2b3c4d-0000\r\nTimestamp: 2026-01-01 00:00:00Z"
            ),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "7d3c1e5a-0000",
            "correlation_id": "1a2b3c4d-0000",
        }
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- getting and caching -------------------------------------------------------------------


async def test_token_request_is_the_client_credentials_form_and_is_cached(
    platform: Platform, client: Client
) -> None:
    first = await client.provider.token()
    second = await client.provider.token()
    assert first is second
    assert client.provider.current is first
    assert platform.token_forms == [
        {
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "scope": SCOPE,
            "grant_type": "client_credentials",
        }
    ]
    assert first.header() == f"Bearer {platform.issued[0]}"
    assert first.expires_at == T0 + 3600
    assert abs(first.expires_at_wall - (time.time() + 3600)) < 60
    assert client.outcomes == ["success"]


async def test_on_refresh_already_sees_the_new_token(platform: Platform) -> None:
    seen: list[tuple[str, Token | None]] = []
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider(
            session,
            ClientCredentials(platform.url("/token"), CLIENT_ID, SecretStr(SECRET), scope=SCOPE),
            on_refresh=lambda outcome: seen.append((outcome, provider.current)),
        )
        first = await provider.token()
        second = await provider.renew(first)
        platform.replies.append(Scripted(503, b""))
        with pytest.raises(TokenEndpointUnavailable):
            await provider.renew(second)
    assert seen == [("success", first), ("success", second), ("unavailable", second)]


async def test_token_is_renewed_skew_seconds_before_expiry(
    platform: Platform, client: Client
) -> None:
    first = await client.provider.token()
    client.clock.now = T0 + 3600 - 300 - 0.5
    assert await client.provider.token() is first
    client.clock.now = T0 + 3600 - 300
    renewed = await client.provider.token()
    assert renewed is not first
    assert renewed.expires_at == T0 + 3600 - 300 + 3600
    assert len(platform.token_forms) == 2


async def test_short_lived_token_is_reused_for_three_quarters_of_its_life(
    platform: Platform, client: Client
) -> None:
    platform.expires_in = "100"  # Entra v1 endpoints send it as a string
    first = await client.provider.token()
    assert first.expires_at == T0 + 100
    client.clock.now = T0 + 74.5
    assert await client.provider.token() is first
    client.clock.now = T0 + 75
    assert await client.provider.token() is not first


async def test_concurrent_callers_on_a_cold_cache_share_one_request(
    platform: Platform, client: Client
) -> None:
    platform.gate = anyio.Event()
    tokens: list[Token] = []

    async def call() -> None:
        tokens.append(await client.provider.token())

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(call)
        await platform.token_arrived.wait()
        await anyio.wait_all_tasks_blocked()
        platform.gate.set()
    assert len(platform.token_forms) == 1
    assert len(tokens) == 30
    assert all(t is tokens[0] for t in tokens)


async def test_a_failed_refresh_reaches_every_waiter_once_without_a_retry_storm(
    platform: Platform, client: Client
) -> None:
    platform.gate = anyio.Event()
    platform.replies.append(Scripted(503, b"busy"))
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await client.provider.token()
        except TokenEndpointUnavailable as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call)
        await platform.token_arrived.wait()
        await anyio.wait_all_tasks_blocked()
        platform.gate.set()
    assert len(platform.token_forms) == 1
    assert len(errors) == 20
    assert len({id(e) for e in errors}) == 20  # each waiter raises its own instance
    assert all(isinstance(e, TokenEndpointUnavailable) and e.status == 503 for e in errors)
    assert client.outcomes == ["unavailable"]
    # Retrying is the caller's job; the next call makes the next request.
    await client.provider.token()
    assert len(platform.token_forms) == 2
    assert client.outcomes == ["unavailable", "success"]


async def test_renew_fetches_only_for_the_current_token(platform: Platform, client: Client) -> None:
    old = await client.provider.token()
    new = await client.provider.renew(old)
    assert new is not old
    assert await client.provider.renew(old) is new  # a late 401 from the same wave
    assert await client.provider.renew(None) is new
    assert len(platform.token_forms) == 2


# --- the middleware ------------------------------------------------------------------------


async def test_every_request_carries_the_bearer_token(platform: Platform, client: Client) -> None:
    assert await client.get(platform.url("/resource")) == 200
    assert await client.get(platform.url("/resource")) == 200
    assert platform.seen == [f"Bearer {platform.issued[0]}"] * 2
    assert "Authorization" not in client.session.headers


async def test_a_wave_of_401s_costs_one_token_request_and_every_request_succeeds_on_retry(
    platform: Platform, client: Client
) -> None:
    old = await client.provider.token()
    platform.revoke(platform.issued[0])
    # The renewal is held until all 50 requests have been refused with the old token.
    platform.gate = anyio.Event()
    platform.token_arrived = anyio.Event()
    platform.unauthorized_target = 50
    statuses: list[int] = []

    async def call() -> None:
        statuses.append(await client.get(platform.url("/resource")))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call)
        await platform.unauthorized_reached.wait()
        await platform.token_arrived.wait()
        platform.gate.set()

    assert statuses == [200] * 50
    assert len(platform.token_forms) == 2  # the first token, then ONE renewal
    assert platform.seen.count(old.header()) == 50
    assert platform.seen.count(f"Bearer {platform.issued[1]}") == 50
    assert client.outcomes == ["success", "success"]


async def test_a_second_401_is_returned_as_is(platform: Platform, client: Client) -> None:
    platform.reject_all = True
    assert await client.get(platform.url("/resource")) == 401
    assert len(platform.seen) == 2  # the request and its one retry
    assert len(platform.token_forms) == 2  # the first token and one renewal, no loop
    assert platform.seen[0] != platform.seen[1]


async def test_the_refused_response_is_released_before_the_retry(platform: Platform) -> None:
    # One connection in the pool: the token request and the retry need the one the 401 used.
    platform.refusal_padding = 4 * 1024 * 1024
    async with connect(platform, connections=1) as single:
        await single.provider.token()
        platform.revoke(platform.issued[0])
        with anyio.fail_after(5):
            assert await single.get(platform.url("/resource")) == 200
    assert len(platform.token_forms) == 2


async def test_the_token_request_does_not_go_through_the_middleware(
    platform: Platform, client: Client
) -> None:
    assert await client.get(platform.url("/resource")) == 200
    platform.revoke(platform.issued[0])
    assert await client.get(platform.url("/resource")) == 200  # renewed inside the middleware
    assert len(platform.token_forms) == 2
    assert platform.token_auth_headers == [None, None]
    assert all(url.endswith("/resource") for url in client.via_middleware)
    assert len(client.via_middleware) == 2


async def test_the_middleware_raises_when_no_token_can_be_had(
    platform: Platform, client: Client
) -> None:
    platform.replies.append(Scripted(400, entra_error(7000215, "invalid_client", "Invalid secret")))
    with pytest.raises(CredentialsRejected):
        await client.get(platform.url("/resource"))
    assert platform.seen == []


# --- token endpoint errors -----------------------------------------------------------------

FIX_CASES = [
    (7000215, "invalid_client", "re-copy the client secret value, not its ID"),
    (7000222, "invalid_client", "create a new client secret"),
    (700016, "unauthorized_client", "re-copy the client ID exactly"),
    (1002012, "invalid_scope", "append /.default to the scope value"),
    (70011, "invalid_scope", "use the scope value as provided, with /.default appended"),
    (90014, "invalid_request", "set client_id, client_secret and scope"),
    (900144, "invalid_request", "missing a parameter"),
    (500011, "invalid_resource", "does not exist in this tenant"),
    (50034, "invalid_request", "The user account does not exist"),  # unknown: its description
]


@pytest.mark.parametrize("case", FIX_CASES, ids=[f"AADSTS{c[0]}" for c in FIX_CASES])
@pytest.mark.parametrize("status", [400, 401])
async def test_aadsts_codes_become_credentials_rejected_with_the_fix(
    platform: Platform, client: Client, case: tuple[int, str, str], status: int
) -> None:
    code, error, fix = case
    # For a known code the fix comes from our table, not from the provider's text.
    text = fix if code == 50034 else "Provider text."
    platform.replies.append(Scripted(status, entra_error(code, error, text)))
    with pytest.raises(CredentialsRejected) as caught:
        await client.provider.token()
    message = str(caught.value)
    assert fix in message
    assert f"AADSTS{code}" in message
    assert "Trace ID" not in message  # only the first line of the description
    assert caught.value.code == f"AADSTS{code}"
    assert caught.value.status == status
    assert not caught.value.retriable
    assert client.outcomes == ["rejected"]


async def test_the_code_is_read_from_the_description_when_error_codes_is_absent(
    platform: Platform, client: Client
) -> None:
    body = {"error": "invalid_client", "error_description": "AADSTS7000222: expired. Trace ID: x"}
    platform.replies.append(Scripted(401, orjson.dumps(body)))
    with pytest.raises(CredentialsRejected) as caught:
        await client.provider.token()
    assert caught.value.code == "AADSTS7000222"
    assert "create a new client secret" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        entra_error(90024, "temporarily_unavailable", "Request budget exceeded."),
        entra_error(90055, "invalid_request", "Too many requests."),
        entra_error(90024, "invalid_request", "Request budget exceeded."),
        orjson.dumps({"error": "temporarily_unavailable", "error_description": "try later"}),
    ],
)
async def test_throttling_answers_are_retriable(
    platform: Platform, client: Client, body: bytes
) -> None:
    platform.replies.append(Scripted(400, body))
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await client.provider.token()
    assert caught.value.retriable
    assert caught.value.status == 400
    assert client.outcomes == ["unavailable"]


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Scripted(503, b"Service Unavailable"), "503"),
        (Scripted(500, b"<html>oops</html>"), "500"),
        (Scripted(429, b"", {"Retry-After": "60"}), "Retry-After: 60"),
        (Scripted(200, b"not json"), "without a usable token"),
        (Scripted(200, b"[]"), "without a usable token"),
        (Scripted(200, orjson.dumps({"access_token": "abc"})), "without a usable token"),
        (Scripted(200, orjson.dumps({"expires_in": 3599})), "without a usable token"),
        (Scripted(200, orjson.dumps({"access_token": "abc", "expires_in": 0})), "usable token"),
        (
            Scripted(
                200, orjson.dumps({"access_token": "a", "expires_in": 9, "token_type": "mac"})
            ),
            "not Bearer",
        ),
    ],
)
async def test_server_failures_and_bad_tokens_are_retriable(
    platform: Platform, client: Client, reply: Scripted, says: str
) -> None:
    platform.replies.append(reply)
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await client.provider.token()
    assert says in str(caught.value)
    assert caught.value.status == reply.status
    assert caught.value.retriable
    assert client.provider.current is None
    assert client.outcomes == ["unavailable"]


async def test_a_wrong_token_path_is_a_configuration_problem(platform: Platform) -> None:
    async with connect(platform, token_url=platform.url("/nope")) as wrong:
        with pytest.raises(CredentialsRejected, match="check token_url") as caught:
            await wrong.provider.token()
    assert caught.value.status == 404


async def test_connection_refused_is_retriable(platform: Platform) -> None:
    async with connect(platform, token_url=f"http://127.0.0.1:{free_port()}/token") as refused:
        with pytest.raises(TokenEndpointUnavailable, match="unreachable") as caught:
            await refused.provider.token()
    assert caught.value.status is None
    assert refused.outcomes == ["unavailable"]


async def test_a_token_endpoint_that_hangs_times_out_as_retriable(platform: Platform) -> None:
    platform.gate = anyio.Event()  # never set during the request
    async with connect(platform, timeout=0.2) as slow:
        with pytest.raises(TokenEndpointUnavailable, match="unreachable"):
            await slow.provider.token()
    assert slow.outcomes == ["unavailable"]


# --- secrets -------------------------------------------------------------------------------


async def test_no_secret_or_token_in_any_message_or_repr(
    platform: Platform, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await client.provider.token()
    value = token.value.get_secret_value()
    # A provider that echoes what it was sent must not carry the secret into our messages.
    platform.replies += [
        Scripted(400, entra_error(50000, "invalid_client", f"bad client_secret {SECRET}")),
        Scripted(400, entra_error(50001, "invalid_client", f"secret was {SECRET} here")),
        Scripted(400, entra_error(90024, "temporarily_unavailable", f"busy, Bearer {value}")),
        Scripted(401, orjson.dumps({"error": "invalid_client", "error_description": SECRET})),
        Scripted(429, b"", {"Retry-After": SECRET}),
        Scripted(500, SECRET.encode()),
    ]
    errors: list[AuthError] = []
    for _ in range(len(platform.replies)):
        with pytest.raises(AuthError) as caught:
            await client.provider.renew(client.provider.current)
        errors.append(caught.value)
    async with connect(platform, token_url=f"http://127.0.0.1:{free_port()}/token") as refused:
        with pytest.raises(AuthError) as caught:
            await refused.provider.token()
        errors.append(caught.value)

    texts: list[Any] = [repr(token), str(token), repr(client.provider), repr(client.session)]
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            texts += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    texts += [record.getMessage() for record in caplog.records]
    for text in texts:
        assert SECRET not in text
        assert value not in text
    assert len(errors) == 7


async def test_an_auth0_403_for_the_audience_is_rejected_with_that_fix(platform: Platform) -> None:
    body = {"error": "access_denied", "error_description": "Service not enabled within domain"}
    platform.replies.append(Scripted(403, orjson.dumps(body)))
    grant = ClientCredentials(
        platform.url("/token"), CLIENT_ID, SecretStr(SECRET), audience="https://x", as_json=True
    )
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider(session, grant)
        with pytest.raises(CredentialsRejected) as caught:
            await provider.token()
    assert "check the audience" in str(caught.value)
    assert "Service not enabled within domain" in str(caught.value)
    assert caught.value.status == 403
