"""Fixtures shared by every test: the anyio backend and the Kafka test bed.

The broker comes from `connector.devbroker` (KAFKA_BOOTSTRAP, else a local broker from Maven
Central jars, else Docker). It starts once per session, lazily: unit tests never start it.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.kafka_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    """aiokafka runs on asyncio only, so every async test does too."""
    return "asyncio"
