"""Kafka -> connector -> Building X emulator, end to end over real sockets: the hierarchy with
its parent relationships, readings as point values, the per-API budget, and dead letters."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from connector.config import Settings
from tests.integration.helpers import (
    committed_offsets,
    end_offsets,
    produce,
    read_topic,
    run_until,
)
from twin_emulators.buildingx import API_ROOT, BuildingXOptions, create_app
from twin_emulators.buildingx_state import DEMO_PARTITION

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


class Emulator:
    """The Building X emulator on a loopback socket, seen through its admin API."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def admin(self, path: str) -> Any:
        async with self.http.get(f"{self.url}/_emulator/{path}") as response:
            assert response.status == 200
            return await response.json()

    async def locations(self) -> dict[str, dict[str, Any]]:
        found = (await self.admin("locations"))["locations"].get(DEMO_PARTITION, [])
        return {x["attributes"]["externalId"]: x for x in found}

    async def values(self) -> dict[str, list[dict[str, Any]]]:
        points: dict[str, list[dict[str, Any]]] = (await self.admin("point-values"))["points"].get(
            DEMO_PARTITION, {}
        )
        return points

    async def requests(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (await self.admin("requests"))["requests"]
        return entries


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    server = TestServer(create_app(BuildingXOptions()), host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield Emulator(str(server.make_url("")).rstrip("/"), http)
    finally:
        with contextlib.suppress(Exception):
            await http.close()
        await server.close()


def settings_for(
    emu: Emulator, bootstrap: str, topics: list[str], group: str, dlq: str, **sink: Any
) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": bootstrap, "group_id": group, "topics": topics,
                "dead_letter_topic": dlq,
            },
            "sink": {
                "type": "buildingx", "base_url": f"{emu.url}{API_ROOT}",
                "token_url": f"{emu.url}/oauth/token", "client_id": "demo-client",
                "client_secret": "demo-secret", "partition_id": DEMO_PARTITION,
                "point_ids": {"M-1": "point-electricity"},
                "retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.5,
                "request_timeout_seconds": 5, **sink,
            },
            "window": {"max_records": 100, "max_wait_seconds": 0.2},
            "pipeline": {"commit_interval_seconds": 0.5, "shutdown_grace_seconds": 10},
            "metrics": {"port": 0},
        }
    )  # fmt: skip


def native(record: dict[str, Any], id_field: str) -> tuple[bytes, bytes]:
    return str(record[id_field]).encode(), orjson.dumps(record)


def hierarchy() -> list[tuple[str, dict[str, Any], str]]:
    """2 sites, 4 buildings, 8 floors, 16 spaces, number n under parent n // 2:
    (endpoint, record, id field)."""
    valid = {"validFrom": "2024-01-01T00:00:00Z"}
    until = {**valid, "validUntil": "2099-01-01T00:00:00Z"}
    prefix = {"siteId": "S", "buildingId": "B", "floorId": "F", "spaceId": "R"}
    levels: list[tuple[str, str, str, int, str | None, dict[str, Any]]] = [
        ("site", "siteId", "Site", 2, None, {"addressIds": ["A-1"], "type": "Office", **valid}),
        ("building", "buildingId", "Building", 4, "siteId", {}),
        ("floor", "floorId", "Floor", 8, "buildingId", until),
        ("space", "spaceId", "Space", 16, "floorId", {}),
    ]
    return [
        (endpoint, {
            id_field: f"{prefix[id_field]}-{n}", "eventType": f"{name}Added", "name": f"{name} {n}",
            **({parent: f"{prefix[parent]}-{n // 2}"} if parent else {}), **extra,
        }, id_field)
        for endpoint, id_field, name, count, parent, extra in levels
        for n in range(count)
    ]  # fmt: skip


def readings(count: int) -> list[dict[str, Any]]:
    return [
        {
            "operationalMeasurementId": f"OM-{i}", "eventType": "OperationalMeasurementAdded",
            "buildingId": "B-0", "procuredBy": "Landlord", "purpose": "Electricity",
            "meterId": f"M-{i % 2}", "value": i * 1.5,
            "measurementDate": f"2024-05-01T{i // 60:02d}:{i % 60:02d}:00Z",
        }
        for i in range(count)
    ]  # fmt: skip


