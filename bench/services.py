"""The pieces a scenario drives: the emulator and the connector as processes, and Kafka.

- `EmulatorProcess`: `python -m connector emulate buildingminds --port 0 ...`, its admin API
  (request log, stored entities) and, as a second credential of its own (`bench-reader`, so
  the connector's budget is untouched), the batch and inbound-record listings of the API.
- `ConnectorProcess`: `python -m connector run --config <generated yaml>`, optionally under
  cProfile, with /metrics on a fixed free loopback port.
- `Kafka`: topic creation, a fast batch producer, end offsets and a group's committed offsets.

Every wait has a deadline; a missed one raises `BenchError` with the child's log tail.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import Child, StopOutcome
from twin_devtools.devbroker import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

__all__ = [
    "BenchError",
    "ConnectorProcess",
    "EmulatorProcess",
    "Kafka",
    "LoggedRequest",
    "Scrape",
]

API_PREFIX = "/api/digitaltwinintegration"
TENANT = "buildingminds.onmicrosoft.com"
SCOPE = "api://buildingminds-emulator"
CONNECTOR_CLIENT = ("demo-client", "demo-secret")
READER_CLIENT = ("bench-reader", "bench-reader-secret")


class BenchError(RuntimeError):
    """A scenario could not be carried out (a process died, a deadline passed)."""


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# -- the emulator --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One entry of the emulator's request log; `time` is Unix seconds."""

    time: float
    method: str
    path: str
    client_id: str | None
    status: int | None
    record_count: int | None

    @property
    def is_api(self) -> bool:
        """An API request (submission or status read), not a token request."""
        return self.path == API_PREFIX or self.path.startswith(API_PREFIX + "/")

    @property
    def is_submission(self) -> bool:
        return self.method == "POST" and self.is_api


def _logged(entry: dict[str, Any]) -> LoggedRequest:
    return LoggedRequest(
        _epoch(entry["time"]), entry["method"], entry["path"], entry["client_id"],
        entry["status"], entry["record_count"],
    )  # fmt: skip


