"""The state of one emulated BuildingMinds tenant, and the options that shape it.

Owns `EmulatorOptions` (validated once), `EmulatorState` (the ingestion pipeline, token issuer,
rate limiter, fault injector and request log of one tenant, reachable as `app[STATE_KEY]`) and
the mapping of the injected clock to wall-clock timestamps.

Must not: handle requests, or read the clock anywhere but through `EmulatorState.clock`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from connector.logs import get_logger
from twin_emulators.buildingminds_auth import DEMO_CLIENT, TokenIssuer
from twin_emulators.buildingminds_ingest import Ingest
from twin_emulators.faults import FaultInjector, FaultSettings
from twin_emulators.limits import RateLimiter
from twin_emulators.requestlog import REQUEST_LOG_SIZE, LogEntry, iso_utc

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from twin_emulators.buildingminds_auth import ClientCredential

__all__ = [
    "DEFAULT_TENANT",
    "STATE_KEY",
    "EmulatorOptions",
    "EmulatorState",
]

log = get_logger(__name__)

DEFAULT_TENANT: Final = "buildingminds.onmicrosoft.com"  # the production token URL's tenant


@dataclass(frozen=True)
class EmulatorOptions:
    """Everything that shapes one emulator instance. Raises ValueError on nonsense values."""

    rate_limit_requests: int = 100
    rate_limit_seconds: float = 60.0
    token_lifetime_seconds: int = 3599
    processing_delay_seconds: float = 2.0
    fault_profile: str = "none"
    fault_rate: float | None = None  # None: the profile's default share
    seed: int = 0
    clients: Sequence[ClientCredential] = (DEMO_CLIENT,)
    max_body_bytes: int = 16 * 1024 * 1024
    async_failure_marker: str = "__fail_async__"
    # The directories the token endpoint knows, as `/{tenant}/oauth2/v2.0/token` names them
    # (compared without regard to case, as domain names are); any other answers AADSTS90002.
    tenants: Sequence[str] = (DEFAULT_TENANT,)

    def __post_init__(self) -> None:
        if self.rate_limit_requests <= 0 or self.rate_limit_seconds <= 0:
            raise ValueError("the rate limit needs positive requests and seconds")
        if self.token_lifetime_seconds <= 0 or self.processing_delay_seconds < 0:
            raise ValueError("token lifetime must be positive, processing delay not negative")
        if not self.clients or self.max_body_bytes <= 0 or not self.async_failure_marker:
            raise ValueError("need at least one client, a positive body limit and a marker")
        object.__setattr__(self, "clients", tuple(self.clients))
        if isinstance(self.tenants, str):
            # ValueError, as every bad option: `common.bad_options` makes it a ConfigError
            raise ValueError("tenants must be a list of tenant names, not one string")  # noqa: TRY004
        tenants = tuple(self.tenants)
        if not tenants or not all(t and t.strip() == t and "/" not in t for t in tenants):
            raise ValueError("need at least one tenant name, each without spaces or '/'")
        object.__setattr__(self, "tenants", tenants)
        self.fault_settings()  # validates profile and rate

    def fault_settings(self) -> FaultSettings:
        return FaultSettings(profile=self.fault_profile, rate=self.fault_rate)

    def knows_tenant(self, tenant: str) -> bool:
        """Whether the token endpoint serves `tenant` (case-insensitive)."""
        return tenant.casefold() in {t.casefold() for t in self.tenants}


@dataclass
class EmulatorState:
    """The emulated tenant: reachable as `app[STATE_KEY]`."""

    options: EmulatorOptions
    clock: Callable[[], float]
    ingest: Ingest = field(init=False)
    tokens: TokenIssuer = field(init=False)
    limiter: RateLimiter = field(init=False)
    faults: FaultInjector = field(init=False)
    requests: deque[LogEntry] = field(init=False)
    # Wall-clock seconds at clock() == 0, so that fake clocks give plausible timestamps.
    _epoch: float = field(init=False)

    def __post_init__(self) -> None:
        options = self.options
        self._epoch = time.time() - self.clock()
        self.ingest = Ingest(
            processing_delay=options.processing_delay_seconds,
            failure_marker=options.async_failure_marker,
        )
        self.tokens = TokenIssuer(options.clients, lifetime_seconds=options.token_lifetime_seconds)
        self.limiter = RateLimiter(options.rate_limit_requests, options.rate_limit_seconds)
        self.faults = FaultInjector(options.fault_settings(), seed=options.seed, now=self.clock())
        self.requests = deque(maxlen=REQUEST_LOG_SIZE)

    def now(self) -> float:
        """The clock's time, with every record transition up to it applied."""
        now = self.clock()
        self.ingest.advance(now)
        return now

    def iso(self, at: float) -> str:
        return iso_utc(self._epoch + at)

    def clock_at(self, day: date) -> float:
        """The clock value at 00:00 UTC of `day`."""
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() - self._epoch

    def entities(self, entity: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The onboarded entities now (see `Ingest.entities`)."""
        self.now()
        return self.ingest.entities(entity)

    def set_faults(self, settings: FaultSettings) -> None:
        self.faults.configure(settings, now=self.clock(), token_serial=self.tokens.next_serial)
        log.info("fault profile switched", extra={"profile": settings.profile})

    def reset(self) -> None:
        """Forget data, the request log and rate windows; back to the configured faults.
        Issued tokens stay valid so a running client is not disturbed."""
        self.ingest.reset()
        self.limiter.reset()
        self.requests.clear()
        self.set_faults(self.options.fault_settings())


STATE_KEY: Final = web.AppKey("buildingminds_emulator", EmulatorState)
