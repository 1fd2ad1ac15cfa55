"""Alert rules: valid for Prometheus, unit-tested by promtool, each one actionable.

`promtool` comes from Debian's `prometheus` package (CI installs it); without it the promtool
tests are skipped with that reason, and the checks that need only Python still run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "dashboards" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in dashboards/prometheus (the rule files name each other relatively)."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors() -> set[str]:
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.MULTILINE)}


RULES = rules()


# ---------------------------------------------------------------- promtool
def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", ALERTS_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_accepts_the_prometheus_config() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_catches_a_broken_rule_test(tmp_path: Path) -> None:
    """The unit tests can fail: the same file, expecting an alert that does not fire."""
    data = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    data["rule_files"] = [str(ALERTS)]
    first = data["tests"][0]["alert_rule_test"][0]
    assert first["exp_alerts"] == []
    first["exp_alerts"] = [{"exp_labels": {"severity": "critical"}}]
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    done = promtool("test", "rules", str(broken))
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr


# ---------------------------------------------------------------- every rule is actionable
@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_rule_has_a_pending_period_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"Connector[A-Z]\w+", rule["alert"])
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "set `for` against flapping"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    assert "{{" in annotations["summary"], "say which instance (or topic, reason) in the summary"


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_runbook_points_at_a_section_of_the_operations_doc(rule: dict[str, Any]) -> None:
    runbook = rule["annotations"]["runbook"]
    match = re.match(r"docs/operations\.md#([\w-]+): \S", runbook)
    assert match, f"runbook must start with docs/operations.md#<anchor>: <first step>: {runbook!r}"
    assert match.group(1) == rule["alert"].lower()
    assert match.group(1) in doc_anchors(), f"docs/operations.md has no section {match.group(1)}"


def test_alert_names_are_unique() -> None:
    names = [r["alert"] for r in RULES]
    assert len(names) == len(set(names))


def test_expected_alerts_are_all_there() -> None:
    names = {r["alert"] for r in RULES}
    assert {
        "ConnectorDown", "ConnectorCommitsStalled", "ConnectorDeadLettersHigh",
        "ConnectorRateLimited", "ConnectorApiErrorsHigh", "ConnectorTokenRefreshFailing",
        "ConnectorLagGrowing", "ConnectorBudgetSaturated",
    } <= names  # fmt: skip


def test_unit_tests_show_every_alert_firing_and_quiet() -> None:
    data = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert data["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in data["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in RULES}
    assert names - firing == set(), "no test shows these firing"
    assert names - quiet == set(), "no test shows these staying quiet"


def test_the_prometheus_config_scrapes_the_connector_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    connector = jobs["building-twin-connector"]
    assert connector.get("metrics_path", "/metrics") == "/metrics"
    assert connector["static_configs"][0]["targets"] == ["connector:9108"]
    # the rules select the connector's `up` by this job name
    assert 'up{job="building-twin-connector"}' in ALERTS.read_text(encoding="utf-8")
