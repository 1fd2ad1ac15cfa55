"""The admin API under /_emulator: health, stored entities, the request log, reset."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import pytest

from tests.emulator.test_buildingminds_api import record
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from tests.support.emulators import BuildingMinds, StartBuildingMinds

pytestmark = pytest.mark.anyio


async def test_health_reports_the_profile_and_the_backlog(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.post("floor", [record("floor", "F-1", buildingId="B-1")], token)

    reply = await emulator.request("GET", "/_emulator/health")

    assert reply.status == 200
    assert reply.body["status"] == "ok"
    assert reply.body["fault_profile"] == "none"
    assert (reply.body["batches"], reply.body["pending_records"]) == (1, 1)


async def test_entities_lists_every_kind_or_one(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.post("building", [record("building", "B-1")], token)
    await emulator.post("address", [record("address", "A-1")], token)
    emulator.clock.advance(2)

    everything = await emulator.request("GET", "/_emulator/entities")
    one = await emulator.request("GET", "/_emulator/entities?entity=address")
    unknown = await emulator.request("GET", "/_emulator/entities?entity=castle")

    assert everything.body["count"] == 2
    assert everything.body["entities"]["building"] == [record("building", "B-1")]
    assert one.body == {"count": 1, "entities": {"address": [record("address", "A-1")]}}
    assert unknown.status == 400
    assert "castle" in unknown.body["error"]


async def test_the_state_is_reachable_in_process(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.post("building", [record("building", "B-1")], token)
    emulator.clock.advance(2)

    assert emulator.state.entities("building") == {"building": [record("building", "B-1")]}


async def test_the_request_log_lists_api_and_token_requests(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.post("building", [record("building", "B-1"), record("building", "B-2")], token)
    await emulator.api("GET", "/batch", token=None)
    await emulator.request("GET", "/_emulator/health")

    reply = await emulator.request("GET", "/_emulator/requests")
    last = await emulator.request("GET", "/_emulator/requests?limit=1")

    entries = reply.body["requests"]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", "/buildingminds.onmicrosoft.com/oauth2/v2.0/token", 200),
        ("POST", "/api/digitaltwinintegration/building", 200),
        ("GET", "/api/digitaltwinintegration/batch", 401),
    ]
    assert [e["client_id"] for e in entries] == ["demo-client", "demo-client", None]
    assert [e["record_count"] for e in entries] == [None, 2, None]
    assert all(datetime.fromisoformat(e["time"]).tzinfo is not None for e in entries)
    assert last.body["requests"] == entries[-1:]


async def test_reset_forgets_data_log_and_budget_but_keeps_tokens(
    start_emulator: StartBuildingMinds,
) -> None:
    emulator = await start_emulator(EmulatorOptions(rate_limit_requests=2))
    token = await emulator.token()
    await emulator.post("building", [record("building", "B-1")], token)
    await emulator.set_faults(profile="token-outage")
    emulator.clock.advance(2)
    assert (await emulator.api("GET", "/batch", token=token)).status == 200
    assert (await emulator.api("GET", "/batch", token=token)).status == 429

    reply = await emulator.request("POST", "/_emulator/reset")

    assert reply.status == 200
    assert await emulator.entities("building") == {}
    assert (await emulator.request("GET", "/_emulator/requests")).body["requests"] == []
    assert (await emulator.request("GET", "/_emulator/faults")).body["profile"] == "none"
    listing = await emulator.api("GET", "/batch", token=token)
    assert (listing.status, listing.body["totalCount"]) == (200, 0)
    assert (await emulator.api("GET", "/batch", token=token)).status == 200
