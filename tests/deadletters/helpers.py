"""Helpers of the dead-letter tests: letters as the connector's own writer makes them, a
config file for the command line, and the command line as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import yaml

from connector.config import Settings
from connector.deadletter import DeadLetter
from connector.deadletters.scan import Letter
from connector.decode import Reason

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Cli", "FakeRecord", "dead_letter", "letter_of", "write_settings"]


@dataclass(frozen=True)
class FakeRecord:
    """A consumed record's shape (what `Letter` reads), for unit tests without a broker."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def dead_letter(
    *, key: bytes | None, value: bytes | None, reason: Reason = Reason.API_REJECTED,
    message: str = "'name' is too long", topic: str = "src", partition: int = 0,
    offset: int = 0, batch_id: str | None = None,
    headers: list[tuple[str, bytes | None]] | None = None, now: float = 1_767_000_000.0,
) -> DeadLetter:  # fmt: skip
    """A dead letter built by the connector's own writer (connector.deadletter)."""
    return DeadLetter(
        key=key, value=value, headers=headers or [], reason=reason, message=message,
        topic=topic, partition=partition, offset=offset, batch_id=batch_id,
        http_status=400 if reason is Reason.API_REJECTED else None, now=now,
    )  # fmt: skip


def letter_of(dl: DeadLetter, *, at: tuple[str, int, int] = ("dlq", 0, 0), ts: int = 0) -> Letter:
    """The `Letter` a scan would read for `dl` at dead-letter coordinates `at`."""
    return Letter(FakeRecord(*at, ts, dl.key, dl.value, tuple(dl.headers)))


def write_settings(tmp_path: Path, raw: dict[str, Any]) -> tuple[Path, Settings]:
    """The configuration as a file for the command line, and as the connector reads it."""
    path = tmp_path / "connector.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, Settings.model_validate(raw)


@dataclass
class Cli:
    """`python -m connector ...` as a real process, with a config file."""

    config: Path

    async def run(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
        result = await anyio.run_process(
            [sys.executable, "-m", "connector", *args, "--config", str(self.config)],
            check=False, env=env,
        )  # fmt: skip
        out, err = result.stdout.decode(), result.stderr.decode()
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}\n{out}\n{err}")
        return result.returncode, out, err

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """The command started, its stderr a pipe (the caller closes it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
        return subprocess.Popen(
            [sys.executable, "-m", "connector", *args, "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
