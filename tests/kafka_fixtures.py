"""The Kafka test bed: a session broker, unique topics and groups, a restartable broker.

- `kafka_broker` (session): one real broker for the whole run, started on first use. Which
  broker is chosen, and how long it took, is printed in pytest's summary.
- `kafka_bootstrap`: its `host:port`.
- `new_topic`: creates a uniquely named topic (3 partitions by default) and returns its name.
- `group_id`: a unique consumer group per test.
- `restartable_broker` (function): a broker of the test's own, with its own data directory,
  that the test may `kill()` (-9), `start()` again on the same data, `pause()` and `resume()`.

No fixture sleeps for a fixed time: readiness is polled with a deadline.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from twin_devtools.devbroker import (
    KAFKA_VERSION,
    Broker,
    ExternalBroker,
    LocalBroker,
    find_or_start_broker,
    local_broker,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BrokerInfo", "wait_until"]


@dataclass
class BrokerInfo:
    broker: Broker
    kind: str
    start_seconds: float


_started: list[BrokerInfo] = []


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll `predicate` (sync or async) until it is true; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(interval)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    started = time.monotonic()
    broker = find_or_start_broker(tmp_path_factory.mktemp("kafka-session"))
    kind = {
        ExternalBroker: "external (KAFKA_BOOTSTRAP)",
        LocalBroker: f"local Apache Kafka {KAFKA_VERSION} (java, Maven Central jars)",
    }.get(type(broker), f"docker apache/kafka:{KAFKA_VERSION}")
    _started.append(BrokerInfo(broker, kind, time.monotonic() - started))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    return f"g-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


NewTopicFactory = Callable[..., Awaitable[str]]


async def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    """Create `name` and wait until its metadata is visible."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])

        async def visible() -> bool:
            described = await admin.describe_topics([name])
            return bool(described and len(described[0]["partitions"]) == partitions)

        await wait_until(visible, what=f"topic {name}")
    finally:
        await admin.close()


@pytest.fixture
async def new_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> NewTopicFactory:
    async def make(partitions: int = 3, prefix: str = "t") -> str:
        name = f"{prefix}-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
        name = "".join(c if c.isalnum() or c in "-._" else "-" for c in name)
        await create_topic(kafka_bootstrap, name, partitions)
        return name

    return make


@pytest.fixture
async def restartable_broker(tmp_path: Path) -> AsyncIterator[LocalBroker]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        pytest.skip("restart tests need a broker the suite owns; unset KAFKA_BOOTSTRAP")
    broker = local_broker(tmp_path / "kafka")
    await anyio.to_thread.run_sync(broker.start)
    try:
        yield broker
    finally:
        await anyio.to_thread.run_sync(broker.stop)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for info in _started:
        terminalreporter.write_line(
            f"kafka broker: {info.kind} at {info.broker.bootstrap}, "
            f"ready in {info.start_seconds:.1f} s"
        )
