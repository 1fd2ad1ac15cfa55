"""Fixtures of the BIMlink tests: the emulator driven by the test's fake clock (the `clock`
fixture of tests/conftest.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.bimlink.helpers import Bimlink, running_bimlink

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.clock import FakeClock


@pytest.fixture
async def bimlink(clock: FakeClock) -> AsyncIterator[Bimlink]:
    """The demo emulator on a real loopback socket; time moves only with `clock.advance`."""
    async with running_bimlink(clock=clock) as emu:
        yield emu
