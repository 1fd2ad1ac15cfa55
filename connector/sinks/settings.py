"""What every sink's settings section shares: the credential, the session, retry and pause
timings, and the request budget. Each sink package subclasses `SinkSettings` with its `type`
and its own keys (`connector/sinks/<name>/settings.py`); `connector.config` puts them into one
union under `sink`, told apart by `type`.

Must not: import `connector.config` (it imports these).
"""

from __future__ import annotations

from pathlib import Path  # noqa: TC003 - pydantic reads the annotations at run time
from typing import ClassVar

from pydantic import SecretStr, field_validator

from connector.sections import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Section,
    existing_file,
    http_url,
)

__all__ = ["RateLimitSettings", "SinkSettings"]


class RateLimitSettings(Section):
    """The platform's request budget per credential: `requests` per rolling `per_seconds`."""

    requests: PositiveInt = 100
    per_seconds: PositiveFloat = 60.0


class SinkSettings(Section):
    """The platform the records go to (`type`), and the credential used for it."""

    required_keys: ClassVar[tuple[str, ...]] = ()
    """Keys this type needs that other types do not (their problem names the type)."""

    type: str
    base_url: str
    token_url: str
    client_id: str
    client_secret: SecretStr
    rate_limit: RateLimitSettings = RateLimitSettings()
    request_timeout_seconds: PositiveFloat = 30.0
    tls_verify: bool = True
    ca_file: Path | None = None
    token_renew_statuses: tuple[int, ...] = (401,)
    token_skew_seconds: NonNegativeFloat = 300.0
    max_retry_after_seconds: PositiveFloat = 120.0
    retry_backoff_seconds: PositiveFloat = 0.5
    retry_backoff_max_seconds: PositiveFloat = 60.0
    misconfigured_pause_seconds: PositiveFloat = 300.0

    @field_validator("base_url", "token_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        return http_url(value)

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        return existing_file(value)

    @field_validator("token_renew_statuses")
    @classmethod
    def _renewal_statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        wrong = [s for s in value if not 400 <= s <= 499]
        if wrong:
            raise ValueError(
                f"{', '.join(map(str, wrong))}: only a 4xx status can mean the token expired "
                "(usually 401); renewing on any other answer would resend every request"
            )
        if 429 in value:
            raise ValueError(
                "429 is the rate limit, which the connector answers by waiting Retry-After; "
                "renewing the token on it would only add requests"
            )
        return value

    @field_validator("client_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    def warnings(self) -> list[str]:
        """Unsafe choices of this type's own keys, one sentence each (logged at load)."""
        return []


def not_empty(value: str) -> str:
    """A required text key of one sink type: stripped, never empty."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()
