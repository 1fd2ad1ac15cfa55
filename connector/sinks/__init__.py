"""Sinks: one package per platform, and the registry that names them.

The contract every sink keeps is `connector.sinks.base.Sink`: it gets batches of decoded
records, answers for each record (a `SubmitResult`, or an `connector.errors` class that
carries its disposition), reports the terminal outcome of what settles later, owns its
budget and its `probe`. Each package has a `build(context) -> Sink` and a `settings` module
whose `SETTINGS` is its `sink` section (a `connector.sinks.settings.SinkSettings` with its
own `type`); `SINKS` maps `sink.type` to the package. Adding a platform is one package and
one entry here: nothing outside `connector/sinks/` names a concrete sink.

`register(name, factory)` adds a sink defined elsewhere (the tests' own sink) for the life of
the process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from connector.sinks.base import Sink, SinkContext
    from connector.sinks.settings import SinkSettings

__all__ = ["SINKS", "build_sink", "register", "settings_models"]

SINKS: Final[dict[str, str]] = {
    "buildingminds": "connector.sinks.buildingminds",
    "buildingx": "connector.sinks.buildingx",
}
"""`sink.type` -> the package whose `build(context)` makes that sink."""

_registered: dict[str, Callable[[SinkContext], Sink]] = {}


def register(name: str, factory: Callable[[SinkContext], Sink]) -> None:
    """Make `sink.type: name` build with `factory` (a sink that lives outside this package)."""
    _registered[name] = factory


def build_sink(context: SinkContext) -> Sink:
    """The sink `context.settings.sink.type` names. Raises `KeyError` for a type nobody
    registered (the config refuses those before this is reached)."""
    name = context.settings.sink.type
    factory = _registered.get(name)
    if factory is None:
        factory = importlib.import_module(SINKS[name]).build
    return factory(context)


def settings_models() -> tuple[type[SinkSettings], ...]:
    """Each package's `sink` section (`<package>.settings.SETTINGS`), in `SINKS` order: the
    members of the config's union under `sink`."""
    return tuple(importlib.import_module(f"{m}.settings").SETTINGS for m in SINKS.values())
