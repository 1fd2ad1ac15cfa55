"""No record lost under crashes, broker faults, API faults, auth outages and bad input."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.helpers import (
    ConnectorProcess,
    Emulator,
    committed_offsets,
    end_offsets,
    produce,
    read_topic,
    run_until,
    running_emulator,
    settings_for,
    start_emulator,
    write_config,
)
from tests.kafka_fixtures import NewTopicFactory, create_topic, wait_until
from tests.support.report import Report, Row
from twin_emulators.buildingminds import STATE_KEY, EmulatorOptions

if TYPE_CHECKING:
    from pathlib import Path

    from twin_devtools.devbroker import LocalBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

TEN_MB = 10 * 1024 * 1024


def seq(n: int) -> tuple[bytes, bytes]:
    sid = f"seq-{n}"
    return sid.encode(), orjson.dumps({"buildingId": sid, "eventType": "BuildingAdded", "seq": n})


async def truth(emu: Emulator, sent: int) -> tuple[int, int]:
    """(lost, duplicated) of records seq-0 .. seq-(sent-1) by the emulator's ground truth."""
    stored = await emu.entities("building")
    lost = sum(1 for n in range(sent) if f"seq-{n}" not in stored)
    posted = sum(
        r["record_count"] or 0
        for r in await emu.requests()
        if r["method"] == "POST" and r["status"] == 200
    )
    return lost, max(posted - (sent - lost), 0)


async def all_stored(emu: Emulator, sent: int) -> bool:
    return len(await emu.entities("building")) >= sent


async def test_kill_9_at_random_moments_ten_rounds_while_events_keep_arriving(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    report: Report,
) -> None:  # fmt: skip
    server, emu = await start_emulator(EmulatorOptions(processing_delay_seconds=0.5))
    rng = random.Random(20261122)
    topic = await new_topic()
    config = write_config(tmp_path, emu, kafka_bootstrap, topic, group_id)
    sent, peak = 0, 0.0
    state = server.app[STATE_KEY]
    kills: list[tuple[float, dict[int, int | None]]] = []  # (emulator time, committed) per kill
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        async with anyio.create_task_group() as tg:

            async def keep_producing() -> None:
                nonlocal sent
                while True:
                    key, value = seq(sent)
                    await producer.send(topic, key=key, value=value)
                    sent += 1
                    await anyio.sleep(0.004)

            tg.start_soon(keep_producing)
            for round_ in range(10):
                victim = ConnectorProcess(config, tmp_path / f"round-{round_}.log")
                await anyio.sleep(rng.uniform(1.0, 3.0))
                peak = max(peak, victim.peak_rss_mb())
                victim.proc.kill()
                await victim.wait(10)
                kills.append(
                    (state.clock(), await committed_offsets(kafka_bootstrap, topic, group_id))
                )
            tg.cancel_scope.cancel()
        await producer.flush()
        last = ConnectorProcess(config, tmp_path / "last.log")
        try:
            await wait_until(lambda: all_stored(emu, sent), timeout=120, what=f"{sent} records")
            peak = max(peak, last.peak_rss_mb())
        finally:
            last.proc.send_signal(signal.SIGTERM)
            assert await last.wait(30) == 0
        lost, duplicated = await truth(emu, sent)
        report.add(
            Row(
                "kill -9 of the connector, 10 rounds, events arriving",
                sent,
                lost,
                duplicated,
                0,
                round(peak, 1),
            )
        )
        assert lost == 0
        assert await committed_offsets(kafka_bootstrap, topic, group_id) == await end_offsets(
            kafka_bootstrap, topic
        )
    finally:
        await producer.stop()
        await emu.http.close()
        await server.close()


async def test_broker_killed_and_restarted_then_paused_beyond_the_session_timeout(
    tmp_path: Path, restartable_broker: LocalBroker, group_id: str, report: Report
) -> None:
    server, emu = await start_emulator(EmulatorOptions(processing_delay_seconds=0))
    bootstrap = restartable_broker.bootstrap
    topic = f"faults-{group_id}"
    await create_topic(bootstrap, topic)
    config = write_config(tmp_path, emu, bootstrap, topic, group_id, requests=10)
    try:
        await produce(bootstrap, [(topic, *seq(n)) for n in range(1500)])
        connector = ConnectorProcess(config, tmp_path / "connector.log")
        try:
            await wait_until(lambda: all_stored(emu, 300), timeout=60, what="300 delivered")
            restartable_broker.kill()
            await anyio.to_thread.run_sync(restartable_broker.start)
            await produce(bootstrap, [(topic, *seq(n)) for n in range(1500, 2000)])
            await wait_until(lambda: all_stored(emu, 1200), timeout=90, what="1200 delivered")
            restartable_broker.pause()  # SIGSTOP: longer than the 10 s session timeout
            await anyio.sleep(12)
            restartable_broker.resume()
            await wait_until(lambda: all_stored(emu, 2000), timeout=120, what="every record")
            peak = connector.peak_rss_mb()
        finally:
            connector.proc.send_signal(signal.SIGTERM)
            assert await connector.wait(60) == 0
        lost, duplicated = await truth(emu, 2000)
        report.add(
            Row(
                "broker kill -9 + restart, then SIGSTOP 12 s",
                2000,
                lost,
                duplicated,
                0,
                round(peak, 1),
            )
        )
        assert lost == 0
    finally:
        await emu.http.close()
        await server.close()


