"""Batch status tracking against the emulator: asynchronous failures, children before parents,
slow processing (nothing committed before terminal), a crash while batches are tracked, and
batches the platform loses (sent again, then dead-lettered as `batch_lost`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest

from tests.integration.helpers import (
    ConnectorProcess,
    building,
    committed_offsets,
    end_offsets,
    posted_ids,
    produce,
    read_topic,
    run_until,
    running_emulator,
    settings_for,
    write_config,
)
from tests.kafka_fixtures import NewTopicFactory, wait_until
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from pathlib import Path

    from connector.config import Settings
    from tests.integration.helpers import Emulator

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


def floor(fid: str, building_id: str, name: str = "L1") -> tuple[bytes, bytes]:
    return fid.encode(), orjson.dumps({
        "floorId": fid, "eventType": "FloorAdded", "buildingId": building_id, "name": name,
        "validFrom": "2024-01-01T00:00:00Z", "validUntil": "2099-01-01T00:00:00Z",
    })  # fmt: skip


async def test_asynchronous_failures_are_dead_lettered_once_with_status_and_message(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0.3)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        good = [building(i, 0) for i in range(30)]
        bad = [
            (f"bad-{i}".encode(), orjson.dumps({
                "buildingId": f"bad-{i}", "eventType": "BuildingAdded", "name": "__fail_async__",
            }))
            for i in range(3)
        ]  # fmt: skip
        await produce(kafka_bootstrap, [(topic, k, v) for k, v in good + bad])
        settings = settings_for(emu, kafka_bootstrap, [topic], group_id, dlq)

        async def settled() -> bool:
            ends = await end_offsets(kafka_bootstrap, topic)
            return await committed_offsets(kafka_bootstrap, topic, group_id) == ends

        pipeline = await run_until(settings, settled)
        letters = await read_topic(kafka_bootstrap, dlq, 3)
        assert sorted(orjson.loads(r.value)["buildingId"] for r in letters) == [
            "bad-0", "bad-1", "bad-2",
        ]  # fmt: skip
        for letter in letters:
            headers = dict(letter.headers)
            assert headers["error.reason"] == b"batch_failed"
            assert headers["error.message"].startswith(b"FailedValidation: ")
            assert headers["error.batch_id"]
        assert pipeline.stats.dead_lettered == 3, "each failure dead-lettered exactly once"
        assert len(await emu.entities("building")) == 30


async def test_children_before_parents_wait_and_are_reported_not_dead_lettered(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        await produce(kafka_bootstrap, [(topic, *floor(f"f-{i}", "late-parent")) for i in range(5)])
        settings = settings_for(
            emu, kafka_bootstrap, [topic], group_id, dlq,
            tracking={"poll_interval_seconds": 0.2, "parent_patience_seconds": 1},
        )  # fmt: skip

        async def reported() -> bool:
            ends = await end_offsets(kafka_bootstrap, topic)
            return await committed_offsets(kafka_bootstrap, topic, group_id) == ends

        pipeline = await run_until(settings, reported)
        assert pipeline.stats.dead_lettered == 0
        assert await emu.entities("floor") == {}, "the platform still holds the children"
        parent = (
            b"late-parent",
            orjson.dumps({"buildingId": "late-parent", "eventType": "BuildingAdded"}),
        )
        await produce(kafka_bootstrap, [(topic, *parent)])

        async def linked() -> bool:
            return len(await emu.entities("floor")) == 5

        await run_until(settings, linked)


async def test_nothing_is_committed_before_it_is_terminal(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=3)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(100)])
        settings = settings_for(emu, kafka_bootstrap, [topic], group_id, dlq)
        checked_while_processing = False

        async def done() -> bool:
            nonlocal checked_while_processing
            log = await emu.requests()
            accepted = sum(
                r["record_count"] or 0 for r in log if r["method"] == "POST" and r["status"] == 200
            )
            stored = len(await emu.entities("building"))
            committed = await committed_offsets(kafka_bootstrap, topic, group_id)
            if accepted == 100 and stored == 0:
                assert all(not c for c in committed.values()), (
                    f"committed before terminal: {committed}"
                )
                checked_while_processing = True
            return stored == 100 and committed == await end_offsets(kafka_bootstrap, topic)

        await run_until(settings, done)
        assert checked_while_processing, "never observed the accepted-but-processing state"


@pytest.mark.slow
async def test_a_crash_while_batches_are_tracked_resends_and_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=4)) as emu:
        topic = await new_topic()
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(200)])
        config = write_config(tmp_path, emu, kafka_bootstrap, topic, group_id)
        victim = ConnectorProcess(config, tmp_path / "victim.log")

        async def all_accepted() -> bool:
            log = await emu.requests()
            return (
                sum(
                    r["record_count"] or 0
                    for r in log
                    if r["method"] == "POST" and r["status"] == 200
                )
                >= 200
            )

        await wait_until(all_accepted, timeout=60, what="every record accepted")
        victim.proc.kill()
        await victim.wait(10)
        assert len(await emu.entities("building")) < 200, "still processing when killed"

        survivor = ConnectorProcess(config, tmp_path / "survivor.log")
        try:

            async def settled() -> bool:
                ends = await end_offsets(kafka_bootstrap, topic)
                stored = len(await emu.entities("building"))
                return (
                    stored == 200
                    and await committed_offsets(kafka_bootstrap, topic, group_id) == ends
                )

            await wait_until(settled, timeout=90, what="everything onboarded and committed")
        finally:
            survivor.proc.terminate()
            assert await survivor.wait(30) == 0
        log = await emu.requests()
        sent = sum(
            r["record_count"] or 0 for r in log if r["method"] == "POST" and r["status"] == 200
        )
        assert sent == 400, "the 200 unfinished records are re-sent once after the crash"


async def forget_next(emu: Emulator, count: int) -> None:
    """The next `count` batches the emulator accepts are lost: never listed, nor found by ID."""
    async with emu.http.post(f"{emu.url}/_emulator/forget", json={"next": count}) as r:
        assert r.status == 200, await r.text()


def losing(settings: Settings, *, lost_after: float, retries: int) -> Settings:
    """`settings` with the lost-batch deadline and retries (`tracking.lost_*`)."""
    tracking = settings.tracking.model_copy(
        update={"lost_after_seconds": lost_after, "lost_retries": retries}
    )
    return settings.model_copy(update={"tracking": tracking})


async def test_a_batch_the_platform_forgets_is_sent_again_and_onboarded(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0.2)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        await forget_next(emu, 1)  # the first batch accepted is never listed nor found by ID
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(20)])
        settings = losing(
            settings_for(emu, kafka_bootstrap, [topic], group_id, dlq), lost_after=1, retries=3
        )

        async def settled() -> bool:
            ends = await end_offsets(kafka_bootstrap, topic)
            return await committed_offsets(kafka_bootstrap, topic, group_id) == ends

        pipeline = await run_until(settings, settled, timeout=30)
        assert pipeline.stats.dead_lettered == 0
        assert posted_ids(await emu.requests()) == 40, "the lost batch's 20 records sent again"
        assert len(await emu.entities("building")) == 20


async def test_a_batch_lost_again_and_again_is_dead_lettered_as_batch_lost(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0.2)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        await forget_next(emu, 3)  # the batch and both of its re-submissions
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(15)])
        settings = losing(
            settings_for(emu, kafka_bootstrap, [topic], group_id, dlq), lost_after=0.5, retries=2
        )

        async def settled() -> bool:
            ends = await end_offsets(kafka_bootstrap, topic)
            return await committed_offsets(kafka_bootstrap, topic, group_id) == ends

        pipeline = await run_until(settings, settled, timeout=30)
        letters = await read_topic(kafka_bootstrap, dlq, 15)
        assert sorted(orjson.loads(r.value)["buildingId"] for r in letters) == sorted(
            f"b-{i}" for i in range(15)
        )
        for letter in letters:
            headers = dict(letter.headers)
            assert headers["error.reason"] == b"batch_lost"
            assert headers["error.batch_id"]
            assert b"2 re-submission(s)" in headers["error.message"]
        assert pipeline.stats.dead_lettered == 15
        assert posted_ids(await emu.requests()) == 45, "sent once, then re-sent twice"
