"""Fixtures for the BuildingMinds emulator's contract tests: the emulator on a real loopback
socket, on the test's fake clock (the `clock` fixture of tests/conftest.py).

`start_emulator(options)` serves `create_app(options, clock=...)` and returns a
`tests.support.emulators.BuildingMinds` handle. Time moves only when a test calls
`clock.advance(...)`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pytest

from tests.support.emulators import BuildingMinds, StartBuildingMinds
from tests.support.served import starter
from twin_emulators.buildingminds import STATE_KEY, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from tests.support.clock import FakeClock


@pytest.fixture
async def start_emulator(clock: FakeClock) -> AsyncIterator[StartBuildingMinds]:
    """Start emulators with given options on the test's clock; all are closed afterwards."""

    def wrap(
        server: TestServer, session: aiohttp.ClientSession, app: web.Application
    ) -> BuildingMinds:
        return BuildingMinds(server, session, clock, app[STATE_KEY])

    async with starter(functools.partial(create_app, clock=clock), wrap) as start:
        yield start


@pytest.fixture
async def emulator(start_emulator: StartBuildingMinds) -> BuildingMinds:
    """An emulator with the default options (100 requests per 60 s, 2 s processing)."""
    return await start_emulator()
