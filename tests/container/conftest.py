"""Fixtures of the container tests: the image built once per session, the engine, a
container's config and mounted secret, and the BuildingMinds emulator on a loopback socket.

The image is built by `tools/image/build` (what `make image` runs) on the first test that
needs it; an image whose label holds the digest of the current sources is used as it is
(`make test` builds it before pytest starts, with progress output). Without a container
engine these tests fail and say what to install: they are part of `make test` and never
skipped on the machines CI runs on.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.container.engine import BUILD, IMAGE, MEASURED, ImageInfo, engine_name, inspect_image
from tests.integration.helpers import running_emulator
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.integration.helpers import Emulator

_built: list[ImageInfo] = []


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    """The runtime image, built (or found up to date with the sources) once per session."""
    name = engine_name()
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            [str(BUILD), "--tag", IMAGE], stdout=out, stderr=subprocess.STDOUT,
            check=False, timeout=1200, env={**os.environ, "IMAGE_ENGINE": name},
        )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"tools/image/build failed (exit {done.returncode}):\n{tail}")
    info = inspect_image(IMAGE, build_seconds=time.monotonic() - started)
    _built.append(info)
    return info


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The BuildingMinds emulator on 127.0.0.1, which a `--network host` container reaches."""
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        yield emu


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for info in _built:
        terminalreporter.write_line(
            f"container image: {info.name}, {info.size_mb} MB, built or found in "
            f"{info.build_seconds:.0f} s"
        )
    for what, values in MEASURED.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        terminalreporter.write_line(f"container: {what}: {shown}")
