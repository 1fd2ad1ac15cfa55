"""Dead letters against a real broker: a record aiokafka cannot decode, a letter larger than
the dead-letter topic allows, a too-large record without a key. The connector keeps running,
the good records around the bad ones are delivered, every offset is committed."""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import TYPE_CHECKING

import aiokafka.codec
import anyio
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.helpers import (
    Emulator,
    building,
    produce,
    read_topic,
    run_until,
    settings_for,
)
from tests.support.rawkafka import RawRecord, produce_raw
from twin_devtools.devbroker import resolve_jars

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


@pytest.fixture
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """The connector's WARNING lines (a handler of its own: another test may have turned
    propagation to the root logger off)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logger = logging.getLogger("connector")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def assert_all_committed(bootstrap: str, topic: str, group: str) -> None:
    """The group's committed position is the log end on every partition holding records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        known = await consumer.topics()  # a metadata request: partitions_for_topic knows it now
        assert topic in known
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = {tp: end for tp, end in (await consumer.end_offsets(partitions)).items() if end}
        assert {tp: await consumer.committed(tp) for tp in ends} == ends
    finally:
        await consumer.stop()


async def small_topic(bootstrap: str, name: str, max_message_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(max_message_bytes)}
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    finally:
        await admin.close()


async def test_a_record_with_a_non_utf8_header_key_is_dead_lettered_and_the_rest_flows(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    topic, other, dlq = await new_topic(), await new_topic(), await new_topic(prefix="dlq")
    bad_value = orjson.dumps({"buildingId": "b-bad", "eventType": "BuildingAdded"})
    # one batch on partition 0: good, bad, good (the record after the bad one is in its batch)
    await produce_raw(kafka_bootstrap, topic, [(0, [
        RawRecord(*building(1, 0)),
        RawRecord(b"b-bad", bad_value, ((b"\xff\xfeid", b"x"), (b"trace", b"t-1"), (b"nil", None))),
        RawRecord(*building(2, 0)),
    ])])  # fmt: skip
    await produce(kafka_bootstrap, [(other, *building(3, 0)), (topic, *building(4, 0))])
    settings = settings_for(emulator, kafka_bootstrap, [topic, other], group_id, dlq)

    async def delivered() -> bool:
        stored = await emulator.entities("building")
        return sorted(stored) == ["b-1", "b-2", "b-3", "b-4"]

    pipeline = await run_until(settings, delivered)
    (letter,) = await read_topic(kafka_bootstrap, dlq, 1)
    headers = dict(letter.headers)
    assert headers["error.reason"] == b"undecodable_record"
    assert (headers["source.partition"], headers["source.offset"]) == (b"0", b"1")
    assert b"\\xff\\xfeid" in headers["error.message"]
    assert headers[r"\xff\xfeid"] == b"x", "the header is kept, its key escaped"
    assert headers["trace"] == b"t-1"
    assert headers["nil"] is None
    assert (letter.key, letter.value) == (b"b-bad", bad_value)
    assert pipeline.stats.dead_lettered == 1
    for name in (topic, other):
        await assert_all_committed(kafka_bootstrap, name, group_id)


async def test_a_letter_larger_than_the_dead_letter_topic_allows_is_shrunk_and_written(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator,
    warnings_logged: list[logging.LogRecord],
) -> None:  # fmt: skip
    topic = await new_topic()
    dlq = f"{topic}.dlq"
    await small_topic(kafka_bootstrap, dlq, 20_000)
    invalid = [(topic, f"j-{i}".encode(), b"{not json") for i in range(29)]
    huge = (topic, b"j-huge", b"{not json" + b"x" * 60_000)
    await produce(kafka_bootstrap, [huge, *invalid, (topic, *building(1, 0))])
    settings = settings_for(emulator, kafka_bootstrap, [topic], group_id, dlq)

    async def done() -> bool:
        return len(await emulator.entities("building")) == 1

    pipeline = await run_until(settings, done)
    letters = await read_topic(kafka_bootstrap, dlq, 30)
    big = next(r for r in letters if r.key == b"j-huge")
    headers = dict(big.headers)
    assert headers["error.value_omitted"] == b"60009 bytes"
    assert headers["error.reason"] == b"invalid_json"
    assert "error.http_status" not in headers, "no API answer: no empty header"
    assert pipeline.stats.dead_lettered == 30
    await assert_all_committed(kafka_bootstrap, topic, group_id)
    lines = [r for r in warnings_logged if r.getMessage().startswith("dead-lettered")]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]
    assert sum(r.records for r in lines) == 30  # type: ignore[attr-defined]
    assert "(invalid_json)" in lines[0].getMessage()
    assert f"first at {topic}/" in lines[0].getMessage()


