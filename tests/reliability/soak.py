"""`make soak`: the connector under a rotating schedule of faults for N minutes, with a report.

A steady stream of sequence-numbered records (`seq-N`, with every tenth an update of an earlier
ID) flows from Kafka through the connector (a real process) to the emulator (in this process),
while a new fault starts every `--fault-seconds`: API 5xx, resets, hangs, 429 storms, slow
answers, a token endpoint outage, revoked tokens, kill -9 of the connector, SIGTERM and
restart, and (with a broker of our own) SIGSTOP of the broker beyond the session timeout. At
the end the faults stop, the connector catches up, and the report gives records sent, lost
(must be 0), duplicated, dead-lettered, 429s, restarts and peak memory. The emulator's request
log goes beside it (`soak-report.requests.json`), and the connector's logs stay in the
temporary directory the first line names.

    python -m tests.reliability.soak --minutes 30 --out soak-report.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

import anyio
from aiokafka import AIOKafkaProducer

from tests.integration.helpers import (
    ConnectorProcess,
    committed_offsets,
    end_offsets,
    start_emulator,
    write_config,
)
from tests.kafka_fixtures import create_topic
from tests.reliability.test_faults import seq
from twin_devtools.devbroker import LocalBroker, find_or_start_broker
from twin_emulators.buildingminds import EmulatorOptions

API_FAULTS: list[dict[str, Any]] = [
    {"profile": "errors", "rate": 0.3},
    {"profile": "resets", "rate": 0.2},
    {"profile": "timeouts", "rate": 0.1, "hang_seconds": 5},
    {"profile": "429-storm", "retry_after_seconds": 10, "duration_seconds": 20},
    {"profile": "latency", "min_latency_seconds": 0.2, "max_latency_seconds": 2.0},
    {"profile": "token-outage", "duration_seconds": 30},
    {"profile": "revoked-tokens"},
]
PROCESS_FAULTS = ["kill -9", "sigterm", "broker sigstop"]


def record_id(i: int) -> int:
    """The i-th event's sequence number: every tenth event updates one sent 495 events earlier."""
    return i if i % 10 else max(i - 495, 1)


