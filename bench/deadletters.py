"""`dead-letters list` over a large dead-letter topic: time and peak memory.

    .venv/bin/python -m bench.deadletters [--count 1000000] [--bootstrap HOST:PORT]

Fills a new 3-partition topic with `--count` dead letters in the connector's own format
(`connector.deadletter.DeadLetter`: building records refused by the platform, ten reasons,
source coordinates, batch IDs, an original header), by hand-filled record batches (several
times faster than one `send` per record). Then runs `python -m connector dead-letters list` as
a separate process, three ways, and reports each one's wall time, CPU time (user + system;
on a shared machine the one to compare) and peak RSS (the child's own, from `wait4`):

- `filtered`: `--reason batch_failed --id B-<n>`: every letter read, one printed;
- `jsonl`: every letter printed as a JSON line (to /dev/null);
- `last-10pct`: `--since` the time the last tenth was produced: `offsets_for_times` skips the
  rest.

The broker is `--bootstrap`, `KAFKA_BOOTSTRAP`, or a local one `twin_devtools.devbroker` starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connector.deadletter import DeadLetter
from connector.decode import Reason

if TYPE_CHECKING:
    from collections.abc import Iterator

REASONS = list(Reason)
PARTITIONS = 3


def letter(i: int, now: float) -> DeadLetter:
    reason = REASONS[i % len(REASONS)]
    bid = f"B-{i}"
    value = orjson.dumps({"buildingId": bid, "eventType": "BuildingUpdated", "name": f"B {i}",
                          "siteId": f"S-{i % 500}"})  # fmt: skip
    return DeadLetter(
        key=bid.encode(), value=value, headers=[("trace-id", f"t-{i}".encode())], reason=reason,
        message=f"'name' of {bid} is not what the platform wants ({reason.value})",
        topic="building-changes", partition=i % PARTITIONS, offset=i // PARTITIONS,
        batch_id=f"{uuid.UUID(int=i // 500)}" if reason is Reason.BATCH_FAILED else None,
        http_status=400 if reason is Reason.API_REJECTED else None, now=now,
    )  # fmt: skip


async def fill(bootstrap: str, topic: str, count: int) -> tuple[float, int]:
    """Produce `count` letters; returns (seconds, the timestamp in ms where the last tenth
    starts)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=50, max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )  # fmt: skip
    started = time.monotonic()
    tenth_ms = 0
    await producer.start()
    try:
        batches: dict[int, Any] = {}
        sent: list[Any] = []
        now = time.time()
        for i in range(count):
            if i == count - count // 10:
                await asyncio.sleep(0.05)  # a clear boundary in the record timestamps
                tenth_ms = int(time.time() * 1000)
                now = time.time()
            dl = letter(i, now)
            partition = i % PARTITIONS
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            stamp = int(time.time() * 1000)
            if (
                batch.append(key=dl.key, value=dl.value, timestamp=stamp, headers=dl.headers)
                is None
            ):
                sent.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=dl.key, value=dl.value, timestamp=stamp, headers=dl.headers)
                while len(sent) > 16:
                    await sent.pop(0)
            if (i + 1) % 200_000 == 0:
                sys.stderr.write(f"  produced {i + 1:,}\n")
        for partition, batch in batches.items():
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        for future in sent:
            await future
    finally:
        await producer.stop()
    return time.monotonic() - started, tenth_ms


def measure(config: Path, *args: str) -> dict[str, Any]:
    """Run `dead-letters list ARGS` as a child; its wall time, peak RSS (its own
    `ru_maxrss`, from `wait4`) and its last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "connector", "dead-letters", "list", "--config", str(config),
             *args],
            stdout=out, stderr=err, env=env,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        # counted as a stream: a parent grown by reading a million lines would make the next
        # child's peak (its fork counts) look that large too
        lines, last = 0, b""
        for line in out:
            lines, last = lines + 1, line
        errors = err.read().decode().splitlines()
    if child.returncode:
        raise SystemExit(f"dead-letters list {' '.join(args)} failed: {errors[-5:]}")
    summary = last.decode().rstrip() if args[-1] != "jsonl" else (errors or [""])[-1]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "lines": lines,
            "summary": summary}  # fmt: skip


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from twin_devtools.devbroker import find_or_start_broker  # noqa: PLC0415

    started = find_or_start_broker(Path(tempfile.mkdtemp(prefix="bench-dlq-broker-")))
    try:
        yield started.bootstrap
    finally:
        started.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"))
    args = parser.parse_args()
    with broker(args.bootstrap) as bootstrap:
        topic = f"bench-dlq-{uuid.uuid4().hex[:8]}"
        sys.stderr.write(f"filling {topic} with {args.count:,} dead letters on {bootstrap}\n")
        seconds, tenth_ms = asyncio.run(fill(bootstrap, topic, args.count))
        sys.stderr.write(f"  {args.count / seconds:,.0f} letters/s\n")
        workdir = Path(tempfile.mkdtemp(prefix="bench-dlq-"))
        config = workdir / "connector.yaml"
        config.write_text(yaml.safe_dump({
            "kafka": {"bootstrap_servers": bootstrap, "topics": ["building-changes"],
                      "dead_letter_topic": topic},
            "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
        }))  # fmt: skip
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(tenth_ms / 1000))
        since += f".{tenth_ms % 1000:03d}Z"
        wanted = REASONS.index(Reason.BATCH_FAILED) + len(REASONS) * (args.count // 20)
        report = {
            "count": args.count,
            "fill_seconds": round(seconds, 1),
            "filtered": measure(config, "--reason", "batch_failed", "--id", f"B-{wanted}"),
            "jsonl": measure(config, "--format", "jsonl"),
            "last-10pct": measure(config, "--since", since, "--format", "jsonl"),
        }
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