async def test_a_slow_api_keeps_memory_and_requests_bounded_without_rebalances(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, report: Report
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        await emu.faults(
            profile="latency", min_latency_seconds=0.5, max_latency_seconds=1.5, seed=3
        )
        await produce(kafka_bootstrap, [(topic, *seq(n)) for n in range(6000)])
        settings = settings_for(
            emu, kafka_bootstrap, [topic], group_id, dlq,
            window={"max_records": 50, "max_wait_seconds": 0.05},
            pipeline={"max_pending_records": 500, "max_in_flight_requests": 3},
            sink={"rate_limit": {"requests": 1000, "per_seconds": 60}},
        )  # fmt: skip
        peaks = Counter[str]()
        paused_seen = False
        pipeline_ref: list[Any] = []

        async def done() -> bool:
            nonlocal paused_seen
            if pipeline_ref:
                p = pipeline_ref[0]
                peaks["pending"] = max(peaks["pending"], p.window.pending_records)
                peaks["in_flight"] = max(peaks["in_flight"], p.delivery.in_flight)
                paused_seen |= p.intake.paused
            return await all_stored(emu, 6000)

        from connector.app import run_connector  # noqa: PLC0415

        async with anyio.create_task_group() as tg:
            pipeline = await tg.start(
                lambda task_status: run_connector(
                    settings, handle_signals=False, task_status=task_status
                )
            )
            pipeline_ref.append(pipeline)
            await wait_until(done, timeout=180, interval=0.05, what="6000 records via a slow API")
            pipeline.begin_drain()
        lost, duplicated = await truth(emu, 6000)
        report.add(Row("API answering in 0.5-1.5 s (slow)", 6000, lost, duplicated, 0, None))
        assert lost == 0
        assert peaks["in_flight"] <= 3
        # twice the limit (sent, awaiting status) plus one fetch (2000) under way when hit
        assert peaks["pending"] <= 2 * 500 + 2000, peaks
        assert paused_seen, "the consumer should have paused its partitions"
        assert pipeline.rebalances == 1, "no rebalance storm: one assignment only"


async def test_token_endpoint_down_holds_everything_then_delivers_it(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, report: Report
) -> None:
    async with running_emulator(
        EmulatorOptions(processing_delay_seconds=0, token_lifetime_seconds=3)
    ) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        settings = settings_for(emu, kafka_bootstrap, [topic], group_id, dlq)
        await produce(kafka_bootstrap, [(topic, *seq(n)) for n in range(100)])
        phase = "before"
        outage_ends: dict[int, int] = {}
        started = 0.0

        async def scenario() -> bool:
            nonlocal phase, outage_ends, started
            if phase == "before" and await all_stored(emu, 100):
                await committed_eq_end()
                outage_ends = await end_offsets(kafka_bootstrap, topic)
                await emu.faults(profile="token-outage", duration_seconds=20)
                await anyio.sleep(3.5)  # the cached token expires inside the outage
                await produce(kafka_bootstrap, [(topic, *seq(n)) for n in range(100, 300)])
                phase, started = "outage", time.monotonic()
            elif phase == "outage":
                committed = await committed_offsets(kafka_bootstrap, topic, group_id)
                if time.monotonic() - started < 15:
                    assert all((committed[p] or 0) <= outage_ends[p] for p in outage_ends), (
                        "records were committed while no token could be had"
                    )
                else:
                    phase = "after"
            return phase == "after" and await all_stored(emu, 300)

        async def committed_eq_end() -> None:
            await wait_until(
                lambda: _committed_all(kafka_bootstrap, topic, group_id), what="first commits"
            )

        pipeline = await run_until(settings, scenario, timeout=120)
        lost, duplicated = await truth(emu, 300)
        report.add(
            Row(
                "token endpoint down 20 s, 3 s tokens",
                300,
                lost,
                duplicated,
                pipeline.stats.dead_lettered,
                None,
            )
        )
        assert lost == 0
        assert pipeline.stats.dead_lettered == 0
        tokens = [r for r in await emu.requests() if r["path"].endswith("/token")]
        assert any(r["status"] == 503 for r in tokens), "the outage never hit"


async def _committed_all(bootstrap: str, topic: str, group: str) -> bool:
    return await committed_offsets(bootstrap, topic, group) == await end_offsets(bootstrap, topic)


async def test_malformed_events_are_each_dead_lettered_and_the_counters_reconcile(
    kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str, report: Report
) -> None:
    async with running_emulator(EmulatorOptions(processing_delay_seconds=0)) as emu:
        topic, dlq = await new_topic(), await new_topic(prefix="dlq")
        bad: list[tuple[bytes | None, bytes | None, str]] = [
            (b"k", b"\xff\xfe not json", "invalid_json"),
            (None, orjson.dumps({"eventType": "BuildingUpdated", "name": "x"}), "missing_id"),
            (b"k2", orjson.dumps({"eventType": "ElevatorAdded"}), "unknown_entity"),
            (b"huge", b'{"buildingId": "huge", "x": "' + b"z" * TEN_MB + b'"}', "record_too_large"),
            (None, orjson.dumps({"op": "c", "source": {"table": "meter"}}), "invalid_record"),
        ]  # fmt: skip
        events: list[tuple[str, bytes | None, bytes | None]] = []
        for n in range(200):
            events.append((topic, *seq(n)))
            if n % 40 == 0:
                events.append((topic, *seq(n)))  # a repeat, coalesced or re-sent
        events += [(topic, k, v) for k, v, _ in bad]
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, max_request_size=16 * 1024 * 1024
        )
        await producer.start()
        try:
            for t, k, v in events:
                await producer.send_and_wait(t, key=k, value=v)
        finally:
            await producer.stop()
        settings = settings_for(emu, kafka_bootstrap, [topic], group_id, dlq)

        async def settled() -> bool:
            return await _committed_all(kafka_bootstrap, topic, group_id)

        pipeline = await run_until(settings, settled, timeout=90)
        letters = await read_topic(kafka_bootstrap, dlq, len(bad))
        reasons = sorted(dict(r.headers)["error.reason"].decode() for r in letters)
        assert reasons == sorted(r for _, _, r in bad)
        huge = next(r for r in letters if dict(r.headers)["error.reason"] == b"record_too_large")
        assert huge.value is None
        assert dict(huge.headers)["error.value_omitted"].startswith(b"1048")
        st = pipeline.stats
        assert st.consumed == len(events)
        assert st.consumed == st.delivered + st.dead_lettered + st.coalesced, st
        lost, duplicated = await truth(emu, 200)
        report.add(
            Row(
                "malformed events incl. a 10 MB value",
                len(events),
                lost,
                duplicated,
                st.dead_lettered,
                None,
            )
        )
        assert lost == 0