async def test_a_too_large_record_without_a_key_is_dead_lettered(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    big = b'{"buildingId": "b-big", "pad": "' + b"p" * 5000 + b'"}'
    await produce(kafka_bootstrap, [(topic, None, big), (topic, *building(1, 0))])
    settings = settings_for(
        emulator, kafka_bootstrap, [topic], group_id, dlq, window={"max_record_bytes": 1000}
    )

    async def done() -> bool:
        return len(await emulator.entities("building")) == 1

    pipeline = await run_until(settings, done)
    (letter,) = await read_topic(kafka_bootstrap, dlq, 1)
    assert letter.key is None
    assert letter.value == b""
    assert dict(letter.headers)["error.reason"] == b"record_too_large"
    assert pipeline.stats.dead_lettered == 1
    await assert_all_committed(kafka_bootstrap, topic, group_id)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_batches_compressed_by_kafkas_own_producer_are_read(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    group_id: str,
    emulator: Emulator,
    codec: str,
) -> None:
    topic, dlq = await new_topic(1), await new_topic(prefix="dlq")
    values = [orjson.dumps({"buildingId": f"c-{i}", "eventType": "BuildingAdded"}) for i in (1, 2)]
    lines = [f"c-{i}|".encode() + v for i, v in zip((1, 2), values, strict=True)]
    await anyio.to_thread.run_sync(lambda: produce_compressed(kafka_bootstrap, topic, lines, codec))
    settings = settings_for(emulator, kafka_bootstrap, [topic], group_id, dlq)

    async def delivered() -> bool:
        return sorted(await emulator.entities("building")) == ["c-1", "c-2"]

    pipeline = await run_until(settings, delivered)
    assert pipeline.stats.dead_lettered == 0
    await assert_all_committed(kafka_bootstrap, topic, group_id)


def produce_compressed(bootstrap: str, topic: str, lines: list[bytes], codec: str) -> None:
    """Kafka's own console producer, for a batch compressed with a codec aiokafka may lack."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs java for Kafka's console producer")
    done = subprocess.run(
        [java, "-cp", f"{resolve_jars(quiet=True)}/*", "kafka.tools.ConsoleProducer",
         "--bootstrap-server", bootstrap, "--topic", topic, "--compression-codec", codec,
         "--property", "parse.key=true", "--property", "key.separator=|"],
        input=b"\n".join(lines) + b"\n", capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


async def test_records_of_a_batch_that_cannot_be_read_are_dead_lettered_by_coordinates(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    group_id: str,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A codec this process cannot read (a future one, or an install without cramjam) stands
    # for every batch the client cannot parse: the codec library is hidden from aiokafka,
    # which then raises UnsupportedCodecError for a real zstd batch of a real broker.
    monkeypatch.setattr(aiokafka.codec, "cramjam", None)
    topic, other, dlq = await new_topic(1), await new_topic(), await new_topic(prefix="dlq")
    await produce(kafka_bootstrap, [(topic, *building(1, 0))])
    values = [orjson.dumps({"buildingId": f"z-{i}", "eventType": "BuildingAdded"}) for i in (1, 2)]
    lines = [f"z-{i}|".encode() + v for i, v in zip((1, 2), values, strict=True)]
    await anyio.to_thread.run_sync(
        lambda: produce_compressed(kafka_bootstrap, topic, lines, "zstd")
    )
    await produce(kafka_bootstrap, [(topic, *building(2, 0)), (other, *building(3, 0))])
    settings = settings_for(emulator, kafka_bootstrap, [topic, other], group_id, dlq)

    async def delivered() -> bool:
        stored = await emulator.entities("building")
        return sorted(stored) == ["b-1", "b-2", "b-3"]

    pipeline = await run_until(settings, delivered)
    letters = await read_topic(kafka_bootstrap, dlq, 2)
    assert sorted(dict(r.headers)["source.offset"] for r in letters) == [b"1", b"2"]
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["error.reason"] == b"undecodable_record"
        assert b"zstd" in headers["error.message"]
        assert (letter.key, letter.value) == (None, b"")
    assert pipeline.stats.dead_lettered == 2
    for name in (topic, other):
        await assert_all_committed(kafka_bootstrap, name, group_id)
