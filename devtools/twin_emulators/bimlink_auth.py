"""The BIMlink emulator's IdentityServer: authorization codes with PKCE, JWT-shaped access
tokens, rotating refresh tokens with a sliding lifetime.

Owns the OAuth2 rules of the emulated auth server (as BIMlink's public quickstart gives them):
`GET /connect/authorize` decisions (which redirect, or which error page when no redirect
can be trusted) and `POST /connect/token` for the `authorization_code` and `refresh_token`
grants, with OAuth2 errors `{error, error_description}`. What the public documentation does not
say is modelled on IdentityServer's defaults (inferred): codes live 300 s and are single use,
PKCE with S256 is required, refresh tokens are one-time use (each use returns a new one and
revokes the old) with a sliding lifetime reset at every use, client errors are 400s.

Must not: know about HTTP (the caller turns results into responses), read the clock itself
(every method takes `now`), or put a client secret or token into a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from twin_emulators.jwt import JwtSigner, b64url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "DEMO_CLIENT",
    "KNOWN_SCOPES",
    "AccessGrant",
    "AuthServer",
    "OAuthClient",
    "OAuthProblem",
    "b64url",
]

API_SCOPE: Final = "bimlink_publicapi"
OFFLINE_SCOPE: Final = "offline_access"
KNOWN_SCOPES: Final = frozenset({API_SCOPE, OFFLINE_SCOPE, "openid", "email"})
ISSUER: Final = "https://api.bimlink.nl"


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """A registered application: its secret (None: a public client, PKCE only), the redirect
    URIs whitelisted for it (compared exactly), and whether it may have refresh tokens (a
    client without offline access gets none, even when it asks for offline_access)."""

    client_id: str
    client_secret: str | None = field(repr=False)
    redirect_uris: frozenset[str]
    refresh_tokens: bool = True


DEMO_CLIENT: Final = OAuthClient(
    "demo-client",
    "demo-secret",  # the documented demo credential of a local emulator, not a real secret
    frozenset({"http://127.0.0.1:8765/callback"}),
)


@dataclass(frozen=True, slots=True)
class OAuthProblem:
    """A refused request: OAuth2's `error` and a description; `status` for the token endpoint
    and for authorize errors shown on the server's own page (no redirect)."""

    error: str
    description: str
    status: int = 400

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class _Code:
    client_id: str
    user_id: str
    redirect_uri: str
    scopes: frozenset[str]
    challenge: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What an access token stands for."""

    user_id: str
    client_id: str
    scopes: frozenset[str]
    expires_at: float
    serial: int  # issue order, shared with refresh tokens (what `revoked-tokens` revokes)


@dataclass(slots=True)
class _Refresh:
    user_id: str
    client_id: str
    scopes: frozenset[str]
    expires_at: float
    serial: int


class AuthServer:
    """Issues codes and tokens to known clients on behalf of the emulator's users."""

    def __init__(
        self,
        clients: Iterable[OAuthClient],
        *,
        access_lifetime: int,
        refresh_lifetime: int,
        code_lifetime: int = 300,
        wall: Callable[[float], float],
        emails: Mapping[str, str] | None = None,
    ) -> None:
        """`wall(now)` turns the emulator's clock into unix time (for `exp` and `iat`)."""
        self.clients = {c.client_id: c for c in clients}
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.code_lifetime = code_lifetime
        self._wall = wall
        self._emails = dict(emails or {})
        self._signer = JwtSigner()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, AccessGrant] = {}
        self._refresh: dict[str, _Refresh] = {}
        self.next_serial = 0

    # -- /connect/authorize --------------------------------------------------------------

    def authorize(
        self, query: Mapping[str, str], *, user_id: str, approve: bool, now: float
    ) -> str | OAuthProblem:
        """The URL to redirect the browser to (with a code or an error), or the problem to show
        on the server's own page when the redirect URI cannot be trusted."""
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            return OAuthProblem("unauthorized_client", "Unknown client or client not enabled")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return OAuthProblem(
                "invalid_request",
                f"Invalid redirect_uri {redirect_uri!r}: it is not whitelisted for client "
                f"{client.client_id!r}",
            )
        state = query.get("state")

        def back(**params: str) -> str:
            if state is not None:
                params["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            return f"{redirect_uri}{sep}{urlencode(params)}"

        problem = _authorize_problem(query)
        if problem is not None:
            return back(error=problem.error, error_description=problem.description)
        if not approve:
            return back(error="access_denied", error_description="The user denied access")
        scopes = frozenset(query["scope"].split())
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(
            client.client_id, user_id, redirect_uri, scopes, query["code_challenge"],
            now + self.code_lifetime,
        )  # fmt: skip
        return back(code=code, scope=" ".join(sorted(scopes)))

    # -- /connect/token ------------------------------------------------------------------

    def token(
        self,
        form: Mapping[str, str],
        *,
        now: float,
        revoked: Callable[[int], bool],
    ) -> dict[str, Any] | OAuthProblem:
        """The token response for one token request, or the problem. `revoked(serial)` says
        whether a fault profile revoked a refresh token otherwise valid."""
        grant_type = form.get("grant_type")
        if not grant_type:
            return OAuthProblem("invalid_request", "grant_type is missing")
        if grant_type not in ("authorization_code", "refresh_token"):
            return OAuthProblem("unsupported_grant_type", f"grant_type {grant_type!r}")
        client = self._client(form)
        if isinstance(client, OAuthProblem):
            return client
        if grant_type == "authorization_code":
            return self._exchange_code(form, client, now)
        return self._use_refresh(form, client, now, revoked)

    def _client(self, form: Mapping[str, str]) -> OAuthClient | OAuthProblem:
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return OAuthProblem("invalid_client", "Unknown client")
        if client.client_secret is not None:
            given = form.get("client_secret")
            if given is None or not hmac.compare_digest(
                given.encode(), client.client_secret.encode()
            ):
                return OAuthProblem("invalid_client", "Invalid client secret")
        return client

    def _exchange_code(
        self, form: Mapping[str, str], client: OAuthClient, now: float
    ) -> dict[str, Any] | OAuthProblem:
        code = self._codes.pop(form.get("code", ""), None)  # single use, even when refused
        if code is None or code.client_id != client.client_id:
            return OAuthProblem("invalid_grant", "Invalid authorization code")
        if now >= code.expires_at:
            return OAuthProblem("invalid_grant", "Authorization code is expired")
        if form.get("redirect_uri") != code.redirect_uri:
            return OAuthProblem("invalid_grant", "Invalid redirect_uri")
        verifier = form.get("code_verifier", "")
        if not 43 <= len(verifier) <= 128:
            return OAuthProblem("invalid_grant", "code_verifier must be 43-128 characters")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != code.challenge:
            return OAuthProblem("invalid_grant", "Transformed code verifier does not match")
        return self._issue(code.user_id, client.client_id, code.scopes, now)

    def _use_refresh(
        self,
        form: Mapping[str, str],
        client: OAuthClient,
        now: float,
        revoked: Callable[[int], bool],
    ) -> dict[str, Any] | OAuthProblem:
        handle = form.get("refresh_token", "")
        grant = self._refresh.get(handle)
        if grant is None or grant.client_id != client.client_id or revoked(grant.serial):
            return OAuthProblem("invalid_grant", "Invalid refresh token")
        if now >= grant.expires_at:
            del self._refresh[handle]
            return OAuthProblem("invalid_grant", "Refresh token expired")
        del self._refresh[handle]  # one-time use: the response carries its successor
        return self._issue(grant.user_id, grant.client_id, grant.scopes, now)

    def _issue(
        self, user_id: str, client_id: str, scopes: frozenset[str], now: float
    ) -> dict[str, Any]:
        serial = self._serial()
        self._drop_expired(now)
        jti = secrets.token_hex(16)
        exp = int(self._wall(now + self.access_lifetime))
        claims: dict[str, Any] = {
            "iss": ISSUER, "nbf": int(self._wall(now)), "iat": int(self._wall(now)),
            "exp": exp, "aud": API_SCOPE, "client_id": client_id, "sub": user_id,
            "scope": sorted(scopes), "jti": jti,
        }  # fmt: skip
        access = self._jwt(claims)
        self._access[access] = AccessGrant(
            user_id, client_id, scopes, now + self.access_lifetime, serial
        )
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_lifetime,
            "token_type": "Bearer",
            "scope": " ".join(sorted(scopes)),
        }
        if OFFLINE_SCOPE in scopes and self.clients[client_id].refresh_tokens:
            handle = secrets.token_urlsafe(32)
            self._refresh[handle] = _Refresh(
                user_id, client_id, scopes, now + self.refresh_lifetime, serial
            )
            body["refresh_token"] = handle
        if "openid" in scopes:
            id_claims = {k: claims[k] for k in ("iss", "iat", "exp", "sub")}
            id_claims["aud"] = client_id
            if "email" in scopes and user_id in self._emails:
                id_claims["email"] = self._emails[user_id]
            body["id_token"] = self._jwt(id_claims)
        return body

    def _serial(self) -> int:
        serial = self.next_serial
        self.next_serial += 1
        return serial

    def _jwt(self, claims: dict[str, Any]) -> str:
        return self._signer.sign(claims)

    # -- the API's view ------------------------------------------------------------------

    def resolve(self, authorization: str | None, now: float) -> AccessGrant | str:
        """The grant behind an `Authorization: Bearer` header, or why it is refused."""
        if not authorization:
            return "missing access token"
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "invalid authorization header; expected 'Bearer <token>'"
        grant = self._access.get(value.strip())
        if grant is None:
            return "invalid access token"
        if now >= grant.expires_at:
            return "the access token expired"
        return grant

    def revoke_refresh_tokens(self, user_id: str | None = None) -> int:
        """Revoke the refresh tokens of `user_id` (None: everyone's); how many were revoked."""
        doomed = [h for h, g in self._refresh.items() if user_id in (None, g.user_id)]
        for handle in doomed:
            del self._refresh[handle]
        return len(doomed)

    def refresh_tokens_alive(self, now: float) -> int:
        return sum(now < g.expires_at for g in self._refresh.values())

    def _drop_expired(self, now: float) -> None:
        for store in (self._access, self._refresh, self._codes):
            expired = [k for k, v in store.items() if now >= v.expires_at]
            for key in expired:
                del store[key]


def _authorize_problem(query: Mapping[str, str]) -> OAuthProblem | None:  # noqa: PLR0911 - one per check
    """What is wrong with an authorize request from a known client and whitelisted redirect
    URI; such problems go back to the client as `?error=...`."""
    if query.get("response_type") != "code":
        return OAuthProblem("unsupported_response_type", "Only response_type=code is supported")
    scopes = set(query.get("scope", "").split())
    unknown = scopes - KNOWN_SCOPES
    if not scopes or unknown:
        return OAuthProblem("invalid_scope", f"Invalid scope: {' '.join(sorted(unknown))}")
    if API_SCOPE not in scopes:
        return OAuthProblem("invalid_scope", f"The scope must include {API_SCOPE}")
    if "email" in scopes and "openid" not in scopes:
        return OAuthProblem("invalid_scope", "The email scope needs the openid scope")
    if not query.get("code_challenge"):
        return OAuthProblem("invalid_request", "code challenge required")
    if query.get("code_challenge_method") != "S256":
        return OAuthProblem("invalid_request", "Transform algorithm not supported: use S256")
    return None