async def test_two_replicas_share_one_credential_and_one_is_killed(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    report: Report,
) -> None:  # fmt: skip
    per, budget = 4.0, 20
    async with running_emulator(
        EmulatorOptions(
            processing_delay_seconds=0, rate_limit_requests=budget, rate_limit_seconds=per
        )
    ) as emu:
        topic = await new_topic(partitions=6)
        await produce(kafka_bootstrap, [(topic, *seq(n)) for n in range(3000)])
        config = write_config(
            tmp_path, emu, kafka_bootstrap, topic, group_id, requests=budget, per_seconds=per
        )
        a = ConnectorProcess(config, tmp_path / "a.log")
        await wait_until(lambda: all_stored(emu, 300), timeout=60, what="A delivering")
        b = ConnectorProcess(config, tmp_path / "b.log")
        await wait_until(lambda: all_stored(emu, 1500), timeout=120, what="A and B delivering")
        peak = max(a.peak_rss_mb(), b.peak_rss_mb())
        a.proc.kill()
        await a.wait(10)
        try:
            await wait_until(lambda: all_stored(emu, 3000), timeout=180, what="B taking over")
        finally:
            b.proc.send_signal(signal.SIGTERM)
            assert await b.wait(60) == 0
        log = [r for r in await emu.requests() if "/api/" in r["path"]]
        assert [r for r in log if r["status"] == 429] == [], "the shared budget was exceeded"
        times = sorted(datetime.fromisoformat(r["time"]).timestamp() for r in log)
        worst = max(sum(1 for t in times if s <= t < s + per) for s in times)
        assert worst <= budget
        lost, duplicated = await truth(emu, 3000)
        report.add(
            Row(
                "two replicas, one credential, one killed",
                3000,
                lost,
                duplicated,
                0,
                round(peak, 1),
            )
        )
        assert lost == 0
