"""Polling sources: one package per platform, and the registry that names them.

The contract every source keeps is `connector.sources.base.Source`: it returns a platform's
complete current state as `Item`s, and the shared `Poller` publishes what changed. Each
package has a `build(settings, session) -> Source` and a `settings` module whose `SETTINGS`
is the section of its `sources[]` items (a `connector.sources.settings.SourceSettings` with
its own `type`); `SOURCES` maps `type` to the package. A platform whose credential needs a
person to log in once is also in `LOGINS`, and its package has an `auth` module with
`login(settings, *, out, browser, wait_seconds)`, which `connector auth NAME` runs (raising
`connector.sources.base.LoginFailed` with what to do). Adding a platform is one package and
its entries here: nothing outside `connector/sources/` names a concrete source.

Importing this module loads only the standard library (the command line reads `LOGINS`
before anything else).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from connector.sources.base import Source
    from connector.sources.settings import SourceSettings

__all__ = ["LOGINS", "SOURCES", "build_source", "login", "settings_models"]

SOURCES: Final[dict[str, str]] = {
    "bimlink": "connector.sources.bimlink",
    "bimplus": "connector.sources.bimplus",
}
"""`sources[].type` -> the package whose `build(settings, session)` makes that source."""

LOGINS: Final[tuple[str, ...]] = ("bimlink",)
"""The sources whose package has an `auth.login`: the platforms of `connector auth NAME`."""


def build_source(settings: SourceSettings, session: aiohttp.ClientSession) -> Source:
    """The source for one `sources[]` entry; `session` is a plain session with its TLS."""
    source: Source = importlib.import_module(SOURCES[settings.type]).build(settings, session)
    return source


async def login(
    settings: SourceSettings,
    *,
    out: TextIO,
    browser: Callable[[str], object] | None = None,
    wait_seconds: float | None = None,
) -> None:
    """A person's one-time login for the source `settings` configures (its type is one of
    `LOGINS`): show (and open, via `browser`) where to log in, wait up to `wait_seconds`
    (default: the source's own timeout), store the credential. Raises `LoginFailed`."""
    if settings.type not in LOGINS:
        raise ValueError(f"sources of type {settings.type} need no login: they sign in alone")
    hook = importlib.import_module(f"{SOURCES[settings.type]}.auth").login
    await hook(settings, out=out, browser=browser, wait_seconds=wait_seconds)


def settings_models() -> tuple[type[SourceSettings], ...]:
    """Each package's section (`<package>.settings.SETTINGS`), in `SOURCES` order: the members
    of the config's union under `sources`."""
    return tuple(importlib.import_module(f"{m}.settings").SETTINGS for m in SOURCES.values())
