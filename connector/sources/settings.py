"""What every source's settings share: where its change events and its snapshot go, how often
it polls, and its TLS. Each source package subclasses `SourceSettings` with its `type` and its
own keys (`connector/sources/<name>/settings.py`); `connector.config` puts them into one
union under `sources`, told apart by `type`.

Must not: import `connector.config` (it imports these).
"""

from __future__ import annotations

from pathlib import Path  # noqa: TC003 - pydantic reads the annotations at run time
from typing import ClassVar

from pydantic import field_validator

from connector.entities import SITE_TYPES
from connector.sections import PositiveFloat, Section, existing_file

__all__ = ["SourceSettings", "site_type"]


class SourceSettings(Section):
    """What every polling source shares: where its change events and its snapshot go.

    A source reads a platform's current state every `poll_interval_seconds`, compares it with
    the last snapshot (kept in the compacted `snapshot_topic`) and publishes the differences to
    `topic` as BuildingMinds native change events (connector/sources/base.py).
    """

    url_keys: ClassVar[tuple[str, ...]] = ()
    """This type's URL keys, each checked at load for plain http:// and for a user in it."""

    name: str | None = None
    """Tells two sources of one type apart in the snapshot topic and in logs (default: type)."""
    topic: str = "building-changes"
    snapshot_topic: str = "building-twin-connector.snapshots"
    poll_interval_seconds: PositiveFloat = 300.0
    request_timeout_seconds: PositiveFloat = 30.0
    tls_verify: bool = True
    ca_file: Path | None = None
    type: str
    """The platform (a key of `connector.sources.SOURCES`); each type's section narrows it."""

    @field_validator("ca_file")
    @classmethod
    def _source_ca_exists(cls, value: Path | None) -> Path | None:
        return existing_file(value)


def site_type(value: str) -> str:
    """A BuildingMinds Site `type` (a source's `site_type` key)."""
    if value not in SITE_TYPES:
        raise ValueError(f"must be a BuildingMinds site type: {', '.join(sorted(SITE_TYPES))}")
    return value