class EmulatorProcess:
    """The BuildingMinds emulator as a separate process on a free port."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        http: aiohttp.ClientSession,
        *,
        rate_limit: tuple[int, float],
        processing_delay: float = 0.0,
    ) -> None:
        self.workdir = workdir
        self.http = http
        self.rate_limit = rate_limit
        clients = workdir / f"{name}-clients.yaml"
        clients.write_text(
            yaml.safe_dump(
                [
                    {"client_id": cid, "client_secret": secret, "scope": SCOPE}
                    for cid, secret in (CONNECTOR_CLIENT, READER_CLIENT)
                ]
            ),
            encoding="utf-8",
        )
        requests, seconds = rate_limit
        argv = [
            sys.executable, "-m", "connector", "emulate", "buildingminds",
            "--host", "127.0.0.1", "--port", "0",
            "--rate-limit", f"{requests}/{seconds:g}",
            "--processing-delay", f"{processing_delay:g}",
            "--clients", str(clients),
        ]  # fmt: skip
        self.child = Child(f"{name}-emulator", argv, workdir / f"{name}-emulator.log")
        self.url = ""
        self._reader_token: str | None = None

    @property
    def base_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def token_url(self) -> str:
        return f"{self.url}/{TENANT}/oauth2/v2.0/token"

    async def start(self, within: float = 30.0) -> None:
        self.child.start()
        deadline = time.monotonic() + within
        pattern = re.compile(r"listening on [^\s]+:(\d+) ")
        while not self.url:
            if not self.child.running():
                raise BenchError(f"the emulator exited:\n{self.child.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the emulator did not start in {within:.0f} s")
            match = pattern.search(self.child.log_path.read_text(errors="replace"))
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
            else:
                await anyio.sleep(0.1)
        while True:
            try:
                async with self.http.get(f"{self.url}/_emulator/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the emulator at {self.url} did not answer /_emulator/health")
            await anyio.sleep(0.1)

    async def requests(self) -> list[LoggedRequest]:
        """The request log (API and token requests, oldest first)."""
        async with self.http.get(f"{self.url}/_emulator/requests") as response:
            data = await response.json()
        return [_logged(e) for e in data["requests"]]

    async def save_requests(self, path: Path) -> None:
        """Write the raw request log to `path` (JSON), for a closer look after the run."""
        async with self.http.get(f"{self.url}/_emulator/requests") as response:
            await anyio.Path(path).write_bytes(await response.read())

    async def api_requests(self) -> list[LoggedRequest]:
        """The connector's API requests (submissions and status reads), oldest first."""
        return [r for r in await self.requests() if r.is_api and r.client_id == CONNECTOR_CLIENT[0]]

    async def submissions(self) -> list[LoggedRequest]:
        """The connector's API submissions (POSTs by its credential), oldest first."""
        return [r for r in await self.api_requests() if r.is_submission]

    async def entities(self, entity: str) -> list[dict[str, Any]]:
        async with self.http.get(
            f"{self.url}/_emulator/entities", params={"entity": entity}
        ) as response:
            data = await response.json()
        found: list[dict[str, Any]] = data["entities"].get(entity, [])
        return found

    async def reset(self) -> None:
        async with self.http.post(f"{self.url}/_emulator/reset") as response:
            response.raise_for_status()

    async def _token(self) -> str:
        if self._reader_token is None:
            form = {
                "grant_type": "client_credentials",
                "client_id": READER_CLIENT[0],
                "client_secret": READER_CLIENT[1],
                "scope": f"{SCOPE}/.default",
            }
            async with self.http.post(self.token_url, data=form) as response:
                body = await response.json()
                if response.status != 200:
                    raise BenchError(f"the emulator refused the reader credential: {body}")
            self._reader_token = str(body["access_token"])
        return self._reader_token

    async def _api_get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {await self._token()}"}
        async with self.http.get(self.base_url + path, params=params, headers=headers) as r:
            body: dict[str, Any] = await r.json()
            if r.status != 200:
                raise BenchError(f"GET {path} answered {r.status}: {body}")
        return body

    async def _pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = await self._api_get(path, {"skip": str(len(items)), "limit": "1000"})
            items.extend(page["data"])
            if not page["data"] or len(items) >= page["totalCount"]:
                return items

    async def wait_settled(self, within: float = 30.0) -> None:
        """Wait until the platform has processed every batch it accepted: with status tracking
        off a record is committed on the 200, before the platform has applied it, so what is
        stored right after the last commit can still miss the newest batches."""
        deadline = time.monotonic() + within
        while True:
            batches = await self._pages("/batch")
            open_ = [b for b in batches if {"New", "InProgress"} & _nonzero(b["statusCounts"])]
            if not open_:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{len(open_)} batches still unprocessed after {within:.0f} s")
            await anyio.sleep(0.2)

    async def acceptance_times(self) -> dict[str, float]:
        """External ID -> Unix time the platform accepted it (the request that carried it),
        from `GET /batch` and `GET /batch/{id}/inbound`, read as the bench's own credential."""
        accepted: dict[str, float] = {}
        for batch in await self._pages("/batch"):
            for record in await self._pages(f"/batch/{batch['batchId']}/inbound"):
                accepted.setdefault(record["externalId"], _epoch(record["createdAt"]))
        return accepted

    async def stop(self) -> None:
        await self.child.stop(grace=10)


# -- the connector -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """One scrape of the connector's /metrics."""

    def __init__(self, text: str) -> None:
        self.samples = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def total(self, name: str) -> float:
        """The sum of every sample called `name` (over all label sets)."""
        return sum(s.value for s in self.samples if s.name == name)

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets as (upper bound, count), summed over labels."""
        counts: dict[float, float] = {}
        for s in self.samples:
            if s.name == f"{name}_bucket":
                bound = float(s.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + s.value
        return sorted(counts.items())

    def quantile(self, name: str, q: float) -> float | None:
        """The upper bound of the bucket holding quantile `q` (bucket resolution)."""
        buckets = self.buckets(name)
        if not buckets or buckets[-1][1] == 0:
            return None
        wanted = q * buckets[-1][1]
        return next(bound for bound, count in buckets if count >= wanted)


class ConnectorProcess:
    """The connector as a separate process with a generated config file."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        http: aiohttp.ClientSession,
        settings: dict[str, Any],
        *,
        profile: bool = False,
    ) -> None:
        self.http = http
        self.group: str = settings["kafka"]["group_id"]
        self.metrics_port = free_port()
        settings = {**settings, "metrics": {"host": "127.0.0.1", "port": self.metrics_port}}
        settings.setdefault("logging", {"level": "INFO", "format": "json"})
        self.config_path = workdir / f"{name}-connector.yaml"
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        self.profile_path = workdir / f"{name}-connector.prof" if profile else None
        argv = [sys.executable]
        if self.profile_path is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile_path)]
        argv += ["-m", "connector", "run", "--config", str(self.config_path)]
        self.child = Child(f"{name}-connector", argv, workdir / f"{name}-connector.log")
        self.stopped: StopOutcome | None = None

    def start(self) -> None:
        self.child.start()

    async def stop(self, *, second_sigterm_after: float | None = None) -> StopOutcome:
        """SIGTERM (drain, commit, exit 0); optionally a second SIGTERM (stop now) after
        `second_sigterm_after` s; SIGKILL 60 s after the last SIGTERM."""
        if self.stopped is None:
            grace = 60 + (second_sigterm_after or 0)
            self.stopped = await self.child.stop(
                grace=grace, second_sigterm_after=second_sigterm_after
            )
        return self.stopped

    def check_alive(self) -> None:
        if not self.child.running():
            raise BenchError(f"the connector exited early:\n{self.child.log_tail()}")

    async def wait_ready(self, within: float = 60.0) -> float:
        """Seconds from start until /readyz answered 200."""
        deadline = time.monotonic() + within
        while True:
            self.check_alive()
            try:
                async with self.http.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as r:
                    if r.status == 200:
                        return time.monotonic() - self.child.started_at
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the connector was not ready after {within:.0f} s")
            await anyio.sleep(0.1)

    async def scrape(self) -> Scrape:
        async with self.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return Scrape(await r.text())


