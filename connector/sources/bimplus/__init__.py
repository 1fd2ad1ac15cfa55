"""Bimplus (Allplan) as a polling source (docs/bimplus.md): projects and their topology, read
each poll (a topology only when its project changed).

- `client`: `BimplusSource` and its grants (OIDC client credentials or password, legacy);
- `settings`: `SETTINGS`, the section of a `sources[]` item with `type: bimplus`.

`build` makes the source; importing this package (or its `settings`) loads no HTTP client.
Bimplus needs no person to log in, so this package has no `auth` hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from connector.sources.bimplus.client import BimplusSource
    from connector.sources.settings import SourceSettings

__all__ = ["build"]


def build(settings: SourceSettings, session: aiohttp.ClientSession) -> BimplusSource:
    """The source a `type: bimplus` item configures; `session` is its plain session."""
    from connector.sources.bimplus.client import BimplusSource  # noqa: PLC0415 - see above
    from connector.sources.bimplus.settings import BimplusSourceSettings  # noqa: PLC0415

    assert isinstance(settings, BimplusSourceSettings)  # noqa: S101 - the registry chose by type
    return BimplusSource(settings, session)
