"""Fixtures of the Building X tests: the emulator on a real loopback socket, on the test's
fake clock (the `clock` fixture of tests/conftest.py).

`start_bx(options)` serves `create_app(options, clock=...)` and returns a
`tests.support.emulators.BuildingX` handle. Time moves only when a test calls
`clock.advance(...)`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pytest

from tests.support.emulators import BuildingX, StartBuildingX
from tests.support.served import starter
from twin_emulators.buildingx import STATE_KEY, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from tests.support.clock import FakeClock


@pytest.fixture
async def start_bx(clock: FakeClock) -> AsyncIterator[StartBuildingX]:
    """Start emulators with given options on the test's clock; all are closed afterwards."""

    def wrap(server: TestServer, session: aiohttp.ClientSession, app: web.Application) -> BuildingX:
        return BuildingX(server, session, clock, app[STATE_KEY])

    async with starter(functools.partial(create_app, clock=clock), wrap) as start:
        yield start


@pytest.fixture
async def bx(start_bx: StartBuildingX) -> BuildingX:
    """An emulator with the default options (10 requests per second per client and API)."""
    return await start_bx()
