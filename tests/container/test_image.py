"""The runtime image, built and run for real: hardened, `--version`, `check`, `run`, the
HEALTHCHECK, and a SIGTERM drain, against the suite's Kafka broker and the BuildingMinds
emulator on this machine (the container shares the host's network).

Every container runs as a deployment should run it: read-only root filesystem, no
capabilities, no new privileges, the image's numeric user, the client secret from a mounted
file. The image's size and the container's start-to-ready and SIGTERM-to-exit times are
printed in pytest's summary.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from connector.cli import EXIT_CHECK_FAILED, EXIT_OK
from tests.container.engine import (
    CONFIG_IN_CONTAINER,
    HARDENED,
    METRICS_PORT,
    SECRET_IN_CONTAINER,
    UID,
    Container,
    ImageInfo,
    engine,
    measured,
    start_container,
    wait_exited,
)
from tests.integration.helpers import (
    building,
    committed_offsets,
    end_offsets,
    produce,
    write_config,
)
from tests.kafka_fixtures import create_topic, wait_until
from twin_devtools.devbroker import port_open

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.integration.helpers import Emulator
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.kafka,
    pytest.mark.container,
    pytest.mark.slow,
    # the first test waits for the image build: minutes on a fresh machine
    pytest.mark.timeout(1500),
]

GRACE = 30  # `stop --time`: the engine kills after this; the connector drains within 10 s


# ---------------------------------------------------------------- a container's files
def secret_file(tmp_path: Path, value: str) -> Path:
    """The client secret as Kubernetes mounts one: readable by the container's user only."""
    path = tmp_path / f"secret-{len(list(tmp_path.glob('secret-*')))}"
    path.write_text(value)
    if os.geteuid() == 0:
        os.chown(path, UID, UID)
        path.chmod(0o400)
    else:  # a rootless engine maps the user elsewhere: world-readable, the config warns
        path.chmod(0o444)
    return path


def container_config(
    tmp_path: Path, emu: Emulator, bootstrap: str, topic: str, group: str, **pipeline: Any
) -> Path:
    """The integration tests' process config, with the secret taken out (it comes from the
    mounted file) and /metrics, /healthz, /readyz on the port the HEALTHCHECK probes."""
    path = write_config(tmp_path, emu, bootstrap, topic, group)
    config = yaml.safe_load(path.read_text())
    del config["sink"]["client_secret"]
    config["metrics"] = {"port": METRICS_PORT, "host": "127.0.0.1"}
    config["pipeline"].update(pipeline)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


def mounts(config: Path, secret: Path) -> list[tuple[Path, str]]:
    return [(config, CONFIG_IN_CONTAINER), (secret, SECRET_IN_CONTAINER)]


SECRET_ENV = {"CONNECTOR_SINK__CLIENT_SECRET_FILE": SECRET_IN_CONTAINER}


async def run_to_exit(image: str, argv: list[str], *extra: str) -> tuple[int, str, str]:
    done = await engine("run", "--rm", "--network", "host", *HARDENED, *extra, image, *argv)
    return done.returncode, done.stdout, done.stderr


