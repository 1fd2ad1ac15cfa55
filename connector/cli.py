"""The command line: `run`, `check`, `dry-run`, `emulate`, `produce-sample`, `batches`, `auth`,
`dead-letters`, `story`
(docs/design.md §3.1).

Owns parsing arguments, loading settings once, setting up logging, and turning the known
errors into one clear message and an exit code. Exit codes: 0 success, 1 a check failed,
2 bad usage or configuration.

Must not: hold pipeline logic; each command hands over to the module that owns it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from connector import __version__
from connector.signals import EarlySignals

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from connector.config import Settings
    from twin_emulators.common import Emulator

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


EMULATORS_MISSING = (
    "the emulators are not installed: they are a separate distribution, "
    "building-twin-devtools (in a checkout: `make venv`, or "
    "`pip install -e ./devtools`; docs/emulator.md)"
)


def _emulators() -> dict[str, Emulator]:
    """The platforms `emulate` serves, by name, in the order `emulate --help` lists them.
    Empty when the emulators' distribution is not installed (as in the runtime image)."""
    try:
        from twin_emulators import bimlink, bimplus, buildingminds, buildingx  # noqa: PLC0415
    except ImportError:
        return {}

    return {
        "buildingminds": buildingminds,
        "buildingx": buildingx,
        "bimlink": bimlink,
        "bimplus": bimplus,
    }


def build_parser(*, emulators: bool = True) -> argparse.ArgumentParser:
    """The whole command line. `emulators=False` leaves out the emulators' own flags (each
    `emulate NAME` sub-command), so that `run` does not import every emulator at start."""
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
        "check",
        help="validate the config, obtain a token, call GET /batch, reach Kafka, print a summary",
    )
    _config_arg(check)
    check.add_argument(
        "--skip-kafka", action="store_true",
        help="do not check the brokers, the topics and the group's lag (only the platforms)",
    )  # fmt: skip

    emulate = sub.add_parser(
        "emulate",
        help="run the bundled emulator of a platform",
        description="Serve an emulator of one platform until SIGINT/SIGTERM. "
        "`emulate NAME --help` lists its flags and their defaults.",
    )
    platforms = emulate.add_subparsers(
        title="platforms", dest="name", required=True, metavar="NAME"
    )
    installed = _emulators() if emulators else {}
    if emulators and not installed:
        emulate.description = f"{emulate.description} Here {EMULATORS_MISSING}."
        for name in ("buildingminds", "buildingx", "bimlink", "bimplus"):
            platforms.add_parser(name, help="(not installed)")
    if installed:
        from twin_emulators.common import add_emulator_arguments  # noqa: PLC0415

        for name, emulator in installed.items():
            add_emulator_arguments(
                platforms.add_parser(
                    name, help=emulator.SUMMARY,
                    description=f"Serve an emulator of {emulator.SUMMARY}.",
                ),
                emulator,
            )  # fmt: skip

    from connector.sources import LOGINS  # noqa: PLC0415 - stdlib-only at import

    auth = sub.add_parser(
        "auth",
        help=f"log in once to a platform that needs a person ({', '.join(LOGINS)}), "
        "store the token",
    )
    auth.add_argument("platform", choices=LOGINS, help="which platform")
    _config_arg(auth)
    auth.add_argument(
        "--source", default=None, metavar="NAME",
        help="which source of that platform in the config, by name (needed only when there "
        "are several)",
    )  # fmt: skip
    auth.add_argument(
        "--no-browser", action="store_true", help="only print the login URL, do not open it"
    )
    auth.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="how long to wait for the login (default: the source's login_timeout_seconds)",
    )  # fmt: skip

    batches = sub.add_parser("batches", help="list recent batches and their status")
    _config_arg(batches)
    batches.add_argument("--limit", type=int, default=20, metavar="N")
    batches.add_argument("--batch-id", default=None, help="show one batch and its failed records")

    dry = sub.add_parser(
        "dry-run",
        help="decode and map records, show what would be sent where and what dead-lettered",
        description="Read records from the configured topics (from the beginning, without a "
        "consumer group: nothing is committed) or from a JSON-lines file, decode and map them "
        "as `run` would, and print what would happen to each. Nothing is sent.",
    )
    _config_arg(dry)
    dry.add_argument("--count", type=int, default=100, metavar="N", help="records (default 100)")
    dry.add_argument(
        "--topic", action="append", default=None, metavar="TOPIC",
        help="read this topic instead of kafka.topics (repeatable)",
    )  # fmt: skip
    dry.add_argument(
        "--file", type=Path, default=None, metavar="FILE",
        help='JSON lines {"topic": ..., "key": ..., "value": ...} instead of Kafka',
    )  # fmt: skip
    dry.add_argument("--no-body", action="store_true", help="do not print the records' bodies")

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
    from connector.deadletters.cli import add_parsers  # noqa: PLC0415 - stdlib-only at import

    add_parsers(sub, _config_arg)  # dead-letters list / replay, story
    return parser


