"""The request budget across restarts, with real connector processes and a real broker.

A process that stops writes the start times of its last window into the metadata of its
final offset commit; its successor (same group) reads them at its first assignment and sends
nothing the platform would count beyond the budget. After a crash the newest commit carries
a "running" mark: the successor takes its starts and assumes every other slot used at the
take-over, so that even a burst its predecessor sent just before the crash is not exceeded;
a mark a window old or more says nothing, and it paces as if the last window had been used
evenly (docs/design.md, "Request budget across restarts").

The emulator enforces a small budget (`BUDGET` per `WINDOW` seconds per credential) and logs
every request: its log is the ground truth for what the platform counted, the broker's
committed offsets for what was handed over.
"""

from __future__ import annotations

import signal
import time
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import pytest
import yaml
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from tests.integration.helpers import (
    ConnectorProcess,
    Emulator,
    building,
    produce,
    running_emulator,
    write_config,
)
from tests.kafka_fixtures import NewTopicFactory, wait_until
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

BUDGET, WINDOW = 20, 10.0  # the platform's budget in this test: 20 requests per rolling 10 s
RECORDS = 1500  # distinct IDs, 50 a request: 30 submissions, more than a window allows
CRASH_RECORDS = 1000
PARTITIONS = 3
# After a kill -9 the broker hands the partitions over only when the dead member's session has
# expired (aiokafka's 10 s): a burst still counts then only in a longer window.
BURST_WINDOW = 30.0


@pytest.fixture
async def platform() -> AsyncIterator[Emulator]:
    options = EmulatorOptions(
        rate_limit_requests=BUDGET, rate_limit_seconds=WINDOW, processing_delay_seconds=0
    )
    async with running_emulator(options) as emu:
        yield emu


@pytest.fixture
async def slow_platform() -> AsyncIterator[Emulator]:
    options = EmulatorOptions(
        rate_limit_requests=BUDGET, rate_limit_seconds=BURST_WINDOW, processing_delay_seconds=0
    )
    async with running_emulator(options) as emu:
        yield emu


def config_for(
    tmp_path: Path, emu: Emulator, bootstrap: str, topic: str, group: str, *,
    window: float = WINDOW,
) -> Path:  # fmt: skip
    """One config for predecessor and successor. The drain's grace is short, so that the
    successor starts while the predecessor's last requests still count on the platform."""
    path = write_config(tmp_path, emu, bootstrap, topic, group, requests=BUDGET, per_seconds=window)
    config = yaml.safe_load(path.read_text())
    config["pipeline"]["shutdown_grace_seconds"] = 1
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass(frozen=True)
class Handover:
    """A commit's metadata as docs/design.md describes it:
    `rl1;<writer>;<f|r>;<unix time>;<window s>;<age ms>,<age ms>,...`."""

    writer: str
    final: bool
    written: float
    window: float
    ages: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> Handover:
        version, writer, kind, written, window, ages = text.split(";")
        assert version == "rl1", text
        assert kind in ("f", "r"), text
        return cls(
            writer, kind == "f", float(written), float(window),
            tuple(int(a) / 1000 for a in ages.split(",") if a),
        )  # fmt: skip


async def committed(bootstrap: str, topic: str, group: str) -> dict[int, tuple[int, str]]:
    """The group's committed offset and metadata per partition (the admin API keeps the
    metadata, which the consumer's `committed()` drops)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for attempt in range(50):  # a fresh broker creates its offsets topic on first use
            try:
                found = await admin.list_consumer_group_offsets(
                    group, partitions=[TopicPartition(topic, p) for p in range(PARTITIONS)]
                )
                break
            except GroupCoordinatorNotAvailableError:
                if attempt == 49:
                    raise
                await anyio.sleep(0.2)
    finally:
        await admin.close()
    return {tp.partition: (c.offset, c.metadata) for tp, c in found.items() if c.offset >= 0}


def unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def counted(emu: Emulator) -> list[float]:
    """When the platform counted a request against the budget: every API request it
    admitted (a 429 is not admitted; the token endpoint has no budget)."""
    return sorted(
        unix(e["time"])
        for e in await emu.requests()
        if e["path"].startswith("/api/") and e["status"] != 429
    )


async def throttled(emu: Emulator) -> int:
    return sum(1 for e in await emu.requests() if e["status"] == 429)


def most_in_a_window(times: list[float], window: float = WINDOW) -> int:
    """The most requests in any rolling window, as the emulator counts: (t - window, t]."""
    return max((i + 1 - bisect_right(times, t - window) for i, t in enumerate(times)), default=0)


def logged(proc: ConnectorProcess, prefix: str) -> bool:
    return any(line["msg"].startswith(prefix) for line in proc.lines())


def kill(*procs: ConnectorProcess | None) -> None:
    """What a failed test leaves running."""
    for proc in procs:
        if proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


async def used(emu: Emulator, requests: int) -> bool:
    return len(await counted(emu)) >= requests


def writers(marks: dict[int, tuple[int, str]]) -> set[tuple[str, bool]]:
    """The (writer, final) of every partition's hand-over."""
    return {(h.writer, h.final) for h in (Handover.parse(text) for _, text in marks.values())}


