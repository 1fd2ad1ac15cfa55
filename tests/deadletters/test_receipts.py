"""The receipts writer's promises, against a producer whose acknowledgements the test gives:
the pipeline never waits on it, a commit waits for what it covers, a failure is retried and
nothing is lost, a full buffer stops commits, and cancelling writes what is left."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from connector.outcomes import RecordOutcome, SourceRef
from connector.receipts import ReceiptWriter
from tests.kafka_fixtures import wait_until

pytestmark = pytest.mark.anyio


class Producer:
    """The Kafka edge: `send` returns a future the test resolves (or fails) when it likes."""

    def __init__(self, *, auto: bool = False) -> None:
        self.auto = auto
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.fail_next = 0

    async def send(self, topic: str, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(KafkaTimeoutError())
            return future
        self.sent.append((topic, key, value))
        if self.auto:
            future.set_result(None)
        else:
            self.waiting.append(future)
        return future

    def ack_all(self) -> None:
        for future in self.waiting:
            if not future.done():
                future.set_result(None)
        self.waiting.clear()


def outcome(i: int) -> RecordOutcome:
    return RecordOutcome("onboarded", (SourceRef("src", 0, i, 0),), entity="Building",
                         external_id=f"B-{i}", batch_id="b", status="Completed")  # fmt: skip


async def test_a_commit_waits_for_the_receipts_told_before_it_and_only_those() -> None:
    producer = Producer()
    writer = ReceiptWriter(producer, "receipts")
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        writer.record_finished(outcome(1))  # returns at once: nothing is sent from here
        assert producer.sent == []
        assert not await writer.written_up_to_now(0.2), "not acknowledged yet"
        producer.ack_all()
        assert await writer.written_up_to_now(1.0)
        writer.record_finished(outcome(2))
        assert not await writer.written_up_to_now(0.1)
        producer.ack_all()
        assert await writer.written_up_to_now(1.0)
        tg.cancel_scope.cancel()
    assert [key for _, key, _ in producer.sent] == [b"Building/B-1", b"Building/B-2"]
    assert orjson.loads(producer.sent[0][2])["status"] == "Completed"


async def test_a_failed_write_is_sent_again_and_nothing_is_lost() -> None:
    producer = Producer(auto=True)
    producer.fail_next = 2
    writer = ReceiptWriter(producer, "receipts", retry_seconds=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        for i in range(3):
            writer.record_finished(outcome(i))
        assert await writer.written_up_to_now(2.0)
        tg.cancel_scope.cancel()
    assert {key for _, key, _ in producer.sent} == {b"Building/B-0", b"Building/B-1",
                                                    b"Building/B-2"}  # fmt: skip
    assert writer.written == writer.told == 3


async def test_a_full_buffer_drops_and_stops_every_later_commit() -> None:
    producer = Producer()
    writer = ReceiptWriter(producer, "receipts", max_buffered=2, grace=0.5)
    for i in range(3):
        writer.record_finished(outcome(i))  # no task runs: the broker is away
    assert (writer.told, writer.dropped) == (2, 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await wait_until(lambda: len(producer.waiting) == 2, interval=0.01, what="2 sent")
        producer.ack_all()
        await wait_until(lambda: writer.written == 2, interval=0.01, what="2 written")
        assert not await writer.written_up_to_now(0.5), "a dropped receipt blocks commits"
        tg.cancel_scope.cancel()


async def test_cancelling_writes_what_is_left_within_the_grace() -> None:
    producer = Producer(auto=True)
    writer = ReceiptWriter(producer, "receipts", grace=2.0)
    blocked = anyio.Event()
    real_send = producer.send

    async def slow_send(topic: str, *, key: bytes, value: bytes) -> Any:
        blocked.set()
        await anyio.sleep(0.05)
        return await real_send(topic, key=key, value=value)

    producer.send = slow_send  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        for i in range(5):
            writer.record_finished(outcome(i))
        await blocked.wait()
        tg.cancel_scope.cancel()  # mid-write: the chunk stays buffered and is written
    assert writer.written == 5
    assert len({key for _, key, _ in producer.sent}) == 5
