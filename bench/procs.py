"""Child processes of the benchmark: start them, sample their CPU and memory, stop them.

CPU and memory come from `/proc` (no psutil): utime + stime of `/proc/<pid>/stat` divided by
`SC_CLK_TCK`, and VmRSS / VmHWM (the peak resident set) of `/proc/<pid>/status`.

Every child is started in its own session (so a Ctrl-C at the terminal reaches the benchmark,
which then stops the children in order) and registered; `stop_all()` ends whatever is still
running, and the benchmark calls it on every way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

import anyio

__all__ = ["PROJECT_ROOT", "Child", "StopOutcome", "Usage", "read_usage"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    """One sample of a process: CPU seconds so far, resident set now, and its peak."""

    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def read_usage(pid: int) -> Usage | None:
    """The process's usage from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    # What follows starts at field 3 (state); utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    sizes: dict[str, int] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            sizes[name] = int(rest.split()[0]) * 1024  # reported in kB
    if "VmHWM" not in sizes:  # a zombie has no memory lines
        return None
    return Usage(cpu, sizes.get("VmRSS", 0), sizes["VmHWM"])


@dataclass(frozen=True, slots=True)
class StopOutcome:
    """How a child ended: its exit code (None: still running after SIGKILL), the seconds from
    the first signal to its exit, and the signals it took."""

    exit_code: int | None
    seconds: float
    signals: tuple[str, ...]

    def describe(self) -> str:
        how = " then ".join(self.signals) or "no signal"
        return f"exit {self.exit_code} after {how} in {self.seconds:.1f} s"


class Child:
    """One child process, its output in `log_path`."""

    _live: ClassVar[list[Child]] = []

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() just before the exec
        self.started_wall = 0.0  # time.time() at the same moment
        self.last_usage: Usage | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.started_at, self.started_wall = time.monotonic(), time.time()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env=self.env,
            start_new_session=True,
        )
        Child._live.append(self)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def usage(self) -> Usage | None:
        """A fresh sample (also kept as `last_usage`), or None once the process is gone."""
        if not self.running():
            return None
        sample = read_usage(self.pid)
        if sample is not None:
            self.last_usage = sample
        return sample

    def send(self, sig: signal.Signals) -> None:
        if self.running() and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    async def wait(self, within: float) -> int | None:
        """The exit code, or None if the child still runs after `within` seconds."""
        deadline = time.monotonic() + within
        while self.process is not None:
            code = self.process.poll()
            if code is not None:
                self._closed()
                return code
            if time.monotonic() >= deadline:
                return None
            await anyio.sleep(0.05)
        return None

    async def stop(
        self, *, grace: float = 30.0, second_sigterm_after: float | None = None
    ) -> StopOutcome:
        """SIGTERM; optionally a second SIGTERM after `second_sigterm_after` seconds (the
        connector's "stop now"); SIGKILL once `grace` seconds have passed in all."""
        started = time.monotonic()
        sent: list[str] = []
        if not self.running():
            self._closed()
            return StopOutcome(None if self.process is None else self.process.returncode, 0.0, ())
        self.send(signal.SIGTERM)
        sent.append("SIGTERM")
        code: int | None = None
        if second_sigterm_after is not None:
            code = await self.wait(second_sigterm_after)
            if code is None:
                self.send(signal.SIGTERM)
                sent.append("SIGTERM")
        if code is None:
            code = await self.wait(max(grace - (time.monotonic() - started), 0.1))
        if code is None:
            self.send(signal.SIGKILL)
            sent.append("SIGKILL")
            code = await self.wait(10)
        return StopOutcome(code, time.monotonic() - started, tuple(sent))

    def _closed(self) -> None:
        if self in Child._live:
            Child._live.remove(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill_now(self, timeout: float = 5.0) -> None:
        """Synchronous stop for the way out: SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.send(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
        self._closed()

    @classmethod
    def stop_all(cls) -> list[str]:
        """Stop every child still running (newest first); the names of those stopped."""
        stopped = []
        for child in reversed(list(cls._live)):
            if child.running():
                stopped.append(child.name)
            child.kill_now()
        return stopped
