"""`check` against the emulator running as its own process and a real Kafka broker: each
mistake says what to fix, once."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector.cli import EXIT_CHECK_FAILED, EXIT_OK, main
from tests.integration.helpers import emulator_process
from tests.kafka_fixtures import create_topic
from twin_devtools.devbroker import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from twin_devtools.devbroker import Broker

pytestmark = pytest.mark.kafka

SECRET = "demo-secret"


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with emulator_process("buildingminds") as url:
        yield url


@pytest.fixture(scope="module")
def kafka(kafka_broker: Broker) -> dict[str, Any]:
    """A `kafka:` section whose two topics and dead-letter topic exist on the test broker."""
    suffix = uuid.uuid4().hex[:8]
    topics = [f"check-buildings-{suffix}", f"check-meters-{suffix}"]
    dlq = f"check-dlq-{suffix}"
    for name in (*topics, dlq):
        anyio.run(create_topic, kafka_broker.bootstrap, name)
    return {
        "bootstrap_servers": kafka_broker.bootstrap, "topics": topics,
        "dead_letter_topic": dlq, "group_id": f"check-group-{suffix}",
    }  # fmt: skip


def check(
    tmp_path: Path,
    url: str,
    kafka: dict[str, Any],
    receipts: dict[str, Any] | None = None,
    **sink: str,
) -> tuple[int, str, str]:
    values = {
        "base_url": f"{url}/api/digitaltwinintegration",
        "token_url": f"{url}/buildingminds.onmicrosoft.com/oauth2/v2.0/token",
        "client_id": "demo-client",
        "client_secret": SECRET,
        "scope": "api://buildingminds-emulator/.default",
    }
    values.update(sink)
    path = tmp_path / "c.yaml"
    config: dict[str, Any] = {"sink": values, "kafka": kafka}
    if receipts is not None:
        config["receipts"] = receipts
    path.write_text(yaml.safe_dump(config))
    out, err = io.StringIO(), io.StringIO()
    code = main(["check", "--config", str(path)], out, err)
    return code, out.getvalue(), err.getvalue()


def test_good_credentials_pass(tmp_path: Path, emulator_url: str, kafka: dict[str, Any]) -> None:
    code, out, err = check(tmp_path, emulator_url, kafka)
    assert code == EXIT_OK, err
    assert "token: ok" in out
    assert "GET /batch: ok" in out
    assert f"kafka: ok ({kafka['bootstrap_servers']}, " in out
    for topic in kafka["topics"]:
        assert (
            f"topic {topic}: ok (3 partitions; group {kafka['group_id']}: nothing committed" in out
        )
    assert f"dead-letter topic {kafka['dead_letter_topic']}: ok (3 partitions)" in out
    assert err == ""
    assert SECRET not in out + err


def test_wrong_secret_says_to_recopy_it(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    code, out, err = check(tmp_path, emulator_url, kafka, client_secret="not-the-secret")
    assert code == EXIT_CHECK_FAILED
    assert "AADSTS7000215" in err
    assert "client secret" in err.lower()
    assert "not-the-secret" not in out + err
    assert "token request failed" not in err, "a stray log line beside the FAILED line"
    assert err.startswith("FAILED: token endpoint ")


def test_a_refused_credential_is_said_once_without_a_stray_log_line(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    """As a user runs it: a process whose stderr is the terminal (no logging set up)."""
    check(tmp_path, emulator_url, kafka, client_secret="not-the-secret")  # writes c.yaml
    done = subprocess.run(
        [sys.executable, "-m", "connector", "check", "--config", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_CHECK_FAILED
    assert "token request failed" not in done.stderr, done.stderr
    failures = [line for line in done.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 1, done.stderr
    assert "AADSTS7000215" in failures[0]


def test_wrong_client_id_names_the_client_id(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    code, _, err = check(tmp_path, emulator_url, kafka, client_id="demo-cIient")
    assert code == EXIT_CHECK_FAILED
    assert "AADSTS700016" in err
    assert "client id" in err.lower() or "client_id" in err.lower()


def test_scope_without_default_suffix_is_completed_and_said(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    code, out, err = check(tmp_path, emulator_url, kafka, scope="api://buildingminds-emulator")
    assert code == EXIT_OK, err
    assert "sink.scope has no /.default; sending 'api://buildingminds-emulator/.default'" in out


def test_wrong_scope_says_so(tmp_path: Path, emulator_url: str, kafka: dict[str, Any]) -> None:
    code, _, err = check(tmp_path, emulator_url, kafka, scope="api://someone-else/.default")
    assert code == EXIT_CHECK_FAILED
    assert "AADSTS70011" in err
    assert "scope" in err.lower()


def test_wrong_base_url_points_at_base_url(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    code, _, err = check(tmp_path, emulator_url, kafka, base_url=f"{emulator_url}/api/wrong-path")
    assert code == EXIT_CHECK_FAILED
    assert "answered 404" in err
    assert "check sink.base_url" in err
    assert err.count("GET /batch") == 1, f"the request named once: {err}"


def test_unreachable_token_endpoint_is_named(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/t/oauth2/v2.0/token"
    code, _, err = check(tmp_path, emulator_url, kafka, token_url=dead)
    assert code == EXIT_CHECK_FAILED
    assert f"FAILED: token endpoint {dead} unreachable: " in err
    assert err.count(dead) == 1, f"the URL once, not twice: {err}"
    assert "token request failed" not in err


def test_batches_lists_recent_batches_with_their_status(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    token = post_form(
        f"{emulator_url}/buildingminds.onmicrosoft.com/oauth2/v2.0/token",
        {"client_id": "demo-client", "client_secret": SECRET, "grant_type": "client_credentials",
         "scope": "api://buildingminds-emulator/.default"},
    )["access_token"]  # fmt: skip
    body = b'[{"buildingId": "B-77", "eventType": "BuildingAdded", "name": "__fail_async__"}]'
    request = urllib.request.Request(  # noqa: S310 - a loopback URL of the test
        f"{emulator_url}/api/digitaltwinintegration/building", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request) as response:  # noqa: S310
        batch_id = json.loads(response.read())["batchId"]
    check(tmp_path, emulator_url, kafka)  # writes c.yaml
    out, err = io.StringIO(), io.StringIO()
    code = main(["batches", "--config", str(tmp_path / "c.yaml"), "--batch-id", batch_id], out, err)
    assert code == EXIT_OK, err.getvalue()
    text = out.getvalue()
    assert batch_id in text
    assert "/building" in text
    assert "1 of 1 batches" in text


def post_form(url: str, fields: dict[str, str]) -> dict[str, str]:
    data = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(url, data=data) as response:  # noqa: S310 - loopback
        result: dict[str, str] = json.loads(response.read())
        return result


def test_unreachable_brokers_fail_in_bounded_time_and_say_so(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    code, out, err = check(tmp_path, emulator_url, {**kafka, "bootstrap_servers": dead})
    assert code == EXIT_CHECK_FAILED
    assert "GET /batch: ok" in out, "the platform is still checked"
    assert f"FAILED: Kafka brokers {dead} are not reachable" in err
    assert "fix: check kafka.bootstrap_servers" in err
    assert time.monotonic() - began < 30


def test_a_mistyped_topic_and_a_missing_dead_letter_topic_are_named(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any], kafka_broker: Broker
) -> None:
    typo = kafka["topics"][0].replace("buildings", "buildngs")
    wrong = {**kafka, "topics": [typo, kafka["topics"][1]], "dead_letter_topic": f"{typo}.dlq"}
    code, out, err = check(tmp_path, emulator_url, wrong)
    assert code == EXIT_CHECK_FAILED
    assert f"FAILED: topic {typo} does not exist on {kafka['bootstrap_servers']}" in err
    assert f"FAILED: dead-letter topic {typo}.dlq does not exist" in err
    assert f"topic {kafka['topics'][1]}: ok" in out, "the other topic is still reported"
    assert not anyio.run(topic_exists, kafka_broker.bootstrap, typo), "check created it"


def test_the_receipts_topic_is_checked_when_receipts_are_on(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any], kafka_broker: Broker
) -> None:
    missing = f"check-receipts-{uuid.uuid4().hex[:8]}"
    code, out, err = check(tmp_path, emulator_url, kafka, {"enabled": True, "topic": missing})
    assert code == EXIT_CHECK_FAILED
    assert f"FAILED: receipts topic {missing} does not exist" in err
    assert "cleanup.policy=compact" in err
    assert not anyio.run(topic_exists, kafka_broker.bootstrap, missing), "check created it"

    there = f"check-receipts-{uuid.uuid4().hex[:8]}"
    anyio.run(create_topic, kafka_broker.bootstrap, there)
    code, out, err = check(tmp_path, emulator_url, kafka, {"enabled": True, "topic": there})
    assert code == EXIT_OK, err
    assert f"receipts topic {there}: ok (3 partitions)" in out
    # off (the default): not looked for
    code, out, _ = check(tmp_path, emulator_url, kafka, {"enabled": False, "topic": missing})
    assert code == EXIT_OK
    assert "receipts topic" not in out


def test_the_group_committed_position_and_lag_are_shown_per_topic(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any], kafka_broker: Broker
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = f"check-lag-{uuid.uuid4().hex[:8]}"
    anyio.run(create_topic, bootstrap, topic)
    ends = anyio.run(functools.partial(fill_and_commit, bootstrap, topic, kafka["group_id"], 9))
    code, out, err = check(tmp_path, emulator_url, {**kafka, "topics": [topic]})
    assert code == EXIT_OK, err
    committed = ends[0]
    assert (
        f"topic {topic}: ok (3 partitions; group {kafka['group_id']}: committed {committed} "
        f"on 1 of 3 partitions, lag {9 - committed})"
    ) in out


def test_batches_for_an_unknown_id_prints_only_the_failure(
    tmp_path: Path, emulator_url: str, kafka: dict[str, Any]
) -> None:
    check(tmp_path, emulator_url, kafka)  # writes c.yaml
    out, err = io.StringIO(), io.StringIO()
    code = main(["batches", "--config", str(tmp_path / "c.yaml"), "--batch-id", "nope"], out, err)
    assert code == EXIT_CHECK_FAILED
    assert out.getvalue() == "", "no table header before the failure"
    assert err.getvalue().startswith("FAILED: no batch nope is listed")


async def topic_exists(bootstrap: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return topic in await consumer.topics()
    finally:
        await consumer.stop()


async def fill_and_commit(bootstrap: str, topic: str, group: str, count: int) -> dict[int, int]:
    """`count` records over the partitions; `group` commits partition 0 at its end only."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, b"x", partition=i % 3)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)  # a manual assignment may commit without joining the group
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tps[0]: ends[tps[0]]})
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()
