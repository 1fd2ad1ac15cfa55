"""The connector as a real process: SIGTERM drains without duplicates, kill -9 loses nothing.

The emulator's request log is the ground truth for what was sent, its stored state for what
arrived; the broker's committed offsets for what the connector promised never to send again.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
import yaml

from tests.integration.helpers import Emulator, building, committed_offsets, end_offsets, produce
from tests.kafka_fixtures import NewTopicFactory, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]


def write_config(
    tmp_path: Path, emu: Emulator, bootstrap: str, topic: str, group: str, *, requests: int = 100
) -> Path:
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                  "dead_letter_topic": f"{topic}.dlq"},
        "sink": {"base_url": emu.base_url, "token_url": emu.token_url,
                 "client_id": "demo-client", "client_secret": "demo-secret",
                 "scope": "api://buildingminds-emulator",
                 "rate_limit": {"requests": requests, "per_seconds": 60 if requests == 100 else 1}},
        "window": {"max_records": 50, "max_wait_seconds": 0.1},
        "pipeline": {"commit_interval_seconds": 0.5, "shutdown_grace_seconds": 10},
        "tracking": {"poll_interval_seconds": 0.2},
        "metrics": {"port": 0},
        "logging": {"format": "json"},
    }  # fmt: skip
    path = tmp_path / "connector.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ConnectorProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
        with log.open("ab") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "connector", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

    async def wait(self, timeout: float) -> int:
        """The exit code; raises `subprocess.TimeoutExpired` after `timeout` seconds."""
        return await anyio.to_thread.run_sync(functools.partial(self.proc.wait, timeout))

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text().splitlines()
        return [orjson.loads(line) for line in text if line.startswith("{")]


def posted_ids(log: list[dict[str, Any]]) -> int:
    return sum(r["record_count"] or 0 for r in log if r["method"] == "POST" and r["status"] == 200)


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
