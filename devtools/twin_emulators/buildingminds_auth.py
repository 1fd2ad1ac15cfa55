"""Who may call the BuildingMinds emulator, and how often: credentials, tokens, rate budget.

Owns the client credentials (the built-in demo one, or a `--clients` file), the Microsoft Entra
ID client-credentials grant with its AADSTS errors (Microsoft's published codes), the
opaque bearer tokens and their expiry, and the per-credential rolling-window request budget.

Must not: know about HTTP (the caller turns a `TokenError` into Entra's 400 body), read the
clock itself (every method takes `now`), or print a client secret (`repr` hides it).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from connector.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DEMO_CLIENT",
    "ClientCredential",
    "Token",
    "TokenError",
    "TokenIssuer",
    "load_clients",
    "parse_clients",
]

DEFAULT_SUFFIX = "/.default"


@dataclass(frozen=True, slots=True)
class ClientCredential:
    """One API key. `allowed_endpoints` holds endpoint names (`building`, `batch`, ...);
    None permits every endpoint."""

    client_id: str
    client_secret: str = field(repr=False)
    scope: str
    allowed_endpoints: frozenset[str] | None = None

    def permits(self, endpoint: str) -> bool:
        return self.allowed_endpoints is None or endpoint in self.allowed_endpoints


DEMO_CLIENT = ClientCredential(
    "demo-client",
    "demo-secret",  # the documented demo credential of a local emulator, not a real secret
    "api://buildingminds-emulator",
)


def parse_clients(data: Any, source: str) -> list[ClientCredential]:
    """Credentials from a list of mappings (or `{clients: [...]}`); ConfigError lists every
    problem. Keys: client_id, client_secret, scope, optional allowed_endpoints."""
    if isinstance(data, dict) and "clients" in data:
        data = data["clients"]
    if not isinstance(data, list) or not data:
        raise ConfigError([f"{source}: expected a non-empty list of client credentials"])
    problems: list[str] = []
    clients: list[ClientCredential] = []
    for index, item in enumerate(data):
        where = f"{source}: clients[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with client_id, client_secret, scope")
            continue
        unknown = sorted(set(item) - {"client_id", "client_secret", "scope", "allowed_endpoints"})
        if unknown:
            problems.append(f"{where}: unknown keys {unknown}")
        texts = {k: item.get(k) for k in ("client_id", "client_secret", "scope")}
        missing = [k for k, v in texts.items() if not isinstance(v, str) or not v.strip()]
        problems.extend(f"{where}.{k}: required, a non-empty string" for k in missing)
        endpoints = item.get("allowed_endpoints")
        if endpoints is not None and (
            not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints)
        ):
            problems.append(f"{where}.allowed_endpoints: must be a list of endpoint names")
            continue
        if missing or unknown:
            continue
        clients.append(
            ClientCredential(
                client_id=str(texts["client_id"]),
                client_secret=str(texts["client_secret"]),
                scope=str(texts["scope"]).removesuffix(DEFAULT_SUFFIX),
                allowed_endpoints=None if endpoints is None else _endpoint_names(endpoints),
            )
        )
    if problems:
        raise ConfigError(problems)
    return clients


def _endpoint_names(values: Iterable[str]) -> frozenset[str]:
    # Accept "building", "/building" and full API paths alike: keep the first path segment
    # after the API prefix.
    names = set()
    for value in values:
        path = value.strip().removeprefix("/api/digitaltwinintegration").strip("/")
        names.add(path.split("/", 1)[0])
    return frozenset(names)


def load_clients(path: Path) -> list[ClientCredential]:
    """Read a YAML or JSON file of credentials; ConfigError if unreadable or invalid."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the clients file ({exc.strerror})"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML or JSON ({exc})"]) from exc
    return parse_clients(data, str(path))


@dataclass(frozen=True, slots=True)
class TokenError:
    """A refused token request: Entra's `error`, AADSTS code and description (without the
    trace lines Entra appends; the HTTP layer adds those)."""

    error: str
    code: int
    description: str
    status: int = 400


@dataclass(frozen=True, slots=True)
class Token:
    client: ClientCredential
    expires_at: float
    serial: int  # issue order, for revoking every token issued before a moment


