"""`dry-run` and `dead-letters replay` with `schema_registry.url`: Avro and JSON Schema records
are decoded with their schemas, fetched from the stand-in registry (tests/support/registry.py)
as the connector fetches them; a schema that cannot be fetched (the registry down, an ID it
does not know) is a held record with the reason, never a dead letter. The commands run through
`connector.cli.main` in a thread, with their own event loop, as from the shell."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
import yaml
from aiohttp import web as aiohttp_web
from aiokafka import AIOKafkaProducer

from connector.cli import main
from connector.deadletter import DeadLetter
from connector.decode import Reason
from tests.integration.helpers import produce, read_topic
from tests.registry.samples import (
    BUILT_ISO,
    MAPPING,
    PERMIT_ISO,
    avro_change,
    avro_envelope,
    json_change,
    json_schema,
)
from tests.support.registry import (
    Registry,
    StandInRegistry,
    avro_value,
    running_registry,
    wire,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp import web

    from tests.kafka_fixtures import NewTopicFactory

pytestmark = pytest.mark.anyio

NO_URL_HINT = "set schema_registry.url to decode it"


@dataclass
class CountingRegistry(StandInRegistry):
    """The stand-in, counting every request (its `fetches` misses those an outage answers)."""

    requests: int = 0

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.insert(0, self._count)
        return app

    @aiohttp_web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        response: web.StreamResponse = await handler(request)
        return response


@pytest.fixture
async def counting() -> AsyncIterator[Registry]:
    async with running_registry(CountingRegistry()) as reg:
        yield reg


def key(bldg_no: str) -> bytes:
    return orjson.dumps({"bldg_no": bldg_no})


def config(
    tmp_path: Path, registry: Registry | None, *, bootstrap: str = "127.0.0.1:9",
    topics: list[str] | None = None, dlq: str = "dlq",
) -> Path:  # fmt: skip
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "topics": topics or ["t"],
                  "dead_letter_topic": dlq},
        "sink": {"client_id": "c", "client_secret": "never-used", "scope": "api://x",
                 "base_url": "http://127.0.0.1:9/api", "token_url": "http://127.0.0.1:9/t"},
        "mappings": [MAPPING],
    }  # fmt: skip
    if registry is not None:
        raw["schema_registry"] = {"url": registry.url, "request_timeout_seconds": 5}
    path = tmp_path / "connector.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def command(*args: str) -> tuple[int, list[str], str]:
    """`args` through the command line in a thread (the registry answers from this loop)."""
    out, err = io.StringIO(), io.StringIO()
    code = await anyio.to_thread.run_sync(lambda: main(list(args), out, err))
    return code, out.getvalue().splitlines(), err.getvalue()


def mapped(line: str) -> tuple[str, dict[str, Any]]:
    """(where and what, body) of a dry-run line of a record that would be sent."""
    head, body = line.split("  {", 1)
    return head, orjson.loads("{" + body)


@pytest.mark.kafka
async def test_a_dry_run_of_an_avro_and_a_json_schema_topic_shows_the_mapped_records(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, registry: Registry
) -> None:
    avro_topic, json_topic = await new_topic(1), await new_topic(1)
    avro_id = await registry.register(f"{avro_topic}-value", avro_envelope())
    json_id = await registry.register(f"{json_topic}-value", json_schema(), "JSON")
    await produce(kafka_bootstrap, [
        (avro_topic, key("A-1"), avro_value(avro_envelope(), avro_id, avro_change("A-1", "Av"))),
        (avro_topic, key("A-1"), avro_value(avro_envelope(), avro_id,
                                            avro_change("A-1", "Av", op="d"))),
        (json_topic, key("J-1"), wire(json_id, orjson.dumps(json_change("J-1", "Js")))),
        (json_topic, key("J-2"), wire(json_id, b"{cut")),
    ])  # fmt: skip
    path = config(tmp_path, registry, bootstrap=kafka_bootstrap, topics=[avro_topic, json_topic])

    code, lines, _ = await command("dry-run", "--config", str(path), "--count", "4")

    assert code == 0, lines
    by_where = {line.split("  ", 1)[0]: line for line in lines[:-1]}
    head, body = mapped(by_where[f"{avro_topic}/0/0"])
    assert head == f"{avro_topic}/0/0  -> POST /building  A-1"
    assert body == {
        "buildingId": "A-1", "eventType": "BuildingAdded", "name": "Av",
        "buildingPermitDate": PERMIT_ISO, "constructionDate": BUILT_ISO, "usableArea": 1234.5,
        "opened": "2020-01-02T00:00:00Z",
    }  # fmt: skip
    assert by_where[f"{avro_topic}/0/1"] == (
        f'{avro_topic}/0/1  -> POST /building  A-1  {{"buildingId":"A-1","eventType":'
        '"BuildingDeleted"}'
    )
    head, body = mapped(by_where[f"{json_topic}/0/0"])
    assert head == f"{json_topic}/0/0  -> POST /building  J-1"
    assert body["name"] == "Js"
    assert body["buildingPermitDate"] == PERMIT_ISO
    assert body["constructionDate"] == BUILT_ISO
    assert by_where[f"{json_topic}/0/1"].startswith(
        f"{json_topic}/0/1  x dead letter undecodable_record: JSON Schema schema ID {json_id}: "
        "value is not JSON"
    )
    assert lines[-1] == (
        "dry run: 4 records; would send 3 building; would dead-letter 1 undecodable_record; "
        "would skip none. Nothing was sent."
    )
    assert registry.state.fetches == {avro_id: 1, json_id: 1}, "each schema fetched once"


@pytest.mark.kafka
async def test_a_dry_run_while_the_registry_is_down_holds_the_records_and_asks_once(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, counting: Registry
) -> None:
    registry = counting
    topic = await new_topic(1)
    avro_id = await registry.register(f"{topic}-value", avro_envelope())
    await produce(kafka_bootstrap, [
        *((topic, key(f"A-{i}"), avro_value(avro_envelope(), avro_id,
                                            avro_change(f"A-{i}", "Av"))) for i in range(3)),
        (topic, key("B-1"), orjson.dumps({"after": {"bldg_no": "B-1", "bldg_name": "Plain"},
                                          "source": {"table": "buildings"}, "op": "c"})),
    ])  # fmt: skip
    registry.state.outage = True
    path = config(tmp_path, registry, bootstrap=kafka_bootstrap, topics=[topic])
    assert isinstance(registry.state, CountingRegistry)
    asked_before = registry.state.requests  # the registration

    code, lines, _ = await command("dry-run", "--config", str(path), "--count", "4", "--no-body")

    assert code == 0, "a dry run that ran exits 0: held records are in its output"
    held = f"  = held: schema {avro_id} could not be fetched: GET "
    for offset in range(3):
        assert lines[offset].startswith(f"{topic}/0/{offset}{held}"), lines[offset]
        assert "answered 503: Error in the backend data store (error_code 50003)" in lines[offset]
    assert lines[3] == f"{topic}/0/3  -> POST /building  B-1", "a JSON record needs no registry"
    assert lines[4] == (
        f"dry run: 4 records; would send 1 building; would dead-letter none; would skip none; "
        f"held 3 whose schema could not be fetched (schema {avro_id}: the connector would wait "
        "for the registry, not dead-letter them). Nothing was sent."
    )
    assert registry.state.requests - asked_before == 1, "asked once, not once per record"


async def test_a_dry_run_of_a_file_holds_a_record_whose_schema_the_registry_does_not_know(
    tmp_path: Path, registry: Registry
) -> None:
    json_id = await registry.register("buildings-value", json_schema(), "JSON")
    records = tmp_path / "records.jsonl"
    lines = [
        {"topic": "t", "key": {"bldg_no": "J-1"},
         "value": wire(json_id, orjson.dumps(json_change("J-1", "Js"))).decode()},
        {"topic": "t", "value": wire(99, orjson.dumps(json_change("J-2", "Js"))).decode()},
    ]  # fmt: skip
    records.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    path = config(tmp_path, registry)

    code, out, _ = await command("dry-run", "--config", str(path), "--file", str(records),
                                 "--no-body")  # fmt: skip

    assert code == 0
    assert out[0] == "t/0/1  -> POST /building  J-1"
    assert out[1].startswith("t/0/2  = held: schema 99 could not be fetched: GET ")
    assert out[1].endswith("answered 404: Schema 99 not found (error_code 40403)")
    # and without schema_registry.url, the hint the connector dead-letters with
    code, out, _ = await command("dry-run", "--config", str(config(tmp_path, None)),
                                 "--file", str(records), "--no-body")  # fmt: skip
    assert out[0].startswith(f"t/0/1  x dead letter undecodable_record: value is in the Schema "
                             f"Registry wire format (schema ID {json_id}")  # fmt: skip
    assert NO_URL_HINT in out[0]


def avro_letter(topic: str, offset: int, value: bytes, bldg_no: str) -> DeadLetter:
    """An Avro record as a connector without `schema_registry.url` dead-lettered it."""
    return DeadLetter(
        key=key(bldg_no), value=value, headers=[], reason=Reason.UNDECODABLE_RECORD,
        message=f"value is in the Schema Registry wire format (schema ID 1, Avro or JSON "
        f"Schema): {NO_URL_HINT}, then replay it",
        topic=topic, partition=0, offset=offset,
    )  # fmt: skip


async def produce_letters(bootstrap: str, topic: str, letters: list[DeadLetter]) -> None:
    """The letters as the connector's dead-letter writer sends them (with their headers)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for dl in letters:
            await producer.send(topic, key=dl.key, value=dl.value, headers=dl.headers)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.kafka
