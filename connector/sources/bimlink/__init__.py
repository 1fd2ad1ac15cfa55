"""BIMlink (BIMcollab Twin) as a polling source (docs/bimlink.md): one user's building
structure, read in full each poll.

- `client`: `BimlinkSource`, reading the API and mapping what it reads to `Item`s;
- `auth`: the refresh-token file and grant, and `login`, the one-time login a person runs
  (`connector auth bimlink`: this source is in `connector.sources.LOGINS`);
- `settings`: `SETTINGS`, the section of a `sources[]` item with `type: bimlink`.

`build` makes the source; importing this package (or its `settings`) loads no HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from connector.sources.bimlink.client import BimlinkSource
    from connector.sources.settings import SourceSettings

__all__ = ["build"]


def build(settings: SourceSettings, session: aiohttp.ClientSession) -> BimlinkSource:
    """The source a `type: bimlink` item configures; `session` is its plain session."""
    from connector.sources.bimlink.client import BimlinkSource  # noqa: PLC0415 - see above
    from connector.sources.bimlink.settings import BimlinkSourceSettings  # noqa: PLC0415

    assert isinstance(settings, BimlinkSourceSettings)  # noqa: S101 - the registry chose by type
    return BimlinkSource(settings, session)
