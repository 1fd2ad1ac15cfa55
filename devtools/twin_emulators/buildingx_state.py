"""The state of one emulated Building X tenant: options, machine users, Auth0 tokens, stores.

Owns `BuildingXOptions` (validated once), the machine users (the built-in demo one or a
`--clients` file), the Auth0 client-credentials grant with its errors, the access tokens it
issues (JWTs, HS256 with a key of the emulator's own, carrying `exp`, as the developer guide
says Building X tokens do) and their verification, and `BuildingXState` (reachable as
`app[STATE_KEY]`), which ties them to the stores of `buildingx_model`, the request budget and
the fault injector shared with the BuildingMinds emulator.

Must not: know about HTTP (a refused grant is a `GrantError` the caller renders), read the
clock other than through `BuildingXState.clock`, or show a client secret in a repr.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml
from aiohttp import web

from connector.errors import ConfigError
from twin_emulators.buildingx_model import PointValues, Structure
from twin_emulators.faults import FaultInjector, FaultSettings
from twin_emulators.jwt import JwtSigner
from twin_emulators.limits import RateLimiter
from twin_emulators.requestlog import REQUEST_LOG_SIZE, LogEntry, iso_utc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "AUDIENCE",
    "DEMO_PARTITION",
    "DEMO_USER",
    "STATE_KEY",
    "BuildingXOptions",
    "BuildingXState",
    "GrantError",
    "Granted",
    "MachineUser",
    "load_users",
]

AUDIENCE: Final = "https://horizon.siemens.com"
DEMO_PARTITION: Final = "demo-partition"


@dataclass(frozen=True, slots=True)
class MachineUser:
    """A Building X machine user: credentials and the partitions it may use."""

    client_id: str
    client_secret: str = field(repr=False)
    partitions: frozenset[str]


DEMO_USER = MachineUser(
    "demo-client",
    "demo-secret",  # the documented demo credential of a local emulator, not a real secret
    frozenset({DEMO_PARTITION}),
)


def load_users(path: Path) -> list[MachineUser]:
    """A YAML/JSON list of `client_id`, `client_secret`, `partitions`; ConfigError lists every
    problem."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read the clients file ({exc})"]) from exc
    if isinstance(data, dict) and "clients" in data:
        data = data["clients"]
    if not isinstance(data, list) or not data:
        raise ConfigError([f"{path}: expected a non-empty list of machine users"])
    problems: list[str] = []
    users: list[MachineUser] = []
    for index, item in enumerate(data):
        where = f"{path}: clients[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with client_id, client_secret, partitions")
            continue
        texts = [item.get("client_id"), item.get("client_secret")]
        partitions = item.get("partitions")
        if not all(isinstance(t, str) and t for t in texts):
            problems.append(f"{where}: client_id and client_secret must be non-empty strings")
        elif not isinstance(partitions, list) or not all(isinstance(p, str) for p in partitions):
            problems.append(f"{where}.partitions: must be a list of partition ids")
        else:
            users.append(MachineUser(str(texts[0]), str(texts[1]), frozenset(partitions)))
    if problems:
        raise ConfigError(problems)
    return users


@dataclass(frozen=True)
class BuildingXOptions:
    """Everything that shapes one emulator instance. Raises ValueError on nonsense values."""

    rate_limit_requests: int = 10  # per client and API, as the developer guide says
    rate_limit_seconds: float = 1.0
    token_lifetime_seconds: int = 86400
    audience: str = AUDIENCE
    fault_profile: str = "none"
    fault_rate: float | None = None
    seed: int = 0
    users: Sequence[MachineUser] = (DEMO_USER,)
    known_points: frozenset[str] | None = None  # None: every point id exists
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.rate_limit_requests <= 0 or self.rate_limit_seconds <= 0:
            raise ValueError("the rate limit needs positive requests and seconds")
        if self.token_lifetime_seconds <= 0 or not self.users or self.max_body_bytes <= 0:
            raise ValueError("need a positive token lifetime and body limit, and a machine user")
        object.__setattr__(self, "users", tuple(self.users))
        self.fault_settings()  # validates profile and rate

    def fault_settings(self) -> FaultSettings:
        return FaultSettings(profile=self.fault_profile, rate=self.fault_rate)


@dataclass(frozen=True, slots=True)
class GrantError:
    """A refused token request, as Auth0 answers it."""

    status: int
    error: str
    description: str


@dataclass(frozen=True, slots=True)
class Token:
    user: MachineUser
    expires_at: float  # on the emulator's clock; the JWT's `exp` is the same moment
    serial: int  # issue order, for the revoked-tokens fault


@dataclass(frozen=True, slots=True)
class Granted:
    """An issued access token: the JWT, what it stands for, and the scope granted (None when
    the request asked for none)."""

    access_token: str = field(repr=False)
    token: Token
    scope: str | None


