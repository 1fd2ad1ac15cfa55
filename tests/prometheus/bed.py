"""The alert test bed: one connector process, its platforms, a broker of its own, Prometheus.

`alert_bed(tmp_path, broker)` runs for a block:

- the BuildingMinds emulator (tokens that last 12 s, so the connector renews every ~3 s and a
  token outage shows within seconds) behind the hostile proxy of `tests.support.hostile`, which
  forwards everything until a test makes it answer 403 for one endpoint;
- the Bimplus emulator as a polling source of the same connector;
- `python -m connector run` as a subprocess (so it can be stopped with SIGSTOP), reading three
  topics of `broker` and serving /metrics on a free port;
- a steady, demo-like stream of sample events (`connector.samples`, 1 % invalid) at
  `RATE` events/s, which a test can hold (`Bed.producing`) while the broker is away;
- the real Prometheus on the overlay of `tests.prometheus.server`, scraping that connector.

Must not: sleep for fixed times to decide anything; readiness and alerts are polled.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import yaml
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connector.samples import sample_events
from tests.integration.helpers import ConnectorProcess, Emulator, running_emulator
from tests.kafka_fixtures import create_topic, wait_until
from tests.prometheus.server import PrometheusApi, PrometheusServer, new_server
from tests.support.hostile import HostileApi, hostile_api
from twin_devtools.devbroker import free_port
from twin_emulators.bimplus import BIMPLUS_KEY, BimplusState
from twin_emulators.bimplus import create_app as create_bimplus
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from twin_devtools.devbroker import LocalBroker

__all__ = ["RATE", "SCALE", "Bed", "alert_bed"]

SCALE = 60  # a minute of the shipped rules is a second of the test
RATE = 20.0  # sample events per second, as `make demo` produces them
BUILDINGS, METERS, BIMPLUS = "building-changes", "meter-changes", "bimplus-changes"
DLQ = "building-twin-connector.dlq"


@dataclass
class Bed:
    broker: LocalBroker
    emulator: Emulator
    proxy: HostileApi
    bimplus_url: str
    bimplus: BimplusState
    connector: ConnectorProcess
    metrics_port: int
    server: PrometheusServer
    prometheus: PrometheusApi
    http: aiohttp.ClientSession
    producing: anyio.Event = field(default_factory=anyio.Event)
    produced: int = 0
    started: float = field(default_factory=time.time)

    async def bimplus_faults(self, **body: Any) -> None:
        async with self.http.post(f"{self.bimplus_url}/_emulator/faults", json=body) as r:
            assert r.status == 200, await r.text()

    async def forget_next_batch(self) -> None:
        async with self.http.post(f"{self.emulator.url}/_emulator/forget", json={"next": 1}) as r:
            assert r.status == 200, await r.text()

    def pause_connector(self) -> None:
        self.connector.proc.send_signal(signal.SIGSTOP)

    def resume_connector(self) -> None:
        self.connector.proc.send_signal(signal.SIGCONT)

    async def metric(self, name: str) -> float:
        """The sum of one metric's samples on the connector's /metrics right now."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with self.http.get(url) as r:
            text = await r.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name}{{", f"{name} "))
        )


def _config(
    bed_dir: Path, broker: LocalBroker, *, emu: Emulator, proxy: HostileApi, bimplus: str, port: int
) -> Path:
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap, "group_id": "alerts",
            "topics": [BUILDINGS, METERS, BIMPLUS], "dead_letter_topic": DLQ,
            "topic_entities": {METERS: "meter"},
        },
        "sink": {
            "base_url": f"{proxy.url}/api/digitaltwinintegration", "token_url": emu.token_url,
            "client_id": "demo-client", "client_secret": "demo-secret",
            "scope": "api://buildingminds-emulator",
            "rate_limit": {"requests": 300, "per_seconds": 10},
            "token_skew_seconds": 9, "retry_backoff_seconds": 0.2,
            "retry_backoff_max_seconds": 1, "misconfigured_pause_seconds": 1,
            "request_timeout_seconds": 5,
        },
        "window": {"max_records": 500, "max_wait_seconds": 1.0},
        "pipeline": {"commit_interval_seconds": 0.5, "shutdown_grace_seconds": 10},
        "tracking": {"poll_interval_seconds": 1, "lost_after_seconds": 4, "lost_retries": 0},
        "sources": [{
            "type": "bimplus", "base_url": f"{bimplus}/v2", "topic": BIMPLUS,
            "snapshot_topic": f"{BIMPLUS}.snapshots", "poll_interval_seconds": 1,
            "request_timeout_seconds": 5, "client_id": "demo-client",
            "client_secret": "demo-secret",
        }],
        "metrics": {"port": port, "host": "127.0.0.1"},
        "logging": {"format": "json"},
    }  # fmt: skip
    path = bed_dir / "connector.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _produce(bed: Bed) -> None:
    """`RATE` sample events a second for as long as the bed runs, held while not `producing`."""
    producer = AIOKafkaProducer(bootstrap_servers=bed.broker.bootstrap, linger_ms=20)
    await producer.start()
    try:
        started = time.monotonic()
        events = sample_events(
            10**9, building_topic=BUILDINGS, meter_topic=METERS, ids=2000, invalid_share=0.01
        )
        for event in events:
            if not bed.producing.is_set():
                await bed.producing.wait()
                started = time.monotonic() - bed.produced / RATE
            with contextlib.suppress(KafkaError):
                await producer.send(event.topic, key=event.key, value=event.value)
            bed.produced += 1
            ahead = bed.produced / RATE - (time.monotonic() - started)
            if ahead > 0:
                await anyio.sleep(ahead)
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(KafkaError):
            await producer.stop()


