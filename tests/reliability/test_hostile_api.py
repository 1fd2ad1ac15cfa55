"""A hostile API in front of the BuildingMinds emulator, end to end through the real pipeline.

The connector talks to `tests.support.hostile`'s proxy, which forwards to the emulator except
where a test has it answer otherwise: a `200` without a usable `batchId`, redirects to another
host, echoed credentials, a body that trickles in, a huge compressed body. What must hold
whatever the API does, each checked against the emulator's stored state, the committed
offsets, the dead-letter topic and the connector's own log lines:

- an answer that does not say "accepted as batch X" is a failed request: retried, nothing
  committed or dead-lettered for it, and every record delivered once the API behaves;
- no credential (bearer token, client secret) ever reaches another host, a log line or a
  dead letter, whatever the API echoes;
- a slow or huge answer costs a timeout and a retry and bounded memory, never a stuck
  pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from tests.integration.helpers import (
    Emulator,
    committed_offsets,
    end_offsets,
    produce,
    running_emulator,
    settings_for,
)
from tests.support.hostile import (
    MIB,
    HostileApi,
    echo_credentials,
    hostile_api,
    huge,
    redirect,
    reply,
    trickle,
)
from tests.support.pipeline import (
    LogCapture,
    captured_logs,
    eventually,
    reconciles,
    running_connector,
    until,
)
from tests.support.rawkafka import read_raw
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from connector.app import Pipeline
    from connector.config import Settings
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

SUBMIT = r"/api/digitaltwinintegration/building$"
POLL = r"/api/digitaltwinintegration/batch$"
TOKEN = r"/oauth2/v2.0/token$"
CLIENT_SECRET = "demo-secret"  # the emulator's demo credential, looked for in leaks


def seq(n: int) -> tuple[bytes, bytes]:
    sid = f"seq-{n}"
    return sid.encode(), orjson.dumps({"buildingId": sid, "eventType": "BuildingAdded", "seq": n})


@dataclass
class World:
    """The emulator, the hostile proxy in front of it, a topic, a dead-letter topic, the logs."""

    emu: Emulator
    api: HostileApi
    bootstrap: str
    topic: str
    dlq: str
    group: str
    logs: LogCapture

    def settings(self, **sections: Any) -> Settings:
        """Settings that reach the emulator only through the proxy; fast budget and retries."""
        through_proxy = Emulator(self.api.url, self.emu.http)
        sink: dict[str, Any] = {
            "rate_limit": {"requests": 20_000, "per_seconds": 1},
            # a fixed connector may hold an endpoint it finds misconfigured: not for 5 minutes
            "misconfigured_pause_seconds": 0.5,
            "retry_backoff_max_seconds": 0.2,
            **sections.pop("sink", {}),
        }
        pipeline = {"commit_interval_seconds": 0.2, "shutdown_grace_seconds": 3}
        pipeline.update(sections.pop("pipeline", {}))
        return settings_for(
            through_proxy, self.bootstrap, [self.topic], self.group, self.dlq,
            sink=sink, pipeline=pipeline, **sections,
        )  # fmt: skip

    async def send(self, count: int) -> None:
        await produce(self.bootstrap, [(self.topic, *seq(n)) for n in range(count)])

    async def stored(self) -> int:
        return len(await self.emu.entities("building"))

    async def lost(self, count: int) -> list[str]:
        stored = await self.emu.entities("building")
        return [f"seq-{n}" for n in range(count) if f"seq-{n}" not in stored]

    async def committed(self) -> dict[int, int | None]:
        return await committed_offsets(self.bootstrap, self.topic, self.group)

    async def all_committed(self) -> bool:
        committed, ends = await self.committed(), await end_offsets(self.bootstrap, self.topic)
        return all((committed.get(p) or 0) == end for p, end in ends.items())

    async def settled(self, count: int) -> bool:
        return await self.stored() >= count and await self.all_committed()

    async def leaks(self) -> list[str]:
        """Where a credential that crossed the proxy (or the client secret) was found."""
        secrets = {s for s in self.api.credentials() if len(s) >= 6} | {CLIENT_SECRET}
        found: list[str] = []
        log_text = self.logs.connector_text()
        for secret in sorted(secrets):
            shown = f"{secret[:10]}..."
            if secret in log_text:
                line = next(ln for ln in log_text.splitlines() if secret in ln)
                found.append(f"{shown} in a log line: {line[:300]}")
            found += [
                f"{shown} sent to another host: {seen.method} {seen.path_qs}"
                for seen in self.api.elsewhere.seen
                if secret in seen.text()
            ]
        for letter in await read_raw(self.bootstrap, self.dlq):
            carried = b"\n".join(
                [letter.key or b"", letter.value or b""]
                + [k + b"=" + (v or b"") for k, v in letter.headers]
            )
            for secret in sorted(secrets):
                if secret.encode() in carried:
                    where = [k.decode(errors="replace") for k, v in letter.headers
                             if secret.encode() in (v or b"")]  # fmt: skip
                    found.append(f"{secret[:10]}... in a dead letter (headers {where})")
        return found


@pytest.fixture
async def world(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> AsyncIterator[World]:
    options = EmulatorOptions(processing_delay_seconds=0, rate_limit_requests=100_000)
    async with running_emulator(options) as emu, hostile_api(emu.url) as api:
        topic, dlq = await new_topic(), await new_topic(partitions=1, prefix="dlq")
        with captured_logs() as logs:
            yield World(emu, api, kafka_bootstrap, topic, dlq, group_id, logs)


async def finish(world: World, pipeline: Pipeline, count: int, *, timeout: float = 20) -> None:
    """Pass through and wait until every record is stored and every offset committed."""
    world.api.pass_through()
    await until(
        pipeline, lambda: world.settled(count), timeout=timeout,
        what=f"all {count} records stored and committed once the API passes through",
    )  # fmt: skip


# A 200 that is not "accepted as batch X": each one, in turn, is a failed request.
NOT_ACCEPTED = (
    reply(200, {}, name="200 {}"),
    reply(200, {"batchId": None}, name="200 batchId null"),
    reply(200, {"batchId": ""}, name="200 batchId empty"),
    reply(200, {"batchId": {"id": "b-1"}}, name="200 batchId an object"),
    reply(200, [], name="200 []"),
    reply(200, b"not json", name="200 not json"),
    reply(200, b"", name="200 empty body"),
    reply(
        200, "<html><body>Please sign in</body></html>", content_type="text/html",
        name="200 html sign-in page",
    ),
    reply(202, {"status": "queued"}, name="202 without batchId"),
)  # fmt: skip


async def test_a_200_without_a_batch_id_is_a_failed_request_retried_and_nothing_is_lost(
    world: World,
) -> None:
    await world.send(40)
    rule = world.api.answer(SUBMIT, *NOT_ACCEPTED)
    async with running_connector(world.settings()) as pipeline:
        await until(
            pipeline, lambda: rule.served >= len(NOT_ACCEPTED), timeout=15,
            what=lambda: (
                f"a retry after each of {len(NOT_ACCEPTED)} answers without a usable batchId; "
                + (
                    f"the connector stopped after {rule.served}: it took "
                    f"'{NOT_ACCEPTED[rule.served - 1].name}' for an acceptance"
                    if rule.served else "no submission reached the API"
                )
            ),
        )  # fmt: skip
        committed = await world.committed()
        assert all(not c for c in committed.values()), (
            f"offsets committed while the API never accepted a batch: {committed}"
        )
        assert pipeline.stats.dead_lettered == 0, "a 200 is no reason to dead-letter"
        assert pipeline.stats.delivered == 0, "records counted delivered on a junk 200"
        await finish(world, pipeline, 40)
    assert await world.lost(40) == []
    assert reconciles(pipeline) is None, reconciles(pipeline)
    assert pipeline.stats.dead_lettered == 0
    assert await world.leaks() == []


@pytest.mark.parametrize("target", ["submit", "poll"])
async def test_a_redirect_never_carries_the_token_to_another_host(
    world: World, target: str
) -> None:
    await world.send(30)
    elsewhere = world.api.elsewhere
    statuses = (301, 302, 307, 308)
    path = SUBMIT if target == "submit" else POLL
    method = "POST" if target == "submit" else "GET"
    rule = world.api.answer(
        path, *(redirect(s, elsewhere) for s in statuses), method=method, times=len(statuses)
    )
    async with running_connector(world.settings()) as pipeline:
        # a connector that follows the first redirect asks no more: look at what it sent then
        await eventually(lambda: rule.spent, timeout=10)
        tokens = {s for s in world.api.credentials() if len(s) >= 6}
        assert tokens, "the proxy saw no token: the test did not test anything"
        carried = [
            f"{s.method} {s.path_qs} (Authorization header: {'Authorization' in s.headers})"
            for s in elsewhere.seen
            if "Authorization" in s.headers or any(t in s.text() for t in tokens)
        ]
        assert carried == [], f"a token went to another host on a redirect: {carried}"
        await finish(world, pipeline, 30)
    assert rule.spent, "a redirect was followed instead of retried at the configured host"
    assert await world.lost(30) == [], "records went to another host, not to the platform"
    assert reconciles(pipeline) is None, reconciles(pipeline)
    assert await world.leaks() == []


async def test_a_redirected_token_request_never_sends_the_client_secret_elsewhere(
    world: World,
) -> None:
    await world.send(10)
    statuses = (307, 308, 301, 302)
    rule = world.api.answer(
        TOKEN, *(redirect(s, world.api.elsewhere) for s in statuses), times=len(statuses)
    )
    async with running_connector(world.settings()) as pipeline:
        await until(pipeline, lambda: rule.spent, what="4 redirected token requests")
        await finish(world, pipeline, 10)
    sent = [
        f"{s.method} {s.path_qs}" for s in world.api.elsewhere.seen if CLIENT_SECRET in s.text()
    ]
    assert sent == [], f"the client secret went to another host on a redirect: {sent}"
    assert await world.lost(10) == []
    assert await world.leaks() == []


async def test_an_echoed_token_never_reaches_a_log_line_or_a_dead_letter(world: World) -> None:
    records = 4
    await world.send(records)
    # the token endpoint echoes the form (the client secret) once; then the API refuses the
    # token twice (the renewal's retry too) and rejects every array, echoing the token each time
    token_echo = world.api.answer(TOKEN, echo_credentials(503), times=1)
    unauthorized = world.api.answer(SUBMIT, echo_credentials(401), times=2)
    rejected = world.api.answer(SUBMIT, echo_credentials(400))
    async with running_connector(world.settings()) as pipeline:
        await until(
            pipeline, world.all_committed,
            what=f"all {records} records rejected by the echoing API, dead-lettered, committed",
        )  # fmt: skip
    assert token_echo.spent
    assert unauthorized.spent
    assert rejected.served >= records, "every record should have been isolated and rejected"
    letters = await read_raw(world.bootstrap, world.dlq)
    assert len(letters) == records
    assert {lt.header("error.reason") for lt in letters} == {b"api_rejected"}
    assert {lt.header("error.http_status") for lt in letters} == {b"400"}
    assert all(lt.header("error.message") for lt in letters), "the platform's message is kept"
    assert "401" in world.logs.connector_text(), "the refused token should have been logged"
    assert reconciles(pipeline) is None, reconciles(pipeline)
    assert await world.leaks() == []


async def test_a_token_echoed_in_the_request_id_of_accepted_answers_reaches_no_log_line(
    world: World,
) -> None:
    await world.send(20)
    echoed = [
        world.api.answer(SUBMIT, echo_credentials(None)),
        world.api.answer(POLL, echo_credentials(None), method="GET"),
    ]
    async with running_connector(world.settings()) as pipeline:
        await until(pipeline, lambda: world.settled(20), what="all 20 stored and committed")
    assert all(rule.served for rule in echoed), "no answer echoed: the test did not test it"
    assert reconciles(pipeline) is None, reconciles(pipeline)
    assert await world.leaks() == []


async def test_a_trickling_body_ends_in_a_timeout_and_a_retry_not_a_stuck_pipeline(
    world: World,
) -> None:
    await world.send(20)
    # a byte every 0.1 s: any per-read timeout is met, only a deadline on the whole exchange
    # (0.6 s here) ends an answer that would take 30 s
    slow, padding = 0.1, b" " * 300
    token_body = b'{"token_type": "Bearer", "access_token": "x", "expires_in": 3599' + padding
    token = world.api.answer(TOKEN, trickle(200, token_body + b"}", slow), times=1)
    submit = world.api.answer(
        SUBMIT, trickle(200, b'{"batchId": "b-1"' + padding + b"}", slow), times=2
    )
    poll = world.api.answer(
        POLL, trickle(200, b'{"data": []' + padding + b"}", slow), method="GET", times=1
    )
    async with running_connector(world.settings(sink={"request_timeout_seconds": 0.6})) as p:
        await until(
            p, lambda: token.spent and submit.spent, timeout=20,
            what="a retry after each trickling answer (1 token request, 2 submissions)",
        )  # fmt: skip
        # committed means terminal, so the status poll that trickled was retried too
        await until(p, lambda: world.settled(20), timeout=20, what="all 20 stored and committed")
    assert poll.spent, "no status poll trickled: the test did not test polls"
    trickles = world.api.served("trickle")
    assert len(trickles) == 4
    assert not any(s.finished for s in trickles), "a trickling answer was read to its end"
    assert await world.lost(20) == []
    assert reconciles(p) is None, reconciles(p)
    assert await world.leaks() == []


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory since `reset_peak_rss()` (Linux), else None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    """Start a new peak (Linux's clear_refs 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def test_a_huge_compressed_answer_is_a_failed_request_with_bounded_memory(
    world: World,
) -> None:
    await world.send(20)
    body_size = 256 * MIB  # about 1 MiB on the wire; a read without a bound holds it all
    rule = world.api.answer(SUBMIT, huge(200, body_size, gzip=True), times=2)
    can_measure = reset_peak_rss()
    before = peak_rss_bytes() or 0
    async with running_connector(world.settings()) as pipeline:
        await until(pipeline, lambda: rule.served >= 1, what="a huge answer served")
        await until(pipeline, world.all_committed, what="the records committed, one way or another")
        rise = (peak_rss_bytes() or 0) - before
        # not `until`: a connector that took the junk for an acceptance never gets there
        await eventually(lambda: world.settled(20), timeout=10)
    problems = []
    # unbounded, the decoded body alone is 256 MiB; a cap of a few MiB costs a few times that
    if can_measure and rise > body_size // 2:
        problems.append(f"a {body_size // MIB} MiB answer raised peak memory by {rise // MIB} MiB")
    if lost := await world.lost(20):
        problems.append(f"{len(lost)} records committed but never stored (the junk 200 taken "
                        "as an acceptance)")  # fmt: skip
    assert problems == []
    assert reconciles(pipeline) is None, reconciles(pipeline)
