"""The core pipeline end to end: a real Kafka broker, the BuildingMinds emulator over a real
socket, and the connector between them. Every test asserts on the emulator's stored state and
request log, and on the dead-letter topic."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from connector.samples import sample_events
from tests.integration.helpers import (
    Emulator,
    building,
    committed_offsets,
    end_offsets,
    produce,
    read_topic,
    run_until,
    running_emulator,
    settings_for,
)
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


async def test_newest_version_of_every_id_is_stored_from_coalesced_arrays(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    ids, versions = 300, 10
    events = [(topic, *building(i, rev)) for rev in range(versions) for i in range(ids)]
    await produce(kafka_bootstrap, events)
    settings = settings_for(emulator, kafka_bootstrap, [topic], group_id, dlq)

    async def all_newest() -> bool:
        stored = await emulator.entities("building")
        return len(stored) == ids and all(e["revision"] == versions - 1 for e in stored.values())

    pipeline = await run_until(settings, all_newest)

    log = await emulator.requests()
    posts = [r for r in log if r["method"] == "POST" and r["path"].endswith("/building")]
    sent = sum(r["record_count"] for r in posts)
    assert all(r["status"] == 200 for r in posts), posts
    assert all(r["record_count"] <= 100 for r in posts)
    assert sent < ids * versions, "superseded versions should not all have been sent"
    assert pipeline.stats.consumed == ids * versions
    assert pipeline.stats.delivered + pipeline.stats.coalesced >= ids * versions
    assert await committed_offsets(kafka_bootstrap, topic, group_id) == await end_offsets(
        kafka_bootstrap, topic
    )


async def test_invalid_events_are_dead_lettered_with_their_reason_and_the_rest_flows(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k1", b"{not json", "invalid_json"),
        (None, orjson.dumps({"eventType": "BuildingAdded"}), "missing_id"),
        (b"x", orjson.dumps({"eventType": "RocketAdded"}), "unknown_entity"),
        (b"f-1", orjson.dumps({"floorId": "f-1", "eventType": "FloorAdded"}), "invalid_record"),
        (b"big", b'{"buildingId": "big", "x": "' + b"y" * 5000 + b'"}', "record_too_large"),
        (None, orjson.dumps({"op": "u", "source": {"table": "meter"}}), "invalid_record"),
        # passes our checks, fails the platform's: Site names are at most 50 characters
        (b"site-1", orjson.dumps({
            "siteId": "site-1", "eventType": "SiteAdded", "name": "n" * 60, "addressIds": ["a"],
            "type": "Office", "validFrom": "2024-01-01T00:00:00Z",
        }), "api_rejected"),
    ]  # fmt: skip
    good = [building(i, 0) for i in range(20)]
    events = [(topic, k, v) for k, v, _ in bad] + [(topic, k, v) for k, v in good]
    await produce(kafka_bootstrap, events)
    settings = settings_for(
        emulator, kafka_bootstrap, [topic], group_id, dlq, window={"max_record_bytes": 4096}
    )

    async def delivered() -> bool:
        return len(await emulator.entities("building")) == 20

    pipeline = await run_until(settings, delivered)
    letters = await read_topic(kafka_bootstrap, dlq, len(bad))
    assert len(letters) == len(bad)
    reasons = sorted(dict(r.headers)["error.reason"].decode() for r in letters)
    assert reasons == sorted(reason for _, _, reason in bad)
    rejected = next(r for r in letters if dict(r.headers)["error.reason"] == b"api_rejected")
    headers = dict(rejected.headers)
    assert headers["error.http_status"] == b"400"
    assert b"name" in headers["error.message"]
    assert headers["source.topic"] == topic.encode()
    assert orjson.loads(rejected.value)["siteId"] == "site-1"
    assert pipeline.stats.dead_lettered == len(bad)
    assert await committed_offsets(kafka_bootstrap, topic, group_id) == await end_offsets(
        kafka_bootstrap, topic
    )


async def test_a_wave_of_401s_costs_one_token_request(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(50)])
    settings = settings_for(
        emulator, kafka_bootstrap, [topic], group_id, dlq,
        window={"max_records": 5, "max_wait_seconds": 0.05},
        pipeline={"max_in_flight_requests": 8},
    )  # fmt: skip
    revoked = False

    async def done() -> bool:
        nonlocal revoked
        stored = await emulator.entities("building")
        if not revoked and stored:
            await emulator.faults(profile="revoked-tokens")  # every token issued so far is dead
            revoked = True
            await produce(kafka_bootstrap, [(topic, *building(i, 1)) for i in range(50)])
        return revoked and all(e["revision"] == 1 for e in stored.values()) and len(stored) == 50

    await run_until(settings, done)
    log = await emulator.requests()
    tokens = [r for r in log if r["path"].endswith("/token")]
    unauthorized = [r for r in log if r["status"] == 401]
    assert len(tokens) == 2, tokens
    assert unauthorized, "the revoked token should have been refused at least once"


@pytest.mark.parametrize(
    "fault",
    [
        {"profile": "errors", "rate": 0.5},
        {"profile": "resets", "rate": 0.4},
        {"profile": "timeouts", "rate": 0.3, "hang_seconds": 3},
        {"profile": "429-storm", "rate": 1.0, "retry_after_seconds": 1, "duration_seconds": 2},
    ],
    ids=lambda f: f["profile"],
)
async def test_transient_failures_lose_nothing_and_dead_letter_nothing(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    group_id: str,
    emulator: Emulator,
    fault: dict[str, Any],
) -> None:
    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    await emulator.faults(**fault, seed=7)
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(200)])
    settings = settings_for(
        emulator, kafka_bootstrap, [topic], group_id, dlq,
        window={"max_records": 20, "max_wait_seconds": 0.05},
        sink={"request_timeout_seconds": 1, "max_retry_after_seconds": 2},
    )  # fmt: skip

    async def all_there() -> bool:
        return len(await emulator.entities("building")) == 200

    pipeline = await run_until(settings, all_there, timeout=90)
    statuses = {r["status"] for r in await emulator.requests()}
    assert statuses - {200}, f"the {fault['profile']} fault never fired"
    assert pipeline.stats.dead_lettered == 0
    assert await committed_offsets(kafka_bootstrap, topic, group_id) == await end_offsets(
        kafka_bootstrap, topic
    )


async def test_backlog_never_exceeds_the_rolling_window_and_causes_no_429(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    per, budget = 3.0, 10
    async with running_emulator(
        EmulatorOptions(
            processing_delay_seconds=0, rate_limit_requests=budget, rate_limit_seconds=per
        )
    ) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(400)])
        settings = settings_for(
            emu, kafka_bootstrap, [topic], group_id, dlq,
            window={"max_records": 10, "max_wait_seconds": 0.05},
            sink={"rate_limit": {"requests": budget, "per_seconds": per}},
        )  # fmt: skip

        async def all_there() -> bool:
            return len(await emu.entities("building")) == 400

        await run_until(settings, all_there, timeout=120)
        log = [r for r in await emu.requests() if "/api/" in r["path"]]
        assert all(r["status"] != 429 for r in log), "the connector caused a 429"
        posts = [r for r in log if r["method"] == "POST"]
        polls = [r for r in log if r["method"] == "GET"]
        assert all(r["record_count"] == 10 for r in posts), "under a backlog every array is full"
        assert len(posts) == 40
        assert polls, "status polls share the same budget and must have run"
        times = sorted(datetime.fromisoformat(r["time"]).timestamp() for r in log)
        worst = max(sum(1 for t in times if start <= t < start + per) for start in times)
        assert worst <= budget, f"{worst} requests within one {per} s window"


async def test_sample_events_flow_end_to_end(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    buildings, meters, dlq = await new_topic(), await new_topic(), await new_topic(prefix="dlq")
    events = list(
        sample_events(2000, building_topic=buildings, meter_topic=meters, ids=200, seed=3)
    )
    await produce(kafka_bootstrap, [(e.topic, e.key, e.value) for e in events])
    invalid = sum(e.invalid for e in events)
    settings = settings_for(
        emulator, kafka_bootstrap, [buildings, meters], f"{group_id}-{uuid.uuid4().hex[:4]}", dlq
    )
    ends: dict[str, dict[int, int]] = {}

    async def caught_up() -> bool:
        for t in (buildings, meters):
            ends[t] = await end_offsets(kafka_bootstrap, t)
        committed = {
            t: await committed_offsets(kafka_bootstrap, t, settings.kafka.group_id) for t in ends
        }
        return all(committed[t] == ends[t] for t in ends)

    pipeline = await run_until(settings, caught_up, timeout=90)
    assert pipeline.stats.consumed == 2000
    assert pipeline.stats.dead_lettered >= invalid
    meter_ids = {e.key for e in events if e.topic == meters and not e.invalid}
    stored = await emulator.entities("meter")
    if len(stored) != len(meter_ids):
        async with emulator.http.get(f"{emulator.base_url}/batch"):
            pass
    assert len(stored) == len(meter_ids)


async def test_a_token_that_expires_mid_run_is_renewed_before_it_is_used_expired(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str
) -> None:
    async with running_emulator(
        EmulatorOptions(
            processing_delay_seconds=0, token_lifetime_seconds=4, rate_limit_requests=1000
        )
    ) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        settings = settings_for(
            emu, kafka_bootstrap, [topic], group_id, dlq, window={"max_wait_seconds": 0.05},
            sink={"rate_limit": {"requests": 1000, "per_seconds": 60}},
        )  # fmt: skip
        produced = 0

        async def trickle() -> bool:  # one record per poll: about 9 s of steady traffic
            nonlocal produced
            if produced < 90:
                await produce(kafka_bootstrap, [(topic, *building(produced, 0))])
                produced += 1
            return produced == 90 and len(await emu.entities("building")) == 90

        await run_until(settings, trickle, timeout=60)
        log = await emu.requests()
        assert [r for r in log if r["status"] == 401] == [], "an expired token was used"
        assert len([r for r in log if r["path"].endswith("/token")]) >= 3


async def test_health_and_readiness_endpoints(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, emulator: Emulator
) -> None:
    import aiohttp  # noqa: PLC0415

    from twin_devtools.devbroker import free_port  # noqa: PLC0415

    topic, dlq = await new_topic(), await new_topic(prefix="dlq")
    port = free_port()
    settings = settings_for(
        emulator,
        kafka_bootstrap,
        [topic],
        group_id,
        dlq,
        metrics={"port": port, "host": "127.0.0.1"},
    )
    seen: list[dict[str, Any]] = []

    async def ready() -> bool:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                body = await r.json()
                seen.append(body)
                if r.status != 200:
                    return False
            async with http.get(f"http://127.0.0.1:{port}/healthz") as h:
                assert h.status == 200
                assert (await h.json())["status"] == "ok"
        return True

    await run_until(settings, ready, timeout=30)
    assert seen[-1] == {
        "ready": True, "joined": True, "kafka": True, "token": True, "not_draining": True,
    }  # fmt: skip
