"""The building blocks of the settings: the frozen section base, the number types, the
validators several sections share, and the environment variable name of a key.

`connector.config` assembles the sections into `Settings`; the sink and source packages build
their own sections (`connector/{sinks,sources}/<name>/settings.py`) from these same blocks,
without importing `connector.config` (which imports them).

Must not: import anything of the connector but `connector.errors`.
"""

from __future__ import annotations

from pathlib import Path  # noqa: TC003 - pydantic reads the annotations at run time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ENV_PREFIX",
    "NonNegativeFloat",
    "PositiveFloat",
    "PositiveInt",
    "Section",
    "env_name",
    "existing_file",
    "http_url",
]

ENV_PREFIX = "CONNECTOR_"

PositiveInt = Annotated[int, Field(gt=0)]
# Seconds: finite (YAML's .inf would make a timeout that never fires, a pause that never ends).
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file {value} does not exist or is not a file")
    return value


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or value.endswith("://"):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def env_name(path: tuple[str | int, ...]) -> str:
    """The environment variable that overrides the key at `path`."""
    return ENV_PREFIX + "__".join(str(p).upper() for p in path)
