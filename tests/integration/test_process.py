"""The connector as a real process: SIGTERM drains without duplicates, kill -9 loses nothing.

The emulator's request log is the ground truth for what was sent, its stored state for what
arrived; the broker's committed offsets for what the connector promised never to send again.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import (
    ConnectorProcess,
    Emulator,
    building,
    committed_offsets,
    end_offsets,
    posted_ids,
    produce,
    write_config,
)
from tests.kafka_fixtures import NewTopicFactory, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]


async def test_sigterm_drains_exits_0_and_a_restart_sends_nothing_twice(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    emulator: Emulator,
) -> None:  # fmt: skip
    topic = await new_topic()
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(500)])
    config = write_config(tmp_path, emulator, kafka_bootstrap, topic, group_id)
    first = ConnectorProcess(config, tmp_path / "first.log")

    async def stored(n: int) -> bool:
        return len(await emulator.entities("building")) >= n

    await wait_until(lambda: stored(500), timeout=60, what="500 buildings")
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait(30) == 0
    summary = [e for e in first.lines() if e["msg"].startswith("stopped:")]
    assert summary, "the drain should end with one summary line"
    assert await committed_offsets(kafka_bootstrap, topic, group_id) == await end_offsets(
        kafka_bootstrap, topic
    )
    sent_before = posted_ids(await emulator.requests())
    assert sent_before == 500

    second = ConnectorProcess(config, tmp_path / "second.log")
    try:
        await produce(kafka_bootstrap, [(topic, *building(9999, 0))])  # a marker after restart
        await wait_until(lambda: stored(501), timeout=60, what="the marker")
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait(30) == 0
    assert posted_ids(await emulator.requests()) == sent_before + 1, "records were sent twice"


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    emulator: Emulator,
) -> None:  # fmt: skip
    topic = await new_topic()
    total = 3000
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(total)])
    # 10 requests a second of 50 records: about 6 s for everything, so the kill lands mid-way
    config = write_config(tmp_path, emulator, kafka_bootstrap, topic, group_id, requests=10)
    victim = ConnectorProcess(config, tmp_path / "victim.log")

    async def stored_at_least(n: int) -> bool:
        return len(await emulator.entities("building")) >= n

    await wait_until(lambda: stored_at_least(total // 3), timeout=60, what="a third delivered")
    victim.proc.kill()
    await victim.wait(10)
    assert len(await emulator.entities("building")) < total, "killed too late to mean anything"

    survivor = ConnectorProcess(config, tmp_path / "survivor.log")
    try:
        await wait_until(lambda: stored_at_least(total), timeout=90, what="every record")
    finally:
        survivor.proc.send_signal(signal.SIGTERM)
        assert await survivor.wait(30) == 0
    stored = await emulator.entities("building")
    assert sorted(stored) == sorted(f"b-{i}" for i in range(total))
    duplicates = posted_ids(await emulator.requests()) - total
    committed_before_kill = sum(
        e.get("records", 0) for e in victim.lines() if e["msg"].startswith("batch accepted")
    )
    assert 0 <= duplicates <= committed_before_kill, "only records not yet committed may repeat"