async def test_a_successor_after_sigterm_sends_nothing_beyond_the_budget(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    platform: Emulator,
) -> None:  # fmt: skip
    topic = await new_topic(PARTITIONS)
    config = config_for(tmp_path, platform, kafka_bootstrap, topic, group_id)
    first = ConnectorProcess(config, tmp_path / "first.log")
    second = None
    try:
        await wait_until(
            lambda: logged(first, "partitions assigned"), timeout=30, what="the first's partitions"
        )
        # its start-up assumption (an evenly used window) ages out, so the backlog takes the
        # whole budget at once, as after any quiet spell: a bunched last window
        await anyio.sleep(WINDOW * 1.1)
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(RECORDS)])
        await wait_until(lambda: used(platform, BUDGET - 4), timeout=30, what="a window used")
        first.proc.send_signal(signal.SIGTERM)
        assert await first.wait(30) == 0
        exited = time.time()
        by_first = await counted(platform)
        handed = await committed(kafka_bootstrap, topic, group_id)

        second = ConnectorProcess(config, tmp_path / "second.log")  # at once, same group
        await wait_until(
            lambda: logged(second, "partitions assigned"), timeout=30, what="the second's"
        )
        assigned = time.time()
        await wait_until(
            lambda: used(platform, len(by_first) + BUDGET), timeout=30,
            what="a window's worth of the second's requests",
        )  # fmt: skip
        running = await committed(kafka_bootstrap, topic, group_id)
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait(30) == 0
        final = await committed(kafka_bootstrap, topic, group_id)
    finally:
        kill(first, second)

    # the scene: the first used the whole window in its last seconds, and the second was
    # ready to send while those requests still counted on the platform (with the even
    # assumption instead of the hand-over, its first request is answered 429)
    assert len(by_first) == BUDGET
    assert exited - by_first[0] < WINDOW / 2
    assert assigned < by_first[0] + WINDOW - 1, "the second started too late to test anything"
    # what the platform counted, predecessor and successor together
    times = await counted(platform)
    assert await throttled(platform) == 0
    assert most_in_a_window(times) <= BUDGET
    assert logged(second, "request budget: took over the predecessor's last window")

    # the final commit's metadata, on every partition: the first's request starts
    assert sorted(handed) == list(range(PARTITIONS))
    assert len({text for _, text in handed.values()}) == 1
    last = Handover.parse(handed[0][1])
    assert last.final
    assert WINDOW <= last.window <= WINDOW * 1.05, "the window and its guard"
    assert by_first[-1] <= last.written <= exited + 0.001
    starts = sorted(last.written - age for age in last.ages)
    assert len(starts) == len(by_first), "every request of the last window, no other"
    # the platform counts a request a little after its start (the guard's concern)
    assert all(abs(a - b) < 1 for a, b in zip(starts, by_first, strict=True))
    # and the second spent the budget as soon as the first's starts had aged out
    assert times[BUDGET] < by_first[0] + last.window + 3, "the second waited longer than it must"
    # the successor's commits: "running" while it runs, final once it stopped, its own name
    assert len(writers(final)) == 1
    successor, was_final = writers(final).pop()
    assert was_final
    assert successor != last.writer
    assert writers(running) == {(successor, False)}


