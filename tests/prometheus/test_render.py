"""`tools/panels/render.py`: the picture and the table from a live run's JSON, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "panels" / "render.py"
SVG = "{http://www.w3.org/2000/svg}"

FAULTS = [
    {"fault": "the token endpoint answers 503", "alert": "ConnectorTokenRefreshFailing",
     "to_firing": 7.14, "to_resolved": 1.04, "seen_pending": [], "began": 1030.0,
     "ended": 1037.0},
]  # fmt: skip


def _panels() -> dict[str, object]:
    series = {
        "metric": {"job": "j", "instance": "i", "outcome": "accepted"},
        "values": [[1000 + 2 * i, str(i % 5)] for i in range(60)],
    }
    titles = [
        "Records delivered by entity", "API requests by outcome", "Dead letters by reason",
        "Age of the last commit", "Token refreshes by outcome", "Source polls by outcome",
    ]  # fmt: skip
    return {
        "start": 1000.0, "end": 1120.0, "step": 2,
        "panels": {t: [{"expr": "x", "result": [series]}] for t in titles},
    }  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_the_svg_draws_every_key_panel_and_the_faults(tmp_path: Path) -> None:
    (tmp_path / "panels.json").write_text(json.dumps(_panels()))
    (tmp_path / "alerts.json").write_text(json.dumps(FAULTS))
    done = run("svg", str(tmp_path), str(tmp_path / "out.svg"))
    assert done.returncode == 0, done.stderr
    root = ET.parse(tmp_path / "out.svg").getroot()  # noqa: S314 - our own script's output
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert sum(t.startswith("API requests by outcome") for t in texts) == 1
    assert len(list(root.iter(f"{SVG}polyline"))) == 6
    assert any("ConnectorTokenRefreshFailing fired after 7 s" in t for t in texts), texts
    assert "accepted" in texts


def test_a_panel_gone_from_the_data_is_named(tmp_path: Path) -> None:
    data = _panels()
    del data["panels"]["Age of the last commit"]  # type: ignore[attr-defined]
    (tmp_path / "panels.json").write_text(json.dumps(data))
    (tmp_path / "alerts.json").write_text(json.dumps(FAULTS))
    done = run("svg", str(tmp_path), str(tmp_path / "out.svg"))
    assert done.returncode != 0
    assert "no panel 'Age of the last commit'" in done.stderr


def test_the_table_has_a_row_per_fault_and_missing_data_says_how_to_make_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "alerts.json").write_text(json.dumps(FAULTS))
    done = run("table", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2] == (
        "| ConnectorTokenRefreshFailing | the token endpoint answers 503 | 7.1 s | 1.0 s |"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("table", str(empty))
    assert done.returncode == 2
    assert f"PROMETHEUS_BED_OUT={empty}" in done.stderr
