"""A Kafka outage as an operator sees it: our own line when the group is lost and one when it
is back, /readyz not ready meanwhile, and aiokafka's repeats rate-limited."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
import yaml

from tests.integration.helpers import ConnectorProcess, Emulator, building, produce, write_config
from tests.kafka_fixtures import create_topic, wait_until
from twin_devtools.devbroker import LocalBroker, free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]


async def readyz(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
        body: dict[str, Any] = await r.json()
        return body


async def test_an_outage_is_logged_once_each_way_and_readiness_follows(
    tmp_path: Path, restartable_broker: LocalBroker, group_id: str, emulator: Emulator
) -> None:
    broker = restartable_broker
    topic = "outage"
    await create_topic(broker.bootstrap, topic)
    config_path = write_config(tmp_path, emulator, broker.bootstrap, topic, group_id)
    config = yaml.safe_load(config_path.read_text())
    port = free_port()
    config["metrics"] = {"port": port, "host": "127.0.0.1"}
    config_path.write_text(yaml.safe_dump(config))
    proc = ConnectorProcess(config_path, tmp_path / "run.log")
    try:
        await produce(broker.bootstrap, [(topic, *building(1, 0))])

        async def ready() -> bool:
            try:
                return bool((await readyz(port))["ready"])
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=60, what="ready before the outage")
        await anyio.to_thread.run_sync(broker.kill)
        await anyio.sleep(25)  # what an operator sees after a while: the outage goes on
        during = await readyz(port)
        lines = proc.lines()
        await anyio.to_thread.run_sync(broker.start)
        await produce(broker.bootstrap, [(topic, *building(2, 0))])

        async def stored() -> bool:
            return len(await emulator.entities("building")) == 2

        await wait_until(stored, timeout=90, what="delivery after the outage")
        await wait_until(ready, timeout=60, what="ready after the outage")
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        code = await proc.wait(30)
    assert code == 0
    assert not during["ready"], during
    assert not during["kafka"], during
    library = [e for e in lines if e["logger"].startswith("aiokafka")]
    assert len(library) < 100, len(library)
    found = [str(e["msg"]) for e in proc.lines()]
    assert sum(m.startswith("Kafka group coordinator lost") for m in found) == 1, found
    assert sum(m.startswith("Kafka group coordinator back") for m in found) == 1, found
