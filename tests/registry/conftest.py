"""Fixtures of the Schema Registry tests: the BuildingMinds emulator and the stand-in
registry, each on a real loopback socket per test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import Emulator, running_emulator
from tests.support.registry import Registry, running_registry
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        yield emu


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with running_registry() as reg:
        yield reg