class TokenIssuer:
    """Auth0's client-credentials grant for the machine users, and bearer-token checks.

    Tokens are JWTs as Auth0 issues them for a machine-to-machine application: `iss` (the
    emulator's origin with a trailing slash, as an Auth0 tenant's), `sub` (`<client_id>@clients`),
    `aud` (the requested audience), `azp` (the client id), `iat`, `exp` (`iat` plus
    `expires_in`), `gty` (`client-credentials`), a unique `jti`, and `scope` when one was
    asked for. The API
    accepts a token only if its signature is the emulator's, it has not expired and its
    audience is the emulator's.
    """

    def __init__(
        self,
        users: Iterable[MachineUser],
        *,
        audience: str,
        lifetime: int,
        wall: Callable[[float], float],
    ) -> None:
        """`wall(now)` turns the emulator's clock into unix time (for `iat` and `exp`)."""
        self.users = {u.client_id: u for u in users}
        self.audience = audience
        self.lifetime = lifetime
        self._wall = wall
        self._signer = JwtSigner()
        self._tokens: dict[str, Token] = {}  # issued and unexpired: for the serial
        self.next_serial = 0

    def grant(self, body: Mapping[str, Any], now: float, *, issuer: str) -> Granted | GrantError:
        """Check a client-credentials request in Auth0's order; the new token or the problem.
        `issuer` is the token's `iss`."""
        refused = self._refusal(body)
        if refused is not None:
            return refused
        expired = [t for t, info in self._tokens.items() if now >= info.expires_at]
        for value in expired:
            del self._tokens[value]
        user = self.users[body["client_id"]]
        wall = self._wall(now)
        issued_at = int(wall)
        expires = issued_at + self.lifetime
        scope = body.get("scope") if isinstance(body.get("scope"), str) else None
        claims: dict[str, Any] = {
            "iss": issuer, "sub": f"{user.client_id}@clients", "aud": body["audience"],
            "iat": issued_at, "exp": expires, "azp": user.client_id, "gty": "client-credentials",
            "jti": uuid.uuid4().hex,  # two tokens of one second differ, as they are two grants
        }  # fmt: skip
        if scope:
            claims["scope"] = scope
        value = self._signer.sign(claims)
        token = Token(user, now + (expires - wall), self.next_serial)
        self.next_serial += 1
        self._tokens[value] = token
        return Granted(value, token, scope or None)

    def _refusal(self, body: Mapping[str, Any]) -> GrantError | None:  # noqa: PLR0911 - one per rule
        for name in ("grant_type", "client_id"):
            if not isinstance(body.get(name), str) or not body[name]:
                return GrantError(400, "invalid_request", f"Missing required parameter: {name}")
        if body["grant_type"] != "client_credentials":
            return GrantError(
                403, "unauthorized_client",
                f"Grant type '{body['grant_type']}' not allowed for the client.",
            )  # fmt: skip
        user = self.users.get(body["client_id"])
        if user is None:
            return GrantError(401, "invalid_client", "Client authentication failed")
        secret = body.get("client_secret")
        if not isinstance(secret, str) or not hmac.compare_digest(
            secret.encode(), user.client_secret.encode()
        ):
            return GrantError(401, "access_denied", "Unauthorized")
        audience = body.get("audience")
        if not isinstance(audience, str) or not audience:
            return GrantError(400, "invalid_request", "Missing required parameter: audience")
        if audience != self.audience:
            return GrantError(403, "access_denied", f"Service not found: {audience}")
        if "scope" in body and not isinstance(body["scope"], str):
            return GrantError(400, "invalid_request", "scope must be a string")
        return None

    def resolve(self, authorization: str | None, now: float) -> Token | str:
        """The token behind `Authorization: Bearer …`, or why it is refused: not a JWT of this
        emulator (bad signature included), expired, for another audience or client."""
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return "A bearer token is required."
        claims = self._signer.verify(value, now=self._wall(now))
        if claims == "expired":
            return "The access token has expired."
        if isinstance(claims, str):
            return "The access token is not valid."
        if claims.get("aud") != self.audience:
            return "The access token is not valid for this API."
        token = self._tokens.get(value)
        if token is None or claims.get("azp") not in self.users:
            return "The access token is not valid."
        return token


class BuildingXState:
    """The emulated tenant: reachable as `app[STATE_KEY]`.

    The structure and ingest APIs share one `RateLimiter`, keyed by "client API", so each
    client has a window per API.
    """

    def __init__(self, options: BuildingXOptions, clock: Callable[[], float]) -> None:
        self.options, self.clock = options, clock
        # wall-clock seconds at clock() == 0, so that fake clocks give plausible timestamps
        self._epoch = time.time() - clock()
        self.structure, self.values = Structure(), PointValues()
        self.tokens = TokenIssuer(
            options.users,
            audience=options.audience,
            lifetime=options.token_lifetime_seconds,
            wall=self.wall,
        )
        self.limiter = RateLimiter(options.rate_limit_requests, options.rate_limit_seconds)
        self.faults = FaultInjector(options.fault_settings(), seed=options.seed, now=clock())
        self.requests: deque[LogEntry] = deque(maxlen=REQUEST_LOG_SIZE)

    def iso(self, at: float) -> str:
        return iso_utc(self._epoch + at)

    def wall(self, at: float) -> float:
        """Unix time at clock value `at`."""
        return self._epoch + at

    def set_faults(self, settings: FaultSettings) -> None:
        self.faults.configure(settings, now=self.clock(), token_serial=self.tokens.next_serial)

    def reset(self) -> None:
        """Forget data, the request log and rate windows; back to the configured faults."""
        self.structure = Structure()
        self.values = PointValues()
        self.limiter.reset()
        self.requests.clear()
        self.set_faults(self.options.fault_settings())


STATE_KEY: Final = web.AppKey("buildingx_emulator", BuildingXState)