async def test_a_replay_of_an_avro_dead_letter_decodes_it_and_sends_it(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, registry: Registry
) -> None:
    topic, dlq = await new_topic(1), await new_topic(1, prefix="dlq")
    avro_id = await registry.register(f"{topic}-value", avro_envelope())
    good = avro_value(avro_envelope(), avro_id, avro_change("A-1", "Av"))
    broken = good[:15]  # cut inside the row: would be dead-lettered again
    letters = [avro_letter(topic, 0, good, "A-1"), avro_letter(topic, 1, broken, "A-2")]
    await produce_letters(kafka_bootstrap, dlq, letters)
    path = config(tmp_path, registry, bootstrap=kafka_bootstrap, topics=[topic], dlq=dlq)
    replay = ("dead-letters", "replay", "--config", str(path))

    code, dry, _ = await command(*replay, "--dry-run")
    assert code == 0
    assert dry[0].startswith(f"{dlq}/0/0  -> {topic}  A-1  (")
    assert dry[0].endswith(f"<Schema Registry wire format, schema ID {avro_id}, {len(good)} bytes>")
    assert dry[1] == f"{dlq}/0/1  = held: would be dead-lettered again as undecodable_record"

    code, out, _ = await command(*replay)
    assert code == 0
    assert out[-1].startswith("replay rp-")
    assert out[-1].endswith(
        f": sent 1 to {topic}; held: 1 would be dead-lettered again as undecodable_record."
    )
    (sent,) = await read_topic(kafka_bootstrap, topic, 1)
    assert (sent.key, sent.value) == (key("A-1"), good), "the original bytes, as they were"
    assert registry.state.fetches == {avro_id: 2}, "once per run"


