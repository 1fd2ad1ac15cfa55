"""The pipeline's policy without a broker: an in-memory consumer (`connector.intake.Consumer`)
and the tests' own sink, both in-process; what is checked is what reached the sink and what
was committed, never the pipeline's internals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from prometheus_client import CollectorRegistry

from connector.app import Pipeline
from connector.config import PipelineSettings, Settings
from connector.deadletter import DeadLetterWriter
from connector.errors import ServerError
from connector.intake import PAUSED_LOOK_MS, Pressure, backpressure
from connector.lifecycle import State
from connector.metrics import Metrics
from connector.offsets import TopicPartitionKey
from connector.ratelimit import JitterGuard, RollingWindowLimiter, _Answered
from tests.support.consumer import MemoryConsumer
from tests.support.memory_sink import MemorySink, memory_sink
from tests.support.pipeline import eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiokafka.structs import TopicPartition

    from connector.sinks.base import SubmitResult
    from connector.window import Batch

pytestmark = pytest.mark.anyio

TOPIC = "buildings"


class _Producer:
    """Dead letters are not what these tests are about: any write is a failure."""

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"unexpected dead letter: {args} {kwargs}")


def _settings(**pipeline: Any) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"topics": [TOPIC], "dead_letter_topic": "dlq"},
            "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
            "window": {"max_records": 10, "max_wait_seconds": 0.01},
            "pipeline": {"commit_interval_seconds": 0.05, **pipeline},
            "metrics": {"port": 0},
        }
    )


def _pipeline(
    settings: Settings,
    consumer: MemoryConsumer,
    sink: MemorySink,
    registry: CollectorRegistry | None = None,
) -> Pipeline:
    with memory_sink(settings, sink) as configured:
        return Pipeline(
            configured, consumer=consumer, sink=sink,
            metrics=Metrics(registry or CollectorRegistry()),
            dead_letters=DeadLetterWriter(_Producer(), "dlq"),
        )  # fmt: skip


def _building(i: int, rev: int = 0) -> tuple[bytes, bytes]:
    bid = f"b-{i}"
    record = {"buildingId": bid, "eventType": "BuildingUpdated", "name": f"B {i}", "rev": rev}
    return bid.encode(), orjson.dumps(record)


async def _until(done: Callable[[], bool], what: str) -> None:
    assert await eventually(done, timeout=5.0, interval=0.01), f"timed out waiting for {what}"


async def test_records_reach_the_sink_coalesced_and_their_offsets_are_committed() -> None:
    consumer, sink = MemoryConsumer(TOPIC), MemorySink()
    for rev in range(3):
        for i in range(25):
            consumer.add(*_building(i, rev))
    pipeline = _pipeline(_settings(), consumer, sink)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await _until(lambda: consumer.committed_positions() == {0: 75}, "all committed")
        pipeline.begin_drain()
    stored = sink.stored["building"]
    assert sorted(stored) == sorted(f"b-{i}" for i in range(25))
    assert all(orjson.loads(v)["rev"] == 2 for v in stored.values()), "the newest version"
    assert pipeline.state is State.STOPPED
    assert pipeline.stats.consumed == 75


async def test_a_sink_that_settles_later_holds_the_commit_until_it_reports() -> None:
    consumer, sink = MemoryConsumer(TOPIC), MemorySink(settle_later=True)
    for i in range(5):
        consumer.add(*_building(i))
    settings = _settings()
    settings = settings.model_copy(
        update={"tracking": settings.tracking.model_copy(update={"commit_on": "completed"})}
    )
    pipeline = _pipeline(settings, consumer, sink)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await _until(lambda: consumer.committed_positions() == {0: 5}, "committed after settling")
        pipeline.begin_drain()
    assert sink.settled >= 1
    assert pipeline.stats.delivered == 5, "counted delivered once, when settled"


async def test_the_pending_gauge_returns_to_zero_once_everything_is_finished() -> None:
    """Records a sink settles later leave the gauge when they settle, not at the next intake."""
    consumer, sink = MemoryConsumer(TOPIC), MemorySink(settle_later=True)
    for i in range(5):
        consumer.add(*_building(i))
    settings = _settings()
    settings = settings.model_copy(
        update={"tracking": settings.tracking.model_copy(update={"commit_on": "completed"})}
    )
    registry = CollectorRegistry()
    pipeline = _pipeline(settings, consumer, sink, registry)

    def pending() -> float | None:
        return registry.get_sample_value("connector_pending_records")

    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await _until(lambda: consumer.committed_positions() == {0: 5}, "all finished")
        await _until(lambda: pending() == 0, "the gauge at 0")
        pipeline.begin_drain()


async def test_a_revoke_during_a_drain_does_not_leave_the_drain_waiting_for_its_grace() -> None:
    """A drain and a revoke both wait for the request in flight; when it ends, both go on.

    (With one shared event that each waiter replaced, the drain waited on an event nobody
    would set again, until the grace of 60 s ran out.)"""
    consumer, sink = MemoryConsumer(TOPIC), MemorySink()
    consumer.add(*_building(1))
    pipeline = _pipeline(_settings(shutdown_grace_seconds=60), consumer, sink)
    sink.hold()
    revoked = anyio.Event()

    async def revoke() -> None:
        await pipeline.partitions_revoked({TopicPartitionKey(TOPIC, 0)})
        revoked.set()

    with anyio.fail_after(10):  # the bug made this take the 60 s grace
        async with anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            await _until(lambda: pipeline.stats.consumed == 1, "the record taken in")
            await anyio.sleep(0.05)  # the scheduler has the request in flight (the sink holds)
            pipeline.begin_drain()
            await anyio.sleep(0.05)  # the drain waits for the request
            tg.start_soon(revoke)
            await anyio.sleep(0.05)  # and so does the revoke
            sink.release()
            await revoked.wait()
            await pipeline.stopped.wait()
    assert sink.stored["building"].keys() == {"b-1"}
    assert consumer.committed_positions() == {0: 1}


def test_backpressure_pauses_over_the_limit_and_resumes_below_the_low_water_mark() -> None:
    p = PipelineSettings(max_pending_records=100, max_pending_bytes=10_000, resume_ratio=0.5)

    def decide(paused: bool, unsent: int, *, held: int = 0, pending_bytes: int = 0) -> Pressure:  # noqa: FBT001 - a table
        return backpressure(p, paused=paused, unsent=unsent, held=held, pending_bytes=pending_bytes)

    assert decide(False, 99) is Pressure.STAY
    assert decide(False, 100) is Pressure.PAUSE
    assert decide(False, 0, held=200) is Pressure.PAUSE, "held records are capped at twice"
    assert decide(False, 0, held=199) is Pressure.STAY, "accepted records do not stall intake"
    assert decide(False, 0, pending_bytes=10_000) is Pressure.PAUSE
    assert decide(True, 50) is Pressure.STAY, "not below the low-water mark yet"
    assert decide(True, 49) is Pressure.RESUME
    assert decide(True, 49, held=100) is Pressure.STAY
    assert decide(True, 49, pending_bytes=5_000) is Pressure.STAY


class _WaitsRecorded(MemoryConsumer):
    """Records how long each call was allowed to wait while fetching was paused."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.paused_waits: list[int] = []

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        if self.paused:
            self.paused_waits.append(timeout_ms)
        return await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)


