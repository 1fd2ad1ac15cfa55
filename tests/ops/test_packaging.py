"""What ships: the connector's wheel holds the runtime and its licence, never the emulators or
the dev tools (they are the `building-twin-devtools` distribution in devtools/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _wheel(sources: list[Path], out: Path) -> list[str]:
    """Build a wheel from a copy of `sources` (the project directory's files that go into it),
    so that setuptools' build/ and egg-info directories, and any stale file in them, stay out
    of the checkout and out of the wheel."""
    tree = out / "src"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for path in sources:
        if path.is_dir():
            shutil.copytree(path, tree / path.name, ignore=ignore)
        else:
            shutil.copy2(path, tree / path.name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
         str(tree)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_connector_wheel_holds_no_emulator_and_no_dev_tool(tmp_path: Path) -> None:
    names = _wheel(
        [ROOT / n for n in ("pyproject.toml", "README.md", "LICENSE", "connector")], tmp_path
    )
    packages = {name.split("/")[0] for name in names}
    assert packages == {"connector", "building_twin_connector-0.1.0.dist-info"}, packages
    assert not [n for n in names if "emulator" in n or "devbroker" in n or "demo" in n]
    assert "connector/cli.py" in names
    assert "building_twin_connector-0.1.0.dist-info/licenses/LICENSE" in names


def test_the_dev_tools_wheel_holds_the_emulators_broker_and_demo(tmp_path: Path) -> None:
    dev = ROOT / "devtools"
    names = _wheel(
        [dev / "pyproject.toml", dev / "twin_emulators", dev / "twin_devtools"], tmp_path
    )
    assert {name.split("/")[0] for name in names} >= {"twin_emulators", "twin_devtools"}
    assert "twin_emulators/buildingminds.py" in names
    assert "twin_devtools/devbroker.py" in names
    assert not [n for n in names if n.startswith("connector/")]
