"""The registry client against the stand-in registry on a real socket, and the gate that holds
a partition while its schema cannot be fetched (a recording consumer and a fake clock: the
real consumer is in test_pipeline.py), its tries running in a task group as in the pipeline;
and the consume loop on an in-memory consumer and sink while the registry never answers."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from connector.app import Pipeline
from connector.config import SchemaRegistrySettings, Settings
from connector.deadletter import DeadLetterWriter
from connector.errors import ServerError
from connector.metrics import Metrics
from connector.ratelimit import Backoff
from connector.schemaregistry import (
    RegistryClient,
    RegistryRefused,
    SchemaGate,
    SchemaNotFound,
    build_gate,
)
from connector.schemas import Schema, SchemaCache, SchemaUnusable
from tests.registry.samples import MAPPING, avro_change, avro_envelope, json_schema
from tests.support.consumer import MemoryConsumer
from tests.support.memory_sink import MemorySink, memory_sink
from tests.support.pipeline import eventually
from tests.support.registry import (
    Registry,
    StandInRegistry,
    avro_value,
    running_registry,
    wire,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def client(reg: Registry, **options: Any) -> RegistryClient:
    return RegistryClient(SchemaRegistrySettings(url=reg.url, **options))


async def fetch(c: RegistryClient, ident: int) -> Schema | SchemaUnusable:
    async with c.session() as session:
        return await c.fetch(session, ident)


async def test_a_schema_is_fetched_by_id(registry: Registry) -> None:
    avro = await registry.register("shop.public.buildings-value", avro_envelope())
    js = await registry.register("j-value", json_schema(), "JSON")

    got_avro, got_json = await fetch(client(registry), avro), await fetch(client(registry), js)

    assert isinstance(got_avro, Schema)
    assert (got_avro.id, got_avro.type) == (avro, "AVRO")
    assert isinstance(got_json, Schema)
    assert (got_json.id, got_json.type) == (js, "JSON")


async def test_an_unknown_id_is_schema_not_found_and_retriable(registry: Registry) -> None:
    with pytest.raises(
        SchemaNotFound, match=r"answered 404: Schema 41 not found \(error_code 40403"
    ):
        await fetch(client(registry), 41)
    assert SchemaNotFound.retriable


async def test_an_outage_is_a_retriable_server_error(registry: Registry) -> None:
    registry.state.outage = True

    with pytest.raises(ServerError, match="answered 503") as caught:
        await fetch(client(registry), 1)
    assert caught.value.retriable


async def test_basic_auth_is_sent_and_a_refusal_is_retriable() -> None:
    async with running_registry(StandInRegistry(auth=("svc", "s3cret"))) as reg:
        ident = await reg.register("a-value", avro_envelope())

        with pytest.raises(RegistryRefused, match="answered 401") as caught:
            await fetch(client(reg), ident)
        assert caught.value.retriable
        wrong = client(reg, username="svc", password="nope")
        with pytest.raises(RegistryRefused):
            await fetch(wrong, ident)
        assert isinstance(
            await fetch(client(reg, username="svc", password="s3cret"), ident), Schema
        )


async def test_nothing_listens_is_a_server_error() -> None:
    async with running_registry() as reg:
        url = reg.url
    with pytest.raises(ServerError, match="unreachable"):
        await fetch(RegistryClient(SchemaRegistrySettings(url=url)), 1)


@dataclass
class Rec:
    offset: int
    value: bytes | None


@dataclass
class Consumer:
    """Records what the gate does to aiokafka's consumer."""

    assigned: set[TopicPartition] = field(default_factory=lambda: {TP0, TP1})
    calls: list[tuple[str, TopicPartition, int | None]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", tp, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.calls.extend(("pause", tp, None) for tp in tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.calls.extend(("resume", tp, None) for tp in tps)


@contextlib.asynccontextmanager
async def gated(
    reg: Registry, clock: FakeClock, *, first_wait: float = 10.0, **options: Any
) -> AsyncIterator[tuple[SchemaGate, Metrics]]:
    """The gate as the pipeline runs it: its tries are tasks of a task group, cancelled when
    the block ends. `first_wait` is generous by default: a healthy registry on a busy machine
    must not turn into a hold."""
    metrics = Metrics(CollectorRegistry())
    settings = SchemaRegistrySettings(
        url=reg.url, retry_backoff_seconds=1, retry_backoff_max_seconds=8, **options
    )
    async with anyio.create_task_group() as tg:
        built, _ = build_gate(settings, metrics=metrics, clock=clock, start=tg.start_soon)
        assert built is not None
        built.rand = lambda: 0.999  # the backoff's ceiling, less a hair
        built.first_wait = first_wait
        try:
            yield built, metrics
        finally:
            tg.cancel_scope.cancel()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_each_schema_is_fetched_once_and_cached(registry: Registry, clock: FakeClock) -> None:
    ident = await registry.register("a-value", avro_envelope())
    async with gated(registry, clock) as (g, metrics):
        batch = {TP0: [Rec(0, wire(ident, b"")), Rec(1, wire(ident, b""))], TP1: [Rec(0, b"{}")]}

        for _ in range(3):
            assert await g.admit(batch, Consumer()) == batch

        assert registry.state.fetches == {ident: 1}
        assert g.cache.get(ident) is not None
        assert sample(metrics, "connector_schema_registry_requests_total", outcome="found") == 1


async def test_a_partition_is_held_at_the_first_record_of_a_missing_schema_and_resumed(
    registry: Registry, clock: FakeClock
) -> None:
    known = await registry.register("a-value", avro_envelope())
    late = await registry.register("b-value", json_schema(), "JSON")
    registry.state.hidden.add(late)  # registered, but this replica does not have it yet
    async with gated(registry, clock) as (g, metrics):
        consumer = Consumer()
        tp0 = [Rec(5, wire(known, b"")), Rec(6, wire(late, b"{}")), Rec(7, wire(known, b""))]
        tp1 = [Rec(0, b"{}"), Rec(1, wire(known, b""))]

        admitted = await g.admit({TP0: tp0, TP1: tp1}, consumer)

        assert admitted == {TP0: tp0[:1], TP1: tp1}  # TP0 up to the record it cannot decode yet
        assert consumer.calls == [("seek", TP0, 6), ("pause", TP0, None)]
        assert g.held == 1
        assert sample(metrics, "connector_schema_held_partitions") == 1
        assert sample(metrics, "connector_schema_registry_requests_total", outcome="not_found") == 1

        # before the backoff is over: not asked again; records of the held partition stay out
        consumer.calls.clear()
        clock.advance(0.5)
        assert await g.admit({TP0: tp0[1:]}, consumer) == {}
        assert consumer.calls == [("seek", TP0, 6), ("pause", TP0, None)]
        assert registry.state.fetches[late] == 1

        # the backoff over, still missing: held, with a longer backoff (1 s, then 2 s)
        clock.advance(0.5)
        assert await g.admit({}, consumer) == {}
        assert registry.state.fetches[late] == 2
        clock.advance(1.5)
        await g.admit({}, consumer)
        assert registry.state.fetches[late] == 2

        registry.state.hidden.clear()  # the replica caught up
        consumer.calls.clear()
        clock.advance(0.5)
        assert await g.admit({}, consumer) == {}
        assert consumer.calls == [("resume", TP0, None)]
        assert g.held == 0
        assert sample(metrics, "connector_schema_held_partitions") == 0
        # read again from offset 6, everything passes
        assert await g.admit({TP0: tp0[1:]}, consumer) == {TP0: tp0[1:]}


async def test_an_outage_holds_every_partition_that_needs_a_schema(
    registry: Registry, clock: FakeClock
) -> None:
    one = await registry.register("a-value", avro_envelope())
    two = await registry.register("b-value", json_schema(), "JSON")
    registry.state.outage = True
    async with gated(registry, clock) as (g, metrics):
        consumer = Consumer()
        batch = {TP0: [Rec(0, wire(one, b""))], TP1: [Rec(3, wire(two, b""))]}

        assert await g.admit(batch, consumer) == {}
        assert g.held == 2
        # the second ID was not asked: the registry was down for the first
        assert sum(registry.state.fetches.values()) == 0  # the 503 comes before the handler
        assert (
            sample(metrics, "connector_schema_registry_requests_total", outcome="unavailable") == 1
        )

        registry.state.outage = False
        clock.advance(1)
        await g.admit({}, consumer)
        assert g.held == 0
        assert {c for c in consumer.calls if c[0] == "resume"} == {
            ("resume", TP0, None),
            ("resume", TP1, None),
        }


async def test_a_revoked_partition_is_no_longer_held(registry: Registry, clock: FakeClock) -> None:
    registry.state.outage = True
    async with gated(registry, clock) as (g, _):
        consumer = Consumer()
        await g.admit({TP0: [Rec(0, wire(1, b""))]}, consumer)
        assert g.held == 1

        consumer.assigned = {TP1}
        await g.admit({}, consumer)

        assert g.held == 0


async def test_an_unusable_schema_is_cached_for_the_decoder_to_dead_letter(
    registry: Registry, clock: FakeClock
) -> None:
    ident = await registry.register("p-value", 'syntax = "proto3"; message M {}', "PROTOBUF")
    async with gated(registry, clock) as (g, metrics):
        batch = {TP0: [Rec(0, wire(ident, b"\x00"))]}

        assert await g.admit(batch, Consumer()) == batch

        assert isinstance(g.cache.get(ident), SchemaUnusable)
        assert sample(metrics, "connector_schema_registry_requests_total", outcome="unusable") == 1


def test_no_gate_without_a_url() -> None:
    assert build_gate(SchemaRegistrySettings(), metrics=Metrics(CollectorRegistry())) == (
        None, None
    )  # fmt: skip


def test_the_gate_keeps_the_backoff_of_the_settings() -> None:
    g, cache = build_gate(
        SchemaRegistrySettings(url="http://127.0.0.1:1", retry_backoff_seconds=2,
                               retry_backoff_max_seconds=30),
        metrics=Metrics(CollectorRegistry()),
    )  # fmt: skip
    assert g is not None
    assert isinstance(cache, SchemaCache)
    assert g.cache is cache
    assert g.backoff == Backoff(base=2, cap=30)


async def test_held_partitions_are_tried_again_together_one_request_a_try(
    registry: Registry, clock: FakeClock
) -> None:
    registry.state.outage = True
    async with gated(registry, clock) as (g, metrics):
        consumer = Consumer()

        def tries() -> float:
            return sample(
                metrics, "connector_schema_registry_requests_total", outcome="unavailable"
            )

        await g.admit({TP0: [Rec(0, wire(1, b""))]}, consumer)
        clock.advance(0.5)
        await g.admit({TP1: [Rec(0, wire(2, b""))]}, consumer)  # a new ID: asked at once
        assert (g.held, tries()) == (2, 2)

        clock.advance(0.5)  # the first hold's backoff is over: both are tried, in one request
        await g.admit({}, consumer)
        assert tries() == 3
        for _ in range(4):  # within the next backoff (2 s): no request
            clock.advance(0.4)
            await g.admit({}, consumer)
        assert tries() == 3


async def test_a_schema_is_fetched_inline_without_a_task_group(
    registry: Registry, clock: FakeClock
) -> None:
    ident = await registry.register("a-value", avro_envelope())
    g, _ = build_gate(
        SchemaRegistrySettings(url=registry.url), metrics=Metrics(CollectorRegistry()),
        clock=clock,
    )  # fmt: skip
    assert g is not None
    batch = {TP0: [Rec(0, wire(ident, b""))]}

    assert await g.admit(batch, Consumer()) == batch
    assert registry.state.fetches == {ident: 1}


def unavailable(metrics: Metrics) -> float:
    return sample(metrics, "connector_schema_registry_requests_total", outcome="unavailable")


async def test_a_registry_that_never_answers_holds_without_blocking_admit(
    registry: Registry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A try not answered within `first_wait` holds like a failed one, without waiting the
    request timeout, counting a failure or touching the backoff; a later call resumes."""
    caplog.set_level(logging.WARNING, logger="connector")
    ident = await registry.register("a-value", avro_envelope())
    registry.state.hang = True
    async with gated(registry, clock, first_wait=0.2) as (g, metrics):
        consumer = Consumer()
        tp0 = [Rec(0, b"{}"), Rec(1, wire(ident, b"")), Rec(2, b"{}")]
        tp1 = [Rec(0, b"{}")]

        began = time.monotonic()
        admitted = await g.admit({TP0: tp0, TP1: tp1}, consumer)
        assert time.monotonic() - began < 2, "waited about first_wait, not the 10 s timeout"

        assert admitted == {TP0: tp0[:1], TP1: tp1}
        assert consumer.calls == [("seek", TP0, 1), ("pause", TP0, None)]
        assert (g.held, sample(metrics, "connector_schema_held_partitions")) == (1, 1)

        # later calls do not wait for the try in flight, nor ask again, whatever the clock
        began = time.monotonic()
        for offset in range(1, 6):
            clock.advance(30)
            tp1_more = [Rec(offset, b"{}")]
            assert await g.admit({TP1: tp1_more}, consumer) == {TP1: tp1_more}
        assert time.monotonic() - began < 1
        assert registry.state.fetches == {ident: 1}, "one request in flight for the ID"
        assert unavailable(metrics) == 0
        assert not caplog.records, "nothing failed yet"

        registry.state.hang = False
        consumer.calls.clear()

        async def resumed() -> bool:
            await g.admit({}, consumer)
            return g.held == 0

        assert await eventually(resumed, timeout=5, interval=0.01)
        assert consumer.calls == [("resume", TP0, None)]
        assert registry.state.fetches == {ident: 1}, "the request in flight answered"
        assert sample(metrics, "connector_schema_registry_requests_total", outcome="found") == 1
        assert sample(metrics, "connector_schema_held_partitions") == 0
        assert await g.admit({TP0: tp0[1:]}, consumer) == {TP0: tp0[1:]}


async def test_a_try_that_times_out_counts_once_and_starts_the_backoff(
    registry: Registry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connector")
    ident = await registry.register("a-value", avro_envelope())
    registry.state.hang = True
    async with gated(registry, clock, first_wait=0.05, request_timeout_seconds=0.3) as (
        g,
        metrics,
    ):
        consumer = Consumer()
        await g.admit({TP0: [Rec(0, wire(ident, b""))]}, consumer)
        assert (g.held, unavailable(metrics)) == (1, 0)

        def failed() -> bool:  # counted, then logged once the session is closed
            return unavailable(metrics) == 1 and bool(caplog.records)

        assert await eventually(failed, timeout=5, interval=0.01)
        (line,) = [r.getMessage() for r in caplog.records]
        assert f"schema {ident} not fetched" in line
        assert "0 partitions held before this try" in line

        # the failure is settled by the next call: the backoff (1 s) starts from there
        await g.admit({}, consumer)
        clock.advance(0.9)
        await g.admit({}, consumer)
        assert registry.state.fetches == {ident: 1}, "not asked again within the backoff"

        registry.state.hang = False
        g.first_wait = 10  # the registry answers again: the retry is waited for
        clock.advance(0.2)
        await g.admit({}, consumer)
        assert registry.state.fetches == {ident: 2}
        assert g.held == 0
        assert unavailable(metrics) == 1
        assert len(caplog.records) == 1


async def test_a_try_in_flight_ends_with_the_task_group(
    registry: Registry, clock: FakeClock
) -> None:
    registry.state.hang = True
    try:
        began = time.monotonic()
        async with gated(registry, clock, first_wait=0.05) as (g, _):
            await g.admit({TP0: [Rec(0, wire(1, b""))]}, Consumer())
            assert g.held == 1
        assert time.monotonic() - began < 2, "cancelled, not left to its 10 s timeout"
    finally:
        registry.state.hang = False


class _NoDeadLetters:
    """The dead-letter producer of the consume-loop test: a hold must never dead-letter."""

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"unexpected dead letter: {args} {kwargs}")


async def test_the_consume_loop_keeps_turning_while_the_registry_never_answers(
    registry: Registry,
) -> None:
    """The pipeline on an in-memory consumer and sink: partition 0 carries Avro records whose
    schema the hung registry does not serve, partition 1 plain JSON. Partition 1 flows and the
    loop's heartbeat moves during the hang (it used to stop for the 10 s request timeout);
    once the registry answers, partition 0 is decoded, each record once, none dead-lettered."""
    ident = await registry.register("shop.public.buildings-value", avro_envelope())
    registry.state.hang = True
    consumer, sink = MemoryConsumer("buildings", partitions=2), MemorySink()
    for i in range(5):
        change = avro_change(f"A-{i}", f"Avro {i}")
        consumer.add(f"A-{i}".encode(), avro_value(avro_envelope(), ident, change), partition=0)
        consumer.add(*plain(i), partition=1)
    settings = Settings.model_validate({
        "kafka": {"topics": ["buildings"], "dead_letter_topic": "dlq"},
        "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
        "window": {"max_records": 10, "max_wait_seconds": 0.01},
        "pipeline": {"commit_interval_seconds": 0.05},
        "metrics": {"port": 0},
        "mappings": [MAPPING],
        "schema_registry": {"url": registry.url},  # request_timeout_seconds: 10
    })  # fmt: skip

    def stored() -> set[str]:
        return set(sink.stored.get("building", {}))

    try:
        with memory_sink(settings, sink) as configured:
            pipeline = Pipeline(
                configured, consumer=consumer, sink=sink,
                metrics=Metrics(CollectorRegistry()),
                dead_letters=DeadLetterWriter(_NoDeadLetters(), "dlq"),
            )  # fmt: skip
        async with anyio.create_task_group() as tg:
            began = time.monotonic()
            await tg.start(pipeline.run)
            plain_ids = {f"b-{i}" for i in range(5)}
            assert await eventually(lambda: stored() == plain_ids, timeout=2, interval=0.01)
            first = time.monotonic() - began
            assert first < 2, f"partition 1 reached the sink after {first:.2f} s"

            ages = []  # how old the loop's heartbeat is, sampled during the hang
            for i in range(5, 10):
                consumer.add(*plain(i), partition=1)
                await anyio.sleep(0.2)
                ages.append(time.monotonic() - pipeline.heartbeat)
            assert max(ages) < 1, f"heartbeat ages {ages}"
            plain_ids = {f"b-{i}" for i in range(10)}
            assert await eventually(lambda: stored() == plain_ids, timeout=1, interval=0.01)
            assert registry.state.fetches == {ident: 1}, "one request, still unanswered"

            registry.state.hang = False
            every = plain_ids | {f"A-{i}" for i in range(5)}
            assert await eventually(lambda: stored() == every, timeout=5, interval=0.01)
            assert await eventually(
                lambda: consumer.committed_positions() == {0: 5, 1: 10}, timeout=5
            ), consumer.committed_positions()
            pipeline.begin_drain()
    finally:
        registry.state.hang = False
    assert orjson.loads(sink.stored["building"]["A-3"])["name"] == "Avro 3"
    assert pipeline.stats.consumed == 15, "each record taken in once"
    assert pipeline.stats.dead_lettered == 0
    assert registry.state.fetches == {ident: 1}


def plain(i: int) -> tuple[bytes, bytes]:
    bid = f"b-{i}"
    event = {"buildingId": bid, "eventType": "BuildingUpdated", "name": f"B {i}"}
    return bid.encode(), orjson.dumps(event)