def status_of(path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass(frozen=True)
class Bed:
    """What one container test runs against: the emulator, the broker, a fresh topic (with
    its dead-letter topic) and consumer group, and a directory for the mounted files."""

    emulator: Emulator
    bootstrap: str
    topic: str
    group: str
    files: Path

    def config(self, **pipeline: Any) -> Path:
        return container_config(
            self.files, self.emulator, self.bootstrap, self.topic, self.group, **pipeline
        )


@pytest.fixture
async def bed(
    emulator: Emulator, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    tmp_path: Path,
) -> Bed:  # fmt: skip
    topic = await new_topic()
    await create_topic(kafka_bootstrap, f"{topic}.dlq")
    return Bed(emulator, kafka_bootstrap, topic, group_id, tmp_path)


@pytest.fixture
async def running(image: ImageInfo, bed: Bed) -> AsyncIterator[Container]:
    """`run` in a container, ready (/readyz 200), with 200 buildings on its topic. Removed
    afterwards, whatever the test did to it."""
    if port_open(METRICS_PORT):
        pytest.fail(
            f"port {METRICS_PORT} is taken on this machine: the container shares the host's "
            "network and the image's HEALTHCHECK probes that port; stop what listens there"
        )
    await produce(bed.bootstrap, [(bed.topic, *building(i, 0)) for i in range(200)])
    # commits only on the drain (and never by the interval), so the last test sees the drain's
    config = bed.config(commit_interval_seconds=600)
    secret = secret_file(bed.files, "demo-secret")
    container = await start_container(image.name, mounts(config, secret), SECRET_ENV, [])
    try:
        await wait_until(
            lambda: status_of("/readyz") == 200, timeout=90, interval=0.1, what="/readyz 200"
        )
        measured("start to ready, s (run -> /readyz 200)", time.monotonic() - container.started)
        yield container
    finally:
        await container.remove()


async def onboarded(emulator: Emulator, count: int) -> None:
    async def stored() -> bool:
        return len(await emulator.entities("building")) == count

    await wait_until(stored, timeout=60, what=f"{count} buildings onboarded from the container")


async def healthcheck(container: Container, image: ImageInfo) -> int:
    """Run the image's own HEALTHCHECK command in the container: its exit code."""
    kind, *command = image.healthcheck
    argv = command if kind == "CMD" else ["/bin/sh", "-c", *command]
    return await container.exec(argv)


# ---------------------------------------------------------------- the image itself
PROBE = """
import errno, importlib.util, json, os, shutil
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
try:
    open("/opt/venv/written", "w")
    read_only = False
except OSError as exc:
    read_only = exc.errno == errno.EROFS
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cap_eff": int(status["CapEff"], 16),
    "no_new_privs": status["NoNewPrivs"].strip(), "read_only": read_only,
    "modules": [m for m in ("connector", "twin_emulators", "twin_devtools", "pytest",
                            "hypothesis", "mypy") if importlib.util.find_spec(m)],
    "tools": [t for t in ("gcc", "cc", "make", "curl", "wget", "git") if shutil.which(t)],
}))
"""


async def test_hardened_non_root_small_and_without_dev_tools(image: ImageInfo) -> None:
    assert image.user == f"{UID}:{UID}"
    code, out, err = await run_to_exit(image.name, ["-c", PROBE], "--entrypoint", "python")
    assert code == 0, err
    seen = json.loads(out)
    assert (seen["uid"], seen["gid"]) == (UID, UID)
    assert seen["cap_eff"] == 0, "--cap-drop ALL leaves no effective capability"
    assert seen["no_new_privs"] == "1"
    assert seen["read_only"], "the root filesystem is writable"
    assert seen["modules"] == ["connector"], "the runtime image carries dev tools"
    assert seen["tools"] == [], "the runtime image carries build or download tools"
    # the Debian-made base is ~176 MB, the official slim one ~125 MB; the venv ~80 MB
    assert image.size_mb < 350, f"{image.size_mb} MB: what was added to the image?"


async def test_version(image: ImageInfo) -> None:
    code, out, err = await run_to_exit(image.name, ["--version"])
    assert code == EXIT_OK, err
    assert "0.1.0" in out


async def test_check_passes_against_the_emulator_and_fails_on_a_wrong_secret(
    image: ImageInfo, bed: Bed
) -> None:
    config = bed.config()
    argv = ["check", "--config", CONFIG_IN_CONTAINER]
    env = ["--env", f"CONNECTOR_SINK__CLIENT_SECRET_FILE={SECRET_IN_CONTAINER}"]

    def volumes(secret: Path) -> list[str]:
        return [a for s, t in mounts(config, secret) for a in ("--volume", f"{s}:{t}:ro")]

    good = secret_file(bed.files, "demo-secret")
    code, out, err = await run_to_exit(image.name, argv, *env, *volumes(good))
    assert code == EXIT_OK, out + err
    assert "token: ok" in out
    assert "GET /batch: ok" in out
    assert f"topic {bed.topic}: ok (3 partitions" in out
    assert "demo-secret" not in out + err

    wrong = secret_file(bed.files, "not-the-secret")
    code, out, err = await run_to_exit(image.name, argv, *env, *volumes(wrong))
    assert code == EXIT_CHECK_FAILED, out + err
    assert "AADSTS7000215" in err
    assert "not-the-secret" not in out + err


# ---------------------------------------------------------------- `run` in a container
async def test_run_onboards_records_and_the_healthcheck_passes(
    running: Container, image: ImageInfo, bed: Bed
) -> None:
    await onboarded(bed.emulator, 200)
    assert await healthcheck(running, image) == 0
    assert status_of("/metrics") == 200


async def test_the_healthcheck_fails_when_the_consume_loop_stalls(
    running: Container, image: ImageInfo
) -> None:
    """A frozen process (SIGSTOP: the consume loop, and with it every task, stops turning)
    fails the image's HEALTHCHECK; it passes again once the process runs on."""
    assert await healthcheck(running, image) == 0
    await running.signal("SIGSTOP")
    try:
        assert await healthcheck(running, image) != 0
    finally:
        await running.signal("SIGCONT")

    async def healthy() -> bool:
        return await healthcheck(running, image) == 0

    await wait_until(healthy, timeout=30, interval=0.5, what="healthy again after SIGCONT")


async def test_sigterm_drains_and_exits_0_within_the_grace_with_everything_committed(
    running: Container, bed: Bed
) -> None:
    await onboarded(bed.emulator, 200)
    committed = await committed_offsets(bed.bootstrap, bed.topic, bed.group)
    assert set(committed.values()) == {None}, (
        "committed before the drain: this test would not show the drain's commit"
    )
    asked = time.monotonic()
    done = await engine("stop", "--time", str(GRACE), running.id, timeout=GRACE + 30)
    assert done.returncode == 0, done.stderr
    code = await wait_exited(running, timeout=GRACE)
    took = time.monotonic() - asked
    measured("SIGTERM to exit, s (stop -> exited)", took)
    logs = await running.logs()
    assert code == 0, logs[-3000:]
    assert took < GRACE, f"{took:.1f} s: the engine had to kill it"
    assert any(
        json.loads(line)["msg"].startswith("stopped:")
        for line in logs.splitlines()
        if line.startswith("{")
    ), logs[-3000:]
    assert await committed_offsets(bed.bootstrap, bed.topic, bed.group) == await end_offsets(
        bed.bootstrap, bed.topic
    )
