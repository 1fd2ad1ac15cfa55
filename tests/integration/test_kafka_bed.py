"""The test bed itself: aiokafka against a real broker does what the connector relies on.

Manual commits, resuming at committed offsets, group rebalances, and committed offsets that
survive `kill -9` of the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka_fixtures import NewTopicFactory, create_topic, wait_until
from twin_devtools.devbroker import free_port, port_open

if TYPE_CHECKING:
    from pathlib import Path

    from twin_devtools.devbroker import LocalBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


async def produce(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    """Write `count` records keyed and valued by their sequence number."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for seq in range(start, start + count):
            await producer.send(topic, key=str(seq % 97).encode(), value=str(seq).encode())
        await producer.flush()
    finally:
        await producer.stop()


def consumer(bootstrap: str, topic: str, group: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 500,
        "max_poll_records": 1000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(topic, **options)


async def consume_and_commit(c: Any, want: int, *, stop_after: int | None = None) -> list[int]:
    """Read with `getmany`, committing each batch as offset + 1 per partition."""
    seen: list[int] = []
    limit = want if stop_after is None else stop_after

    async def more() -> bool:
        batches = await c.getmany(timeout_ms=200, max_records=min(500, limit - len(seen)))
        offsets = {}
        for tp, records in batches.items():
            seen.extend(int(r.value) for r in records)
            offsets[tp] = records[-1].offset + 1
        if offsets:
            await c.commit(offsets)
        return len(seen) >= limit

    await wait_until(more, timeout=60, interval=0, what=f"{limit} records")
    return seen


async def committed(c: Any, topic: str) -> dict[int, int | None]:
    return {p: await c.committed(TopicPartition(topic, p)) for p in range(3)}


async def test_group_consumes_10000_records_with_manual_commits(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    topic = await new_topic()
    await produce(kafka_bootstrap, topic, 10_000)
    c = consumer(kafka_bootstrap, topic, group_id)
    await c.start()
    try:
        seen = await consume_and_commit(c, 10_000)
        assert sorted(seen) == list(range(10_000))
        ends = await c.end_offsets([TopicPartition(topic, p) for p in range(3)])
        assert await committed(c, topic) == {tp.partition: end for tp, end in ends.items()}
        assert all(end > 0 for end in ends.values()), "all 3 partitions should carry records"
    finally:
        await c.stop()


async def test_restarted_consumer_resumes_exactly_at_committed_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    topic = await new_topic()
    await produce(kafka_bootstrap, topic, 3000)
    first = consumer(kafka_bootstrap, topic, group_id)
    await first.start()
    try:
        before = await consume_and_commit(first, 3000, stop_after=1200)
    finally:
        await first.stop()

    second = consumer(kafka_bootstrap, topic, group_id)
    await second.start()
    try:
        after = await consume_and_commit(second, 3000 - len(before))
    finally:
        await second.stop()
    assert not set(before) & set(after), "records committed before the restart came back"
    assert sorted(before + after) == list(range(3000)), "a record was skipped"


async def test_two_consumers_split_partitions_and_rebalance_when_one_leaves(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    topic = await new_topic()
    await produce(kafka_bootstrap, topic, 30)
    a = consumer(kafka_bootstrap, topic, group_id)
    b = consumer(kafka_bootstrap, topic, group_id)
    await a.start()
    await b.start()
    try:

        async def split() -> bool:
            await a.getmany(timeout_ms=50)
            await b.getmany(timeout_ms=50)
            pa = {tp.partition for tp in a.assignment()}
            pb = {tp.partition for tp in b.assignment()}
            return bool(pa) and bool(pb) and not pa & pb and pa | pb == {0, 1, 2}

        await wait_until(split, timeout=60, what="both members to hold partitions")
    finally:
        await b.stop()
    try:

        async def a_has_all() -> bool:
            await a.getmany(timeout_ms=50)
            return {tp.partition for tp in a.assignment()} == {0, 1, 2}

        await wait_until(a_has_all, timeout=60, what="the rebalance after b left")
    finally:
        await a.stop()


@pytest.mark.slow
async def test_committed_offsets_survive_kill_9_of_the_broker(
    restartable_broker: LocalBroker, group_id: str
) -> None:
    bootstrap = restartable_broker.bootstrap
    topic = f"restart-{group_id}"
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, 2000)
    c = consumer(bootstrap, topic, group_id)
    await c.start()
    try:
        before = await consume_and_commit(c, 2000, stop_after=800)
        offsets_before = await committed(c, topic)
    finally:
        await c.stop()

    restartable_broker.kill()
    await anyio.to_thread.run_sync(restartable_broker.start)

    again = consumer(bootstrap, topic, group_id)
    await again.start()
    try:
        assert await committed(again, topic) == offsets_before
        after = await consume_and_commit(again, 2000 - len(before))
    finally:
        await again.stop()
    assert sorted(before + after) == list(range(2000))


@pytest.mark.skipif(
    os.environ.get("KAFKA_BOOTSTRAP") is not None,
    reason="starts a broker of its own; unset KAFKA_BOOTSTRAP",
)
async def test_devbroker_run_stops_its_broker_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    launcher = subprocess.Popen(  # noqa: ASYNC220 - a child process we signal and wait for
        [sys.executable, "-m", "twin_devtools.devbroker", "run", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until(lambda: port_open(port), timeout=60, what="the broker")
        launcher.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(launcher.wait, 30) == 0
        # the JVM is gone too: nothing listens on its port any more
        await wait_until(lambda: not port_open(port), timeout=30, what="JVM exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        # should the fix regress, the JVM must not outlive the test: its command line names
        # this test's data dir
        subprocess.run(["pkill", "-f", str(tmp_path)], check=False)  # noqa: S607, ASYNC221