def connector_settings(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    emulator: EmulatorProcess,
    rate_limit: tuple[int, float],
    window: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
) -> dict[str, Any]:
    """A connector configuration for one scenario (everything else at its default).

    `extra` adds whole sections; `overrides` are (dotted key, value) pairs applied last
    (the command line's `--set`).
    """
    requests, seconds = rate_limit
    settings: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
            "dead_letter_topic": f"{topic}.dlq",
        },
        "sink": {
            "base_url": emulator.base_url, "token_url": emulator.token_url,
            "client_id": CONNECTOR_CLIENT[0], "client_secret": CONNECTOR_CLIENT[1],
            "scope": SCOPE, "rate_limit": {"requests": requests, "per_seconds": seconds},
        },
        "window": {"max_records": 500, **(window or {})},
        "pipeline": dict(pipeline or {}),
        **(extra or {}),
    }  # fmt: skip
    for dotted, value in overrides:
        *sections, key = dotted.split(".")
        node = settings
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return settings


# -- Kafka ---------------------------------------------------------------------------------

Event = tuple[int, bytes, bytes]  # partition, key, value


class Kafka:
    """Topic set-up, fast producing and offset reads against one broker."""

    def __init__(self, bootstrap: str, partitions: int = 3) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions

    async def create_topics(self, *names: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            for name in names:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(name, num_partitions=self.partitions, replication_factor=1)]
                    )
        finally:
            await admin.close()

    async def produce(
        self,
        topic: str,
        count: int,
        make: Callable[[int], Event],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> float:
        """Write `count` events built by `make(i)`; seconds taken. Batches are filled by hand
        (`create_batch`/`send_batch`), which is several times faster than `send` per record."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks=1, linger_ms=50,
            max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024,
        )  # fmt: skip
        started = time.monotonic()
        await producer.start()
        try:
            open_batches: dict[int, Any] = {}
            sent: deque[Any] = deque()
            for i in range(count):
                partition, key, value = make(i)
                batch = open_batches.get(partition)
                if batch is None:
                    batch = open_batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = open_batches[partition] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                    while len(sent) > 16:
                        await sent.popleft()
                if progress is not None and (i + 1) % 100_000 == 0:
                    progress(i + 1)
            for partition, batch in open_batches.items():
                if batch.record_count():
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
            for future in sent:
                await future
        finally:
            await producer.stop()
        return time.monotonic() - started

    def partitions_of(self, topic: str) -> list[Any]:
        return [TopicPartition(topic, p) for p in range(self.partitions)]

    async def end_offsets(self, topic: str) -> int:
        """The sum of the partitions' end offsets."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(self.partitions_of(topic))
            return int(sum(ends.values()))
        finally:
            await consumer.stop()

    def committed_reader(self, topic: str, group: str) -> CommittedReader:
        return CommittedReader(self, topic, group)


class CommittedReader:
    """Reads a group's committed offsets (without joining the group). Use `async with`."""

    def __init__(self, kafka: Kafka, topic: str, group: str) -> None:
        self.partitions = kafka.partitions_of(topic)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
        )

    async def __aenter__(self) -> CommittedReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def total(self) -> int:
        """The sum of the committed offsets (0 for a partition with none yet)."""
        total = 0
        for tp in self.partitions:
            committed = await self.consumer.committed(tp)
            total += committed or 0
        return total


def _nonzero(counts: dict[str, int]) -> set[str]:
    """The statuses a batch's `statusCounts` holds records in."""
    return {status for status, n in counts.items() if n}
