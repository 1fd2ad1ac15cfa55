"""`python -m bench.run [--scenario NAME ...] [--quick] [--out bench-report.json]`

Runs the benchmark scenarios (bench/scenarios.py) against a real Kafka broker
(`KAFKA_BOOTSTRAP`, or a local broker started and stopped here), printing progress while they
run, then a table of every number against its target, and writes a JSON report.

Exit codes: 0 every target met, 1 a target missed, 2 a scenario could not run, 130
interrupted. Every child process (broker, emulators, connectors) is stopped on every way
out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import anyio
import orjson
import yaml

from bench.load import LOAD_SCENARIOS
from bench.procs import Child
from bench.scenarios import SCENARIOS as BACKLOG_SCENARIOS
from bench.scenarios import Context, Result
from bench.services import BenchError, Kafka
from connector.errors import BrokerUnavailable
from twin_devtools.devbroker import ExternalBroker, LocalBroker, find_or_start_broker, local_broker

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from twin_devtools.devbroker import Broker

__all__ = ["main"]

_T0 = time.monotonic()
SCENARIOS = {**BACKLOG_SCENARIOS, **LOAD_SCENARIOS}


def say(text: str) -> None:
    """One progress line, stamped with the seconds since the benchmark started."""
    stamp = f"[{time.monotonic() - _T0:7.1f}s]"
    lines = text.splitlines() or [""]
    print(f"{stamp} {lines[0]}", *lines[1:], sep="\n", flush=True)  # noqa: T201


def _override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the connector against docs/design.md §5 (see bench/README.md).",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller and shorter runs (a few minutes in all)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply event counts and durations (e.g. 0.1 for a quick iteration)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-report.json"), help="JSON report path"
    )
    parser.add_argument(
        "--charts",
        type=Path,
        default=Path("bench-charts"),
        help="where each load scenario's SVG chart goes (default: bench-charts/)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where configs and process logs go (default: a new temporary directory)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_override,
        metavar="KEY=VALUE",
        help="override a connector setting in every scenario, e.g. "
        "--set tracking.poll_interval_seconds=1 (VALUE is read as YAML; repeatable)",
    )
    parser.add_argument(
        "--drain-wait",
        type=float,
        default=45.0,
        metavar="SECONDS",
        help="budget and memory: how long to let the connector drain after SIGTERM before "
        "the second SIGTERM (default: 45, the connector's 30 s shutdown grace + 15)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the connector under cProfile and print its hotspots (slows it down)",
    )
    return parser


def table(results: Sequence[Result]) -> str:
    """The final table: one row per number, with its target and verdict."""
    rows = [("scenario", "metric", "value", "target", "verdict")]
    for result in results:
        if result.error is not None:
            rows.append((result.scenario, "error", result.error[:70], "", "ERROR"))
            continue
        for i, check in enumerate(result.checks):
            label = result.scenario if i == 0 else ""
            rows.append((label, check.metric, check.value, check.target, check.verdict))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


async def run_scenarios(args: argparse.Namespace, bootstrap: str, workdir: Path) -> list[Result]:
    names = args.scenario or list(SCENARIOS)
    results: list[Result] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        ctx = Context(
            bootstrap=bootstrap, workdir=workdir, kafka=Kafka(bootstrap), http=http, say=say,
            quick=args.quick, profile=args.profile, overrides=list(args.set),
            drain_wait=args.drain_wait, scale=args.scale, charts=args.charts,
        )  # fmt: skip
        for name in names:
            say(f"== {name}{' (quick)' if args.quick else ''} ==")
            started = time.monotonic()
            try:
                result = await SCENARIOS[name](ctx)
            except BenchError as exc:
                result = Result(name, error=str(exc))
            result.metrics["scenario_seconds"] = round(time.monotonic() - started, 1)
            results.append(result)
            if result.error is not None:
                say(f"RESULT {name}: ERROR: {result.error}")
            else:
                say(f"RESULT {name}: {result.verdict}: {result.summary}")
    return results


def _report(
    args: argparse.Namespace, results: Sequence[Result], broker: str, workdir: Path
) -> dict[str, Any]:
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "profile": args.profile,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "broker": broker,
        "connector_overrides": dict(args.set),
        "workdir": str(workdir),
        "scenarios": {r.scenario: r.to_json() for r in results},
    }


def _start_broker(workdir: Path, started: list[Broker]) -> str:
    """A ready broker, appended to `started` before it starts, so an interrupt stops it."""
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP"):
        say(f"using the broker at KAFKA_BOOTSTRAP={bootstrap}")
        started.append(ExternalBroker(bootstrap))
        return f"external {bootstrap}"
    say("starting a local Kafka broker (devbroker) ...")
    try:
        local = local_broker(workdir / "kafka")
    except BrokerUnavailable:
        broker = find_or_start_broker(workdir / "kafka")  # the Docker fallback, or the error
        started.append(broker)
        return f"docker {broker.bootstrap}"
    started.append(local)
    local.start()
    say(f"Kafka ready at {local.bootstrap} (local, data in {local.data_dir})")
    return f"local {local.bootstrap}"


def _interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # aiokafka logs transient coordinator errors (while __consumer_offsets is created) at
    # ERROR; the benchmark's own Kafka calls raise when something is really wrong.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"logs and configs in {workdir}")
    brokers: list[Broker] = []
    results: list[Result] = []
    try:
        broker_text = _start_broker(workdir, brokers)
        results = anyio.run(run_scenarios, args, brokers[0].bootstrap, workdir)
        say("results:")
        print(table(results), flush=True)  # noqa: T201
        args.out.write_bytes(
            orjson.dumps(_report(args, results, broker_text, workdir), option=orjson.OPT_INDENT_2)
        )
        say(f"report written to {args.out}")
    except KeyboardInterrupt:
        say("interrupted: stopping every process the benchmark started")
        return 130
    except BrokerUnavailable as exc:
        say(f"error: {exc}")
        return 2
    finally:
        stopped = Child.stop_all()
        if stopped:
            say(f"stopped: {', '.join(stopped)}")
        for broker in brokers:
            broker.stop()
            if isinstance(broker, LocalBroker):
                shutil.rmtree(broker.data_dir, ignore_errors=True)
    verdicts = {r.verdict for r in results}
    return 2 if "ERROR" in verdicts else 1 if "FAIL" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
