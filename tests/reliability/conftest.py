"""The reliability suite: faults against sequence-numbered records and a ground truth.

Every scenario writes uniquely numbered records (`seq-N`), so a missing one is a gap and an
extra submission a duplicate. The ground truth is the emulator's stored entities and request
log and the dead-letter topic. Each scenario records a row (fault, sent, lost, duplicated, peak
memory) in `$RELIABILITY_REPORT` (default `.cache/reliability.json`), from which README.md's
table is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.report import Report

if TYPE_CHECKING:
    from collections.abc import Iterator

REPORT = Path(
    os.environ.get("RELIABILITY_REPORT", Path(__file__).parents[2] / ".cache" / "reliability.json")
)


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    rep = Report()
    yield rep
    if rep.rows:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        old.update({r.fault: asdict(r) for r in rep.rows})
        REPORT.write_text(json.dumps(old, indent=2))
