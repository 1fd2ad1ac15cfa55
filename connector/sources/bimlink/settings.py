"""The settings of a `sources[]` item with `type: bimlink` (docs/bimlink.md explains each key):
the BIMlink API and its auth server, the OAuth2 client, the refresh-token file and the login's
loopback redirect, what is read, and the defaults BuildingMinds needs that BIMlink lacks.

Must not: import `connector.config` (it imports this).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path  # noqa: TC003 - pydantic reads the annotations at run time
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from connector.sections import (
    NonNegativeFloat,
    PositiveFloat,
    http_url,
)
from connector.sources.settings import SourceSettings, site_type

__all__ = ["SETTINGS", "BimlinkSourceSettings"]


class BimlinkSourceSettings(SourceSettings):
    """BIMlink (BIMcollab Twin) Public API, read as a source (connector/sources/bimlink/).

    The credential is a user's refresh token, obtained once by `connector auth bimlink` and
    kept (rotated at every use) in `refresh_token_file`; docs/bimlink.md explains each key.
    """

    url_keys: ClassVar[tuple[str, ...]] = ("base_url", "authority_url")

    type: Literal["bimlink"]
    base_url: str = "https://api.bimlink.nl"
    api_prefix: str = "/api/v1"
    """Path of the API below base_url (inferred; set "" if the Swagger shows none)."""
    authority_url: str = "https://api.bimlink.nl"
    """The auth server: /connect/authorize and /connect/token live below it (quickstart)."""
    client_id: str
    client_secret: SecretStr | None = None
    scope: str = "bimlink_publicapi offline_access"
    refresh_token_file: Path
    redirect_port: Annotated[int, Field(ge=1, le=65535)] = 8765
    login_timeout_seconds: PositiveFloat = 300.0
    domain_account_ids: tuple[str, ...] = ()
    """Domain accounts to read; empty: every account the user sees."""
    page_limit: Annotated[int, Field(ge=1, le=1000)] = 100
    phase_names: tuple[str, ...] = ()
    """Which project phase gives a building its floors and spaces: the first phase whose name
    matches one of these (case-insensitive), else the project's last phase."""
    site_type: str = "Other"
    default_country: str = "NL"
    default_city: str = "Unknown"
    valid_from: str = "1900-01-01T00:00:00Z"
    valid_until: str = "9999-12-31T23:59:59Z"
    token_skew_seconds: NonNegativeFloat = 60.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    """Tries per API request (5xx, resets, timeouts, 429) before the poll fails and backs off."""
    max_retry_after_seconds: PositiveFloat = 60.0

    @field_validator("base_url", "authority_url")
    @classmethod
    def _bimlink_urls(cls, value: str) -> str:
        return http_url(value)

    @field_validator("api_prefix")
    @classmethod
    def _bimlink_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must be empty or start with '/', e.g. /api/v1")
        return value

    @field_validator("client_id")
    @classmethod
    def _bimlink_client(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: the client ID BIMlink support gave you")
        return value.strip()

    @field_validator("scope")
    @classmethod
    def _bimlink_scope(cls, value: str) -> str:
        scopes = value.split()
        missing = [s for s in ("bimlink_publicapi", "offline_access") if s not in scopes]
        if missing:
            raise ValueError(
                f"must include {' and '.join(missing)} (bimlink_publicapi reads the API, "
                "offline_access gives the refresh token the connector runs on)"
            )
        return " ".join(scopes)

    @field_validator("site_type")
    @classmethod
    def _bimlink_site_type(cls, value: str) -> str:
        return site_type(value)

    @field_validator("default_country")
    @classmethod
    def _bimlink_country(cls, value: str) -> str:
        if len(value) != 2 or not value.isalpha():
            raise ValueError("must be an ISO 3166 alpha-2 code such as NL")
        return value.upper()

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _bimlink_dates(cls, value: str) -> str:
        try:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # noqa: DTZ007 - checked, not used
        except ValueError:
            raise ValueError("must be a UTC date-time like 2024-01-31T00:00:00Z") from None
        return value

    @field_validator("domain_account_ids", "phase_names")
    @classmethod
    def _bimlink_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in value):
            raise ValueError("must not contain empty values")
        return tuple(v.strip() for v in value)

    @property
    def token_url(self) -> str:
        return f"{self.authority_url}/connect/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.authority_url}/connect/authorize"

    @property
    def redirect_uri(self) -> str:
        """The URI `connector auth bimlink` listens on; BIMlink must whitelist it exactly."""
        return f"http://127.0.0.1:{self.redirect_port}/callback"


SETTINGS = BimlinkSourceSettings
