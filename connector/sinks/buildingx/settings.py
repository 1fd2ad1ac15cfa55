"""The settings of `sink.type: buildingx` (docs/buildingx.md): an Auth0 credential with its
`audience`, the `partition_id` the records go to, how readings name their points, and
Building X's own defaults (10 requests per second, per client and API: seed 002).

Must not: import `connector.config` (it imports this).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from connector.sections import NonNegativeFloat  # noqa: TC001 - pydantic reads it at run time
from connector.sinks.settings import RateLimitSettings, SinkSettings, not_empty

__all__ = ["SETTINGS", "BuildingXSinkSettings"]

_RATE_LIMIT = {"requests": 10, "per_seconds": 1.0}  # per client and API (seed 002)
_DEFAULTED = frozenset({"base_url", "token_url", "audience", "rate_limit"})


class BuildingXSinkSettings(SinkSettings):
    """Siemens Building X Openness API: needs `partition_id`; takes `audience`."""

    required_keys: ClassVar[tuple[str, ...]] = ("partition_id",)

    type: Literal["buildingx"]
    base_url: str = "https://eu.buildingx.siemens.com/api/openness"
    token_url: str = "https://siemens-bt-015.eu.auth0.com/oauth/token"  # noqa: S105 - a URL
    audience: str = "https://horizon.siemens.com"
    partition_id: str
    point_field: str = "meterId"
    """The field of an operational-measurement record that names its point."""
    point_ids: dict[str, str] = Field(default_factory=dict)
    """That field's value -> Building X point id (unmapped values are used as is)."""
    overwrite_values: bool = True
    """Send point values with `overwrite=true`, so a corrected reading replaces."""
    parent_wait_seconds: NonNegativeFloat = 600.0
    """How long a location waits for its parent before it is dead-lettered."""
    rate_limit: RateLimitSettings = RateLimitSettings.model_validate(_RATE_LIMIT)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """A key given as null takes its default; a partial rate_limit keeps the other half
        of Building X's default."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None or k not in _DEFAULTED}
        if isinstance(data.get("rate_limit"), dict):
            data["rate_limit"] = {**_RATE_LIMIT, **data["rate_limit"]}
        return data

    @field_validator("audience", "partition_id")
    @classmethod
    def _given(cls, value: str) -> str:
        return not_empty(value)


SETTINGS = BuildingXSinkSettings
