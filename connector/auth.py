"""OAuth2 client credentials (the Microsoft Entra ID shape) and the aiohttp auth middleware.

Owns one credential's bearer token: getting it from the token endpoint, caching it, renewing it
`skew_seconds` before it expires and after a 401, and turning token-endpoint failures into the
connector's errors (`CredentialsRejected` with the fix the AADSTS code calls for, or the
retriable `TokenEndpointUnavailable`). `BearerAuth` puts the token on every request of a session
and retries a 401 once with a renewed token. The token request goes through `connector.http.send`
(never redirected, body capped); `auth_error` turns that layer's failures into auth errors by
their `retriable` flag. Every token issued and every configured secret is registered with
`connector.logs.register_secret`, so an API that echoes one never gets it into a log line or a
dead letter.

Must not: retry the token endpoint by itself (the caller backs off; a failed refresh reaches every
waiter once), send the token request through the auth middleware (it would recurse), touch the
session's default headers, or put a client secret or a token value into any message or repr.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import aiohttp
import anyio
import orjson
from aiohttp import hdrs
from pydantic import SecretStr

from connector.errors import ApiError, AuthError, CredentialsRejected, TokenEndpointUnavailable
from connector.http import send
from connector.logs import get_logger, redact, register_secret

if TYPE_CHECKING:
    from collections.abc import Callable

    from connector.ratelimit import Clock

__all__ = [
    "BearerAuth",
    "ClientCredentials",
    "Grant",
    "RefreshOutcome",
    "Token",
    "TokenProvider",
    "auth_error",
]

log = get_logger(__name__)

RefreshOutcome = Literal["success", "rejected", "unavailable"]

# What to fix for each AADSTS code that a human has to act on. Microsoft advises reacting to
# `error` rather than to these numbers, which may change; an unknown number falls back to the
# provider's own description, so a change costs clarity, never correctness.
_FIXES: Final[dict[int, str]] = {
    7000215: (
        "invalid client secret: re-copy the client secret value, not its ID; "
        "if it expired, create a new one"
    ),
    7000222: "the client secret has expired: create a new client secret and configure its value",
    700016: (
        "application not found: re-copy the client ID exactly (watch a letter O vs a zero 0) "
        "and check the tenant in token_url"
    ),
    90002: (
        "tenant not found: check the tenant (directory name or ID) in token_url, "
        "e.g. .../buildingminds.onmicrosoft.com/oauth2/v2.0/token"
    ),
    1002012: "the scope must end with /.default: append /.default to the scope value",
    70011: "invalid scope: use the scope value as provided, with /.default appended",
    90014: (
        "a required field is missing: set client_id, client_secret and scope; use the scope "
        "value as provided, with /.default appended"
    ),
    900144: (
        "the token request is missing a parameter: set client_id, client_secret and scope; "
        "use the scope value as provided, with /.default appended"
    ),
    500011: (
        "the scope names a resource that does not exist in this tenant: use the scope value "
        "as provided, with /.default appended, and check the tenant in token_url"
    ),
}
# Throttling and budget codes: transient, so retriable like a 429.
_TRANSIENT_CODES: Final = frozenset({90024, 90055})
_AADSTS = re.compile(r"AADSTS(\d+)")


@dataclass(frozen=True)
class Token:
    """A bearer token. `value` is a `SecretStr`, so neither repr nor str shows it."""

    value: SecretStr
    expires_at: float
    """When the token expires, on the provider's monotonic clock."""
    expires_at_wall: float
    """When the token expires, as unix time (for the token_expiry_timestamp_seconds gauge)."""

    scheme: str = "Bearer"
    """The `Authorization` scheme: `Bearer`, or e.g. Bimplus's legacy `BimPlus`."""

    def header(self) -> str:
        """The `Authorization` header value: `<scheme> <value>`."""
        return f"{self.scheme} {self.value.get_secret_value()}"