def worst_second(entries: list[dict[str, Any]]) -> int:
    times = sorted(datetime.fromisoformat(r["time"]).timestamp() for r in entries)
    return max((sum(1 for t in times if start <= t < start + 1.0) for start in times), default=0)


async def test_the_hierarchy_and_readings_arrive_within_ten_requests_a_second_per_api(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    places, meters, dlq = await new_topic(), await new_topic(), await new_topic(prefix="dlq")
    # children first: the sink has to wait for parents that arrive later
    events = [(places, *native(r, f)) for _, r, f in reversed(hierarchy())]
    events += [(meters, *native(r, "operationalMeasurementId")) for r in readings(150)]
    await produce(kafka_bootstrap, events)
    settings = settings_for(emulator, kafka_bootstrap, [places, meters], group_id, dlq)

    async def delivered() -> bool:
        values = await emulator.values()
        return len(await emulator.locations()) == 30 and sum(map(len, values.values())) == 150

    pipeline = await run_until(settings, delivered, timeout=120)

    stored = await emulator.locations()
    ids = {external: x["id"] for external, x in stored.items()}

    def parent(external: str, relationship: str) -> str | None:
        target = stored[external]["relationships"][relationship]["data"]
        return None if target is None else str(target["id"])

    assert {stored[f"S-{s}"]["attributes"]["type"] for s in range(2)} == {"Campus"}
    assert all(parent(f"B-{b}", "isBuildingOf") == ids[f"S-{b // 2}"] for b in range(4))
    assert all(parent(f"F-{f}", "isPartOf") == ids[f"B-{f // 2}"] for f in range(8))
    assert all(parent(f"R-{r}", "isPartOf") == ids[f"F-{r // 2}"] for r in range(16))
    assert stored["R-3"]["attributes"] == {"label": "Space 3", "type": "Room", "externalId": "R-3"}
    values = await emulator.values()
    assert sorted(values) == ["M-0", "point-electricity"]  # M-1 is mapped by sink.point_ids
    assert [len(v) for v in values.values()] == [75, 75]

    log = [r for r in await emulator.requests() if r["path"].startswith(API_ROOT)]
    assert all(r["status"] != 429 for r in log), "the connector caused a 429"
    for api in ("/structure/", "/point-value-ingest/"):
        used = [r for r in log if api in r["path"]]
        assert used
        assert worst_second(used) <= 10, f"more than 10 requests in one second to {api}"
    assert pipeline.stats.dead_lettered == 0
    # Building X paces each API itself: a submission takes no slot of a pipeline budget
    assert pipeline.sink.limiter is None
    for topic in (places, meters):
        assert await committed_offsets(kafka_bootstrap, topic, group_id) == await end_offsets(
            kafka_bootstrap, topic
        )


async def test_a_json_api_rejection_is_dead_lettered_with_detail_and_request_id(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    sites = [r for endpoint, r, _ in hierarchy() if endpoint == "site"]
    bad = {**sites[0], "siteId": "S-bad", "name": "n" * 300}
    await produce(
        kafka_bootstrap, [(topic, *native(r, "siteId")) for r in (sites[0], bad, sites[1])]
    )
    settings = settings_for(
        emulator, kafka_bootstrap, [topic], f"{group_id}-{uuid.uuid4().hex[:4]}", dlq
    )

    async def done() -> bool:
        return {"S-0", "S-1"} <= set(await emulator.locations())

    await run_until(settings, done)
    (letter,) = await read_topic(kafka_bootstrap, dlq, 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["error.reason"] == "api_rejected"
    assert headers["error.http_status"] == "400"
    assert "label must be at most 255 characters" in headers["error.message"]
    assert "/data/attributes/label" in headers["error.message"]
    refused = [r for r in await emulator.requests() if r["status"] == 400]
    assert [r["request_id"] for r in refused] == [headers["error.request_id"]]
    assert orjson.loads(letter.value)["siteId"] == "S-bad"
    assert "S-bad" not in await emulator.locations()
