"""`run` as a real process at its edges: stop signals from the first instant, a broker that
is not up yet, a busy metrics port, the start-up line."""

from __future__ import annotations

import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml

from tests.integration.helpers import (
    ConnectorProcess,
    Emulator,
    building,
    produce,
    write_config,
)
from tests.kafka_fixtures import NewTopicFactory, create_topic, wait_until
from twin_devtools.devbroker import free_port, local_broker

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]


def configure(path: Path, **sections: dict[str, Any]) -> Path:
    config = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def messages(proc: ConnectorProcess) -> list[str]:
    return [str(e["msg"]) for e in proc.lines()]


@pytest.mark.parametrize(
    ("signum", "after"),
    [
        (signal.SIGTERM, 0.1),
        (signal.SIGTERM, 0.4),
        (signal.SIGINT, 0.8),
        (signal.SIGHUP, 0.2),
        (signal.SIGHUP, None),  # None: once the pipeline runs
    ],
)
async def test_a_stop_signal_at_any_moment_exits_0(
    *, tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    emulator: Emulator, signum: signal.Signals, after: float | None,
) -> None:  # fmt: skip
    topic = await new_topic()
    config = write_config(tmp_path, emulator, kafka_bootstrap, topic, group_id)
    proc = ConnectorProcess(config, tmp_path / "run.log")
    if after is None:
        await produce(kafka_bootstrap, [(topic, *building(1, 0))])
        await wait_until(lambda: _stored(emulator), timeout=60, what="one building")
    else:
        await anyio.sleep(after)
    proc.proc.send_signal(signum)
    assert await proc.wait(30) == 0, proc.log.read_text()[-2000:]


async def _stored(emulator: Emulator) -> bool:
    return len(await emulator.entities("building")) > 0


async def test_run_waits_for_a_broker_that_is_not_up_yet_then_delivers(
    tmp_path: Path, group_id: str, emulator: Emulator
) -> None:
    broker = local_broker(tmp_path / "kafka")
    topic = "late-broker"
    # the topic and its records exist on the broker's data; the broker is down at start
    await anyio.to_thread.run_sync(broker.start)
    try:
        await create_topic(broker.bootstrap, topic)
        await produce(broker.bootstrap, [(topic, *building(i, 0)) for i in range(20)])
    finally:
        await anyio.to_thread.run_sync(broker.stop)
    config = configure(
        write_config(tmp_path, emulator, broker.bootstrap, topic, group_id),
        kafka={"dead_letter_topic": "late-broker.dlq"},
    )
    proc = ConnectorProcess(config, tmp_path / "run.log")
    try:
        await wait_until(
            lambda: any(m.startswith("Kafka unreachable since") for m in messages(proc)),
            timeout=30, what="the unreachable line",
        )  # fmt: skip
        await anyio.sleep(3)
        assert proc.proc.poll() is None, proc.log.read_text()[-3000:]
        await anyio.to_thread.run_sync(broker.start)

        async def delivered() -> bool:
            return len(await emulator.entities("building")) == 20

        await wait_until(delivered, timeout=90, what="20 buildings after the broker came")
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        code = await proc.wait(30)
        await anyio.to_thread.run_sync(broker.stop)
    assert code == 0
    found = messages(proc)
    assert found[0].startswith("starting building-twin-connector "), found[:3]
    assert f"topics {topic}, group {group_id}" in found[0]
    waiting = [m for m in found if m.startswith("Kafka unreachable since")]
    assert 1 <= len(waiting) <= 6, waiting
    assert "Traceback" not in proc.log.read_text()


async def test_a_busy_metrics_port_is_one_line_naming_the_key_before_any_kafka_work(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    emulator: Emulator,
) -> None:  # fmt: skip
    topic = await new_topic()
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))  # noqa: S104 - the connector's default host
        taken.listen()
        config = configure(
            write_config(tmp_path, emulator, kafka_bootstrap, topic, group_id),
            metrics={"port": port},
        )
        started = time.monotonic()
        proc = ConnectorProcess(config, tmp_path / "run.log")
        code = await proc.wait(30)
    assert code == 2
    assert time.monotonic() - started < 15
    text = proc.log.read_text()
    errors = [line for line in text.splitlines() if not line.startswith("{")]
    assert len(errors) == 1, text
    assert errors[0].startswith(f"error: metrics.port {port} is in use: ")
    found = proc.lines()
    assert [e["logger"] for e in found] == ["connector.app"], "no client may have started"
