"""Schema Registry formats end to end: a real Kafka broker, the BuildingMinds emulator and the
stand-in registry (tests/support/registry.py) on real sockets, the connector in-process.
Assertions are on the emulator's stored state, the dead-letter topic and the committed
offsets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.integration.helpers import (
    Emulator,
    building,
    committed_offsets,
    end_offsets,
    produce,
    read_topic,
    settings_for,
)
from tests.registry.samples import (
    BUILT_ISO,
    MAPPING,
    PERMIT_ISO,
    avro_change,
    avro_envelope,
    json_change,
    json_schema,
)
from tests.support.pipeline import eventually, reconciles, running_connector, until
from tests.support.registry import Registry, avro_value, wire

if TYPE_CHECKING:
    from connector.app import Pipeline
    from connector.config import Settings
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


def key(bldg_no: str) -> bytes:
    return orjson.dumps({"bldg_no": bldg_no})


def settings(
    emu: Emulator, reg: Registry, bootstrap: str, topics: list[str], *, group: str, dlq: str
) -> Settings:
    return settings_for(
        emu, bootstrap, topics, group, dlq, mappings=[MAPPING],
        schema_registry={"url": reg.url, "retry_backoff_seconds": 0.05,
                         "retry_backoff_max_seconds": 0.3, "request_timeout_seconds": 2},
    )  # fmt: skip


def metric(pipeline: Pipeline, name: str, **labels: str) -> float:
    return pipeline.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_avro_and_json_schema_records_are_decoded_and_onboarded(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator,
    registry: Registry,
) -> None:  # fmt: skip
    avro_topic, json_topic, dlq = (
        await new_topic(),
        await new_topic(),
        await new_topic(prefix="dlq"),
    )
    avro_id = await registry.register(f"{avro_topic}-value", avro_envelope())
    json_id = await registry.register(f"{json_topic}-value", json_schema(), "JSON")
    events: list[tuple[str, bytes | None, bytes | None]] = [
        (avro_topic, key(f"A-{i}"), avro_value(avro_envelope(), avro_id,
                                                avro_change(f"A-{i}", f"Avro {i}")))
        for i in range(20)
    ]  # fmt: skip
    events += [
        (json_topic, key(f"J-{i}"), wire(json_id, orjson.dumps(json_change(f"J-{i}", f"Js {i}"))))
        for i in range(20)
    ]
    await produce(kafka_bootstrap, events)

    async with running_connector(
        settings(
            emulator, registry, kafka_bootstrap, [avro_topic, json_topic], group=group_id, dlq=dlq
        )
    ) as pipeline:

        async def onboarded() -> bool:
            return len(await emulator.entities("building")) == 40

        await until(pipeline, onboarded, what="40 buildings onboarded", timeout=60)

    stored = await emulator.entities("building")
    assert stored["A-3"]["name"] == "Avro 3"
    assert stored["J-3"]["name"] == "Js 3"
    for ident in ("A-3", "J-3"):
        assert stored[ident]["buildingPermitDate"] == PERMIT_ISO
        assert stored[ident]["constructionDate"] == BUILT_ISO
        assert stored[ident]["usableArea"] == 1234.5
    assert stored["A-3"]["opened"] == "2020-01-02T00:00:00Z"
    assert pipeline.stats.dead_lettered == 0
    assert reconciles(pipeline) is None
    assert registry.state.fetches == {avro_id: 1, json_id: 1}, "each schema fetched once"


async def test_a_registry_outage_holds_the_records_and_they_flow_after_it(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator,
    registry: Registry,
) -> None:  # fmt: skip
    avro_topic, json_topic, dlq = (
        await new_topic(),
        await new_topic(),
        await new_topic(prefix="dlq"),
    )
    avro_id = await registry.register(f"{avro_topic}-value", avro_envelope())
    registry.state.outage = True
    avro = [
        (avro_topic, key(f"A-{i}"), avro_value(avro_envelope(), avro_id,
                                                avro_change(f"A-{i}", f"Avro {i}")))
        for i in range(30)
    ]  # fmt: skip
    plain = [(json_topic, *building(i, 0)) for i in range(10)]  # JSON: needs no registry
    await produce(kafka_bootstrap, [*avro, *plain])

    async with running_connector(
        settings(
            emulator, registry, kafka_bootstrap, [avro_topic, json_topic], group=group_id, dlq=dlq
        )
    ) as pipeline:

        async def plain_onboarded() -> bool:
            return len(await emulator.entities("building")) == 10

        def retried() -> bool:
            outcome = metric(
                pipeline, "connector_schema_registry_requests_total", outcome="unavailable"
            )
            return outcome >= 3  # tried again, more than once

        await until(pipeline, plain_onboarded, what="the JSON records onboarded")
        await until(pipeline, retried, what="the registry tried again")
        assert not any(i.startswith("A-") for i in await emulator.entities("building"))
        held = metric(pipeline, "connector_schema_held_partitions")
        assert held >= 1
        committed = await committed_offsets(kafka_bootstrap, avro_topic, group_id)
        assert all(not c for c in committed.values()), f"committed past held records {committed}"

        registry.state.outage = False

        async def all_onboarded() -> bool:
            return len(await emulator.entities("building")) == 40

        await until(pipeline, all_onboarded, what="the held records onboarded", timeout=60)

        async def all_committed() -> bool:
            ends = await end_offsets(kafka_bootstrap, avro_topic)
            return await committed_offsets(kafka_bootstrap, avro_topic, group_id) == ends

        assert await eventually(all_committed, timeout=20), "the Avro topic is committed"

    assert pipeline.stats.consumed == 40, "each record taken in once"
    assert pipeline.stats.dead_lettered == 0
    assert metric(pipeline, "connector_schema_held_partitions") == 0
    assert reconciles(pipeline) is None


async def test_an_avro_value_that_does_not_decode_is_dead_lettered_with_its_schema_id(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator,
    registry: Registry,
) -> None:  # fmt: skip
    topic, dlq = await new_topic(partitions=1), await new_topic(prefix="dlq")
    avro_id = await registry.register(f"{topic}-value", avro_envelope())
    good: list[Any] = [
        avro_value(avro_envelope(), avro_id, avro_change(f"A-{i}", f"Avro {i}")) for i in range(2)
    ]
    broken = good[0][:15]  # cut inside the row
    await produce(kafka_bootstrap, [
        (topic, key("A-0"), good[0]), (topic, key("A-bad"), broken), (topic, key("A-1"), good[1]),
    ])  # fmt: skip

    async with running_connector(
        settings(emulator, registry, kafka_bootstrap, [topic], group=group_id, dlq=dlq)
    ) as pipeline:

        async def onboarded() -> bool:
            return sorted(await emulator.entities("building")) == ["A-0", "A-1"]

        await until(pipeline, onboarded, what="the good records onboarded")

    (letter,) = await read_topic(kafka_bootstrap, dlq, 1)
    headers = dict(letter.headers)
    assert headers["error.reason"] == b"undecodable_record"
    assert f"Avro schema ID {avro_id}: value does not decode".encode() in headers["error.message"]
    assert (letter.key, letter.value) == (key("A-bad"), broken), "the original bytes, to replay"
    assert headers["source.offset"] == b"1"
    assert pipeline.stats.dead_lettered == 1