@contextlib.asynccontextmanager
async def _bimplus() -> AsyncIterator[tuple[str, BimplusState]]:
    app = create_bimplus()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), app[BIMPLUS_KEY]
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def alert_bed(tmp_path: Path, broker: LocalBroker) -> AsyncIterator[Bed]:
    """Everything running, the first commit made and no alert active; stopped afterwards."""
    for topic in (BUILDINGS, METERS, BIMPLUS, f"{BIMPLUS}.snapshots", DLQ):
        await create_topic(broker.bootstrap, topic)
    options = EmulatorOptions(
        processing_delay_seconds=0.5, token_lifetime_seconds=12,
        rate_limit_requests=300, rate_limit_seconds=10,
    )  # fmt: skip
    async with (
        running_emulator(options) as emu,
        hostile_api(emu.url) as proxy,
        _bimplus() as (bimplus_url, bimplus),
        aiohttp.ClientSession() as http,
    ):
        port = free_port()
        config = _config(tmp_path, broker, emu=emu, proxy=proxy, bimplus=bimplus_url, port=port)
        connector = ConnectorProcess(config, tmp_path / "connector.log")
        (tmp_path / "prometheus").mkdir()
        server = new_server(tmp_path / "prometheus", target=f"127.0.0.1:{port}", scale=SCALE)
        try:
            bed = Bed(
                broker, emu, proxy, bimplus_url, bimplus, connector, port, server,
                PrometheusApi(server.url, http), http,
            )  # fmt: skip
            async with anyio.create_task_group() as tg:
                bed.producing.set()
                tg.start_soon(_produce, bed)

                async def committed() -> bool:
                    try:
                        return await bed.metric("connector_offset_commits_total") > 0
                    except aiohttp.ClientError:
                        return False

                await wait_until(committed, timeout=60, what="the connector's first commit")
                # Prometheus only now: before the connector listens, `up` is 0 (ConnectorDown)
                await server.start(http)

                async def scraped() -> bool:
                    return bool(
                        await bed.prometheus.query('up{job="building-twin-connector"} == 1')
                    )

                await wait_until(scraped, timeout=30, what="Prometheus' first scrape")
                try:
                    yield bed
                finally:
                    tg.cancel_scope.cancel()
        finally:
            server.stop()
            connector.proc.send_signal(signal.SIGCONT)
            connector.proc.send_signal(signal.SIGTERM)
            try:
                await connector.wait(30)
            except subprocess.TimeoutExpired:
                connector.proc.kill()
