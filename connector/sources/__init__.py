"""Polling sources: platforms read into Kafka as change events (see `base`).

`build_source` picks the implementation for a configured source; each lives in its own module
(`bimlink`, `bimplus`) and needs only its settings and an HTTP session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from connector.config import AnySourceSettings
    from connector.sources.base import Source

__all__ = ["build_source"]


def build_source(settings: AnySourceSettings, session: aiohttp.ClientSession) -> Source:
    """The source for one `sources[]` entry; `session` is a plain session with its TLS."""
    if settings.type == "bimlink":
        from connector.sources.bimlink import BimlinkSource  # noqa: PLC0415 - one per type

        return BimlinkSource(settings, session)
    from connector.sources.bimplus import BimplusSource  # noqa: PLC0415

    return BimplusSource(settings, session)