def _missing(name: str) -> TokenError:
    return TokenError(
        "invalid_request",
        900144,
        f"AADSTS900144: The request body must contain the following parameter: '{name}'.",
    )


class TokenIssuer:
    """Grants tokens to known clients and resolves bearer tokens back to their client."""

    def __init__(self, clients: Iterable[ClientCredential], *, lifetime_seconds: int) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.lifetime = lifetime_seconds
        self._tokens: dict[str, Token] = {}
        self.next_serial = 0

    def grant(
        self, form: Mapping[str, str], *, tenant: str, now: float
    ) -> tuple[str, Token] | TokenError:
        """Check a client-credentials request as Entra does; the new token or the problem."""
        checked = self._check(form, tenant)
        if isinstance(checked, TokenError):
            return checked
        self._drop_expired(now)
        token = secrets.token_urlsafe(32)
        issued = Token(checked, now + self.lifetime, self.next_serial)
        self.next_serial += 1
        self._tokens[token] = issued
        return token, issued

    def _check(self, form: Mapping[str, str], tenant: str) -> ClientCredential | TokenError:
        # Entra's order: the form's shape, then the application, then its secret, then scope.
        problem = _form_problem(form)
        if problem is not None:
            return problem
        client = self.clients.get(form["client_id"])
        if client is None:
            return TokenError(
                "unauthorized_client",
                700016,
                f"AADSTS700016: Application with identifier '{form['client_id']}' was not "
                f"found in the directory '{tenant}'. This can happen if the application has "
                "not been installed by the administrator of the tenant or consented to by any "
                "user in the tenant. You may have sent your authentication request to the "
                "wrong tenant.",
            )
        return (
            _secret_problem(form.get("client_secret"), client)
            or _scope_problem(form["scope"], client)
            or client
        )

    def resolve(self, authorization: str | None, now: float) -> Token | str:
        """The token behind an `Authorization: Bearer` header, or why it is refused."""
        if not authorization:
            return "Access denied due to missing access token."
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "Access denied due to invalid authorization header; expected 'Bearer <token>'."
        token = self._tokens.get(value.strip())
        if token is None:
            return "Access denied due to invalid access token."
        if now >= token.expires_at:
            return "Access denied due to expired access token. Request a new token."
        return token

    def _drop_expired(self, now: float) -> None:
        # Keeps memory flat for clients that fetch a token per request; cheap because only
        # a handful of tokens are alive at once.
        expired = [t for t, info in self._tokens.items() if now >= info.expires_at]
        for t in expired:
            del self._tokens[t]


def _form_problem(form: Mapping[str, str]) -> TokenError | None:
    grant_type = form.get("grant_type")
    if grant_type is None:
        return _missing("grant_type")
    if grant_type != "client_credentials":
        return TokenError(
            "unsupported_grant_type",
            70003,
            f"AADSTS70003: The app requested an unsupported grant type '{grant_type}'.",
        )
    for name in ("client_id", "scope"):
        if name not in form:
            return _missing(name)
    return None


def _secret_problem(secret: str | None, client: ClientCredential) -> TokenError | None:
    if secret is None:
        return TokenError(
            "invalid_client",
            7000218,
            "AADSTS7000218: The request body must contain the following parameter: "
            "'client_assertion' or 'client_secret'.",
        )
    if not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
        return TokenError(
            "invalid_client",
            7000215,
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
            "the request is the client secret value, not the client secret ID, for a secret "
            f"added to app '{client.client_id}'.",
        )
    return None


def _scope_problem(scope: str, client: ClientCredential) -> TokenError | None:
    if not scope.strip():
        return TokenError(
            "invalid_scope",
            70011,
            "AADSTS70011: The provided request must include a 'scope' input parameter. "
            "The provided value for the input parameter 'scope' is not valid.",
        )
    if not scope.endswith(DEFAULT_SUFFIX):
        return TokenError(
            "invalid_scope",
            1002012,
            f"AADSTS1002012: The provided value for scope {scope} is not valid. Client "
            "credential flows must have a scope value with /.default suffixed to the resource "
            "identifier (application ID URI).",
        )
    if scope.removesuffix(DEFAULT_SUFFIX) != client.scope:
        return TokenError(
            "invalid_scope",
            70011,
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid. "
            f"The scope {scope} is not valid.",
        )
    return None
