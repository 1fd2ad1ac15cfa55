"""The real change-data-capture upstream: PostgreSQL, Kafka Connect (standalone) and Debezium.

Owns starting a throw-away PostgreSQL server (Debian's binaries, a temporary data directory,
`wal_level=logical`, loopback, a free port) and a Kafka Connect worker in standalone mode
running the Debezium PostgreSQL connector, with its jars resolved from Maven Central
(`tools/connect/pom.xml`, cached under `.cache/connect`). Used by the CDC tests
(`tests/support/cdc.py` re-exports it) and `make demo-cdc`; `python -m twin_devtools.cdc resolve`
pre-fetches the jars (`make connect-jars`).

Must not: be imported by the connector; it is a test and development tool. It needs Java 17+,
Maven (first run only) and PostgreSQL server binaries; `CdcUnavailable` says which is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from twin_devtools.devbroker import PROJECT_ROOT, free_port, port_open

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "CdcUnavailable",
    "ConnectWorker",
    "Postgres",
    "debezium_connector",
    "postgres",
    "resolve_connect_jars",
]

POM = PROJECT_ROOT / "tools" / "connect" / "pom.xml"
# Debian's layout; the newest installed version first
PG_BIN_CANDIDATES = tuple(
    str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
)


class CdcUnavailable(RuntimeError):
    """A part of the CDC upstream cannot run here; the message says what to install."""


def _cache_dir() -> Path:
    return Path(os.environ.get("CONNECT_CACHE_DIR", PROJECT_ROOT / ".cache" / "connect"))


def resolve_connect_jars(*, quiet: bool = False) -> Path:
    """The Connect worker's classpath (Connect + Debezium), resolved with Maven if not cached."""
    libs = _cache_dir() / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise CdcUnavailable("Maven is needed once to resolve Kafka Connect and Debezium jars")
    if not quiet:
        print(  # noqa: T201 - the one line before a long silence
            f"resolving Kafka Connect + Debezium jars from Maven Central into {libs} "
            "(first run: about a minute) ...", file=sys.stderr, flush=True,
        )  # fmt: skip
    started = time.monotonic()
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
           f"-Dconnect.libs.dir={libs}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0 or not any(libs.glob("debezium-connector-postgres-*.jar")):
        raise CdcUnavailable(
            f"Maven could not resolve Connect/Debezium (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr)[-2000:]}"
        )
    marker.write_text("ok")
    if not quiet:
        print(f"resolved Kafka Connect + Debezium jars in {time.monotonic() - started:.0f} s",  # noqa: T201
              file=sys.stderr, flush=True)  # fmt: skip
    return libs


def _pg_bin() -> Path:
    configured = os.environ.get("PG_BIN")
    for candidate in (configured, *PG_BIN_CANDIDATES):
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise CdcUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found; "
        "install them (Debian: apt-get install postgresql) or set PG_BIN"
    )


@dataclass
class Postgres:
    """A PostgreSQL server of our own, as the `postgres` OS user when we are root (then `root`
    must be a directory that user can reach: not inside a 0700 directory of root's).

    `sql()` runs statements through `psql` (no Python driver needed); `stop()` is a fast
    shutdown and removes the data directory.
    """

    root: Path
    port: int = field(default_factory=free_port)
    database: str = "cafm"
    bin: Path = field(default_factory=_pg_bin)

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", "postgres", "--", *argv]

    def _run(self, argv: list[str], *, input_text: str | None = None) -> str:
        done = subprocess.run(
            self._as_owner(argv), input=input_text, capture_output=True, text=True,
            check=False, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise CdcUnavailable(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return done.stdout

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run([str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                       "--auth=trust", "--no-sync", "-E", "UTF8"])  # fmt: skip
        options = (
            f"-c wal_level=logical -c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.root} -c max_wal_senders=10 "
            "-c max_replication_slots=10 -c fsync=off"
        )
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
                   "-l", str(self.root / "postgres.log"), "-w", "start"])  # fmt: skip
        self.sql(f"CREATE DATABASE {self.database}", database="postgres")

    def sql(self, statements: str, *, database: str | None = None) -> str:
        """Run SQL with psql (stop at the first error); returns psql's unaligned output."""
        psql = self.bin / "psql" if (self.bin / "psql").exists() else Path("psql")
        return self._run(
            [str(psql), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-X", "-q",
             "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database or self.database],
            input_text=statements,
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(CdcUnavailable):
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                       "-w", "stop"])  # fmt: skip