@pytest.mark.kafka
async def test_a_replay_while_the_registry_is_down_holds_the_letter_as_a_retry(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, registry: Registry
) -> None:
    topic, dlq = await new_topic(1), await new_topic(1, prefix="dlq")
    avro_id = await registry.register(f"{topic}-value", avro_envelope())
    good = avro_value(avro_envelope(), avro_id, avro_change("A-1", "Av"))
    letter = avro_letter(topic, 0, good, "A-1")
    await produce_letters(kafka_bootstrap, dlq, [letter])
    registry.state.outage = True
    path = config(tmp_path, registry, bootstrap=kafka_bootstrap, topics=[topic], dlq=dlq)

    code, out, _ = await command("dead-letters", "replay", "--config", str(path))

    assert code == 0
    assert out[0].startswith(f"{dlq}/0/0  = held: schema {avro_id} could not be fetched: GET ")
    assert "answered 503" in out[0]
    assert out[0].endswith("run the replay again when the registry answers (--force sends it "
                           "unchecked)")  # fmt: skip
    assert "would be dead-lettered" not in out[0]
    assert ": sent nothing; held: 1 schema" in out[-1]


async def test_a_dry_run_against_a_registry_that_never_answers_waits_once(
    tmp_path: Path,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"\n".join(
        orjson.dumps({"topic": "t", "value": wire(ident, b"{}").decode()}) for ident in (1, 1, 2)
    ))  # fmt: skip
    path = config(tmp_path, None)
    raw = yaml.safe_load(path.read_text())
    raw["schema_registry"] = {"url": f"http://127.0.0.1:{port}", "request_timeout_seconds": 0.5}
    path.write_text(yaml.safe_dump(raw))
    try:
        code, out, _ = await command("dry-run", "--config", str(path), "--file", str(records))
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    assert code == 0
    assert out[0].startswith("t/0/1  = held: schema 1 could not be fetched: GET ")
    assert out[0].endswith("unreachable: TimeoutError")
    assert out[1] == out[0].replace("t/0/1", "t/0/2"), "the same ID is not asked again"
    assert out[2].startswith("t/0/3  = held: schema 2 could not be fetched: not asked after an "
                             "earlier failure (GET ")  # fmt: skip
    assert len(accepted) == 1, "one request for the run, not one per record or per ID"
