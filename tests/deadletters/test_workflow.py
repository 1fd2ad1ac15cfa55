"""The operator's workflow against a real broker and the BuildingMinds emulator: records the
platform refuses (failedMessages, and asynchronous failures) are listed with their reasons,
fixed by an expression, replayed and onboarded, with the history header; a record that fails
again is not replayed a second time automatically; an interrupted replay run again sends each
record once; a receipt appears for every record of a run and the count reconciles with the
metrics. The commands run as real processes (`python -m connector ...`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector.deadletter import DeadLetter
from connector.decode import Reason
from tests.deadletters.helpers import Cli, write_settings
from tests.integration.helpers import committed_offsets, end_offsets, produce, running_emulator
from tests.kafka_fixtures import wait_until
from tests.support.pipeline import exported_counts, reconciles, running_connector, until
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

    from tests.integration.helpers import Emulator
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


def raw_config(
    emu: Emulator, bootstrap: str, topic: str, group: str, dlq: str, *, receipts: str | None
) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                  "dead_letter_topic": dlq},
        "sink": {"base_url": emu.base_url, "token_url": emu.token_url,
                 "client_id": "demo-client", "client_secret": "demo-secret",
                 "scope": "api://buildingminds-emulator", "retry_backoff_seconds": 0.05,
                 "retry_backoff_max_seconds": 0.5, "request_timeout_seconds": 5},
        "window": {"max_records": 100, "max_wait_seconds": 0.2},
        "pipeline": {"commit_interval_seconds": 0.3, "shutdown_grace_seconds": 10},
        "tracking": {"poll_interval_seconds": 0.2},
        "receipts": {"enabled": receipts is not None, "topic": receipts or "unused"},
        "metrics": {"port": 0},
        "logging": {"format": "json"},
    }  # fmt: skip


def building(bid: str, name: str) -> tuple[bytes, bytes]:
    return bid.encode(), orjson.dumps({"buildingId": bid, "eventType": "BuildingAdded",
                                       "name": name})  # fmt: skip


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]  # as `new_topic` makes them
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def all_committed(bootstrap: str, topic: str, group: str) -> bool:
    return await committed_offsets(bootstrap, topic, group) == await end_offsets(bootstrap, topic)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_rejected_records_are_listed_fixed_replayed_and_onboarded_with_receipts(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, tmp_path: Path
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    receipts = await new_topic(prefix="receipts")
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        config, settings = write_settings(
            tmp_path, raw_config(emu, kafka_bootstrap, topic, group_id, dlq, receipts=receipts)
        )
        cli = Cli(config)
        good = [building(f"ok-{i}", f"Building {i}") for i in range(20)]
        too_long = [building(f"sync-{i}", "n" * 250) for i in range(3)]  # failedMessages
        failing = [building(f"async-{i}", "__fail_async__") for i in range(3)]  # FailedValidation
        async with running_connector(settings) as pipeline:
            # refused alone first: a request the platform refuses whole has no batch (a
            # partly accepted one: test_a_record_refused_in_a_partly_accepted_batch_...)
            await produce(kafka_bootstrap, [(topic, k, v) for k, v in too_long])
            await until(pipeline, lambda: pipeline.stats.dead_lettered == 3, what="3 refused")
            await produce(kafka_bootstrap, [(topic, k, v) for k, v in good + failing])
            await until(pipeline, lambda: pipeline.stats.dead_lettered == 6, what="6 dead letters")
            await until(pipeline, lambda: all_committed(kafka_bootstrap, topic, group_id),
                        what="everything committed")  # fmt: skip

            # 1. list: every refused record with its reason and the platform's message
            _, out, err = await cli.run("dead-letters", "list", "--format", "jsonl")
            rows = jsonl(out)
            assert sorted((r["reason"], r["id"]) for r in rows) == sorted(
                [("api_rejected", f"sync-{i}") for i in range(3)]
                + [("batch_failed", f"async-{i}") for i in range(3)]
            )
            for row in rows:
                assert row["entity"] == "Building"
                assert row["source"]["topic"] == topic
                if row["reason"] == "api_rejected":
                    assert "'name'" in row["message"]
                    assert row["http_status"] == "400"
                else:
                    assert row["message"].startswith("FailedValidation: ")
                    assert row["batch_id"], "an asynchronous failure names its batch"
            assert "6 dead letters of 6 read: api_rejected 3, batch_failed 3" in err
            _, table, _ = await cli.run("dead-letters", "list", "--reason", "api_rejected",
                                        "--id", "sync-1")  # fmt: skip
            assert "sync-1" in table
            assert "sync-0" not in table
            assert table.rstrip().endswith("1 dead letters of 6 read: api_rejected 1")

            # 2. a dry run sends nothing and shows the edited record
            _, dry, _ = await cli.run(
                "dead-letters", "replay", "--reason", "api_rejected", "--dry-run",
                "--patch", '[{"op": "replace", "path": "/name", "value": "Fixed"}]',
            )  # fmt: skip
            assert dry.count(f"-> {topic}") == 3
            assert '"name":"Fixed"' in dry
            assert "Nothing was sent" in dry
            assert len(await read_all(kafka_bootstrap, topic)) == 26

            # 3. fix and replay: a JSON Patch for the refused, JMESPath for the failed
            await cli.run(
                "dead-letters", "replay", "--reason", "api_rejected",
                "--patch", '[{"op": "replace", "path": "/name", "value": "Fixed"}]',
            )  # fmt: skip
            await cli.run("dead-letters", "replay", "--reason", "batch_failed",
                          "--jmespath", "merge(@, {name: 'Fixed later'})")  # fmt: skip

            async def onboarded() -> bool:
                return len(await emu.entities("building")) == 26

            await until(pipeline, onboarded, what="the 6 fixed records onboarded")
            await until(pipeline, lambda: all_committed(kafka_bootstrap, topic, group_id),
                        what="the replays committed")  # fmt: skip
            stored = await emu.entities("building")
            assert {stored[f"sync-{i}"]["name"] for i in range(3)} == {"Fixed"}
            assert {stored[f"async-{i}"]["name"] for i in range(3)} == {"Fixed later"}
            counts = exported_counts(pipeline)
            assert reconciles(pipeline) is None, reconciles(pipeline)

        # the history header on what was replayed
        replayed = [r for r in await read_all(kafka_bootstrap, topic) if r.headers]
        assert len(replayed) == 6
        for record in replayed:
            headers = dict(record.headers)
            assert headers["replay.count"] == b"1"
            assert headers["replay.id"].startswith(b"rp-")
            (entry,) = orjson.loads(headers["replay.history"])
            assert entry["reason"] in {"api_rejected", "batch_failed"}
            assert entry["dead_lettered_at"].endswith("Z")
            assert entry["replay_id"]
            assert entry["dead_letter"].startswith(f"{dlq}/")
            assert not any(k.startswith(("error.", "source.")) for k in headers)
        assert len(await read_all(kafka_bootstrap, dlq)) == 6, "the dead letters stay"

        # 4. receipts: one per outcome, and they add up with the metrics
        found = await read_all(kafka_bootstrap, receipts)
        bodies = [orjson.loads(r.value) for r in found]
        assert len(found) == counts["delivered"] + counts["dead_lettered"] == 32
        assert sum(b["outcome"] == "onboarded" for b in bodies) == counts["delivered"] == 26
        assert sum(b["outcome"] == "dead_lettered" for b in bodies) == counts["dead_lettered"]
        latest = {r.key: orjson.loads(r.value) for r in found}  # what compaction keeps
        assert len(latest) == 26
        assert all(b["outcome"] == "onboarded" for b in latest.values())
        assert latest[b"Building/sync-0"]["status"] == "Completed"
        assert latest[b"Building/async-0"]["batch_id"]
        dead = next(b for b in bodies if b["id"] == "async-1" and b["outcome"] == "dead_lettered")
        assert dead["reason"] == "batch_failed"
        assert dead["message"].startswith("FailedValidation")

        # 5. the record's story
        _, story, _ = await cli.run("story", "--id", "async-2", "--entity", "building")
        assert "dead-lettered  batch_failed: FailedValidation" in story
        assert "onboarded      Completed in batch" in story
        assert "batches:" in story
        assert story.splitlines()[-1].startswith("last status: onboarded")
        code, unknown, _ = await cli.run("story", "--id", "nobody", check=False)
        assert code == 1
        assert "no dead letter, no receipt" in unknown


async def test_a_record_refused_in_a_partly_accepted_batch_gets_one_outcome(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, tmp_path: Path
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    receipts = await new_topic(prefix="receipts")
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        _, settings = write_settings(
            tmp_path, raw_config(emu, kafka_bootstrap, topic, group_id, dlq, receipts=receipts)
        )
        records = [building(f"ok-{i}", "fine") for i in range(5)] + [building("bad", "n" * 250)]
        await produce(kafka_bootstrap, [(topic, k, v) for k, v in records])
        async with running_connector(settings) as pipeline:
            await until(pipeline, lambda: all_committed(kafka_bootstrap, topic, group_id),
                        what="everything committed")  # fmt: skip
            counts = exported_counts(pipeline)
        bodies = [orjson.loads(r.value) for r in await read_all(kafka_bootstrap, receipts)]
        assert [b["outcome"] for b in bodies if b["id"] == "bad"] == ["dead_lettered"]
        assert (counts["delivered"], counts["dead_lettered"]) == (5, 1)


async def test_a_record_that_fails_again_is_not_replayed_a_second_time_automatically(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, tmp_path: Path
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        config, settings = write_settings(
            tmp_path, raw_config(emu, kafka_bootstrap, topic, group_id, dlq, receipts=None)
        )
        cli = Cli(config)
        await produce(kafka_bootstrap, [(topic, *building(f"bad-{i}", "__fail_async__"))
                                        for i in range(2)])  # fmt: skip
        async with running_connector(settings) as pipeline:
            await until(pipeline, lambda: pipeline.stats.dead_lettered == 2, what="2 letters")
            # replayed as they are: the platform fails them again
            _, out, _ = await cli.run("dead-letters", "replay", "--max-replays", "1")
            assert out.count(f"-> {topic}") == 2
            await until(pipeline, lambda: pipeline.stats.dead_lettered == 4, what="failed again")
            _, listed, _ = await cli.run("dead-letters", "list", "--format", "jsonl")
            assert sorted(r["replays"] for r in jsonl(listed)) == [0, 0, 1, 1]

            _, out, _ = await cli.run("dead-letters", "replay", "--max-replays", "1")
            assert f"-> {topic}" not in out
            assert "sent nothing; held: " in out
            assert "2 replayed 1 time(s) already (--max-replays 1)" in out
            assert "2 replayed already: its record failed again" in out
            # --force sends the newer letters (the older ones stay represented by them)
            _, forced, _ = await cli.run("dead-letters", "replay", "--max-replays", "1", "--force")
            assert forced.count(f"-> {topic}") == 2
            await until(pipeline, lambda: pipeline.stats.dead_lettered == 6, what="third letters")
        third = [r for r in await read_all(kafka_bootstrap, dlq)
                 if dict(r.headers).get("replay.count") == b"2"]  # fmt: skip
        assert len(third) == 2
        history = orjson.loads(dict(third[0].headers)["replay.history"])
        assert [h["reason"] for h in history] == ["batch_failed", "batch_failed"]
        assert len({h["replay_id"] for h in history}) == 2
        assert await emu.entities("building") == {}


async def test_an_interrupted_replay_run_again_sends_each_record_once(
    kafka_bootstrap: str, new_topic: NewTopicFactory, tmp_path: Path
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    letters = [
        DeadLetter(key=f"B-{i}".encode(), value=building(f"B-{i}", "x")[1], headers=[],
                   reason=Reason.API_REJECTED, message="'name' is bad", topic=topic,
                   partition=i % 3, offset=i // 3)
        for i in range(40)
    ]  # fmt: skip
    await produce_letters(kafka_bootstrap, dlq, letters)
    raw = {"kafka": {"bootstrap_servers": kafka_bootstrap, "topics": [topic],
                     "dead_letter_topic": dlq},
           "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"}}  # fmt: skip
    cli = Cli(write_settings(tmp_path, raw)[0])
    proc = cli.start("dead-letters", "replay", "--rate", "5")
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().decode()
        replay_id = first.split()[1]
        assert replay_id.startswith("rp-")
        assert f"--replay-id {replay_id}" in first

        async def some_sent() -> bool:
            return len(await read_all(kafka_bootstrap, topic)) >= 10

        await wait_until(some_sent, timeout=30, what="the first records replayed")
    finally:
        proc.kill()  # interrupted: kill -9
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    before = len(await read_all(kafka_bootstrap, topic))
    assert 10 <= before < 40, "the replay was cut short"
    _, out, _ = await cli.run("dead-letters", "replay", "--replay-id", replay_id)
    assert f"held: {before} sent already by this replay" in out
    sent = await read_all(kafka_bootstrap, topic)
    assert len(sent) == 40
    origins = sorted(dict(r.headers)["replay.dead_letter"].decode() for r in sent)
    assert len(set(origins)) == 40, "each dead letter sent exactly once"
    assert {dict(r.headers)["replay.id"] for r in sent} == {replay_id.encode()}
    # and a third run finds nothing left to send
    _, again, _ = await cli.run("dead-letters", "replay", "--replay-id", replay_id)
    assert "sent nothing; held: 40 sent already by this replay" in again


async def produce_letters(bootstrap: str, topic: str, letters: list[DeadLetter]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for letter in letters:
            await producer.send(topic, key=letter.key, value=letter.value,
                                headers=letter.headers, partition=letter.partition)  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()