def _load(args: argparse.Namespace, out: TextIO) -> Settings | None:
    from connector.config import load_settings  # noqa: PLC0415 - see `main`
    from connector.errors import ConfigError  # noqa: PLC0415

    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=out)
        return None


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    import anyio  # noqa: PLC0415 - see `main`
    import yaml  # noqa: PLC0415

    print("configuration is valid:", file=out)
    print(yaml.safe_dump(settings.summary(), sort_keys=False).rstrip(), file=out)
    from connector.commands import run_check  # noqa: PLC0415 - keeps --help fast

    check = functools.partial(run_check, settings, out, err, kafka=not args.skip_kafka)
    return EXIT_OK if anyio.run(check) else EXIT_CHECK_FAILED


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`run`: SIGTERM, SIGINT and SIGHUP are caught from this first line on (each drains and
    exits 0); a busy metrics port is one line and exit 2."""
    del out
    early = EarlySignals.install()  # `main` installed it already; this is the same one
    try:
        settings = _load(args, err)
        if settings is None:
            return EXIT_USAGE
        import anyio  # noqa: PLC0415 - see `main`

        from connector.app import StartupFailed, run_connector  # noqa: PLC0415
        from connector.logs import setup_logging  # noqa: PLC0415
        from connector.repeats import RepeatFilter  # noqa: PLC0415

        handler = setup_logging(settings.logging.level, settings.logging.format)
        handler.addFilter(RepeatFilter())  # an outage repeats aiokafka's lines by the thousand
        # what the imports made lives as long as the process: out of the collector's sight,
        # each full collection no longer walks it (measured: 8,700 of 133,000 instructions a
        # mapped record took to take in)
        gc.freeze()
        try:
            anyio.run(functools.partial(run_connector, settings, early_signals=early))
        except StartupFailed as exc:
            print(f"error: {exc}", file=err)
            return EXIT_USAGE
        return EXIT_OK
    finally:
        early.restore()


def cmd_produce_sample(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    import anyio  # noqa: PLC0415 - see `main`

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
    import anyio  # noqa: PLC0415 - see `main`

    from connector.commands import list_batches  # noqa: PLC0415 - keeps --help fast

    ok = anyio.run(functools.partial(list_batches, settings, args.limit, args.batch_id, out, err))
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def cmd_dry_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    import anyio  # noqa: PLC0415 - see `main`

    from connector.dryrun import dry_run  # noqa: PLC0415 - keeps --help fast

    run = functools.partial(
        dry_run, settings, out, err, count=args.count, file=args.file, topics=args.topic,
        show_body=not args.no_body,
    )  # fmt: skip
    try:
        anyio.run(run)
    except OSError as exc:
        if args.file is None:
            raise
        print(f"error: {args.file}: {exc.strerror or exc}", file=err)
        return EXIT_USAGE
    return EXIT_OK


def cmd_emulate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del out, err
    return _emulators()[args.name].run_from_args(args)


def cmd_auth(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _load(args, err)
    if settings is None:
        return EXIT_USAGE
    from connector.sources import login  # noqa: PLC0415 - see `main`
    from connector.sources.base import LoginFailed  # noqa: PLC0415

    candidates = [
        s for s in settings.sources
        if s.type == args.platform and args.source in (None, s.name or s.type)
    ]  # fmt: skip
    if len(candidates) != 1:
        what, hint = (
            ("no", "add one under sources:") if not candidates
            else ("more than one", "pick one with --source NAME")
        )  # fmt: skip
        print(f"error: {args.config}: {what} {args.platform} source found; {hint}", file=err)
        return EXIT_USAGE
    import webbrowser  # noqa: PLC0415 - only this command opens a browser

    import anyio  # noqa: PLC0415 - see `main`

    browser = None if args.no_browser else webbrowser.open
    try:
        anyio.run(
            functools.partial(
                login, candidates[0], out=out, browser=browser, wait_seconds=args.timeout
            )
        )
    except LoginFailed as exc:
        print(f"error: {exc}", file=err)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def cmd_dead_letters(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from connector.deadletters.cli import cmd_dead_letters as run  # noqa: PLC0415

    return run(args, out, err, _load)


def cmd_story(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from connector.deadletters.cli import cmd_story as run  # noqa: PLC0415

    return run(args, out, err, _load)


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "batches": cmd_batches,
    "emulate": cmd_emulate,
    "auth": cmd_auth,
    "produce-sample": cmd_produce_sample,
    "dry-run": cmd_dry_run,
    "dead-letters": cmd_dead_letters,
    "story": cmd_story,
}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Entry point of the console script; returns the process exit code.

    For `run`, stop signals are caught before anything else happens (`connector.signals`):
    this module imports only the standard library at import time, and the parser (which
    imports every emulator) is built after.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        EarlySignals.install()
    if argv[:1] == ["emulate"] and not {"-h", "--help"} & set(argv) and not _emulators():
        print(f"error: {EMULATORS_MISSING}", file=err or sys.stderr)
        return EXIT_USAGE
    # only `emulate` (and help, which lists everything) needs the emulators' flags
    light = (["run"], ["check"], ["dry-run"], ["dead-letters"], ["story"])
    args = build_parser(emulators=argv[:1] not in light).parse_args(argv)
    return COMMANDS[args.command](args, out or sys.stdout, err or sys.stderr)
