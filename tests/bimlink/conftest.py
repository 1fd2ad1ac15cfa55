"""Fixtures of the BIMlink tests: a fake clock and the emulator driven by it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.bimlink.helpers import Bimlink, running_bimlink
from tests.emulator.conftest import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def bimlink(clock: FakeClock) -> AsyncIterator[Bimlink]:
    """The demo emulator on a real loopback socket; time moves only with `clock.advance`."""
    async with running_bimlink(clock=clock) as emu:
        yield emu
