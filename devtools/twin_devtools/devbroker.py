"""A real single-node Apache Kafka broker (KRaft) for tests, `make demo` and benchmarks.

Owns finding a broker and, where none is given, starting one from Maven Central jars with
plain `java`. One launcher serves the test suite, the demo and the benchmarks. The order of
choice (`find_or_start_broker`):

1. `KAFKA_BOOTSTRAP` is set: use that broker as it is.
2. Java 17+ is on PATH and the jars are cached or Maven can resolve them: start a local broker
   on free loopback ports with its own data directory (it can be killed and restarted on the
   same data, which the fault tests need).
3. A Docker engine answers: run the `apache/kafka` image of the same version.
4. Otherwise raise `BrokerUnavailable` saying exactly what to install or set.

Must not: be imported by the connector's run path; it is a development and test tool.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from connector.errors import BrokerUnavailable

__all__ = [
    "KAFKA_VERSION",
    "Broker",
    "DockerBroker",
    "ExternalBroker",
    "LocalBroker",
    "find_or_start_broker",
    "free_port",
    "port_open",
    "resolve_jars",
]

KAFKA_VERSION = "3.9.1"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # devtools/twin_devtools/ in the repo
POM = PROJECT_ROOT / "tools" / "kafka" / "pom.xml"
READY_LINE = "Kafka Server started"

_INSTALL_HINT = (
    "No Kafka broker is available. Do one of:\n"
    "  - set KAFKA_BOOTSTRAP=host:port to use a broker you run, or\n"
    "  - install Java 17+ and Maven (Debian: apt-get install openjdk-17-jre-headless maven), "
    "so the suite can run Kafka from Maven Central jars, or\n"
    "  - start a Docker engine, so the suite can run the apache/kafka image."
)


def cache_dir() -> Path:
    """Where jars and demo data live: `$KAFKA_CACHE_DIR`, or `.cache/kafka` in the project."""
    return Path(os.environ.get("KAFKA_CACHE_DIR", PROJECT_ROOT / ".cache" / "kafka"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java_major() -> int | None:
    java = shutil.which("java")
    if java is None:
        return None
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, check=False, timeout=30
    ).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def resolve_jars(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """The directory holding the broker's classpath, resolving it with Maven if not cached.

    Raises `BrokerUnavailable` when Maven is missing or fails.
    """
    libs = cache_dir() / version / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(
            f"Kafka {version} jars are not cached in {libs} and Maven is not installed.\n"
            + _INSTALL_HINT
        )
    if not quiet:
        print(
            f"resolving Kafka {version} jars from Maven Central into {libs} "
            "(first run: about 30 s) ...", file=sys.stderr, flush=True,
        )  # fmt: skip
    started = time.monotonic()
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
        f"-Dkafka.version={version}", f"-Dkafka.libs.dir={libs}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerUnavailable(
            f"Maven could not resolve Kafka {version} (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr)[-2000:]}"
        )
    marker.write_text(version)
    if not quiet:
        print(
            f"resolved Kafka {version} jars in {time.monotonic() - started:.0f} s", file=sys.stderr
        )
    return libs


class Broker:
    """A broker the suite can talk to. `bootstrap` is `host:port`."""

    bootstrap: str
    restartable: bool = False

    def stop(self) -> None:
        """Release the broker (a no-op for one we did not start)."""


@dataclass
class ExternalBroker(Broker):
    """A broker somebody else runs (`KAFKA_BOOTSTRAP`)."""

    bootstrap: str


@dataclass
class LocalBroker(Broker):
    """A broker process of our own, on loopback, with its own data directory.

    `start()` formats the directory the first time and waits for readiness by polling;
    `kill()` is `kill -9`; `start()` again recovers on the same data; `pause()`/`resume()` are
    SIGSTOP/SIGCONT.
    """

    libs: Path
    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    heap: str = "512m"
    process: subprocess.Popen[bytes] | None = None
    restartable: bool = True
    _log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:  # type: ignore[override]
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _classpath(self) -> str:
        return str(self.libs / "*")  # java expands the wildcard itself

    def _write_config(self) -> Path:
        config = self.data_dir / "server.properties"
        logs = self.data_dir / "logs"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    (
                        f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                        f"CONTROLLER://127.0.0.1:{self.controller_port}"
                    ),
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={logs}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=1",
                    "group.initial.rebalance.delay.ms=0",
                    "group.min.session.timeout.ms=1000",
                    "num.partitions=3",
                    "auto.create.topics.enable=true",
                    # large enough for the 10 MB malformed-event test of the reliability suite
                    "message.max.bytes=16777216",
                    "replica.fetch.max.bytes=16777216",
                    "",
                ]
            )
        )
        return config

    def _java(self) -> list[str]:
        java = shutil.which("java") or "java"
        return [
            java, "-Xms256m", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true", "-cp", self._classpath(),
        ]  # fmt: skip

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker (formatting a new data directory first) and wait until ready."""
        if self.process is not None and self.process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            # "=" form: a base64url ID may start with "-", which would read as an option
            fmt = [*self._java(), "kafka.tools.StorageTool", "format",
                   f"--cluster-id={cluster_id}", "-c", str(config)]  # fmt: skip
            done = subprocess.run(fmt, capture_output=True, text=True, check=False, timeout=120)
            if done.returncode != 0:
                raise BrokerUnavailable(f"formatting the Kafka data dir failed:\n{done.stderr}")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self._java(), "kafka.Kafka", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C at a terminal reaches us, not the JVM directly
        )
        self._wait_ready(offset, timeout)

    def _wait_ready(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise BrokerUnavailable(
                    f"the Kafka broker exited with {code}; "
                    f"last lines of {self.log_path}:\n{self._tail()}"
                )
            with self.log_path.open("rb") as log:
                log.seek(offset)
                if READY_LINE.encode() in log.read() and port_open(self.port):
                    return
            time.sleep(0.1)
        self.kill()
        raise BrokerUnavailable(f"Kafka was not ready after {timeout:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """`kill -9` the broker and reap it; the data directory stays for a restart."""
        self._signal(signal.SIGKILL)
        self._reap(10)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Kafka's clean shutdown hook), then SIGKILL after `timeout` seconds."""
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        if not self._reap(timeout):
            self.kill()

    def _reap(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._log is not None:
            self._log.close()
            self._log = None
        return True


@dataclass
class DockerBroker(Broker):
    """The `apache/kafka` image on a free port (only when no Java is available)."""

    port: int = field(default_factory=free_port)
    container: str = ""

    @property
    def bootstrap(self) -> str:  # type: ignore[override]
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        env = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{self.port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_NUM_PARTITIONS": "3",
        }
        cmd = [_docker(), "run", "-d", "--rm", "-p", f"127.0.0.1:{self.port}:9092"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        cmd.append(f"apache/kafka:{KAFKA_VERSION}")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if done.returncode != 0:
            raise BrokerUnavailable(f"docker run apache/kafka failed:\n{done.stderr}")
        self.container = done.stdout.strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = subprocess.run(
                [_docker(), "logs", self.container], capture_output=True, text=True,
                check=False, timeout=30,
            )  # fmt: skip
            if READY_LINE in logs.stdout + logs.stderr and port_open(self.port):
                return
            time.sleep(0.5)
        self.stop()
        raise BrokerUnavailable(f"the Kafka container was not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.container:
            subprocess.run(
                [_docker(), "rm", "-f", self.container], capture_output=True, check=False,
                timeout=60,
            )  # fmt: skip


def port_open(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _docker() -> str:
    return shutil.which("docker") or "docker"


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    info = subprocess.run([_docker(), "info"], capture_output=True, check=False, timeout=30)
    return info.returncode == 0


def local_broker(data_dir: Path | None = None, *, port: int | None = None) -> LocalBroker:
    """A (not yet started) broker from the cached jars; raises `BrokerUnavailable`."""
    major = _java_major()
    if major is None or major < 17:
        found = "no java on PATH" if major is None else f"Java {major}"
        raise BrokerUnavailable(f"Kafka {KAFKA_VERSION} needs Java 17+ ({found}).\n{_INSTALL_HINT}")
    libs = resolve_jars()
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="kafka-"))
    return LocalBroker(libs=libs, data_dir=data_dir, port=port or free_port())


def find_or_start_broker(data_dir: Path | None = None) -> Broker:
    """A ready broker, by the order of choice in the module docstring."""
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP"):
        return ExternalBroker(bootstrap)
    try:
        broker = local_broker(data_dir)
    except BrokerUnavailable as local_problem:
        if not _docker_engine():
            raise BrokerUnavailable(f"{local_problem}") from None
        docker = DockerBroker()
        docker.start()
        return docker
    broker.start()
    return broker


def main(argv: list[str] | None = None) -> int:
    """`python -m twin_devtools.devbroker resolve|run`: pre-fetch the jars, or run a broker."""
    parser = argparse.ArgumentParser(prog="python -m twin_devtools.devbroker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("resolve", help="download the Kafka jars into the cache (needs Maven)")
    run = sub.add_parser("run", help="run a local broker in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=9092)
    run.add_argument("--data-dir", type=Path, default=cache_dir() / "demo-data")
    args = parser.parse_args(argv)
    if args.command == "resolve":
        try:
            print(resolve_jars())
        except BrokerUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    # The JVM runs in a session of its own (Ctrl-C must reach us, not it), so a SIGTERM to this
    # launcher (kill, a supervisor, `docker stop`), even while the broker starts, must stop it
    # too, or it outlives us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        broker = local_broker(args.data_dir, port=args.port)
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        broker.start()
        print(
            f"Kafka {KAFKA_VERSION} ready at {broker.bootstrap} in "
            f"{time.monotonic() - started:.1f} s (data in {broker.data_dir}); Ctrl-C stops it",
            file=sys.stderr,
        )
        while broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
