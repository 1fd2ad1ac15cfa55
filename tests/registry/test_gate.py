"""The registry client against the stand-in registry on a real socket, and the gate that holds
a partition while its schema cannot be fetched (a recording consumer and a fake clock: the
real consumer is in test_pipeline.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from connector.config import SchemaRegistrySettings
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
from tests.registry.samples import avro_envelope, json_schema
from tests.support.registry import Registry, StandInRegistry, running_registry, wire

if TYPE_CHECKING:
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


def gate(reg: Registry, clock: FakeClock) -> tuple[SchemaGate, Metrics]:
    metrics = Metrics(CollectorRegistry())
    built, _ = build_gate(
        SchemaRegistrySettings(url=reg.url, retry_backoff_seconds=1, retry_backoff_max_seconds=8),
        metrics=metrics, clock=clock,
    )  # fmt: skip
    assert built is not None
    built.rand = lambda: 0.999  # the backoff's ceiling, less a hair
    return built, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_each_schema_is_fetched_once_and_cached(registry: Registry, clock: FakeClock) -> None:
    ident = await registry.register("a-value", avro_envelope())
    g, metrics = gate(registry, clock)
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
    g, metrics = gate(registry, clock)
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
    g, metrics = gate(registry, clock)
    consumer = Consumer()
    batch = {TP0: [Rec(0, wire(one, b""))], TP1: [Rec(3, wire(two, b""))]}

    assert await g.admit(batch, consumer) == {}
    assert g.held == 2
    # the second ID was not asked: the registry was down for the first
    assert sum(registry.state.fetches.values()) == 0  # the 503 comes before the handler
    assert sample(metrics, "connector_schema_registry_requests_total", outcome="unavailable") == 1

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
    g, _ = gate(registry, clock)
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
    g, metrics = gate(registry, clock)
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
    g, metrics = gate(registry, clock)
    consumer = Consumer()

    def tries() -> float:
        return sample(metrics, "connector_schema_registry_requests_total", outcome="unavailable")

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