async def test_after_a_crash_the_successor_paces_as_if_the_window_was_used_evenly(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    platform: Emulator,
) -> None:  # fmt: skip
    topic = await new_topic(PARTITIONS)
    config = config_for(tmp_path, platform, kafka_bootstrap, topic, group_id)
    records = CRASH_RECORDS
    # a backlog from the start: the first paces from its even start-up assumption
    await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(records)])
    first = ConnectorProcess(config, tmp_path / "first.log")
    second = None
    try:

        async def sending_and_committed() -> bool:
            marks = await committed(kafka_bootstrap, topic, group_id)
            return len(await counted(platform)) >= BUDGET // 2 and bool(marks)

        await wait_until(sending_and_committed, timeout=40, what="requests and a commit")
        first.proc.kill()
        await first.wait(10)
        crashed = await committed(kafka_bootstrap, topic, group_id)
        by_first = await counted(platform)
        assert len(await platform.entities("building")) < records, "killed too late"

        # it joins once the broker has expired the crashed member's session (aiokafka's 10 s),
        # with the first's last requests still in the window
        second = ConnectorProcess(config, tmp_path / "second.log")

        async def all_stored() -> bool:
            return len(await platform.entities("building")) >= records

        await wait_until(all_stored, timeout=60, what="every record")
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait(30) == 0
        final = await committed(kafka_bootstrap, topic, group_id)
    finally:
        kill(first, second)

    # the crashed process's newest commits are "running" marks: nothing to take over
    assert len(writers(crashed)) == 1
    crashed_writer, was_final = writers(crashed).pop()
    assert not was_final
    assert not logged(second, "request budget: took over")
    # what the platform counted (with no start-up assumption at all the second's first burst
    # is answered 429)
    times = await counted(platform)
    assert await throttled(platform) == 0
    assert most_in_a_window(times) <= BUDGET
    assert len(times) > len(by_first), "the second sent requests too"
    assert len(writers(final)) == 1
    final_writer, was_final = writers(final).pop()
    assert was_final
    assert final_writer != crashed_writer


async def test_a_successor_after_a_crash_right_after_a_burst_sends_nothing_beyond_the_budget(
    tmp_path: Path, kafka_bootstrap: str, new_topic: NewTopicFactory, group_id: str,
    slow_platform: Emulator,
) -> None:  # fmt: skip
    """The soak's 429s: killed just after it spent the whole window at once, the predecessor
    leaves a "running" mark from before the burst (or from its first part); with the even
    assumption its successor sends into the burst's window and is answered 429."""
    platform, window = slow_platform, BURST_WINDOW
    topic = await new_topic(PARTITIONS)
    config = config_for(tmp_path, platform, kafka_bootstrap, topic, group_id, window=window)
    first = ConnectorProcess(config, tmp_path / "first.log")
    second = None
    try:
        await wait_until(
            lambda: logged(first, "partitions assigned"), timeout=30, what="the first's partitions"
        )
        # its start-up assumption ages out, so that the backlog below takes the whole budget
        # at once; a few records first, whose commit writes a "running" mark
        await anyio.sleep(window * 1.1)
        await produce(kafka_bootstrap, [(topic, *building(i, 0)) for i in range(10)])

        async def marked() -> bool:
            return bool(await committed(kafka_bootstrap, topic, group_id))

        await wait_until(marked, timeout=20, what="a running mark")
        await produce(kafka_bootstrap, [(topic, *building(i, 1)) for i in range(RECORDS)])
        await wait_until(lambda: used(platform, BUDGET), timeout=30, what="the burst")
        first.proc.kill()
        await first.wait(10)
        killed = time.time()
        crashed = await committed(kafka_bootstrap, topic, group_id)
        by_first = await counted(platform)

        second = ConnectorProcess(config, tmp_path / "second.log")  # at once, same group
        await wait_until(
            lambda: logged(second, "partitions assigned"), timeout=30, what="the second's"
        )
        assigned = time.time()

        async def all_stored() -> bool:
            return len(await platform.entities("building")) >= RECORDS

        await wait_until(all_stored, timeout=120, what="every record")
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait(30) == 0
    finally:
        kill(first, second)

    # the scene: the whole window spent in a few seconds, the kill right after it, and the
    # second assigned while that burst still counted on the platform
    assert len(by_first) == BUDGET
    burst = by_first[-1] - by_first[0]
    assert burst < window / 3, f"no burst: {burst:.1f} s"
    assert killed - by_first[-1] < 3, "killed too late after the burst"
    assert assigned < by_first[0] + window - 2, "the second started too late to test anything"
    assert {final for _, final in writers(crashed)} == {False}, "running marks only"
    # what the platform counted, predecessor and successor together
    times = await counted(platform)
    assert await throttled(platform) == 0
    assert most_in_a_window(times, window) <= BUDGET
    assert logged(second, "request budget: after a crash")
    # what the crash cost: nothing before the burst aged out, and at most one window after the
    # take-over for the rest of the budget
    mine = times[len(by_first) :]
    assert mine[0] > by_first[0] + window
    assert len(mine) >= BUDGET, "a window's worth of the second's requests"
    assert mine[BUDGET - 1] < assigned + window * 1.05 + 3
