"""Fixtures of the Bimplus tests: the emulator on a real loopback socket, on the test's fake
clock (the `clock` fixture of tests/conftest.py).

`start_bimplus(options)` serves `create_app(options, clock=...)` and returns a
`tests.support.emulators.Bimplus` handle. Time moves only when a test calls `clock.advance(...)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support.emulators import Bimplus, StartBimplus
from twin_emulators.bimplus import BIMPLUS_KEY, BimplusOptions, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.clock import FakeClock


@pytest.fixture
async def start_bimplus(clock: FakeClock) -> AsyncIterator[StartBimplus]:
    started: list[Bimplus] = []

    async def start(options: BimplusOptions | None = None) -> Bimplus:
        app = create_app(options, clock=clock)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        emulator = Bimplus(server, aiohttp.ClientSession(), clock, app[BIMPLUS_KEY])
        started.append(emulator)
        return emulator

    try:
        yield start
    finally:
        for emulator in started:
            await emulator.session.close()
            await emulator.server.close()


@pytest.fixture
async def bimplus(start_bimplus: StartBimplus) -> Bimplus:
    return await start_bimplus()
