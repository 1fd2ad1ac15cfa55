"""The command line: `run`, `check`, `emulate`, `produce-sample` (DESIGN.md §3.1).

Owns parsing arguments, loading settings once, setting up logging, and turning the known
errors into one clear message and an exit code. Exit codes: 0 success, 1 a check failed,
2 bad usage or configuration.

Must not: hold pipeline logic; each command hands over to the module that owns it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio
import yaml

from connector import __version__
from connector.config import Settings, load_settings
from connector.errors import ConfigError
from connector.logs import setup_logging

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("CONNECTOR_CONFIG")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(default) if default else None,
        required=default is None,
        metavar="FILE",
        help="YAML config file (default: $CONNECTOR_CONFIG); "
        "CONNECTOR_<SECTION>__<KEY> variables override its keys",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="building-twin-connector",
        description="Onboard building and meter change events from Kafka into building "
        "digital-twin platforms (BuildingMinds first).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run until SIGTERM/SIGINT, then drain and exit 0")
    _config_arg(run)

    check = sub.add_parser(
        "check", help="validate the config, obtain a token, call GET /batch, print a summary"
    )
    _config_arg(check)

    emulate = sub.add_parser("emulate", help="run the bundled emulator of a platform")
    emulate.add_argument("name", choices=["buildingminds"], help="which platform")
    emulate.add_argument("--port", type=int, default=8080)
    emulate.add_argument("--host", default="127.0.0.1")
    from connector.emulators.buildingminds import add_cli_arguments  # noqa: PLC0415

    add_cli_arguments(emulate)

    batches = sub.add_parser("batches", help="list recent batches and their status")
    _config_arg(batches)
    batches.add_argument("--limit", type=int, default=20, metavar="N")
    batches.add_argument("--batch-id", default=None, help="show one batch and its failed records")

    produce = sub.add_parser(
        "produce-sample", help="write realistic building and meter change events to Kafka"
    )
    _config_arg(produce)
    produce.add_argument("--count", type=int, default=1000, metavar="N")
    produce.add_argument("--ids", type=int, default=1000, help="distinct entity IDs (default 1000)")
    produce.add_argument(
        "--invalid-share", type=float, default=0.02, help="share of invalid events (default 0.02)"
    )
    produce.add_argument("--rate", type=float, default=0, help="events per second (0: all at once)")
    produce.add_argument("--seed", type=int, default=1)
    return parser


def _load(args: argparse.Namespace, out: TextIO) -> Settings | None:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=out)
        return None


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    print("configuration is valid:", file=out)
    print(yaml.safe_dump(settings.summary(), sort_keys=False).rstrip(), file=out)
    from connector.commands import run_check  # noqa: PLC0415 - keeps --help fast

    return EXIT_OK if anyio.run(run_check, settings, out, err) else EXIT_CHECK_FAILED


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del out
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    setup_logging(settings.logging.level, settings.logging.format)
    from connector.app import run_connector  # noqa: PLC0415 - keeps --help fast

    anyio.run(run_connector, settings)
    return EXIT_OK


def cmd_produce_sample(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    from connector.commands import produce_sample  # noqa: PLC0415 - keeps --help fast

    anyio.run(
        functools.partial(
            produce_sample, settings, args.count, ids=args.ids, invalid_share=args.invalid_share,
            rate=args.rate, seed=args.seed, out=out,
        )
    )  # fmt: skip
    return EXIT_OK


def cmd_batches(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    from connector.commands import list_batches  # noqa: PLC0415 - keeps --help fast

    ok = anyio.run(functools.partial(list_batches, settings, args.limit, args.batch_id, out, err))
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def cmd_emulate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del out, err
    from connector.emulators.buildingminds import run_from_args  # noqa: PLC0415

    return run_from_args(args)


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "batches": cmd_batches,
    "emulate": cmd_emulate,
    "produce-sample": cmd_produce_sample,
}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args, out or sys.stdout, err or sys.stderr)
