"""`make demo` and `make demo-cdc` as a user runs them: records flow, /metrics shows every metric
of docs/design.md §3.5, the terminal shows the demo's own lines only (no client noise, no
traceback), Ctrl-C stops everything cleanly with the connector's summary, and a run does not
replay the last run's backlog."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.integration.helpers import committed_offsets, end_offsets, produce
from twin_devtools.demo import skip_backlog
from twin_devtools.devbroker import Broker, free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DESIGN_METRICS = [
    "records_consumed_total", "records_delivered_total", "records_dead_lettered_total",
    "records_coalesced_total", "api_requests_total", "api_retries_total",
    "token_refreshes_total", "rate_limit_wait_seconds_total", "offset_commits_total",
    "batch_submit_duration_seconds", "batch_size_records", "delivery_latency_seconds",
    "onboarding_latency_seconds", "pending_records", "requests_in_flight",
    "consumer_lag_records", "rate_limit_tokens_available", "token_expiry_timestamp_seconds",
    "last_commit_timestamp_seconds", "build_info",
]  # fmt: skip

# what a demo prints: its own lines, its progress lines, and the jar resolution's lines
OWN_LINE = re.compile(r"^(demo: |consumed |rows changed |resolv)")


def start_demo(
    module: str, broker: Broker, work: Path, *args: str
) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap, "DEMO_METRICS_PORT": str(port)}
    env.pop("DEMO_KEEP", None)
    log = work / f"{module}.out"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", f"twin_devtools.{module}", "--work-dir", str(work / module),
             *args],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    return demo, log, port


def assert_clean_stop(text: str) -> None:
    """Exit lines in order, the connector's summary shown, and nothing but the demo's lines."""
    assert "demo: connector exited 0" in text
    assert re.search(r"^demo: connector: stopped: \d+ consumed, \d+ delivered", text, re.MULTILINE)
    assert text.rstrip().endswith("demo: stopped")
    noise = [line for line in text.splitlines() if line and not OWN_LINE.match(line)]
    assert noise == [], f"client noise or tracebacks on the terminal:\n{text}"


def test_demo_shows_progress_and_every_metric_and_stops_on_ctrl_c(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    demo, log, port = start_demo("demo", kafka_broker, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            progress = [line for line in log.read_text().splitlines() if "delivered" in line]
            delivered = [int(line.split("delivered")[1].split()[0]) for line in progress]
            if delivered and delivered[-1] > 0 and "onboarded" in progress[-1]:
                onboarded = int(progress[-1].split("onboarded")[1].split()[0])
                if onboarded > 0:
                    break
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no records flowed:\n{log.read_text()}"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            exposition = response.read().decode()
        missing = [m for m in DESIGN_METRICS if f"connector_{m}" not in exposition]
        assert missing == [], f"/metrics lacks {missing}"
        assert f"http://127.0.0.1:{port}/metrics" in log.read_text()
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(90)
    text = log.read_text()
    assert code == 0, text
    assert "demo: a fresh start: consumer group twin-demo-" in text.splitlines()[0]
    assert_clean_stop(text)


def test_ctrl_c_while_the_demo_starts_stops_it_cleanly(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    demo, log, _ = start_demo("demo", kafka_broker, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while "demo: starting Kafka" not in log.read_text():
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(90)
    text = log.read_text()
    assert code == 0, text
    assert text.rstrip().endswith("demo: stopped"), text
    noise = [line for line in text.splitlines() if line and not OWN_LINE.match(line)]
    assert noise == [], text


@pytest.mark.anyio
async def test_a_fresh_run_starts_at_the_topics_ends_not_at_the_last_runs_backlog(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    topic = await new_topic()
    await produce(kafka_bootstrap, [(topic, f"k{i}".encode(), b"{}") for i in range(7)])
    skipped = await skip_backlog(kafka_bootstrap, group_id, {topic: 3})
    assert skipped == 7
    ends = await end_offsets(kafka_bootstrap, topic)
    assert await committed_offsets(kafka_bootstrap, topic, group_id) == ends


def test_demo_cdc_onboards_the_database_changes_with_the_readme_mapping(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    demo, log, _ = start_demo("demo_cdc", kafka_broker, tmp_path, "--duration", "6", "--rate", "4")
    try:
        code = demo.wait(240)
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            demo.wait(60)
    text = log.read_text()
    assert code == 0, text
    progress = [line for line in text.splitlines() if line.startswith("rows changed")]
    assert progress, f"no progress line:\n{text}"
    line = (
        r"rows changed +\d+ \(30 snapshot \+ \d+ changes\)  → events +\d+  "
        r"→ consumed +\d+  → onboarded +\d+  \(dead-lettered 0,"
    )
    assert all(re.match(line, p) for p in progress), text
    # the demo lets the last changes arrive, then counts both sides
    held = re.search(
        r"the database holds (\d+) buildings, (\d+) floors; "
        r"the emulator holds (\d+) buildings, (\d+) floors", text
    )  # fmt: skip
    assert held, text
    database, platform = held.group(1, 2), held.group(3, 4)
    assert database == platform, text
    assert int(database[0]) >= 10, "the snapshot's buildings at least"
    assert int(database[1]) > 0
    assert_clean_stop(text)
