"""The README's shell blocks work as written: "Try the emulator", pasted as a script, prints the
building it onboarded (the emulator needs seconds to start and stores a record only after the
processing delay, so the block must wait for both itself)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from twin_devtools.devbroker import free_port

ROOT = Path(__file__).resolve().parents[2]


def section(name: str) -> str:
    """The README's text from the heading `## name` to the next `## ` heading."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no section {name!r}"
    return match.group(1)


def first_block(text: str, language: str) -> str:
    match = re.search(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, f"no ```{language} block"
    return match.group(1)


@pytest.mark.slow
def test_the_try_the_emulator_block_runs_as_a_script_and_prints_the_building(
    tmp_path: Path,
) -> None:
    bash, curl = shutil.which("bash"), shutil.which("curl")
    if bash is None or curl is None:
        pytest.skip("the README's block needs bash and curl, which are not installed here")
    block = first_block(section("Try the emulator"), "sh")
    assert "--port 8080 &" in block, "the block starts the emulator on port 8080"
    # a free port instead of 8080, and this interpreter instead of the project's .venv
    script = block.replace("8080", str(free_port())).replace(".venv/bin/python", sys.executable)
    output = tmp_path / "out"
    # a file, not a pipe: the emulator left in the background would hold a pipe open
    with output.open("w") as out_file:
        run = subprocess.Popen(
            [bash, "-c", script], cwd=ROOT, stdout=out_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        code = run.wait(timeout=90)
    finally:
        # the block leaves the emulator running in the background, as a user wants it
        os.killpg(run.pid, signal.SIGTERM)
    out = output.read_text()
    assert code == 0, out
    lines = out.splitlines()
    assert lines, "the block printed nothing"
    assert '"batchId"' in out, f"the submission was not accepted:\n{out}"
    # the last command reads back what was onboarded: the building, with its name
    stored = json.loads(lines[-1])
    assert stored["entities"]["building"] == [
        {"buildingId": "B-1", "eventType": "BuildingAdded", "name": "HQ"}
    ], out


def test_the_cdc_demo_runs_the_readmes_mapping_as_written() -> None:
    """`make demo-cdc` proves the README's "From your database" example: its config's topics
    and mappings are that block's."""
    documented = yaml.safe_load(first_block(section("From your database"), "yaml"))
    demo = yaml.safe_load((ROOT / "devtools" / "twin_devtools" / "demo_cdc.yaml").read_text())
    assert demo["mappings"] == documented["mappings"]
    assert demo["kafka"]["topics"] == documented["kafka"]["topics"]
