"""`make demo`: the whole product on a laptop, with live progress, stopped by Ctrl-C.

Starts (or reuses) a Kafka broker (`KAFKA_BOOTSTRAP`, else a local one from Maven Central jars),
the BuildingMinds emulator, and the connector with `config/connector.local.yaml`, each as its
own process; then produces a steady stream of sample building and meter events (a few invalid
on purpose) and prints a progress line every few seconds from the connector's own /metrics.
Ctrl-C (or `--duration`) stops the producer, sends the connector SIGTERM so it drains and
commits, then stops the emulator and the broker.

Must not: be imported by the connector's run path; it is a developer tool.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client.parser import text_string_to_metric_families

from connector.errors import BrokerUnavailable
from connector.samples import sample_events
from twin_devtools.devbroker import (
    PROJECT_ROOT,
    find_or_start_broker,
    free_port,
    port_open,
)

__all__ = ["main"]

CONFIG = PROJECT_ROOT / "config" / "connector.local.yaml"
TOPICS = ("building-changes", "meter-changes", "building-twin-connector.dlq")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "connector", *args],
            stdout=out, stderr=out, env=env, start_new_session=True,
        )  # fmt: skip


async def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    with anyio.fail_after(30):
        while not port_open(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited; see {log}")
            await anyio.sleep(0.1)


async def _create_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for name in TOPICS:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, 3, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, rate: float, stop: anyio.Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        started = time.monotonic()
        events = sample_events(
            10**9, building_topic=TOPICS[0], meter_topic=TOPICS[1], ids=2000, invalid_share=0.01,
            seed=int(time.time()),
        )  # fmt: skip
        for sent, event in enumerate(events, start=1):
            if stop.is_set():
                break
            await producer.send(event.topic, key=event.key, value=event.value)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await anyio.sleep(ahead)
    finally:
        await producer.stop()


def _scrape(port: int) -> dict[str, float]:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.name
            if key == "connector_api_requests_total":
                key += ":" + sample.labels.get("outcome", "")
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def _progress(metrics: dict[str, float], history: deque[tuple[float, float]], budget: int) -> str:
    """One line; `history` keeps (time, requests so far) to count the last rolling minute."""
    requests = sum(v for k, v in metrics.items() if k.startswith("connector_api_requests_total:"))
    now = time.monotonic()
    history.append((now, requests))
    while len(history) > 1 and history[1][0] <= now - 60:
        history.popleft()
    used = 100 * (requests - history[0][1]) / budget
    return (
        f"consumed {metrics.get('connector_records_consumed_total', 0):>7.0f}  "
        f"delivered {metrics.get('connector_records_delivered_total', 0):>7.0f}  "
        f"dead-lettered {metrics.get('connector_records_dead_lettered_total', 0):>4.0f}  "
        f"coalesced {metrics.get('connector_records_coalesced_total', 0):>6.0f}  "
        f"onboarded {metrics.get('connector_records_terminal_total', 0):>7.0f}  "
        f"batches tracked {metrics.get('connector_batches_tracked', 0):>3.0f}  "
        f"budget used {used:>3.0f}% of {budget}/min  "
        f"pending {metrics.get('connector_pending_records', 0):>5.0f}"
    )


async def _start_connector(
    bootstrap: str, work: Path, procs: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], int, str]:
    """The emulator, then the connector pointed at it; returns the connector and its port."""
    emulator_port, metrics_port = free_port(), int(os.environ.get("DEMO_METRICS_PORT", "9108"))
    if port_open(metrics_port):
        metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    emulator_log = work / "emulator.log"
    emulator = _spawn(
        ["emulate", "buildingminds", "--port", str(emulator_port), "--processing-delay", "2"],
        env, emulator_log,
    )  # fmt: skip
    procs.append(emulator)
    await _wait_port(emulator_port, emulator, "the emulator", emulator_log)
    base = f"http://127.0.0.1:{emulator_port}"
    env.update({
        "CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "CONNECTOR_SINK__BASE_URL": f"{base}/api/digitaltwinintegration",
        "CONNECTOR_SINK__TOKEN_URL": f"{base}/buildingminds.onmicrosoft.com/oauth2/v2.0/token",
        "CONNECTOR_METRICS__PORT": str(metrics_port),
        "CONNECTOR_LOGGING__FORMAT": "json",
        "CONNECTOR_PIPELINE__SHUTDOWN_GRACE_SECONDS": "15",
    })  # fmt: skip
    connector_log = work / "connector.log"
    connector = _spawn(["run", "--config", str(CONFIG)], env, connector_log)
    procs.append(connector)
    await _wait_port(metrics_port, connector, "the connector", connector_log)
    return connector, metrics_port, base


async def _show_progress(
    connector: subprocess.Popen[bytes], metrics_port: int, stop: anyio.Event,
    duration: float | None,
) -> None:  # fmt: skip
    """A progress line every 3 s until `stop` is set, the duration ends or the connector dies."""
    started = time.monotonic()
    history: deque[tuple[float, float]] = deque([(started, 0.0)])
    while not stop.is_set():
        with anyio.move_on_after(3):
            await stop.wait()
        if connector.poll() is not None:
            _say(f"demo: the connector exited early ({connector.returncode})")
            break
        with contextlib.suppress(OSError):
            _say(_progress(_scrape(metrics_port), history, 100))
        if duration is not None and time.monotonic() - started >= duration:
            break
    stop.set()


async def run_demo(rate: float, duration: float | None, work: Path) -> int:
    """Everything up, progress until Ctrl-C (or `duration`), everything down. Exit code."""
    _say("demo: starting Kafka (KAFKA_BOOTSTRAP, or a local broker from Maven Central jars) ...")
    try:
        broker = await anyio.to_thread.run_sync(find_or_start_broker, work / "kafka")
    except BrokerUnavailable as exc:
        _say(f"demo: {exc}")
        return 2
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await _create_topics(broker.bootstrap)
        connector, metrics_port, base = await _start_connector(broker.bootstrap, work, procs)
        _say(
            f"demo: Kafka {broker.bootstrap} | emulator {base} | connector metrics "
            f"http://127.0.0.1:{metrics_port}/metrics | logs in {work}\n"
            f"demo: producing about {rate:.0f} events/s; Ctrl-C stops everything"
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce, broker.bootstrap, rate, stop)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

                async def on_signal() -> None:
                    async for _ in signals:
                        stop.set()
                        return

                tg.start_soon(on_signal)
                await _show_progress(connector, metrics_port, stop, duration)
                tg.cancel_scope.cancel()
        _say("demo: stopping: the connector drains and commits ...")
        connector.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(functools.partial(connector.wait, 60))
        _say(f"demo: connector exited {code}")
        return 0 if code == 0 else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    await anyio.to_thread.run_sync(functools.partial(proc.wait, 15))
                except subprocess.TimeoutExpired:
                    proc.kill()
        await anyio.to_thread.run_sync(broker.stop)
        _say("demo: stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin_devtools.demo", description=__doc__)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second (default 50)")
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--work-dir", type=Path, default=PROJECT_ROOT / ".cache" / "demo")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    return anyio.run(run_demo, args.rate, args.duration, args.work_dir)


if __name__ == "__main__":
    sys.exit(main())
