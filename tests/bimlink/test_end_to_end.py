"""BIMlink to BuildingMinds end to end, over real sockets and a real Kafka broker:

BIMlink emulator -> `run_connector` with a bimlink source -> Kafka -> the connector's own
pipeline -> BuildingMinds emulator. Asserts on the BuildingMinds emulator's stored entities
(with their parent links) and on the change events in the topic: the first poll publishes
everything, a restart publishes nothing unchanged (the snapshot topic), and a rename and a
deletion in BIMlink become exactly one SpaceUpdated and one SpaceDeleted.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.bimlink.helpers import (
    Bimlink,
    drive_login,
    free_port,
    options_for,
    running_bimlink,
    source_settings,
)
from tests.integration.helpers import (
    Emulator,
    end_offsets,
    read_topic,
    run_until,
    running_emulator,
    settings_for,
)
from twin_emulators.bimlink_data import demo_id
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from pathlib import Path

    from connector.config import Settings
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

EXPECTED = {"address": 3, "site": 3, "building": 4, "floor": 9, "space": 27}
RENAMED = demo_id("prj-1/Beheer/storey-0/space-0")
DELETED = demo_id("prj-3/Beheer/storey-1/space-2")


async def stored(emulator: Emulator) -> dict[str, dict[str, dict[str, Any]]]:
    return {entity: await emulator.entities(entity) for entity in EXPECTED}


async def api_polls(bim: Bimlink) -> int:
    log = (await bim.admin("GET", "/requests"))["requests"]
    return sum(e["path"] == "/api/v1/domainaccounts" and e["status"] == 200 for e in log)


async def published(bootstrap: str, topic: str) -> int:
    return sum((await end_offsets(bootstrap, topic)).values())


async def test_bimlink_structure_reaches_buildingminds_and_only_changes_follow(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    group_id: str,
    tmp_path: Path,
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    snapshots = f"snapshots-{uuid.uuid4().hex[:8]}"
    port = free_port()
    async with (
        running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emulator,
        # Polls every 0.3 s read ~15 pages each: above BIMlink's budget, which is not
        # what this test is about (tests/bimlink/test_source.py covers 429).
        running_bimlink(options_for(port, rate_limit_requests=100_000), port=port) as bim,
    ):
        token_file = tmp_path / "bimlink.json"
        login = await drive_login(source_settings(bim, token_file))
        assert login.error is None, login
        source = source_settings(
            bim, token_file, topic=topic, snapshot_topic=snapshots, poll_interval_seconds=0.3
        )
        base = settings_for(emulator, kafka_bootstrap, [topic], group_id, dlq)
        settings: Settings = base.model_copy(update={"sources": (source,)})

        # 1. Everything arrives, with its parent links.
        async def all_arrived() -> bool:
            found = await stored(emulator)
            return all(len(found[e]) == n for e, n in EXPECTED.items())

        await run_until(settings, all_arrived)
        found = await stored(emulator)
        assert all(s["addressIds"][0] in found["address"] for s in found["site"].values())
        assert all(b["siteId"] in found["site"] for b in found["building"].values())
        assert all(f["buildingId"] in found["building"] for f in found["floor"].values())
        assert all(s["floorId"] in found["floor"] for s in found["space"].values())
        assert all(len(i) <= 50 for entity in found.values() for i in entity)
        first = await published(kafka_bootstrap, topic)
        assert first == sum(EXPECTED.values())

        # 2. A restart with nothing changed publishes nothing: the snapshot topic remembers.
        polls = await api_polls(bim)

        async def polled_twice() -> bool:
            return await api_polls(bim) >= polls + 2

        await run_until(settings, polled_twice)
        assert await published(kafka_bootstrap, topic) == first

        # 3. A rename and a deletion in BIMlink: exactly those two changes reach the platform.
        await bim.admin("PUT", f"/data/element/{RENAMED}", {"name": "Vergaderzaal"})
        await bim.admin("DELETE", f"/data/element/{DELETED}")
        renamed_id, deleted_id = f"bimlink:sse:{RENAMED}", f"bimlink:sse:{DELETED}"

        async def changes_arrived() -> bool:
            spaces = await emulator.entities("space")
            return (
                spaces.get(renamed_id, {}).get("name") == "Vergaderzaal"
                and deleted_id not in spaces
            )

        await run_until(settings, changes_arrived)
        found = await stored(emulator)
        assert len(found["space"]) == EXPECTED["space"] - 1
        assert all(len(found[e]) == n for e, n in EXPECTED.items() if e != "space")
        records = await read_topic(kafka_bootstrap, topic, first + 2)
        assert len(records) == first + 2
        events = Counter(orjson.loads(r.value)["eventType"] for r in records)
        assert events["SpaceUpdated"] == 1
        assert events["SpaceDeleted"] == 1
        assert sum(n for kind, n in events.items() if kind.endswith("Added")) == first
        keys = (renamed_id, deleted_id)
        later = [orjson.loads(r.value) for r in records if r.key.decode() in keys]
        assert {e["eventType"] for e in later} == {"SpaceAdded", "SpaceUpdated", "SpaceDeleted"}


async def test_a_revoked_refresh_token_stops_publishing_and_says_how_to_fix_it(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    group_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    async with (
        running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emulator,
        running_bimlink() as bim,
    ):
        token_file = tmp_path / "bimlink.json"
        assert (await drive_login(source_settings(bim, token_file))).error is None
        await bim.admin("POST", "/revoke", {})
        source = source_settings(
            bim, token_file, topic=topic, snapshot_topic=f"snapshots-{uuid.uuid4().hex[:8]}",
            poll_interval_seconds=0.3,
        )  # fmt: skip
        base = settings_for(emulator, kafka_bootstrap, [topic], group_id, dlq)
        settings: Settings = base.model_copy(update={"sources": (source,)})

        def told() -> bool:
            return any(
                "run `building-twin-connector auth bimlink --config FILE` again" in r.getMessage()
                and str(token_file) in r.getMessage()
                for r in caplog.records
            )

        await run_until(settings, told)
        assert await published(kafka_bootstrap, topic) == 0
        assert await emulator.entities("site") == {}
