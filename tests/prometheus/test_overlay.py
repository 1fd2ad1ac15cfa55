"""The test overlay of the shipped Prometheus files, and what the live alerts rely on.

The overlay must change only time: `for:`, range windows and age thresholds, divided by the
scale; everything else of a rule stays as shipped. promtool must accept the generated config
and rules, as it accepts the shipped ones. And a counter an alert takes `increase()` of must be
exported at 0 before its first event, or Prometheus never sees that first event (a series
born at 1 has increased by nothing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest
import yaml
from prometheus_client import CollectorRegistry

from connector.decode import Reason
from connector.metrics import Metrics
from tests.prometheus.server import ALERTS, overlay, scale_rules, seconds

if TYPE_CHECKING:
    from pathlib import Path


def _rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_durations_are_read_as_prometheus_writes_them() -> None:
    assert seconds("5m") == 300
    assert seconds("1h30m") == 5400
    assert seconds("500ms") == 0.5
    for bad in ("", "5", "5 m", "m5", "5mm"):
        with pytest.raises(ValueError, match="not a Prometheus duration"):
            seconds(bad)


def test_scaling_divides_for_windows_and_ages_and_nothing_else() -> None:
    rules = {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {
                        "alert": "A",
                        "expr": "time() - connector_last_commit_timestamp_seconds > 600 "
                        'and rate(x_total{a="5m"}[10m]) > 0.05 and y > 600',
                        "for": "5m",
                        "labels": {"severity": "critical"},
                    },
                    {"alert": "B", "expr": "up == 0"},
                ],
            }
        ]
    }
    scaled = scale_rules(rules, 60)["groups"][0]["rules"]
    assert scaled[0]["expr"] == (
        "time() - connector_last_commit_timestamp_seconds > 10 "
        'and rate(x_total{a="5m"}[10s]) > 0.05 and y > 600'
    )
    assert scaled[0]["for"] == "5s"
    assert scaled[0]["labels"] == {"severity": "critical"}
    assert scaled[1] == {"alert": "B", "expr": "up == 0"}
    assert scale_rules(rules, 120)["groups"][0]["rules"][0]["for"] == "2500ms"


def test_the_shipped_rules_change_only_in_time() -> None:
    scaled = scale_rules(yaml.safe_load(ALERTS.read_text()), 60)
    for shipped, ours in zip(
        _rules(), [r for g in scaled["groups"] for r in g["rules"]], strict=True
    ):
        assert set(ours) == set(shipped)
        for key in set(shipped) - {"expr", "for"}:
            assert ours[key] == shipped[key]
        if "for" in shipped:
            assert seconds(str(ours["for"])) == seconds(str(shipped["for"])) / 60

        # the same expression once the numbers that scaling may touch are blanked out
        def shape(expr: object) -> str:
            return re.sub(r"\[\d+(ms|s|m|h|d)\]|\d+(\.\d+)?", "#", str(expr))

        assert shape(ours["expr"]) == shape(shipped["expr"])
    windows = [w for r in scaled["groups"][0]["rules"] for w in re.findall(r"\[(\w+)\]", r["expr"])]
    assert windows
    assert all(w.endswith("s") and not w.endswith("ms") for w in windows), windows


def test_promtool_accepts_the_overlay(tmp_path: Path) -> None:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    config = overlay(tmp_path, target="127.0.0.1:9108", prometheus_port=9090, scale=60)
    done = subprocess.run(
        [binary, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 rules found" in done.stdout + done.stderr


def test_every_dead_letter_reason_is_exported_before_its_first_event() -> None:
    # ConnectorBatchesLost and ConnectorDeadLettersHigh take increase() of these series: a
    # reason whose series appears only with its first dead letter (at 1) is never alerted on.
    registry = CollectorRegistry()
    Metrics(registry)
    exported = {
        s.labels["reason"]
        for family in registry.collect()
        for s in family.samples
        if s.name == "connector_records_dead_lettered_total"
    }
    missing = sorted(str(r) for r in set(Reason) - exported)
    assert not missing, f"connector/metrics.py does not start these reasons at 0: {missing}"
