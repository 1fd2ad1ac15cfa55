"""The settings of `sink.type: buildingminds` (the default type): an Entra ID credential with
its `scope`, and BuildingMinds' own defaults (100 requests per rolling minute per credential).

Must not: import `connector.config` (it imports this).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from connector.sinks.settings import SinkSettings, not_empty

__all__ = ["SETTINGS", "BuildingMindsSinkSettings", "scope_permission"]


def scope_permission(scope: str) -> str | None:
    """The permission a scope names after its resource (`api://x/user_impersonation` ->
    `user_impersonation`), or None for a bare resource (`api://x`, `api://x/`, a GUID) or a
    `/.default` scope. Entra reads the last path segment as the permission."""
    rest = scope.split("://", 1)[1] if "://" in scope else scope
    if "/" not in rest.rstrip("/"):
        return None
    last = rest.rstrip("/").rsplit("/", 1)[1]
    return None if last == ".default" else last


class BuildingMindsSinkSettings(SinkSettings):
    """BuildingMinds Digital Twin Integration API: needs `scope` (the API's resource)."""

    required_keys: ClassVar[tuple[str, ...]] = ("scope",)

    type: Literal["buildingminds"] = "buildingminds"
    base_url: str = "https://api.onbuildingminds.com/api/digitaltwinintegration"
    token_url: str = (
        "https://login.microsoftonline.com/buildingminds.onmicrosoft.com/oauth2/v2.0/token"  # noqa: S105 - a URL, not a password
    )
    scope: str

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return not_empty(value)

    @property
    def token_scope(self) -> str:
        """The scope sent to the token endpoint.

        Entra's client-credentials flow takes `<resource>/.default`, so a bare resource
        (`api://bm-prod`) gets `/.default` appended. A scope that already names a permission
        after the resource (`api://bm-prod/user_impersonation`) is sent as given: appending
        would make `…/user_impersonation/.default`, a resource that does not exist
        (`scope_permission` says why it is likely wrong, as a config warning).
        """
        scope = self.scope
        if scope.endswith("/.default") or scope_permission(scope) is not None:
            return scope
        return f"{scope.rstrip('/')}/.default"

    def warnings(self) -> list[str]:
        permission = scope_permission(self.scope)
        if permission is None:
            return []
        resource = self.scope.rstrip("/").rsplit("/", 1)[0]
        warning = (
            f"sink.scope {self.scope!r} names the permission {permission!r}, so it is sent as "
            "given; Entra's client-credentials flow takes only '<resource>/.default': if the "
            f"token endpoint answers AADSTS1002012 or AADSTS70011, set {resource!r} (sent as "
            f"'{resource}/.default')"
        )
        return [warning]


SETTINGS = BuildingMindsSinkSettings
