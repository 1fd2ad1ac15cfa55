"""`POST /_emulator/forget`: a batch the platform loses is neither listed nor found by its ID,
while its records are processed as before."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.emulator.test_buildingminds_api import record

if TYPE_CHECKING:
    from tests.support.emulators import BuildingMinds

pytestmark = pytest.mark.anyio


async def listed(emulator: BuildingMinds, token: str, query: str = "") -> list[str]:
    reply = await emulator.api("GET", f"/batch{query}", token=token)
    assert reply.status == 200, reply.body
    return [b["batchId"] for b in reply.body["data"]]


async def test_a_forgotten_batch_is_not_listed_nor_found_but_its_records_carry_on(
    emulator: BuildingMinds,
) -> None:
    token = await emulator.token()
    kept = (await emulator.post("building", [record("building", "B-1")], token)).body["batchId"]
    lost = (await emulator.post("building", [record("building", "B-2")], token)).body["batchId"]

    reply = await emulator.request("POST", "/_emulator/forget", json={"batchId": lost})

    assert reply.status == 200
    assert reply.body == {"forgotten": [lost], "next": 0}
    assert await listed(emulator, token) == [kept]
    assert await listed(emulator, token, f"?batchId={lost}") == []
    inbound = await emulator.api("GET", f"/batch/{lost}/inbound", token=token)
    assert inbound.status == 404
    emulator.clock.advance(3)
    assert set(await emulator.entities("building")) == {"B-1", "B-2"}


async def test_the_next_batches_can_be_forgotten_as_they_are_accepted(
    emulator: BuildingMinds,
) -> None:
    token = await emulator.token()
    await emulator.request("POST", "/_emulator/forget", json={"next": 2})

    ids = [
        (await emulator.post("building", [record("building", f"B-{i}")], token)).body["batchId"]
        for i in range(3)
    ]

    assert await listed(emulator, token) == [ids[2]]
    health = await emulator.request("GET", "/_emulator/health")
    assert health.body["batches"] == 3


@pytest.mark.parametrize("body", [{}, {"batchId": 7}, {"next": -1}, {"next": True}])
async def test_a_bad_forget_body_is_refused(
    emulator: BuildingMinds, body: dict[str, object]
) -> None:
    reply = await emulator.request("POST", "/_emulator/forget", json=body)
    assert reply.status == 400


async def test_an_unknown_batch_cannot_be_forgotten(emulator: BuildingMinds) -> None:
    reply = await emulator.request("POST", "/_emulator/forget", json={"batchId": "nope"})
    assert reply.status == 404
    assert reply.body == {"error": "no batch 'nope'"}


async def test_reset_remembers_nothing_forgotten(emulator: BuildingMinds) -> None:
    assert (await emulator.request("POST", "/_emulator/forget", json={"next": 5})).status == 200
    await emulator.request("POST", "/_emulator/reset")
    token = await emulator.token()
    batch_id = (await emulator.post("building", [record("building", "B-1")], token)).body["batchId"]
    assert await listed(emulator, token) == [batch_id]
