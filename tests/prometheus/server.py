"""The real Prometheus server on a test overlay of the shipped scrape config and alert rules.

`overlay(target, prometheus_port, scale)` builds the test's copies from the shipped files at
test time (nothing edited is committed):

- the config keeps the shipped scrape jobs with their targets rewritten (the connector job to
  the connector under test, the `prometheus` job to this server), scrapes and evaluates every
  `SCRAPE_SECONDS`, and loads the generated rules;
- the rules are the shipped ones with time compressed by `scale` (60: a minute becomes a
  second): every `for:`, every range selector (`[10m]` -> `[10s]`) and every age threshold
  (`time() - x > 600`) are divided by it. Range windows have to shrink too, not only `for:`:
  an alert over `increase(...[15m])` resolves 15 minutes after its fault ends, which no test
  can wait for. Everything else (ratios, counts, label matchers) is kept as shipped, so a
  wrong threshold or join still shows.

`PrometheusServer` runs `/usr/bin/prometheus` (Debian's package) on a free loopback port with a
temporary data directory, and reads its HTTP API (`alerts()`, `query()`, `query_range()`).

Must not: edit or copy the shipped files by hand; every difference is made by `scale_rules`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import yaml

from twin_devtools.devbroker import free_port, port_open

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ALERTS",
    "SCRAPE_CONFIG",
    "SCRAPE_SECONDS",
    "PrometheusApi",
    "PrometheusServer",
    "new_server",
    "overlay",
    "prometheus_binary",
    "scale_rules",
    "seconds",
]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "dashboards" / "prometheus"
SCRAPE_CONFIG = SHIPPED / "prometheus.yml"
ALERTS = SHIPPED / "alerts.yml"
CONNECTOR_JOB = "building-twin-connector"
SCRAPE_SECONDS = 1

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d))\]")
# an age compared with a number of seconds: `time() - connector_last_commit_timestamp_seconds > 600`
_AGE = re.compile(r"(time\(\)\s*-\s*[a-zA-Z_:][a-zA-Z0-9_:]*\s*>\s*)(\d+(?:\.\d+)?)")


def seconds(duration: str) -> float:
    """A Prometheus duration (`5m`, `1h30m`, `500ms`) in seconds; ValueError if it is none."""
    if not duration or _DURATION.sub("", duration):
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(duration))


def _duration(value: float) -> str:
    millis = round(value * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def scale_rules(rules: dict[str, Any], scale: float) -> dict[str, Any]:
    """A copy of a rule file's content with `for:`, range windows and age thresholds / `scale`."""

    def expr(text: str) -> str:
        text = _RANGE.sub(lambda m: f"[{_duration(seconds(m[1]) / scale)}]", text)
        return _AGE.sub(lambda m: f"{m[1]}{float(m[2]) / scale:g}", text)

    groups = []
    for group in rules["groups"]:
        scaled = []
        for rule in group["rules"]:
            new = dict(rule)
            new["expr"] = expr(rule["expr"])
            if "for" in rule:
                new["for"] = _duration(seconds(rule["for"]) / scale)
            scaled.append(new)
        groups.append({**group, "rules": scaled})
    return {**rules, "groups": groups}


def overlay(directory: Path, *, target: str, prometheus_port: int, scale: float) -> Path:
    """Write the test config and the scaled rules into `directory`; return the config's path."""
    shipped = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = []
    for job in shipped["scrape_configs"]:
        own = f"127.0.0.1:{prometheus_port}"
        new = {
            **job,
            "static_configs": [{"targets": [target if job["job_name"] == CONNECTOR_JOB else own]}],
        }
        new["scrape_interval"] = new["scrape_timeout"] = f"{SCRAPE_SECONDS}s"
        jobs.append(new)
    if CONNECTOR_JOB not in {job["job_name"] for job in jobs}:
        raise ValueError(
            f"{SCRAPE_CONFIG.name} has no job {CONNECTOR_JOB!r}: the rules select on it"
        )
    rule_files = []
    for name in shipped["rule_files"]:
        rules = yaml.safe_load((SHIPPED / name).read_text())
        path = directory / f"scaled-{Path(name).name}"
        path.write_text(yaml.safe_dump(scale_rules(rules, scale), sort_keys=False))
        rule_files.append(path.name)
    config = {
        "global": {
            **shipped.get("global", {}),
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_SECONDS}s",
        },
        "rule_files": rule_files,
        "scrape_configs": jobs,
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_binary() -> str | None:
    """The Prometheus server binary (Debian/Ubuntu: `apt-get install prometheus`), or None."""
    return shutil.which("prometheus")


@dataclass
class PrometheusServer:
    """One Prometheus process; `start()` waits until it is ready, `stop()` ends it."""

    binary: str
    config: Path
    data: Path
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> subprocess.Popen[bytes]:
        """The process, started; `start()` also waits until it is ready."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=out,
            )
        return self.process

    async def start(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        process = self.launch()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}: {self._tail()}")
            if port_open(self.port):
                async with http.get(f"{self.url}/-/ready") as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus was not ready after {timeout} s: {self._tail()}")
            await anyio.sleep(0.1)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def new_server(directory: Path, *, target: str, scale: float) -> PrometheusServer:
    """A server (not started) with its overlay and data directory under `directory`."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError(
            "prometheus is not installed (Debian/Ubuntu: apt-get install prometheus)"
        )
    port = free_port()
    config = overlay(directory, target=target, prometheus_port=port, scale=scale)
    data = directory / "data"
    data.mkdir()
    return PrometheusServer(binary, config, data, directory / "prometheus.log", port)


class PrometheusApi:
    """The parts of Prometheus' HTTP API the tests read."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def _get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as r:
            body = await r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    async def alerts(self) -> list[dict[str, Any]]:
        """The active alerts (pending and firing); resolved ones are not listed."""
        data = await self._get("/api/v1/alerts")
        found: list[dict[str, Any]] = data["alerts"]
        return found

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        data = await self._get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=f"{step:g}",
        )
        result: list[dict[str, Any]] = data["result"]
        return result