class Grant(Protocol):
    """How one kind of credential asks its token endpoint for a token.

    The provider owns caching, single-flight renewal and error mapping; a grant only says what
    to send and learns what came back. Implementations: `ClientCredentials` here, the BIMlink
    refresh-token grant and the Bimplus grants in their source modules.
    """

    @property
    def token_url(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def scheme(self) -> str:
        """The token type the endpoint must issue (compared case-insensitively), and the
        scheme of the `Authorization` header."""
        ...

    @property
    def as_json(self) -> bool:
        """Send the fields as a JSON body (Auth0) rather than a form (OAuth2's default)."""
        ...

    def fields(self) -> dict[str, str]:
        """The request's fields, secrets included. Called once per token request."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Values to mask should a server echo them back into an error message."""
        ...

    def accepted(self, payload: dict[str, Any]) -> None:
        """Sees every successful token response (e.g. to keep a rotated refresh token)."""
        ...

    def fix(self, error: str, status: int) -> str | None:
        """What the user should do about an OAuth2 `error` code, where the grant knows."""
        ...


@dataclass(frozen=True)
class ClientCredentials:
    """OAuth2 client credentials: Entra ID's form with `scope`, or Auth0's JSON with `audience`."""

    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    audience: str | None = None
    as_json: bool = False
    scheme: str = "Bearer"

    def fields(self) -> dict[str, str]:
        fields = {
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value(),
        }
        if self.scope is not None:
            fields["scope"] = self.scope
        if self.audience is not None:
            fields["audience"] = self.audience
        fields["grant_type"] = "client_credentials"
        return fields

    def secrets(self) -> tuple[str, ...]:
        return (self.client_secret.get_secret_value(),)

    def accepted(self, payload: dict[str, Any]) -> None:
        del payload

    def fix(self, error: str, status: int) -> str | None:
        del status
        if error == "access_denied" and self.audience is not None:
            return (
                "access denied: check the audience (the API identifier the platform gave you) "
                "and that the client ID and secret belong to a machine user allowed to use it"
            )
        if error in ("invalid_client", "unauthorized_client", "access_denied"):
            return "the client ID or secret was refused: re-copy both from the platform's console"
        if error == "invalid_scope":
            return "the scope or audience was refused: use the value the platform gave you"
        return None


class TokenProvider:
    """Gets, caches and renews one credential's token.

    Single-flight: one request to the token endpoint at a time, however many callers. Callers
    that arrive while a request runs wait for it and share its outcome, success or error.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        grant: Grant,
        *,
        skew_seconds: float = 300.0,
        clock: Clock = time.monotonic,
        on_refresh: Callable[[str], None] | None = None,
    ) -> None:
        """`grant` says what to send (Entra's scope must already end in `/.default`).

        `on_refresh(outcome)` is called once per token-endpoint call with "success",
        "rejected" or "unavailable" (after a success, `current` is already the new token);
        it must not raise. Raises `ValueError` for a negative `skew_seconds`.
        """
        if skew_seconds < 0:
            raise ValueError(f"skew_seconds must be >= 0, got {skew_seconds}")
        self._session = session
        self._grant = grant
        self._token_url = grant.token_url
        self._client_id = grant.client_id
        self._skew = skew_seconds
        self._clock = clock
        self._on_refresh = on_refresh
        self._token: Token | None = None
        self._refresh_at = -math.inf  # when the cached token stops being handed out
        self._lock = anyio.Lock()
        # Bumped after every finished token-endpoint call; a caller that waited on the lock
        # and sees it moved takes that call's outcome instead of making another one.
        self._generation = 0
        self._last_error: Exception | None = None
        for secret in grant.secrets():  # the configured secrets, masked from the start
            register_secret(secret)

    def __repr__(self) -> str:
        return f"TokenProvider(token_url={self._token_url!r}, client_id={self._client_id!r})"

    @property
    def current(self) -> Token | None:
        """The cached token, even if it is due for renewal; None before the first success."""
        return self._token

    async def token(self) -> Token:
        """The cached token, or a new one when none is cached or it expires within the skew.

        Raises `CredentialsRejected` (fatal: the config needs a fix) or
        `TokenEndpointUnavailable` (retriable: back off and call again).
        """
        cached = self._token
        if cached is not None and self._clock() < self._refresh_at:
            return cached
        return await self._refresh()

    async def renew(self, failed: Token | None) -> Token:
        """After a 401 with `failed`: a new token, unless the cache already moved past `failed`.

        Only the first caller holding the cached token causes a token request; every other
        caller of the same wave gets that newer token. Raises as `token()` does.
        """
        if failed is None or failed is not self._token:
            return await self.token()
        return await self._refresh()

    async def _refresh(self) -> Token:
        seen = self._generation
        async with self._lock:
            if self._generation != seen:
                # Another caller's request finished while this one waited: share its outcome.
                if self._last_error is not None:
                    raise _replay(self._last_error)
                assert self._token is not None  # noqa: S101 - a success always caches a token
                return self._token
            try:
                token, refresh_at = await self._request()
            except Exception as exc:
                self._last_error = exc
                self._generation += 1
                if isinstance(exc, CredentialsRejected):
                    self._report("rejected")
                elif isinstance(exc, TokenEndpointUnavailable):
                    self._report("unavailable")
                raise
            # Cancellation skips both branches: the next waiter then makes its own request.
            self._token, self._refresh_at, self._last_error = token, refresh_at, None
            self._generation += 1
            # Reported after caching, so the callback already sees the new token as `current`.
            self._report("success")
            return token

    async def _request(self) -> tuple[Token, float]:
        """One call to the token endpoint: the token and when it is due for renewal."""
        fields = self._grant.fields()
        body: dict[str, Any] = {"json": fields} if self._grant.as_json else {"data": fields}
        started, started_wall = self._clock(), time.time()
        try:
            # middlewares=() overrides the session's middlewares for this one request, so the
            # token request never passes through BearerAuth and cannot recurse into it. `send`
            # never follows a redirect: the form carries the secret.
            answer = await send(
                self._session, "POST", self._token_url, what=f"token endpoint {self._token_url}",
                headers={hdrs.ACCEPT: "application/json"}, middlewares=(), **body,
            )  # fmt: skip
        except ApiError as exc:
            raise auth_error(exc, self._scrub) from exc
        finally:
            # Registered before anything can log: a server may echo what it was sent.
            for secret in self._grant.secrets():
                register_secret(secret)
        if answer.ok:
            return self._parse_token(answer.body, answer.status, started, started_wall)
        raise self._error_for(answer.status, answer.body, answer.headers.get(hdrs.RETRY_AFTER))

    def _parse_token(
        self, body: bytes, status: int, started: float, wall: float
    ) -> tuple[Token, float]:
        payload = _json_object(body)
        value = payload.get("access_token") if payload else None
        expires_in = _seconds(payload.get("expires_in")) if payload else None
        scheme = self._grant.scheme
        token_type = str(payload.get("token_type", scheme)) if payload else ""
        if not isinstance(value, str) or not value or expires_in is None:
            raise TokenEndpointUnavailable(
                f"token endpoint {self._token_url} answered {status} without a usable token "
                "(expected JSON with access_token and a positive expires_in)",
                status=status,
            )
        if token_type.lower() != scheme.lower():
            raise TokenEndpointUnavailable(
                f"token endpoint {self._token_url} issued a {token_type!r} token, not {scheme}",
                status=status,
            )
        # A short-lived token would otherwise be due for renewal the moment it arrives.
        skew = self._skew if expires_in >= 2 * self._skew else expires_in / 4
        # Times count from before the request: the token cannot have been issued earlier.
        register_secret(value)  # from now on masked in every log line and dead letter
        token = Token(
            value=SecretStr(value),
            expires_at=started + expires_in,
            expires_at_wall=wall + expires_in,
            scheme=scheme,
        )
        assert payload is not None  # noqa: S101 - checked above with the access token
        self._grant.accepted(payload)
        return token, started + expires_in - skew

    def _error_for(self, status: int, body: bytes, retry_after: str | None) -> AuthError:
        where = f"token endpoint {self._token_url}"
        if status in (400, 401, 403):  # OAuth2 error bodies; Auth0 answers 403 for an audience
            payload = _json_object(body) or {}
            error = str(payload.get("error") or "")
            description = str(payload.get("error_description") or "")
            code = _aadsts_code(payload.get("error_codes"), description)
            label = f"AADSTS{code}" if code is not None else None
            summary = self._scrub(description.splitlines()[0].strip()) if description else ""
            if error == "temporarily_unavailable" or code in _TRANSIENT_CODES:
                return TokenEndpointUnavailable(
                    f"{where} is throttling or temporarily unavailable ({label or error}): "
                    f"{summary or 'try again later'}",
                    code=label,
                    status=status,
                )
            fix = _FIXES.get(code) if code is not None else None
            if fix is None and code is None and error and (hint := self._grant.fix(error, status)):
                fix = f"{hint} ({summary})" if summary else hint
            if fix is None:
                fix = summary or (
                    f"answered {status} {error or 'without an Entra error body'}; "
                    "check token_url, client_id, client_secret and scope"
                )
            tag = ", ".join(part for part in (label, error) if part)
            return CredentialsRejected(
                f"{where} rejected client_id {self._client_id!r}"
                f"{f' ({tag})' if tag else ''}: {fix}",
                code=label,
                status=status,
            )
        if status in (408, 425, 429) or status >= 500:
            wait = f"; Retry-After: {self._scrub(retry_after)}" if retry_after else ""
            return TokenEndpointUnavailable(
                f"{where} answered {status}{wait}; retry with backoff", status=status
            )
        if 400 <= status < 500:
            return CredentialsRejected(
                f"{where} answered {status}: check token_url (tenant and path)", status=status
            )
        return TokenEndpointUnavailable(f"{where} answered unexpected {status}", status=status)

    def _scrub(self, text: str) -> str:
        """Text from outside, with the secret (should a server echo it) and tokens masked."""
        for secret in self._grant.secrets():
            if secret:
                text = text.replace(secret, "***")
        return redact(text)

    def _report(self, outcome: RefreshOutcome) -> None:
        if outcome != "success":
            log.warning("token request failed: %s", outcome, extra={"token_url": self._token_url})
        if self._on_refresh is not None:
            self._on_refresh(outcome)


def auth_error(exc: ApiError, scrub: Callable[[str], str] = redact) -> AuthError:
    """A failure of a token endpoint (or OIDC discovery) request as the auth error with the
    same `retriable` flag: `TokenEndpointUnavailable` (back off) or `CredentialsRejected`
    (a redirect, a certificate, a URL: the configuration needs a fix)."""
    kind = TokenEndpointUnavailable if exc.retriable else CredentialsRejected
    return kind(scrub(str(exc)), status=exc.status)


def _replay(error: Exception) -> Exception:
    """A fresh copy of another caller's error, so no two tasks raise (and grow) one instance."""
    if isinstance(error, AuthError):
        copy = type(error)(str(error), code=error.code, status=error.status)
        copy.__cause__ = error.__cause__
        copy.__suppress_context__ = True
        return copy
    return error


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _seconds(value: object) -> float | None:
    """A positive, finite `expires_in`; Entra v1 endpoints send it as a string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < math.inf else None


def _aadsts_code(codes: object, description: str) -> int | None:
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return codes[0]
    match = _AADSTS.search(description)
    return int(match.group(1)) if match else None


class BearerAuth:
    """aiohttp client middleware: sets Authorization on every request of the session.

    On a renewal status (default {401}) it renews the token (only if the failed token is still
    the current one) and retries the request once. A second 401 is returned to the caller as
    is. Token-endpoint failures propagate as `AuthError`. The request body must be re-sendable
    (bytes, str, JSON; not a one-shot stream).
    """

    def __init__(
        self, provider: TokenProvider, *, renew_on: frozenset[int] = frozenset({401})
    ) -> None:
        self._provider = provider
        self._renew_on = renew_on

    def __repr__(self) -> str:
        return f"BearerAuth({self._provider!r}, renew_on={sorted(self._renew_on)})"

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Send `request` with the current token; on a renewal status, renew and resend once.

        Raises `CredentialsRejected` / `TokenEndpointUnavailable` when no token can be had.
        """
        token = await self._provider.token()
        request.headers[hdrs.AUTHORIZATION] = token.header()
        response = await handler(request)
        if response.status not in self._renew_on:
            return response
        # Give the connection back before the retry, or a wave of 401s holds the whole pool.
        response.release()
        fresh = await self._provider.renew(token)
        request.headers[hdrs.AUTHORIZATION] = fresh.header()
        return await handler(request)
