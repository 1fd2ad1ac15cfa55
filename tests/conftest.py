"""Fixtures shared by every test: the anyio backend, a fake clock and the Kafka test bed.

The broker comes from `twin_devtools.devbroker` (KAFKA_BOOTSTRAP, else a local broker from Maven
Central jars, else Docker). It starts once per session, lazily: unit tests never start it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.support.clock import FakeClock

pytest_plugins = ["tests.kafka_fixtures"]

# Property tests check behaviour, not speed: on a busy 2-core machine hypothesis' timing
# checks (slow input generation, per-example deadlines) fail tests that are right.
settings.register_profile("connector", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("connector")


@pytest.fixture
def anyio_backend() -> str:
    """aiokafka runs on asyncio only, so every async test does too."""
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """Monotonic time that moves only when the test says so (`clock.advance(...)`)."""
    return FakeClock()