async def test_a_paused_consume_loop_looks_again_soon_instead_of_idling() -> None:
    # a backlog can drain below the resume mark faster than a long wait: the loop must not
    # sit in a 200 ms call while there is nothing left to send
    consumer, sink = _WaitsRecorded(TOPIC), MemorySink()
    for i in range(40):
        consumer.add(*_building(i))
    pipeline = _pipeline(_settings(max_pending_records=10), consumer, sink)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await _until(lambda: consumer.committed_positions() == {0: 40}, "all committed")
        pipeline.begin_drain()
    assert consumer.paused_waits, "the backlog paused fetching"
    assert max(consumer.paused_waits) <= PAUSED_LOOK_MS


def test_the_window_is_told_when_more_than_a_request_waits_unfetched_in_kafka() -> None:
    consumer = MemoryConsumer(TOPIC)
    for i in range(25):
        consumer.add(*_building(i))
    pipeline = _pipeline(_settings(), consumer, MemorySink())
    key = TopicPartitionKey(TOPIC, 0)
    pipeline.intake._apply_backpressure()
    assert not pipeline.window.behind, "nothing taken in yet: no position to compare"
    pipeline.offsets.track(key, 0)
    pipeline.intake._apply_backpressure()
    assert pipeline.window.behind, "24 records unfetched: more than a request (10)"
    pipeline.offsets.track(key, 14)
    pipeline.intake._apply_backpressure()
    assert not pipeline.window.behind, "10 left: not more than a request's worth"


class _FailsOnce(MemorySink):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error: Exception | None = error

    async def submit(self, batch: Batch) -> SubmitResult:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return await super().submit(batch)


@pytest.mark.parametrize(
    ("error", "answered"),
    [(ServerError("503 from the API", status=503), True), (ServerError("reset"), False)],
)
async def test_a_failed_submission_the_platform_answered_frees_its_slot_from_the_answer(
    error: Exception,
    answered: bool,  # noqa: FBT001 - a parameter of the test
) -> None:
    """A status is an answer: if the platform counted the request, it did so before it (the
    limiter's proof); a dropped connection says nothing, and the guard's model holds."""
    consumer, sink = MemoryConsumer(TOPIC), _FailsOnce(error)
    consumer.add(*_building(1))
    sink.limiter = RollingWindowLimiter(10, 60, guard=JitterGuard(initial=3.0, ceiling=3.0))
    pipeline = _pipeline(_settings(), consumer, sink)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await _until(lambda: consumer.committed_positions() == {0: 1}, "sent on the retry")
        pipeline.begin_drain()
    starts = list(sink.limiter._starts)  # the proof is per start
    assert [isinstance(s, _Answered) for s in starts] == [answered, True]
