"""The pipeline against a scripted BuildingMinds API that answers what the emulator never
would: a 2xx without a batchId, a redirect, a token echoed in a 400 and a 401. A real Kafka
broker, the connector in-process; the assertions are on committed offsets, the dead-letter
topic and every log line.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connector.config import Settings
from tests.integration.helpers import building, committed_offsets, produce, read_topic, run_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.timeout(120)]


@dataclass
class Api:
    """Token endpoint and ingestion, answering `mode` to every POST of records."""

    mode: str = "no-batch-id"
    issued: list[str] = field(default_factory=list)
    posts: int = 0
    stolen: int = 0
    url: str = ""


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    state = Api()

    async def token(request: web.Request) -> web.Response:
        await request.read()
        state.issued.append(f"tok-{secrets.token_hex(16)}")
        return web.json_response({"access_token": state.issued[-1], "expires_in": 3600})

    async def ingest(request: web.Request) -> web.Response:
        await request.read()
        state.posts += 1
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if state.mode == "no-batch-id":
            return web.json_response({"status": "ok"})
        if state.mode == "redirect":
            return web.Response(status=302, headers={"Location": f"{state.url}/stolen"})
        if state.mode == "echo-400":
            failed = [{"message": {"buildingId": "b-0"}, "error": f"token {sent} lacks a role"}]
            return web.json_response({"failedMessages": failed}, status=400)
        return web.json_response({"error": f"token {sent} is not valid here"}, status=401)

    async def stolen(request: web.Request) -> web.Response:
        await request.read()
        state.stolen += 1
        return web.json_response({"batchId": "stolen"})

    async def batches(_: web.Request) -> web.Response:
        return web.json_response({"message": "Success", "totalCount": 0, "data": []})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_route("*", "/stolen", stolen)
    app.router.add_get("/api/batch", batches)
    app.router.add_post("/api/{endpoint}", ingest)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    try:
        yield state
    finally:
        await server.close()


def settings(api: Api, bootstrap: str, topic: str, group: str, dlq: str) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                      "dead_letter_topic": dlq, "topic_entities": {}},
            "sink": {"base_url": f"{api.url}/api", "token_url": f"{api.url}/token",
                     "client_id": "c", "client_secret": "pipeline-client-secret",
                     "scope": "api://x", "retry_backoff_seconds": 0.05,
                     "retry_backoff_max_seconds": 0.2, "request_timeout_seconds": 5,
                     "misconfigured_pause_seconds": 0.2},
            "window": {"max_records": 100, "max_wait_seconds": 0.1},
            "pipeline": {"commit_interval_seconds": 0.2, "shutdown_grace_seconds": 1},
            "tracking": {"poll_interval_seconds": 0.2},
            "metrics": {"port": 0},
        }
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["no-batch-id", "redirect"])
async def test_an_answer_that_proves_nothing_never_finishes_the_records(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, api: Api, mode: str
) -> None:
    """A 200 without a batchId is retried with backoff and counted; a 302 is held (a
    configuration problem). Either way nothing is committed and the target gets nothing."""
    api.mode = mode
    topic, dlq = await new_topic(partitions=1), await new_topic(prefix="dlq")
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(5)])

    pipeline = await run_until(
        settings(api, kafka_bootstrap, topic, group_id, dlq), lambda: api.posts >= 3
    )
    committed = (await committed_offsets(kafka_bootstrap, topic, group_id))[0]
    assert committed in (None, 0), "no record was finished"
    assert pipeline.stats.delivered == 0
    assert api.stolen == 0


async def test_a_token_echoed_by_the_api_reaches_no_dead_letter_and_no_log_line(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    group_id: str,
    api: Api,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    topic, dlq = await new_topic(partitions=1), await new_topic(prefix="dlq")
    await produce(kafka_bootstrap, [(topic, *building(0, 0))])
    conf = settings(api, kafka_bootstrap, topic, group_id, dlq)

    api.mode = "echo-400"
    await run_until(conf, lambda: api.posts >= 1)
    (letter,) = await read_topic(kafka_bootstrap, dlq, 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert "lacks a role" in headers["error.message"], "the platform's message is kept"

    api.mode = "echo-401"
    await produce(kafka_bootstrap, [(topic, *building(1, 0))])
    await run_until(conf, lambda: api.posts >= 4)

    assert len(api.issued) >= 2
    assert "is not valid here" in caplog.text, "the 401's message was logged (masked)"
    everything: list[Any] = [orjson.dumps(headers).decode(), caplog.text]
    for text in everything:
        for token in api.issued:
            assert token not in text
        assert "pipeline-client-secret" not in text
