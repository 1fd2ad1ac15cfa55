"""Bimplus to BuildingMinds end to end: the Bimplus emulator, the connector with a Bimplus
source and the BuildingMinds sink in one process, a real Kafka broker, and the BuildingMinds
emulator, all over real sockets. Asserts on what the BuildingMinds emulator stored and on the
Bimplus emulator's request log."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from connector.sources.bimplus.settings import BimplusSourceSettings
from tests.integration.helpers import read_topic, running_emulator, settings_for
from tests.kafka_fixtures import wait_until
from tests.support.pipeline import running_connector
from twin_emulators.bimplus import BIMPLUS_KEY, BimplusState, create_app
from twin_emulators.bimplus_state import DEMO_APPLICATION_ID, DEMO_PASSWORD, DEMO_USER
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from connector.config import Settings
    from tests.integration.helpers import Emulator
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


@contextlib.asynccontextmanager
async def bimplus_emulator() -> AsyncIterator[tuple[str, BimplusState]]:
    app = create_app()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), app[BIMPLUS_KEY]
    finally:
        await server.close()


def with_source(settings: Settings, topic: str, url: str, **auth: Any) -> Settings:
    source = BimplusSourceSettings.model_validate(
        {
            "type": "bimplus", "base_url": f"{url}/v2", "topic": topic,
            "snapshot_topic": f"{topic}.snapshots", "poll_interval_seconds": 0.3,
            "request_timeout_seconds": 5,
            **(auth or {"client_id": "demo-client", "client_secret": "demo-secret"}),
        }
    )  # fmt: skip
    return settings.model_copy(update={"sources": (source,)})


@contextlib.asynccontextmanager
async def bed(
    bootstrap: str, new_topic: NewTopicFactory, group: str, **auth: Any
) -> AsyncIterator[tuple[Emulator, BimplusState, Settings, str]]:
    """Both emulators and the connector's settings: a Bimplus source into `topic`, the
    BuildingMinds sink reading it."""
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    async with (
        running_emulator(EmulatorOptions(processing_delay_seconds=0)) as bm,
        bimplus_emulator() as (url, bimplus),
    ):
        settings = with_source(settings_for(bm, bootstrap, [topic], group, dlq), topic, url, **auth)
        yield bm, bimplus, settings, topic


async def structure(bm: Emulator) -> dict[str, dict[str, dict[str, Any]]]:
    return {e: await bm.entities(e) for e in ("address", "site", "building", "floor", "space")}


def topology_reads(state: BimplusState) -> list[str]:
    return [e.path.split("/")[4] for e in state.requests if e.path.endswith("/topology")]


def listings(state: BimplusState) -> int:
    return sum(e.path.endswith("/projects") for e in state.requests)


async def test_spatial_structure_arrives_and_only_changes_follow(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with bed(kafka_bootstrap, new_topic, group_id) as (bm, bimplus, settings, topic):
        projects = list(bimplus.projects.values())
        async with running_connector(settings):

            async def complete() -> bool:
                found = await structure(bm)
                return [len(found[e]) for e in found] == [2, 2, 2, 4, 8]

            await wait_until(complete, timeout=60, what="the whole structure in BuildingMinds")
            found = await structure(bm)
            for project in projects:
                site = found["site"][f"bimplus:{project.id}"]
                assert site["name"] == project.name
                assert site["addressIds"] == [f"bimplus:addr:{project.id}"]
                for node in project.nodes.values():
                    ext = f"bimplus:{node.id}"
                    parent = f"bimplus:{node.parent}"
                    if node.type == "IfcBuilding":
                        assert found["building"][ext]["siteId"] == f"bimplus:{project.id}"
                    elif node.type == "IfcBuildingStorey":
                        assert found["floor"][ext]["buildingId"] == parent
                    elif node.type == "IfcSpace":
                        assert found["space"][ext]["floorId"] == parent
            assert sorted(topology_reads(bimplus)) == sorted(p.id for p in projects)

            # one storey of the second project is renamed; its `changed` moves
            changed, unchanged = projects[1], projects[0]
            storey = next(n for n in changed.nodes.values() if n.type == "IfcBuildingStorey")
            storey.name = "Ground floor"
            bimplus.bump(changed)
            await wait_until(
                lambda: _floor_named(bm, storey.id, "Ground floor"), timeout=30,
                what="the renamed floor",
            )  # fmt: skip
            polls = listings(bimplus)
            await wait_until(lambda: listings(bimplus) >= polls + 2, timeout=30, what="2 polls")
        reads = topology_reads(bimplus)
        assert reads.count(unchanged.id) == 1, "an unchanged project's topology was re-read"
        assert reads.count(changed.id) == 2
        events = await read_topic(kafka_bootstrap, topic, 19)
        kinds = [orjson.loads(e.value)["eventType"] for e in events]
        assert len(kinds) == 19, "only the renamed floor may follow the first 18 events"
        assert kinds.count("FloorUpdated") == 1
        assert sum(k.endswith("Added") for k in kinds) == 18
        updated = next(orjson.loads(e.value) for e in events if b"FloorUpdated" in e.value)
        assert updated["floorId"] == f"bimplus:{storey.id}"


async def _floor_named(bm: Emulator, node_id: str, name: str) -> bool:
    floor = (await bm.entities("floor")).get(f"bimplus:{node_id}")
    return floor is not None and floor["name"] == name


async def test_legacy_scheme_end_to_end(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    legacy = {"auth": "legacy", "username": DEMO_USER, "password": DEMO_PASSWORD,
              "application_id": DEMO_APPLICATION_ID}  # fmt: skip
    async with bed(kafka_bootstrap, new_topic, group_id, **legacy) as (bm, bimplus, settings, _):
        async with running_connector(settings):

            async def spaces() -> bool:
                return len(await bm.entities("space")) == 8

            await wait_until(spaces, timeout=60, what="the spaces in BuildingMinds")
        assert any(e.path == "/v2/authorize" for e in bimplus.requests)
        assert not any("openid" in e.path for e in bimplus.requests)


@pytest.mark.parametrize(
    "case",
    [
        ({"client_id": "demo-client", "client_secret": "wrong"}, "client ID or secret"),
        ({"client_id": "demo-client", "client_secret": "demo-secret",
          "discovery_url": "http://127.0.0.1:1/nowhere"}, "http://127.0.0.1:1/nowhere"),
        ({"auth": "legacy", "username": DEMO_USER, "password": "wrong",
          "application_id": DEMO_APPLICATION_ID}, "user name or password"),
        ({"client_id": "demo-client", "client_secret": "demo-secret", "team_slug": "nosuch"},
         "the user's teams: bimplus-demo"),
    ],
    ids=["bad-client-secret", "wrong-discovery-url", "legacy-bad-password", "unknown-team"],
)  # fmt: skip
async def test_auth_failures_are_logged_with_their_fix_and_publish_nothing(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    caplog: pytest.LogCaptureFixture, case: tuple[dict[str, str], str],
) -> None:  # fmt: skip
    auth, expected = case
    caplog.set_level(logging.ERROR)
    async with bed(kafka_bootstrap, new_topic, group_id, **auth) as (bm, _, settings, _):
        async with running_connector(settings):
            await wait_until(
                lambda: any(expected in r.getMessage() for r in caplog.records), timeout=30,
                what=f"an error naming {expected!r}",
            )  # fmt: skip
        assert await bm.entities("site") == {}
