"""`make demo` as a user runs it: records flow, /metrics shows every metric of docs/design.md §3.5,
and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from twin_devtools.devbroker import Broker, free_port

if TYPE_CHECKING:
    from pathlib import Path

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


def test_demo_shows_progress_and_every_metric_and_stops_on_ctrl_c(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka_broker.bootstrap, "DEMO_METRICS_PORT": str(port)}
    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "twin_devtools.demo", "--work-dir", str(tmp_path / "demo")],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
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
    assert "demo: connector exited 0" in text
    assert text.rstrip().endswith("demo: stopped")
