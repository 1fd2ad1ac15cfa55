"""The settings of a `sources[]` item with `type: bimplus` (docs/bimplus.md explains each
key): the API and its OIDC discovery, the credential of the chosen `auth`, the team, and the
defaults BuildingMinds needs that Bimplus lacks.

Must not: import `connector.config` (it imports this).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connector.sections import NonNegativeFloat, http_url
from connector.sources.settings import SourceSettings, site_type

__all__ = ["SETTINGS", "BimplusSourceSettings"]


class BimplusSourceSettings(SourceSettings):
    """Bimplus (Allplan) API, read as a source (connector/sources/bimplus/, docs/bimplus.md).

    `auth: oidc` (the default) finds the token endpoint by OIDC discovery and uses client
    credentials, or the password grant when `username` is set; `auth: legacy` uses the obsolete
    `POST /v2/authorize` with `username`, `password` and `application_id` (`BimPlus` tokens).
    """

    url_keys: ClassVar[tuple[str, ...]] = ("base_url", "discovery_url")

    type: Literal["bimplus"]
    base_url: str = "https://api-stage.bimplus.net/v2"
    discovery_url: str | None = None
    """Default: `{base_url}/.well-known/openid-configuration`."""
    auth: Literal["oidc", "legacy"] = "oidc"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    application_id: str | None = None
    team_slug: str | None = None
    site_type: str = "Other"
    """BuildingMinds Site `type` of every project (Bimplus has no such field)."""
    default_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "DE"
    default_city: str = "Unknown"
    token_skew_seconds: NonNegativeFloat = 300.0

    @field_validator("base_url", "discovery_url")
    @classmethod
    def _bimplus_urls(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @field_validator("site_type")
    @classmethod
    def _bimplus_site_type(cls, value: str) -> str:
        return site_type(value)

    @field_validator("team_slug")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
        if value is not None and (not value or not set(value) <= allowed):
            raise ValueError("a team slug is lowercase letters, digits and '-', e.g. my-team")
        return value

    @model_validator(mode="after")
    def _bimplus_credentials(self) -> BimplusSourceSettings:
        values = {
            "client_id": self.client_id, "username": self.username,
            "application_id": self.application_id,
            "client_secret": self.client_secret and self.client_secret.get_secret_value(),
            "password": self.password and self.password.get_secret_value(),
        }  # fmt: skip
        given = {k for k, v in values.items() if v and v.strip()}
        if self.auth == "legacy":
            needed = ["username", "password", "application_id"]
            why = "auth: legacy (POST /v2/authorize) needs"
        elif "username" in given or "password" in given:
            needed = ["client_id", "username", "password"]
            why = "auth: oidc with a user (password grant) needs"
        else:
            needed = ["client_id", "client_secret"]
            why = "auth: oidc (client credentials) needs"
        missing = [k for k in needed if k not in given]
        if missing:
            files = [f"{k}_file" for k in missing if k in ("password", "client_secret")]
            hint = f" (secrets may come from {' / '.join(files)})" if files else ""
            raise ValueError(f"{why} {', '.join(needed)}; missing: {', '.join(missing)}{hint}")
        return self

    @property
    def discovery(self) -> str:
        """Where the OIDC discovery document is read."""
        return self.discovery_url or f"{self.base_url}/.well-known/openid-configuration"


SETTINGS = BimplusSourceSettings
