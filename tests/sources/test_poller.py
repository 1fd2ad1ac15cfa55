"""The polling-source core: which change events a snapshot turns into, in which order, and that
the last state survives a restart through the compacted snapshot topic.

The platforms themselves are tested with their emulators in tests/bimlink and tests/bimplus;
here a `Source` is a list in the test, the one process edge this module has."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from connector.entities import ENTITIES
from connector.errors import CredentialsRejected, ServerError
from connector.metrics import Metrics
from connector.sources.base import Change, Item, Poller, SnapshotStore, changes_between
from connector.sources.bimlink.settings import BimlinkSourceSettings
from tests.integration.helpers import read_topic
from tests.kafka_fixtures import wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.kafka_fixtures import NewTopicFactory

SITE, BUILDING, FLOOR, SPACE, ADDRESS = (
    ENTITIES[name] for name in ("Site", "Building", "Floor", "Space", "Address")
)


def site(i: int, name: str = "Campus") -> Item:
    record = {"siteId": f"s{i}", "name": f"{name} {i}", "addressIds": [], "type": "Campus"}
    return Item(SITE, f"s{i}", record)


def floor(i: int, building: str = "b1") -> Item:
    return Item(FLOOR, f"f{i}", {"floorId": f"f{i}", "buildingId": building, "name": f"F{i}"})


def space(i: int) -> Item:
    return Item(SPACE, f"r{i}", {"spaceId": f"r{i}", "floorId": "f1", "name": f"Room {i}"})


def building(i: int) -> Item:
    return Item(BUILDING, f"b{i}", {"buildingId": f"b{i}", "siteId": "s1", "name": f"B{i}"})


def state(items: Sequence[Item], source: str = "src") -> dict[str, str]:
    return {f"{source}|{i.entity.endpoint}|{i.external_id}": i.digest() for i in items}


def kinds(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.entity.name + c.kind, c.external_id) for c in changes]


# --- the diff -----------------------------------------------------------------------------


def test_first_snapshot_adds_everything_parents_before_children() -> None:
    changes = changes_between({}, [space(1), floor(1), building(1), site(1)], "src")
    assert kinds(changes) == [
        ("SiteAdded", "s1"), ("BuildingAdded", "b1"), ("FloorAdded", "f1"), ("SpaceAdded", "r1"),
    ]  # fmt: skip


def test_unchanged_entities_publish_nothing_and_changed_ones_are_updates() -> None:
    before = [site(1), building(1), floor(1), space(1)]
    now = [site(1, name="Renamed"), building(1), floor(1), space(1)]
    assert changes_between(state(before), before, "src") == []
    changes = changes_between(state(before), now, "src")
    assert kinds(changes) == [("SiteUpdated", "s1")]
    assert orjson.loads(changes[0].value()) == {**now[0].record, "eventType": "SiteUpdated"}


def test_vanished_entities_are_deleted_children_first_and_addresses_are_kept() -> None:
    address = Item(ADDRESS, "a1", {"addressId": "a1", "city": "Berlin", "country": "DE"})
    before = [address, site(1), building(1), floor(1), space(1), space(2)]
    changes = changes_between(state(before), [site(1)], "src")
    assert kinds(changes) == [
        ("SpaceDeleted", "r1"), ("SpaceDeleted", "r2"), ("FloorDeleted", "f1"),
        ("BuildingDeleted", "b1"),
    ]  # fmt: skip
    assert orjson.loads(changes[0].value()) == {"spaceId": "r1", "eventType": "SpaceDeleted"}


def test_another_sources_state_is_not_mine_to_delete() -> None:
    theirs = state([site(9)], source="other")
    assert kinds(changes_between(theirs, [site(1)], "src")) == [("SiteAdded", "s1")]


def test_an_entity_listed_twice_is_published_once() -> None:
    assert kinds(changes_between({}, [site(1), site(1)], "src")) == [("SiteAdded", "s1")]


def test_digest_ignores_key_order_but_not_values() -> None:
    a = Item(SITE, "s1", {"siteId": "s1", "name": "A"})
    b = Item(SITE, "s1", {"name": "A", "siteId": "s1"})
    c = Item(SITE, "s1", {"name": "B", "siteId": "s1"})
    assert a.digest() == b.digest() != c.digest()


# --- against a real broker ----------------------------------------------------------------


class ListSource:
    """A platform whose state is whatever the test put in `items`."""

    def __init__(self, items: list[Item], name: str = "src") -> None:
        self.items = items
        self.name = name
        self.fail: Exception | None = None

    async def snapshot(self) -> Sequence[Item]:
        if self.fail is not None:
            raise self.fail
        return list(self.items)

    async def probe(self) -> str:
        if self.fail is not None:
            raise self.fail
        return f"{len(self.items)} items"


def source_settings(topic: str, snapshots: str) -> BimlinkSourceSettings:
    raw: dict[str, Any] = {"type": "bimlink", "topic": topic, "snapshot_topic": snapshots}
    known = BimlinkSourceSettings.model_fields
    # the BIMlink-specific required keys, whatever they are, get plausible values
    for key, field in known.items():
        if field.is_required() and key not in raw:
            raw[key] = "x"
    return BimlinkSourceSettings.model_validate(raw)


async def events(bootstrap: str, topic: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (rec.key.decode(), orjson.loads(rec.value))
        for rec in await read_topic(bootstrap, topic, count)
    ]


@pytest.mark.anyio
@pytest.mark.kafka
async def test_a_restarted_poller_publishes_only_what_changed_meanwhile(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=1)  # one partition: the publishing order is visible
    snapshots = f"snapshots-{uuid.uuid4().hex[:8]}"
    settings = source_settings(topic, snapshots)
    options = {"bootstrap_servers": kafka_bootstrap}
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **options)
    await producer.start()
    try:
        store = SnapshotStore(producer, snapshots, options)
        await store.ensure_topic()
        await store.ensure_topic()  # a second start finds it there
        source = ListSource([site(1), building(1), floor(1), space(1), space(2)])
        first = Poller(source, settings, producer=producer, store=store)
        assert len(await first.poll_once()) == 5
        assert await first.poll_once() == []  # nothing changed

        # while no poller runs: one space renamed, one gone, one new floor
        source.items = [site(1), building(1), floor(1), floor(2), space(1)]
        source.items[-1] = Item(SPACE, "r1", {**space(1).record, "name": "Lab"})
        restarted = Poller(source, settings, producer=producer, store=store)
        assert kinds(await restarted.poll_once()) == [
            ("FloorAdded", "f2"), ("SpaceUpdated", "r1"), ("SpaceDeleted", "r2"),
        ]  # fmt: skip

        published = await events(kafka_bootstrap, topic, 8)
        assert [key for key, _ in published][:5] == ["s1", "b1", "f1", "r1", "r2"]
        assert published[-1] == ("r2", {"spaceId": "r2", "eventType": "SpaceDeleted"})
        assert published[-2] == ("r1", {**source.items[-1].record, "eventType": "SpaceUpdated"})

        # a third process sees the deletion in the snapshot too: nothing left to publish
        third = Poller(source, settings, producer=producer, store=store)
        assert await third.poll_once() == []
    finally:
        await producer.stop()


@pytest.mark.anyio
@pytest.mark.kafka
async def test_a_failed_snapshot_publishes_nothing_and_the_next_poll_catches_up(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic()
    snapshots = f"snapshots-{uuid.uuid4().hex[:8]}"
    settings = source_settings(topic, snapshots)
    options = {"bootstrap_servers": kafka_bootstrap}
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **options)
    await producer.start()
    try:
        store = SnapshotStore(producer, snapshots, options)
        await store.ensure_topic()
        source = ListSource([site(1)])
        poller = Poller(source, settings, producer=producer, store=store)
        await poller.poll_once()
        source.items = [site(1), site(2)]
        for failure in (ServerError("503"), CredentialsRejected("run auth again")):
            source.fail = failure
            with pytest.raises(type(failure)):
                await poller.poll_once()
        source.fail = None
        assert kinds(await poller.poll_once()) == [("SiteAdded", "s2")]
        assert [key for key, _ in await events(kafka_bootstrap, topic, 2)] == ["s1", "s2"]
    finally:
        await producer.stop()


class ScriptedSource(ListSource):
    """Fails as scripted, one failure per poll, then serves its items."""

    def __init__(self, items: list[Item], failures: list[Exception]) -> None:
        super().__init__(items)
        self.failures = failures
        self.calls = 0

    async def snapshot(self) -> Sequence[Item]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return list(self.items)


@pytest.mark.anyio
@pytest.mark.kafka
async def test_the_loop_survives_outages_and_rejections_and_counts_each_poll(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic()
    snapshots = f"snapshots-{uuid.uuid4().hex[:8]}"
    settings = source_settings(topic, snapshots).model_copy(update={"poll_interval_seconds": 0.05})
    options = {"bootstrap_servers": kafka_bootstrap}
    registry = CollectorRegistry()
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **options)
    await producer.start()
    try:
        store = SnapshotStore(producer, snapshots, options)
        await store.ensure_topic()
        source = ScriptedSource([site(1)], [ServerError("503"), CredentialsRejected("log in")])
        poller = Poller(source, settings, producer=producer, store=store, metrics=Metrics(registry))
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run)
            await wait_until(lambda: source.calls >= 4, what="two failed and two good polls")
            tg.cancel_scope.cancel()
        assert [key for key, _ in await events(kafka_bootstrap, topic, 1)] == ["s1"]
    finally:
        await producer.stop()

    def polls(outcome: str) -> float | None:
        return registry.get_sample_value(
            "connector_source_polls_total", {"source": "bimlink", "outcome": outcome}
        )

    assert polls("unavailable") == 1
    assert polls("rejected") == 1
    assert (polls("success") or 0) >= 1
    assert (
        registry.get_sample_value(
            "connector_source_changes_total", {"source": "bimlink", "change": "Added"}
        )
        == 1
    )
