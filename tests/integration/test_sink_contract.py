"""A platform is one package: a sink that exists only in the tests (`tests/support/
memory_sink.py`, a few dozen lines and one `register` call) runs end to end through the real
pipeline and a real Kafka broker: records consumed, decoded, coalesced, delivered to it, and
their offsets committed; one that settles later is committed once it reported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from connector.config import Settings
from tests.integration.helpers import building, committed_offsets, end_offsets, produce, run_until
from tests.support.memory_sink import MemorySink, memory_sink
from tests.support.pipeline import reconciles

if TYPE_CHECKING:
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


def _settings(bootstrap: str, topic: str, group: str, dlq: str, **tracking: Any) -> Settings:
    # the sink keys are BuildingMinds' (the config's default type); the memory sink reads none
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                "dead_letter_topic": dlq,
            },
            "sink": {"client_id": "c", "client_secret": "s", "scope": "api://memory"},
            "window": {"max_records": 50, "max_wait_seconds": 0.1},
            "pipeline": {"commit_interval_seconds": 0.2, "shutdown_grace_seconds": 10},
            "tracking": tracking,
            "metrics": {"port": 0},
        }
    )  # fmt: skip


async def test_a_sink_defined_in_the_tests_gets_every_record_and_the_offsets_commit(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    ids, versions = 120, 3
    await produce(
        kafka_bootstrap,
        [(topic, *building(i, rev)) for rev in range(versions) for i in range(ids)],
    )
    sink = MemorySink(refuse=frozenset({"b-7"}))
    with memory_sink(_settings(kafka_bootstrap, topic, group_id, dlq), sink) as settings:

        async def done() -> bool:
            end = await end_offsets(kafka_bootstrap, topic)
            return await committed_offsets(kafka_bootstrap, topic, group_id) == end

        pipeline = await run_until(settings, done)

    stored = sink.stored["building"]
    assert "b-7" not in stored, "b-7 was refused"
    assert len(stored) == ids - 1
    assert all(orjson.loads(v)["revision"] == versions - 1 for v in stored.values())
    assert pipeline.stats.consumed == ids * versions
    assert pipeline.stats.dead_lettered == 1, "the refused record, with the sink's message"
    assert reconciles(pipeline) is None, reconciles(pipeline)


async def test_a_test_sink_that_settles_later_is_committed_after_it_reported(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(40)])
    sink = MemorySink(settle_later=True)
    raw = _settings(kafka_bootstrap, topic, group_id, dlq, commit_on="completed")
    with memory_sink(raw, sink) as settings:

        async def done() -> bool:
            end = await end_offsets(kafka_bootstrap, topic)
            return await committed_offsets(kafka_bootstrap, topic, group_id) == end

        pipeline = await run_until(settings, done)

    assert sink.settled == sink.requests >= 1, "every accepted batch was settled"
    assert pipeline.stats.delivered == 40
    assert reconciles(pipeline) is None, reconciles(pipeline)
