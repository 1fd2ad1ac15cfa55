"""Asynchronous processing: batch and record statuses over the fake clock, held children,
asynchronous FailedValidation, upserts and deletes, and the batch queries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator.test_buildingminds_api import record
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from tests.support.emulators import BuildingMinds, StartBuildingMinds

pytestmark = pytest.mark.anyio


async def submit(emulator: BuildingMinds, token: str, entity: str, *records: dict[str, Any]) -> str:
    reply = await emulator.post(entity, list(records), token)
    assert reply.status == 200, reply.body
    batch_id: str = reply.body["batchId"]
    return batch_id


async def statuses(emulator: BuildingMinds, token: str, batch_id: str) -> dict[str, str]:
    return {r["externalId"]: r["status"] for r in await emulator.inbound(batch_id, token)}


async def test_records_move_new_in_progress_completed_on_the_clock(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    batch_id = await submit(emulator, token, "building", record("building", "B-1"))

    assert await statuses(emulator, token, batch_id) == {"B-1": "New"}
    emulator.clock.advance(0.999)
    assert await statuses(emulator, token, batch_id) == {"B-1": "New"}
    assert await emulator.entities("building") == {}
    emulator.clock.advance(0.001)
    assert await statuses(emulator, token, batch_id) == {"B-1": "InProgress"}
    emulator.clock.advance(0.999)
    assert await statuses(emulator, token, batch_id) == {"B-1": "InProgress"}
    assert await emulator.entities("building") == {}
    emulator.clock.advance(0.001)
    [item] = await emulator.inbound(batch_id, token)

    assert item["status"] == "Completed"
    assert item["entity"] == "building"
    assert item["eventType"] == "BuildingAdded"
    assert item["batchId"] == batch_id
    assert item["missingDependencies"] == []
    assert item["message"] is None
    assert item["updatedAt"] > item["createdAt"]
    assert set(await emulator.entities("building")) == {"B-1"}


async def test_measurements_end_published(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await submit(emulator, token, "building", record("building", "B-1"))
    emulator.clock.advance(2)
    batch_id = await submit(
        emulator, token, "operational-measurement", record("operational-measurement", "OM-1")
    )

    emulator.clock.advance(2)

    assert await statuses(emulator, token, batch_id) == {"OM-1": "Published"}


async def test_the_batch_list_counts_records_per_status(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    batch_id = await submit(
        emulator,
        token,
        "floor",
        record("floor", "F-1", buildingId="B-1"),
        record("floor", "F-2", buildingId="B-2"),
        record("floor", "F-3", buildingId="B-1", name="__fail_async__"),
    )
    await submit(emulator, token, "building", record("building", "B-1"))

    emulator.clock.advance(3)
    reply = await emulator.api("GET", f"/batch?batchId={batch_id}", token=token)

    assert reply.status == 200
    assert reply.body["message"]
    assert reply.body["totalCount"] == 1
    [item] = reply.body["data"]
    assert item["batchId"] == batch_id
    assert item["entity"] == "floor"
    assert item["endpoint"] == "/floor"
    assert item["recordCount"] == 3
    assert item["createdAt"].endswith("Z")
    # F-1 started when B-1 completed (t=2), so it is in progress; F-2 waits for B-2.
    assert item["statusCounts"] == {
        "New": 1,
        "InProgress": 1,
        "Completed": 0,
        "Published": 0,
        "FailedValidation": 1,
    }


async def test_a_child_before_its_parent_is_held_new_then_completes(
    emulator: BuildingMinds,
) -> None:
    token = await emulator.token()
    floor_batch = await submit(emulator, token, "floor", record("floor", "F-1", buildingId="B-9"))

    emulator.clock.advance(600)
    [held] = await emulator.inbound(floor_batch, token)
    assert held["status"] == "New"
    assert held["missingDependencies"] == [{"entity": "building", "id": "B-9"}]
    assert await emulator.inbound(floor_batch, token, "?missingDependencies=true") == [held]
    assert await emulator.inbound(floor_batch, token, "?missingDependencies=false") == []

    await submit(emulator, token, "building", record("building", "B-9"))
    emulator.clock.advance(2)  # the parent completes; the child starts processing now
    [released] = await emulator.inbound(floor_batch, token)
    assert (released["status"], released["missingDependencies"]) == ("New", [])
    emulator.clock.advance(1)
    assert await statuses(emulator, token, floor_batch) == {"F-1": "InProgress"}
    emulator.clock.advance(1)
    assert await statuses(emulator, token, floor_batch) == {"F-1": "Completed"}
    assert set(await emulator.entities("floor")) == {"F-1"}


async def test_a_chain_of_parents_resolves_in_order(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    space = await submit(emulator, token, "space", record("space", "SP-1", floorId="F-1"))
    floor = await submit(emulator, token, "floor", record("floor", "F-1", buildingId="B-1"))
    site = await submit(emulator, token, "site", record("site", "S-1", addressIds=["A-1"]))
    building = await submit(
        emulator, token, "building", record("building", "B-1", siteId="S-1", addressIds=["A-1"])
    )
    emulator.clock.advance(60)
    assert await statuses(emulator, token, space) == {"SP-1": "New"}

    await submit(emulator, token, "address", record("address", "A-1"))
    # Each level starts when its parent completed: address, site, building, floor, space.
    emulator.clock.advance(8)
    assert await statuses(emulator, token, building) == {"B-1": "Completed"}
    assert await statuses(emulator, token, space) == {"SP-1": "New"}
    emulator.clock.advance(2)

    for batch_id, key in ((site, "S-1"), (floor, "F-1"), (space, "SP-1")):
        assert await statuses(emulator, token, batch_id) == {key: "Completed"}


async def test_the_failure_marker_ends_in_failed_validation(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    batch_id = await submit(
        emulator,
        token,
        "building",
        record("building", "B-1"),
        record("building", "B-2", extensionData={"notes": ["ok", "x __fail_async__ y"]}),
    )

    emulator.clock.advance(1)
    assert await statuses(emulator, token, batch_id) == {"B-1": "InProgress", "B-2": "InProgress"}
    emulator.clock.advance(1)
    failed = await emulator.inbound(batch_id, token, "?status=FailedValidation")

    assert [r["externalId"] for r in failed] == ["B-2"]
    assert "extensionData.notes[1]" in failed[0]["message"]
    assert set(await emulator.entities("building")) == {"B-1"}


async def test_the_failure_marker_is_found_behind_json_escapes(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    body = b'[{"buildingId": "B-1", "eventType": "BuildingAdded", "name": "__fail\\u005fasync__"}]'
    reply = await emulator.api("POST", "/building", token=token, data=body)
    assert reply.status == 200

    emulator.clock.advance(2)

    assert await statuses(emulator, token, reply.body["batchId"]) == {"B-1": "FailedValidation"}


async def test_the_latest_version_wins_and_a_delete_removes(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await submit(emulator, token, "building", record("building", "B-1", name="first"))
    emulator.clock.advance(2)
    await submit(emulator, token, "building", record("building", "B-1", "Updated", name="second"))
    emulator.clock.advance(2)
    assert (await emulator.entities("building"))["B-1"]["name"] == "second"

    await submit(
        emulator,
        token,
        "building",
        record("building", "B-1", "Updated", name="third"),
        record("building", "B-2"),
    )
    await submit(emulator, token, "building", {"buildingId": "B-1", "eventType": "BuildingDeleted"})
    emulator.clock.advance(2)

    assert set(await emulator.entities("building")) == {"B-2"}


async def test_an_older_version_finishing_late_does_not_overwrite_a_newer_one(
    emulator: BuildingMinds,
) -> None:
    token = await emulator.token()
    await submit(emulator, token, "building", record("building", "B-1"))
    emulator.clock.advance(2)
    # v1 waits for building B-9; v2 (sent later) links to B-1, which exists, and completes.
    await submit(emulator, token, "floor", record("floor", "F-1", buildingId="B-9", name="v1"))
    await submit(emulator, token, "floor", record("floor", "F-1", buildingId="B-1", name="v2"))
    emulator.clock.advance(2)
    assert (await emulator.entities("floor"))["F-1"]["name"] == "v2"

    await submit(emulator, token, "building", record("building", "B-9"))
    emulator.clock.advance(4)

    assert (await emulator.entities("floor"))["F-1"]["name"] == "v2"


async def test_inbound_filters_and_pages(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    records = [record("building", f"B-{i}") for i in range(5)]
    records[3]["name"] = "__fail_async__"
    batch_id = await submit(emulator, token, "building", *records)
    emulator.clock.advance(2)

    page = await emulator.api("GET", f"/batch/{batch_id}/inbound?skip=1&limit=2", token=token)
    completed = await emulator.inbound(batch_id, token, "?status=completed")
    wrong = await emulator.api("GET", f"/batch/{batch_id}/inbound?status=Done", token=token)
    bad_flag = await emulator.api(
        "GET", f"/batch/{batch_id}/inbound?missingDependencies=maybe", token=token
    )

    assert page.body["totalCount"] == 5
    assert [r["externalId"] for r in page.body["data"]] == ["B-1", "B-2"]
    assert [r["externalId"] for r in completed] == ["B-0", "B-1", "B-2", "B-4"]
    assert wrong.status == 400
    assert wrong.body["error"] == "Request validation failed"
    assert bad_flag.status == 400


async def test_the_batch_list_filters_by_date_and_pages_newest_first(
    emulator: BuildingMinds,
) -> None:
    token = await emulator.token()
    first = await submit(emulator, token, "building", record("building", "B-1"))
    emulator.clock.advance(3 * 86400)
    token = await emulator.token()  # the first one expired meanwhile
    second = await submit(emulator, token, "building", record("building", "B-2"))
    third = await submit(emulator, token, "site", record("site", "S-1"))

    everything = await emulator.api("GET", "/batch", token=token)
    today = everything.body["data"][0]["createdAt"][:10]
    first_day = everything.body["data"][2]["createdAt"][:10]
    recent = await emulator.api("GET", f"/batch?createdFrom={today}", token=token)
    old = await emulator.api(
        "GET", f"/batch?createdFrom={first_day}&createdTo={first_day}", token=token
    )
    paged = await emulator.api("GET", "/batch?skip=1&limit=1", token=token)
    bad_date = await emulator.api("GET", "/batch?createdFrom=01.02.2024", token=token)
    bad_limit = await emulator.api("GET", "/batch?limit=0", token=token)

    assert [b["batchId"] for b in everything.body["data"]] == [third, second, first]
    assert {b["batchId"] for b in recent.body["data"]} == {second, third}
    assert [b["batchId"] for b in old.body["data"]] == [first]
    assert (paged.body["totalCount"], [b["batchId"] for b in paged.body["data"]]) == (3, [second])
    assert (bad_date.status, bad_limit.status) == (400, 400)
    assert "createdFrom" in bad_date.body["details"]


async def test_processing_can_be_instant(start_emulator: StartBuildingMinds) -> None:
    emulator = await start_emulator(EmulatorOptions(processing_delay_seconds=0))
    token = await emulator.token()

    batch_id = await submit(emulator, token, "building", record("building", "B-1"))

    assert await statuses(emulator, token, batch_id) == {"B-1": "Completed"}


@pytest.mark.parametrize(
    ("entity", "link", "parent"),
    [
        ("site", {"addressIds": ["P-1"]}, "address"),
        ("land", {"siteId": "P-1"}, "site"),
        ("rental-unit", {"buildingIds": ["B-1", "P-1"]}, "building"),
        ("operational-measurement", {"buildingId": "P-1"}, "building"),
        ("meter", {"rentalUnitId": "P-1"}, "rental-unit"),
        ("resource-consumption", {"meterId": "P-1"}, "meter"),
    ],
)
async def test_each_parent_link_holds_the_child_until_the_parent_exists(
    emulator: BuildingMinds, entity: str, link: dict[str, Any], parent: str
) -> None:
    token = await emulator.token()
    # The parents' own minimal records link to B-1 and A-1; let those exist first.
    await submit(emulator, token, "building", record("building", "B-1"))
    await submit(emulator, token, "address", record("address", "A-1"))
    emulator.clock.advance(2)
    child = await submit(emulator, token, entity, record(entity, "C-1", **link))

    emulator.clock.advance(60)
    [held] = await emulator.inbound(child, token)
    assert (held["status"], held["missingDependencies"]) == (
        "New",
        [{"entity": parent, "id": "P-1"}],
    )

    await submit(emulator, token, parent, record(parent, "P-1"))
    emulator.clock.advance(4)
    [done] = await emulator.inbound(child, token)
    assert done["status"] in ("Completed", "Published")
