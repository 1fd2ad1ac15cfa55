"""Helpers of the pipeline integration tests: the emulator's admin view, producing, reading
topics and offsets, and running the connector in-process until a condition holds."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
import yaml
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector.app import Pipeline, run_connector
from connector.config import Settings
from tests.kafka_fixtures import wait_until
from twin_devtools.devbroker import free_port, port_open
from twin_emulators.buildingminds import EmulatorOptions, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence


@dataclass
class Emulator:
    url: str
    http: aiohttp.ClientSession

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/digitaltwinintegration"

    @property
    def token_url(self) -> str:
        return f"{self.url}/buildingminds.onmicrosoft.com/oauth2/v2.0/token"

    async def entities(self, entity: str) -> dict[str, dict[str, Any]]:
        async with self.http.get(f"{self.url}/_emulator/entities", params={"entity": entity}) as r:
            found = (await r.json())["entities"].get(entity, [])
        id_field = {"building": "buildingId", "floor": "floorId", "meter": "meterId"}.get(
            entity, f"{entity}Id"
        )
        return {e[id_field]: e for e in found}

    async def requests(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/_emulator/requests") as r:
            entries: list[dict[str, Any]] = (await r.json())["requests"]
            return entries

    async def faults(self, **body: Any) -> None:
        async with self.http.post(f"{self.url}/_emulator/faults", json=body) as r:
            assert r.status == 200, await r.text()


async def start_emulator(options: EmulatorOptions) -> tuple[TestServer, Emulator]:
    server = TestServer(create_app(options), host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()
    return server, Emulator(str(server.make_url("")).rstrip("/"), http)


@contextlib.asynccontextmanager
async def running_emulator(options: EmulatorOptions) -> AsyncIterator[Emulator]:
    """The emulator on a loopback socket for the block, closed afterwards."""
    server, emu = await start_emulator(options)
    try:
        yield emu
    finally:
        await emu.http.close()
        await server.close()


@contextlib.contextmanager
def emulator_process(name: str) -> Iterator[str]:
    """`python -m connector emulate NAME` on a free port for the block: its root URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector", "emulate", name, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert proc.poll() is None, "the emulator exited"
            assert time.monotonic() < deadline, "the emulator did not open its port"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def settings_for(
    emu: Emulator, bootstrap: str, topics: list[str], group: str, dlq: str, **sections: Any
) -> Settings:
    raw: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap, "group_id": group, "topics": topics,
            "dead_letter_topic": dlq, "topic_entities": {},
        },
        "sink": {
            "base_url": emu.base_url, "token_url": emu.token_url, "client_id": "demo-client",
            "client_secret": "demo-secret", "scope": "api://buildingminds-emulator",
            "retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.5,
            "request_timeout_seconds": 5,
        },
        "window": {"max_records": 100, "max_wait_seconds": 0.2},
        "pipeline": {"commit_interval_seconds": 0.5, "shutdown_grace_seconds": 10},
        "tracking": {"poll_interval_seconds": 0.2},
        "metrics": {"port": 0},
    }  # fmt: skip
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:  # a list section (mappings, sources)
            raw[section] = values
    return Settings.model_validate(raw)


async def produce(bootstrap: str, events: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for topic, key, value in events:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                records.extend(batch)
            return len(records) >= count

        await wait_until(enough, timeout=30, what=f"{count} records on {topic}")
    finally:
        await consumer.stop()
    return records


async def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def run_until(
    settings: Settings, done: Callable[[], Any], *, timeout: float = 60
) -> Pipeline:
    """Run the connector until `done()` is true, then drain it like SIGTERM would."""
    async with anyio.create_task_group() as tg:
        pipeline: Pipeline = await tg.start(
            lambda task_status: run_connector(
                settings, handle_signals=False, task_status=task_status
            )
        )
        await wait_until(done, timeout=timeout, interval=0.1, what="the connector's work")
        pipeline.begin_drain()
    return pipeline


def building(i: int, rev: int) -> tuple[bytes, bytes]:
    bid = f"b-{i}"
    return bid.encode(), orjson.dumps(
        {"buildingId": bid, "eventType": "BuildingUpdated", "name": f"B {i}", "revision": rev}
    )


def write_config(
    tmp_path: Path,
    emu: Emulator,
    bootstrap: str,
    topic: str,
    group: str,
    *,
    requests: int = 100,
    per_seconds: float | None = None,
    max_records: int = 50,
) -> Path:
    """A config file for a connector process; `requests` per second unless `per_seconds`."""
    per = per_seconds if per_seconds is not None else (60 if requests == 100 else 1)
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                  "dead_letter_topic": f"{topic}.dlq"},
        "sink": {"base_url": emu.base_url, "token_url": emu.token_url,
                 "client_id": "demo-client", "client_secret": "demo-secret",
                 "scope": "api://buildingminds-emulator",
                 "rate_limit": {"requests": requests, "per_seconds": per}},
        "window": {"max_records": max_records, "max_wait_seconds": 0.1},
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

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB; 0 once it has exited."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text().splitlines()
        return [orjson.loads(line) for line in text if line.startswith("{")]


def posted_ids(log: list[dict[str, Any]]) -> int:
    return sum(r["record_count"] or 0 for r in log if r["method"] == "POST" and r["status"] == 200)
