"""PostgreSQL -> Debezium -> Kafka -> connector -> the BuildingMinds emulator, for real.

Each Debezium variant (envelope or ExtractNewRecordState, JsonConverter schemas on or off) is
read from the beginning by a fresh connector with the same mappings; the emulator's stored
state must then equal the database's final state: every row onboarded with its mapped fields
and converted dates, every delete deleted, no dead letter (tombstones included), the column
added mid-stream mapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.cdc.conftest import VARIANTS, Upstream
from tests.integration.helpers import Emulator, run_until, running_emulator, settings_for
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.anyio]

ENTITY_TABLES = {
    "address": "addresses", "site": "sites", "building": "buildings", "floor": "floors",
    "space": "spaces", "meter": "meters",
}  # fmt: skip


def mappings(up: Upstream, prefix: str) -> list[dict[str, Any]]:
    """The same mappings for every variant: conversions are named, because records without
    a schema (JsonConverter schemas.enable=false) carry no logical types."""

    def topic(table: str) -> str:
        return up.topic(prefix, table)

    return [
        {"topic": topic("addresses"), "entity": "address", "id": "addr_no",
         "fields": {"city": "city", "country": "country"}},
        {"topic": topic("sites"), "entity": "site", "id": "site_no",
         "fields": {"name": "site_name", "addressIds": "[addr_no]",
                    "validFrom": {"expr": "opened", "convert": "date"}},
         "constants": {"type": "Office"}},
        {"topic": topic("buildings"), "entity": "building", "id": "bldg_no",
         "fields": {"name": "bldg_name", "siteId": "site_no",
                    "constructionDate": {"expr": "built_at", "convert": "micro_timestamp"},
                    "energyClass": "energy_class"}},
        {"topic": topic("floors"), "entity": "floor", "id": "floor_no",
         "fields": {"buildingId": "bldg_no", "name": "floor_name",
                    "validFrom": {"expr": "valid_from", "convert": "date"},
                    "validUntil": {"expr": "valid_until", "convert": "date"}}},
        {"topic": topic("spaces"), "entity": "space", "id": "space_no",
         "fields": {"floorId": "floor_no", "name": "space_name"}},
        {"topic": topic("meters"), "entity": "meter", "id": "meter_no",
         "fields": {"buildingId": "bldg_no", "medium": "medium"}},
    ]  # fmt: skip


def rows(up: Upstream, query: str) -> list[list[str]]:
    return [line.split("|") for line in up.pg.sql(query).splitlines() if line]


async def stored(emu: Emulator) -> dict[str, dict[str, dict[str, Any]]]:
    return {entity: await emu.entities(entity) for entity in ENTITY_TABLES}


def expected_ids(up: Upstream) -> dict[str, set[str]]:
    key = {"addresses": "addr_no", "sites": "site_no", "buildings": "bldg_no",
           "floors": "floor_no", "spaces": "space_no", "meters": "meter_no"}  # fmt: skip
    return {
        entity: {r[0] for r in rows(up, f"SELECT {key[table]} FROM {table}")}  # noqa: S608
        for entity, table in ENTITY_TABLES.items()
    }


@pytest.mark.parametrize("prefix", list(VARIANTS))
async def test_the_database_final_state_is_onboarded(
    upstream: Upstream, kafka_bootstrap: str, group_id: str, prefix: str
) -> None:
    want = expected_ids(upstream)
    topics = [upstream.topic(prefix, t) for t in ENTITY_TABLES.values()]
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        settings = settings_for(
            emu, kafka_bootstrap, topics, group_id, f"{prefix}.dlq",
            mappings=mappings(upstream, prefix),
        )  # fmt: skip
        state: dict[str, dict[str, dict[str, Any]]] = {}

        async def onboarded() -> bool:
            state.update(await stored(emu))
            have = {entity: set(found) for entity, found in state.items()}
            names = state.get("building", {}).get("B-1", {}).get("name")
            classes = state.get("building", {}).get("B-2", {}).get("energyClass")
            return have == want and names == "Tower A" and classes == "A+"

        done: Callable[[], Any] = onboarded
        pipeline = await run_until(settings, done, timeout=90)
        log = await emu.requests()

    assert pipeline.stats.dead_lettered == 0, "tombstones and deletes cost no dead letter"
    # and M-1 were deleted: each delete's tombstone was finished with it
    assert pipeline.stats.skipped == 3
    b1 = state["building"]["B-1"]
    assert b1["siteId"] == "S-2"
    assert b1["constructionDate"] == "2000-01-01T23:59:59Z"  # MicroTimestamp + 1 day
    f1 = state["floor"]["F-1"]
    assert (f1["validFrom"], f1["validUntil"]) == ("2020-01-01T00:00:00Z", "2099-12-31T00:00:00Z")
    assert state["site"]["S-1"]["addressIds"] == ["A-1"]
    assert state["site"]["S-1"]["validFrom"] == "2001-05-03T00:00:00Z"
    assert state["space"]["R-10"]["name"] == "Room 10 (renovated)"
    assert "energyClass" not in state["building"]["B-4"]  # the column exists, the value is null
    # the snapshot onboarded once: the addresses and sites never changed after it, so exactly
    # their snapshot rows (op r) were posted, no duplicate of any of them
    assert posted(log, "address") == 2
    assert posted(log, "site") == 2


def posted(log: list[dict[str, Any]], endpoint: str) -> int:
    return sum(
        r["record_count"] or 0
        for r in log
        if r["method"] == "POST" and r["status"] == 200 and r["path"].endswith(f"/{endpoint}")
    )


async def test_a_mapping_changed_between_runs_maps_the_added_column_from_then_on(
    upstream: Upstream, kafka_bootstrap: str, group_id: str
) -> None:
    """The column added mid-stream, mapped only after a config change: a first run (its
    mapping does not know the column) onboards everything; the second, with the column mapped
    and the same consumer group, maps it for the rows changed since, and reads nothing twice."""
    prefix = "env1"
    topics = [upstream.topic(prefix, t) for t in ENTITY_TABLES.values()]
    before = mappings(upstream, prefix)
    for rule in before:
        rule["fields"].pop("energyClass", None)
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        first = settings_for(
            emu, kafka_bootstrap, topics, group_id, f"{prefix}.dlq.cfg", mappings=before
        )
        want = expected_ids(upstream)

        async def all_there() -> bool:
            have = {entity: set(found) for entity, found in (await stored(emu)).items()}
            return have == want

        await run_until(first, all_there, timeout=90)
        assert "energyClass" not in (await emu.entities("building"))["B-2"]
        buildings_posted = posted(await emu.requests(), "building")

        upstream.pg.sql("UPDATE buildings SET energy_class = 'B' WHERE bldg_no = 'B-5';")
        second = settings_for(
            emu, kafka_bootstrap, topics, group_id, f"{prefix}.dlq.cfg",
            mappings=mappings(upstream, prefix),
        )  # fmt: skip

        async def mapped() -> bool:
            return (await emu.entities("building"))["B-5"].get("energyClass") == "B"

        pipeline = await run_until(second, mapped, timeout=60)
        buildings = await emu.entities("building")
        buildings_posted_again = posted(await emu.requests(), "building") - buildings_posted
    assert pipeline.stats.dead_lettered == 0
    # the rows changed before the config change are not read again (they were committed): B-2
    # keeps what the first mapping sent, and only B-5's new version was posted
    assert "energyClass" not in buildings["B-2"]
    assert buildings_posted_again == 1
    assert pipeline.stats.consumed == 1
