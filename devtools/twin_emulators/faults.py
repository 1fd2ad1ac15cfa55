"""Fault profiles of the BuildingMinds emulator: what goes wrong, how often, reproducibly.

Owns every fault decision. The HTTP layer asks once per request (`api_fault`, `token_outage`,
`token_revoked`) and acts on the answer; nothing else decides to misbehave. Decisions come from
a `random.Random` seeded when a profile is switched on, so a given seed and request sequence
gives the same faults every run.

Profiles (`rate` is the share of requests affected; its default depends on the profile):

    none            no faults
    latency         each API request delayed uniformly in [min_latency, max_latency] s  (rate 1.0)
    errors          API requests answered 500/502/503 (error_statuses), not processed  (rate 0.2)
    resets          API requests whose connection is dropped without an answer         (rate 0.2)
    timeouts        API requests that hang `hang_seconds`, then get 504, unprocessed   (rate 0.2)
    429-storm       API requests answered 429 with Retry-After, not counted            (rate 1.0)
    token-outage    token requests answered 503 (temporarily_unavailable)              (rate 1.0)
    revoked-tokens  every token issued before the switch is answered 401 (rate unused)

`duration_seconds` (any profile) switches back to `none` after that long on the emulator's
clock. A fault is decided in front of the platform, like a gateway failing: an injected
error, reset, timeout or 429 neither changes state nor spends the credential's rate budget.

Must not: touch the network, sleep, or hold state other than the active profile and its RNG.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["PROFILES", "Fault", "FaultInjector", "FaultSettings"]

# Profile name -> its default `rate`.
PROFILES: dict[str, float] = {
    "none": 0.0,
    "latency": 1.0,
    "errors": 0.2,
    "resets": 0.2,
    "timeouts": 0.2,
    "429-storm": 1.0,
    "token-outage": 1.0,
    "revoked-tokens": 1.0,
}


_INTEGERS = frozenset({"retry_after_seconds", "seed"})


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """One fault profile and its parameters. Raises ValueError when a value makes no sense."""

    profile: str = "none"
    rate: float | None = None
    min_latency_seconds: float = 0.05
    max_latency_seconds: float = 0.5
    hang_seconds: float = 60.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    retry_after_seconds: int = 60
    duration_seconds: float | None = None
    seed: int | None = None  # None: the emulator's --seed

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"unknown fault profile {self.profile!r}; known: {', '.join(PROFILES)}"
            )
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if not 0.0 <= self.min_latency_seconds <= self.max_latency_seconds:
            raise ValueError("need 0 <= min_latency_seconds <= max_latency_seconds")
        if self.hang_seconds < 0 or self.retry_after_seconds < 0:
            raise ValueError("hang_seconds and retry_after_seconds must not be negative")
        if not self.error_statuses or any(not 500 <= s <= 599 for s in self.error_statuses):
            raise ValueError("error_statuses must be a non-empty list of 5xx statuses")
        if self.duration_seconds is not None and self.duration_seconds <= 0:
            raise ValueError("duration_seconds must be positive")

    @property
    def share(self) -> float:
        """The share of requests affected: `rate`, or the profile's default."""
        return PROFILES[self.profile] if self.rate is None else self.rate

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultSettings:
        """Build from the JSON of `POST /_emulator/faults`; ValueError names what is wrong."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "error_statuses" in values:
            statuses = values["error_statuses"]
            if not isinstance(statuses, list) or not all(isinstance(s, int) for s in statuses):
                raise ValueError("error_statuses must be a list of integers")
            values["error_statuses"] = tuple(statuses)
        for name, value in values.items():
            if value is not None and name != "error_statuses":
                _check_type(name, value)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        data["rate"] = self.share
        return data


def _check_type(name: str, value: Any) -> None:
    if name == "profile":
        expected, ok = "a string", isinstance(value, str)
    elif name in _INTEGERS:
        expected, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    else:
        expected = "a number"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{name} must be {expected}")


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one API request instead of (or before) answering it normally.

    `delay`: wait `seconds`, then answer normally. `error`: answer `status`. `reset`: drop
    the connection. `hang`: wait `seconds`, then answer 504. `throttle`: answer 429 with
    Retry-After `seconds`.
    """

    kind: Literal["delay", "error", "reset", "hang", "throttle"]
    seconds: float = 0.0
    status: int = 0


class FaultInjector:
    """The active fault profile and the decisions it makes."""

    def __init__(self, settings: FaultSettings, *, seed: int, now: float) -> None:
        self._default_seed = seed
        self.configure(settings, now=now, token_serial=0)

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def configure(self, settings: FaultSettings, *, now: float, token_serial: int) -> None:
        """Switch to `settings` at `now`. Tokens with a serial below `token_serial` were
        issued before the switch (what `revoked-tokens` revokes)."""
        self._settings = settings
        self._since = now
        self._revoke_below = token_serial
        seed = self._default_seed if settings.seed is None else settings.seed
        # Reproducible test faults, not security: a seeded PRNG is the point.
        self._rng = random.Random(seed)  # noqa: S311

    def active(self, now: float) -> FaultSettings:
        """The profile in force at `now`; a profile past its duration gives way to `none`."""
        settings = self._settings
        duration = settings.duration_seconds
        if duration is not None and now >= self._since + duration:
            self.configure(FaultSettings(seed=settings.seed), now=now, token_serial=0)
        return self._settings

    def _hit(self, settings: FaultSettings) -> bool:
        return self._rng.random() < settings.share

    def api_fault(self, now: float) -> Fault | None:
        """The fault for one API request at `now`, or None to answer it normally."""
        settings = self.active(now)
        profile = settings.profile
        if profile in ("none", "token-outage", "revoked-tokens") or not self._hit(settings):
            return None
        if profile == "latency":
            low, high = settings.min_latency_seconds, settings.max_latency_seconds
            return Fault("delay", seconds=self._rng.uniform(low, high))
        if profile == "errors":
            return Fault("error", status=self._rng.choice(settings.error_statuses))
        if profile == "resets":
            return Fault("reset")
        if profile == "timeouts":
            return Fault("hang", seconds=settings.hang_seconds)
        # 429-storm: ask the client to wait until the storm is over when that is known.
        wait: float = settings.retry_after_seconds
        if settings.duration_seconds is not None:
            wait = max(1, math.ceil(self._since + settings.duration_seconds - now))
        return Fault("throttle", seconds=wait)

    def token_outage(self, now: float) -> bool:
        """Whether a token request at `now` is answered 503."""
        settings = self.active(now)
        return settings.profile == "token-outage" and self._hit(settings)

    def token_revoked(self, serial: int, now: float) -> bool:
        """Whether a token otherwise valid is refused because `revoked-tokens` revoked it."""
        return self.active(now).profile == "revoked-tokens" and serial < self._revoke_below
