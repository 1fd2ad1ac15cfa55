"""`produce-sample` against a real broker: a slow, paced run says how far it got."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

import anyio
import pytest
import yaml

from connector.cli import EXIT_OK, main

if TYPE_CHECKING:
    from pathlib import Path

    from tests.kafka_fixtures import NewTopicFactory

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


async def test_a_paced_run_shows_progress_every_few_seconds(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic()
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({
            "kafka": {"bootstrap_servers": kafka_bootstrap, "topics": [topic]},
            "sink": {"client_id": "c", "client_secret": "s", "scope": "x"},
        })
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    argv = ["produce-sample", "--config", str(path), "--count", "25", "--rate", "10"]
    code = await anyio.to_thread.run_sync(main, argv, out, err)  # about 2.5 s
    assert code == EXIT_OK, err.getvalue()
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if re.fullmatch(r"  \d+/25 events \(\d+%, \d+/s\)", line)]
    assert progress, f"silent until the end: {lines}"
    assert lines[-1].startswith("produced 25 events")
