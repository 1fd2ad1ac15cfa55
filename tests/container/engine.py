"""The container engine as the tests use it: `tools/image/engine` (docker when a Docker engine
answers, else podman with this project's options), a running container, and what the tests
measure (printed in pytest's summary)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.kafka_fixtures import wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "tools" / "image" / "engine"
BUILD = ROOT / "tools" / "image" / "build"
IMAGE = "building-twin-connector:dev"  # what `make image` builds
UID = 10001
METRICS_PORT = 9108  # the image's HEALTHCHECK probes this port; the container shares the host's
CONFIG_IN_CONTAINER = "/etc/connector/connector.yaml"
SECRET_IN_CONTAINER = "/run/secrets/buildingminds-client-secret"

# The hardening a deployment should use (docs/operations.md, deploy/kubernetes): every
# container of these tests runs with it, so the image is proven to work under it.
HARDENED = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")

MEASURED: dict[str, list[float]] = {}  # what -> each measurement, printed in the summary


def measured(what: str, value: float) -> None:
    MEASURED.setdefault(what, []).append(value)


def engine_name() -> str:
    """docker or podman; fails the test (no skip) with what to install when there is none."""
    done = subprocess.run(
        [str(ENGINE), "--name"], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        pytest.fail(
            f"no container engine for the container tests: {done.stderr.strip()}. They are "
            "part of `make test`; .ci/run installs podman, runc and debootstrap."
        )
    return done.stdout.strip()


def engine_sync(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENGINE), *args], capture_output=True, text=True, check=False, timeout=timeout
    )


async def engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the engine without blocking the event loop (the emulator shares it)."""
    with anyio.fail_after(timeout):
        done = await anyio.run_process([str(ENGINE), *args], check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )  # fmt: skip


@dataclass(frozen=True)
class ImageInfo:
    name: str
    size_mb: int
    user: str
    healthcheck: list[str]
    labels: dict[str, str]
    build_seconds: float


def inspect_image(name: str, *, build_seconds: float) -> ImageInfo:
    done = engine_sync("image", "inspect", name)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)[0]
    config = data.get("Config") or {}
    # docker keeps the healthcheck in Config; podman shows a docker-format image's at the top
    check = config.get("Healthcheck") or data.get("HealthCheck") or data.get("Healthcheck") or {}
    return ImageInfo(
        name=name,
        size_mb=round(int(data["Size"]) / 1e6),
        user=str(config.get("User", "")),
        healthcheck=[str(part) for part in check.get("Test", [])],
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        build_seconds=build_seconds,
    )


@dataclass
class Container:
    """A detached container of the image; `logs()` and `exit_code()` read it, `remove()`
    ends it."""

    id: str
    started: float = field(default_factory=time.monotonic)

    async def logs(self) -> str:
        done = await engine("logs", self.id)
        return done.stdout + done.stderr

    async def exit_code(self) -> int | None:
        """The exit code once the container has stopped, else None."""
        done = await engine("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.id)
        status, code = done.stdout.split()
        return int(code) if status in ("exited", "stopped") else None

    async def exec(self, argv: Sequence[str], timeout: float = 60) -> int:
        done = await engine("exec", self.id, *argv, timeout=timeout)
        return done.returncode

    async def signal(self, name: str) -> None:
        done = await engine("kill", "--signal", name, self.id)
        assert done.returncode == 0, done.stderr

    async def remove(self) -> None:
        await engine("kill", self.id)  # fails harmlessly once it has exited
        await engine("rm", "--force", self.id)


async def start_container(
    image: str, mounts: Sequence[tuple[Path, str]], env: dict[str, str], argv: Sequence[str]
) -> Container:
    """`run --detach` on the host's network with the hardening flags; mounts read-only."""
    args = ["run", "--detach", "--network", "host", *HARDENED]
    for source, target in mounts:
        args += ["--volume", f"{source}:{target}:ro"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    started = time.monotonic()
    done = await engine(*args, image, *argv)
    assert done.returncode == 0, f"the container did not start: {done.stderr}"
    return Container(done.stdout.strip().splitlines()[-1], started)


async def wait_exited(container: Container, timeout: float) -> int:
    codes: list[int] = []

    async def exited() -> bool:
        code = await container.exit_code()
        if code is not None:
            codes.append(code)
        return code is not None

    await wait_until(exited, timeout=timeout, interval=0.2, what="the container to exit")
    return codes[-1]
