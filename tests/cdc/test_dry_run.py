"""`dry-run`: what a user sees while writing a mapping, from a topic and from a file; nothing
is sent, committed or produced."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
import yaml

from connector.cli import main
from tests.integration.helpers import committed_offsets, produce

if TYPE_CHECKING:
    from pathlib import Path

    from tests.kafka_fixtures import NewTopicFactory

ROW = {"bldg_no": "B-11", "bldg_name": "Tower A", "site_no": "S-1", "built_at": 946684799123456}
KEY = orjson.dumps({"bldg_no": "B-11"})


def envelope(op: str, *, before: Any = None, after: Any = None) -> bytes:
    source = {"connector": "postgresql", "table": "buildings", "snapshot": "false"}
    return orjson.dumps({"before": before, "after": after, "source": source, "op": op})


def config(tmp_path: Path, bootstrap: str, topic: str) -> Path:
    path = tmp_path / "connector.yaml"
    path.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "topics": [topic]},
        "sink": {"client_id": "c", "client_secret": "never-used", "scope": "api://x",
                 "base_url": "http://127.0.0.1:9/api", "token_url": "http://127.0.0.1:9/t"},
        "mappings": [{
            "topic": topic, "entity": "building", "id": "bldg_no",
            "fields": {"name": "bldg_name", "siteId": "site_no",
                       "constructionDate": {"expr": "built_at", "convert": "micro_timestamp"}},
        }],
    }))  # fmt: skip
    return path


def dry_run(*args: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["dry-run", *args], out, err)
    return code, out.getvalue().splitlines(), err.getvalue()


@pytest.mark.kafka
@pytest.mark.anyio
async def test_a_dry_run_of_a_topic_shows_each_record_and_commits_nothing(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(1)
    await produce(kafka_bootstrap, [
        (topic, KEY, envelope("r", after=ROW)),
        (topic, KEY, envelope("d", before=ROW)),
        (topic, KEY, None),
        (topic, None, b"{not json"),
    ])  # fmt: skip
    path = config(tmp_path, kafka_bootstrap, topic)
    # the command runs its own event loop, as it does from the shell
    code, lines, _ = await anyio.to_thread.run_sync(
        lambda: dry_run("--config", str(path), "--count", "4")
    )
    assert code == 0
    where, body = lines[0].split("  B-11  ")
    assert where == f"{topic}/0/0  -> POST /building"
    assert orjson.loads(body) == {
        "name": "Tower A", "siteId": "S-1", "constructionDate": "1999-12-31T23:59:59Z",
        "buildingId": "B-11", "eventType": "BuildingAdded",
    }  # fmt: skip
    deleted = '{"buildingId":"B-11","eventType":"BuildingDeleted"}'
    assert lines[1] == f"{topic}/0/1  -> POST /building  B-11  {deleted}"
    assert lines[2] == f"{topic}/0/2  = skipped: tombstone_after_delete"
    assert lines[3].startswith(f"{topic}/0/3  x dead letter invalid_json: value is not JSON")
    assert lines[4] == (
        "dry run: 4 records; would send 2 building; would dead-letter 1 invalid_json; "
        "would skip 1 tombstone_after_delete. Nothing was sent."
    )
    # no consumer group: nothing of the connector's group was committed
    assert set(
        (await committed_offsets(kafka_bootstrap, topic, "building-twin-connector")).values()
    ) == {None}


def test_a_dry_run_of_a_file_names_the_lines_it_cannot_read(tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text(
        orjson.dumps(
            {
                "topic": "t",
                "key": {"bldg_no": "B-11"},
                "value": orjson.loads(envelope("c", after=ROW)),
            }
        ).decode()
        + "\n{broken\n"
        + orjson.dumps(
            {"topic": "t", "payload": {"op": "c", "after": {"bldg_name": "x"}, "source": {}}}
        ).decode()
        + "\n"
    )
    code, lines, _ = dry_run("--config", str(config(tmp_path, "127.0.0.1:9", "t")),
                             "--file", str(records), "--no-body")  # fmt: skip
    assert code == 0
    assert lines[0] == "t/0/1  -> POST /building  B-11"
    assert lines[1].startswith("  ! records.jsonl:2: not JSON")
    assert (
        lines[2]
        == "t/0/3  x dead letter mapping_failed: id: 'bldg_no': bldg_no is missing or empty"
    )


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    code, _, err = dry_run("--config", str(config(tmp_path, "127.0.0.1:9", "t")),
                           "--file", str(tmp_path / "nope.jsonl"))  # fmt: skip
    assert code == 2
    assert err.strip() == f"error: {tmp_path / 'nope.jsonl'}: No such file or directory"