def debezium_connector(
    name: str,
    pg: Postgres,
    *,
    tables: list[str],
    topic_prefix: str,
    unwrap: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The Debezium PostgreSQL connector's configuration: one slot and publication each.

    `unwrap` adds `ExtractNewRecordState` with `__deleted`/`__op` (deletes rewritten, the
    tombstones kept, as most deployments run it).
    """
    config = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": "127.0.0.1",
        "database.port": str(pg.port),
        "database.user": "postgres",
        "database.password": "unused-trust-auth",
        "database.dbname": pg.database,
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": name.replace("-", "_"),
        "publication.name": f"{name.replace('-', '_')}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "snapshot.mode": "initial",
    }
    if unwrap:
        config |= {
            "transforms": "unwrap",
            "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
            "transforms.unwrap.delete.tombstone.handling.mode": "rewrite-with-tombstone",
            "transforms.unwrap.add.fields": "op,table",
        }
    return config | dict(extra or {})


@dataclass
class ConnectWorker:
    """Kafka Connect in standalone mode with plain `java`, its REST API on loopback."""

    root: Path
    bootstrap: str
    schemas_enable: bool = True
    libs: Path = field(default_factory=resolve_connect_jars)
    rest_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "connect.log"

    def _write(self, name: str, props: Mapping[str, str]) -> Path:
        path = self.root / name
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self, connectors: list[dict[str, str]], timeout: float = 120.0) -> None:
        """Start the worker with `connectors` and wait until each of their tasks runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        schemas = "true" if self.schemas_enable else "false"
        worker = self._write("worker.properties", {
            "bootstrap.servers": self.bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": schemas,
            "value.converter.schemas.enable": schemas,
            "offset.storage.file.filename": str(self.root / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            # plugins by their ServiceLoader manifests (Kafka and Debezium ship them): no
            # reflection scan of the classpath, which takes 5-20 s at every start
            "plugin.discovery": "service_load",
        })  # fmt: skip
        log4j = self._write("log4j.properties", {
            "log4j.rootLogger": "INFO, stdout",
            "log4j.appender.stdout": "org.apache.log4j.ConsoleAppender",
            "log4j.appender.stdout.layout": "org.apache.log4j.PatternLayout",
            "log4j.appender.stdout.layout.ConversionPattern": "[%d] %p %m (%c)%n",
            "log4j.logger.org.reflections": "ERROR",
        })  # fmt: skip
        files = [self._write(f"{c['name']}.properties", c) for c in connectors]
        java = shutil.which("java")
        if java is None:
            raise CdcUnavailable("Java 17+ is needed to run Kafka Connect")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [java, "-Xms128m", "-Xmx512m", f"-Dlog4j.configuration=file:{log4j}",
             "-cp", str(self.libs / "*"), "org.apache.kafka.connect.cli.ConnectStandalone",
             str(worker), *map(str, files)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        names = [c["name"] for c in connectors]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CdcUnavailable(f"Kafka Connect exited:\n{self.tail()}")
            if port_open(self.rest_port) and all(self.running(n) for n in names):
                return
            time.sleep(0.5)
        raise CdcUnavailable(f"Debezium was not running after {timeout:.0f} s:\n{self.tail()}")

    def status(self, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{name}/status"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return dict(json.load(response))
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def running(self, name: str) -> bool:
        state = self.status(name)
        tasks = state.get("tasks") or []
        if any(t.get("state") == "FAILED" for t in tasks):
            raise CdcUnavailable(f"Debezium task failed: {tasks}\n{self.tail()}")
        return bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A running PostgreSQL server in a temporary directory, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
    server = Postgres(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m twin_devtools.cdc resolve`: pre-fetch the Connect + Debezium jars."""
    parser = argparse.ArgumentParser(prog="python -m twin_devtools.cdc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("resolve", help="download Kafka Connect + Debezium jars (needs Maven)")
    parser.parse_args(argv)
    try:
        resolve_connect_jars()
    except CdcUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