def _say(text: str) -> None:
    print(f"soak {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)  # noqa: T201


async def soak(minutes: float, fault_seconds: float, rate: float, out: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    _say(f"working in {work}")
    broker = await anyio.to_thread.run_sync(find_or_start_broker, work / "kafka")
    server, emu = await start_emulator(
        EmulatorOptions(processing_delay_seconds=1, token_lifetime_seconds=120, seed=7)
    )
    topic, group = "soak-buildings", f"soak-{int(time.time())}"
    await create_topic(broker.bootstrap, topic)
    config = write_config(work, emu, broker.bootstrap, topic, group, max_records=500)
    sent, restarts, peak = 0, 0, 0.0
    faults_run: list[str] = []
    phases: list[tuple[float, str]] = []  # (unix start, fault): to attribute 429s
    connector = ConnectorProcess(config, work / "connector-0.log")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await producer.start()
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                nonlocal sent
                while True:
                    key, value = seq(record_id(sent))
                    await producer.send(topic, key=key, value=value)
                    sent += 1
                    await anyio.sleep(1 / rate)

            tg.start_soon(produce)
            schedule: Iterator[str | dict[str, Any]] = itertools.cycle(
                [*API_FAULTS[:3], "kill -9", *API_FAULTS[3:5], "sigterm", *API_FAULTS[5:],
                 "broker sigstop"]
            )  # fmt: skip
            while time.monotonic() - started < minutes * 60:
                fault = next(schedule)
                name = fault if isinstance(fault, str) else str(fault["profile"])
                faults_run.append(name)
                phases.append((time.time(), name))
                _say(f"fault: {name}; sent {sent}, stored {len(await emu.entities('building'))}")
                peak = max(peak, connector.peak_rss_mb())
                if isinstance(fault, dict):
                    await emu.faults(**fault, seed=len(faults_run))
                    await anyio.sleep(fault_seconds)
                    await emu.faults(profile="none")
                elif fault in ("kill -9", "sigterm"):
                    if fault == "kill -9":
                        connector.proc.kill()
                    else:
                        connector.proc.send_signal(signal.SIGTERM)
                    code = await connector.wait(120)
                    if fault == "sigterm" and code != 0:
                        _say(f"connector exited {code} on SIGTERM")
                        return 1
                    restarts += 1
                    connector = ConnectorProcess(config, work / f"connector-{restarts}.log")
                    await anyio.sleep(fault_seconds)
                elif isinstance(broker, LocalBroker):
                    broker.pause()
                    await anyio.sleep(15)
                    broker.resume()
                    await anyio.sleep(max(fault_seconds - 15, 0))
            tg.cancel_scope.cancel()
        await producer.flush()
        _say(f"faults over after {len(faults_run)}; catching up on {sent} records")
        phases.append((time.time(), "catching up"))
        ids = {f"seq-{record_id(i)}" for i in range(sent)}
        unique = len(ids)
        deadline = time.monotonic() + 1200
        caught_up = False
        while time.monotonic() < deadline:
            ends = await end_offsets(broker.bootstrap, topic)
            # everything committed means everything finished: only now can a gap be a loss
            if await committed_offsets(broker.bootstrap, topic, group) == ends:
                caught_up = True
                break
            await anyio.sleep(2)
        peak = max(peak, connector.peak_rss_mb())
        connector.proc.send_signal(signal.SIGTERM)
        await connector.wait(120)
        stored_ids = set(await emu.entities("building"))
        lost = len(ids - stored_ids)
        log = await emu.requests()
        api = [r for r in log if "/api/" in r["path"]]
        posted = sum(
            r["record_count"] or 0 for r in log if r["method"] == "POST" and r["status"] == 200
        )
        report: dict[str, Any] = {
            "minutes": round((time.monotonic() - started) / 60, 1),
            "events_sent": sent,
            "distinct_ids": unique,
            "caught_up": caught_up,
            "lost": lost if caught_up else None,
            "not_yet_delivered": None if caught_up else lost,
            "records_posted": posted,
            "requests": len(api),
            "api_429s_injected": len([r for r in api if r["status"] == 429 and r["fault"]]),
            "api_429s_caused_by_connector": len(
                [r for r in api if r["status"] == 429 and not r["fault"]]
            ),
            "api_429s_caused_by_connector_by_fault": _by_phase(
                [r["time"] for r in api if r["status"] == 429 and not r["fault"]], phases
            ),
            "connector_restarts": restarts,
            "faults": {f: faults_run.count(f) for f in dict.fromkeys(faults_run)},
            "peak_rss_mb": round(peak, 1),
        }
        await anyio.Path(out).write_text(json.dumps(report, indent=2))
        # the platform's side of every request, to find what caused a 429 after the fact
        await anyio.Path(out.with_suffix(".requests.json")).write_text(json.dumps(log))
        for key, value in report.items():
            print(f"{key:20} {value}")  # noqa: T201
        return 0 if caught_up and lost == 0 else 1
    finally:
        await producer.stop()
        if connector.proc.poll() is None:
            connector.proc.kill()
        await emu.http.close()
        await server.close()
        await anyio.to_thread.run_sync(broker.stop)


def _by_phase(times: list[str], phases: list[tuple[float, str]]) -> dict[str, int]:
    """How many of `times` (the request log's ISO 8601 UTC stamps) fell in each kind of fault:
    the last one started before it."""
    counts: dict[str, int] = {}
    for stamp in times:
        at = datetime.fromisoformat(stamp).timestamp()
        started = [name for start, name in phases if start <= at]
        name = started[-1] if started else "before the first fault"
        counts[name] = counts.get(name, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--fault-seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=100, help="events per second")
    parser.add_argument("--out", type=Path, default=Path("soak-report.json"))
    args = parser.parse_args()
    return anyio.run(soak, args.minutes, args.fault_seconds, args.rate, args.out)


if __name__ == "__main__":
    sys.exit(main())
