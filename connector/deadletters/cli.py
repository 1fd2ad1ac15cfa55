"""The command lines of `dead-letters list`, `dead-letters replay` and `story`.

Owns their arguments, turning them into `Filters` and `ReplayOptions` (a bad one is one
`error:` line with the fix and exit 2), and printing the list. Imports only the standard
library at import time, so `--help` stays fast; the work is imported when a command runs.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import TextIO

    from connector.config import Settings
    from connector.deadletters.replay import ReplayOptions
    from connector.deadletters.scan import Filters, Letter, TopicEntities

__all__ = ["add_parsers", "cmd_dead_letters", "cmd_story"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_MESSAGE_WIDTH = 70


class UsageError(Exception):
    """A bad argument; the message says what to give instead."""


def _filter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which dead letters (all of them by default)")
    group.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="error.reason, e.g. api_rejected, batch_failed (repeatable)",
    )
    group.add_argument("--entity", metavar="ENTITY", help="building, floor, meter, ...")
    group.add_argument(
        "--source-topic",
        action="append",
        metavar="TOPIC",
        help="the topic the record was read from (repeatable)",
    )
    group.add_argument(
        "--id", action="append", metavar="ID", help="the record's external ID (repeatable)"
    )
    group.add_argument(
        "--batch-id", action="append", metavar="ID", help="error.batch_id (repeatable)"
    )
    group.add_argument(
        "--since",
        metavar="TIME",
        help="dead-lettered at or after: 2026-01-31T12:00:00Z, or 90m, 2h, 7d ago",
    )
    group.add_argument("--until", metavar="TIME", help="dead-lettered before (same forms)")


def add_parsers(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `dead-letters` (with `list` and `replay`) and `story` to the sub-commands."""
    dead = sub.add_parser(
        "dead-letters", help="list the dead-letter topic; replay dead letters (optionally edited)",
        description="Read kafka.dead_letter_topic (never rewriting it): list dead letters, or "
        "re-drive them to their source topic with a history header.",
    )  # fmt: skip
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="print dead letters as a table or JSON lines, with counts per reason",
        description="Print the selected dead letters (when, reason, the platform's message, "
        "the ID, where the record was read, the batch) and the counts per reason. Reads "
        "without a consumer group, up to the end the topic had at start.",
    )  # fmt: skip
    config_arg(listing)
    _filter_args(listing)
    listing.add_argument("--format", choices=["table", "jsonl"], default="table")
    listing.add_argument(
        "--values",
        action="store_true",
        help="with --format jsonl: include each record's key and value",
    )
    listing.add_argument("--limit", type=int, default=None, metavar="N",
                         help="stop after N matching dead letters")  # fmt: skip
    replay = actions.add_parser(
        "replay", help="re-drive selected dead letters to their source topic, with history",
        description="Send the selected dead letters' records (as they are, or edited) to "
        "their source.topic or --to, with replay.id, replay.count, replay.history and "
        "replay.dead_letter headers. The dead-letter topic is only read. A record already "
        "replayed --max-replays times is held (--force sends it). Run it again with "
        "--replay-id to resume an interrupted replay: what it sent is not sent again.",
    )  # fmt: skip
    config_arg(replay)
    _filter_args(replay)
    edit = replay.add_argument_group("an edit (at most one)")
    edit.add_argument(
        "--patch",
        metavar="JSON|@FILE",
        help='RFC 6902 JSON Patch, e.g. \'[{"op": "add", "path": "/name", "value": "HQ"}]\'',
    )
    edit.add_argument(
        "--jmespath",
        metavar="EXPR|@FILE",
        help="a JMESPath expression giving the new record, e.g. \"merge(@, {name: 'HQ'})\"",
    )
    replay.add_argument("--to", metavar="TOPIC", help="send here instead of source.topic")
    replay.add_argument(
        "--replay-id", metavar="ID", help="resume this replay (the ID a replay prints first)"
    )
    replay.add_argument(
        "--max-replays",
        type=int,
        default=3,
        metavar="N",
        help="hold records already replayed N times (default 3)",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="send held records too: over --max-replays, or that would be "
        "dead-lettered again at once",
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent (with the values), send nothing",
    )
    replay.add_argument(
        "--limit", type=int, default=None, metavar="N", help="send at most N records"
    )
    replay.add_argument(
        "--rate",
        type=float,
        default=0,
        metavar="N",
        help="records per second (default 0: as fast as Kafka takes them)",
    )
    story = sub.add_parser(
        "story", help="what happened to one record: dead letters, replays, receipts, batches",
        description="Tell what the connector can see of one external ID: its dead letters "
        "(with their replays), its receipts (receipts.enabled), the platform's batches that "
        "held it, and its last status.",
    )  # fmt: skip
    config_arg(story)
    story.add_argument("--id", required=True, metavar="ID", help="the record's external ID")
    story.add_argument("--entity", metavar="ENTITY", help="building, floor, ... (default: any)")


def _entity_name(text: str | None) -> str | None:
    if text is None:
        return None
    from connector.entities import ENTITIES, find_entity  # noqa: PLC0415

    found = find_entity(text)
    if found is None:
        known = ", ".join(sorted(e.endpoint for e in ENTITIES.values()))
        raise UsageError(f"--entity {text}: no such entity; one of: {known}")
    return found.name


def filters_from(args: argparse.Namespace) -> Filters:
    from connector.deadletters.scan import Filters, parse_time  # noqa: PLC0415
    from connector.decode import Reason  # noqa: PLC0415

    reasons = frozenset(args.reason or ())
    unknown = reasons - {r.value for r in Reason}
    if unknown:
        raise UsageError(
            f"--reason {', '.join(sorted(unknown))}: no such reason; one of: "
            + ", ".join(r.value for r in Reason)
        )
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Filters(
        reasons=reasons, entity=_entity_name(args.entity),
        source_topics=frozenset(args.source_topic or ()), ids=frozenset(args.id or ()),
        batch_ids=frozenset(args.batch_id or ()), since_ms=since, until_ms=until,
    )  # fmt: skip


def _row(letter: Letter, topics: TopicEntities, *, values: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "when": letter.when, "reason": letter.reason, "message": letter.message,
        "entity": letter.entity(topics), "id": letter.external_id(topics),
        "source": {"topic": letter.source_topic, "partition": letter.text("source.partition"),
                   "offset": letter.text("source.offset")},
        "batch_id": letter.batch_id, "http_status": letter.text("error.http_status"),
        "request_id": letter.text("error.request_id"),
        "dead_letter": {"topic": letter.topic, "partition": letter.partition,
                        "offset": letter.offset},
        "replays": letter.replay_count, "replay_id": letter.text("replay.id"),
    }  # fmt: skip
    if values:
        row["key"] = None if letter.key is None else letter.key.decode("utf-8", "replace")
        row["value"] = None if letter.value is None else letter.value.decode("utf-8", "replace")
    return row


def _table_line(letter: Letter, topics: TopicEntities) -> str:
    message = letter.message.replace("\n", " ")
    if len(message) > _MESSAGE_WIDTH:
        message = message[: _MESSAGE_WIDTH - 1] + "…"
    ident = letter.external_id(topics) or "-"
    return (
        f"{letter.when:20}  {letter.reason:18}  {ident:20}  {letter.source:32}  "
        f"{letter.batch_id or '-':36}  {letter.replay_count:7}  {message}\n"
    )


async def list_letters(
    settings: Settings, filters: Filters, args: argparse.Namespace, out: TextIO, err: TextIO
) -> None:
    """`dead-letters list`: the table (or JSON lines), then the counts per reason."""
    import orjson  # noqa: PLC0415

    from connector.deadletters.scan import (  # noqa: PLC0415
        Progress,
        ScanStats,
        TopicEntities,
        counts_line,
        scan_topic,
    )

    topics = TopicEntities(settings)
    stats = ScanStats()
    table = args.format == "table"
    if table:
        out.write(f"{'when':20}  {'reason':18}  {'id':20}  {'read at':32}  {'batch':36}  "
                  "replays  message\n")  # fmt: skip
    shown = 0
    letters = scan_topic(
        settings, settings.kafka.dead_letter_topic, since_ms=filters.since_ms,
        until_ms=filters.until_ms, progress=Progress(err), stats=stats,
        keep=lambda x: filters.matches(x, topics),
    )  # fmt: skip
    async with contextlib.aclosing(letters):  # --limit: the consumer stops at once
        async for letter in letters:
            if table:
                out.write(_table_line(letter, topics))
            else:
                out.write(orjson.dumps(_row(letter, topics, values=args.values)).decode() + "\n")
            shown += 1
            if args.limit is not None and shown >= args.limit:
                break
    print(counts_line(stats.reasons, stats.read), file=out if table else err)


def _replay_options(args: argparse.Namespace, filters: Filters) -> ReplayOptions:
    from connector.deadletters.edit import EditError, compile_edit  # noqa: PLC0415
    from connector.deadletters.replay import ReplayOptions  # noqa: PLC0415

    try:
        edit = compile_edit(patch=args.patch, jmespath_expr=args.jmespath)
    except EditError as exc:
        raise UsageError(str(exc)) from None
    if args.max_replays < 1:
        raise UsageError("--max-replays must be at least 1")
    return ReplayOptions(
        filters=filters, edit=edit, to=args.to, replay_id=args.replay_id,
        max_replays=args.max_replays, force=args.force, dry_run=args.dry_run,
        limit=args.limit, rate=args.rate,
    )  # fmt: skip


def cmd_dead_letters(
    args: argparse.Namespace, out: TextIO, err: TextIO, load: Callable[..., Settings | None]
) -> int:
    settings = load(args, err)
    if settings is None:
        return EXIT_USAGE
    import anyio  # noqa: PLC0415

    from connector.deadletters.scan import ScanError  # noqa: PLC0415

    try:
        filters = filters_from(args)
        if args.action == "list":
            anyio.run(functools.partial(list_letters, settings, filters, args, out, err))
            return EXIT_OK
        from connector.deadletters.replay import replay  # noqa: PLC0415

        options = _replay_options(args, filters)
        report = anyio.run(functools.partial(replay, settings, options, out, err))
        print(report.summary(dry_run=args.dry_run), file=out)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except ScanError as exc:
        print(f"FAILED: {exc}", file=err)
        return EXIT_FAILED
    return EXIT_OK


def cmd_story(
    args: argparse.Namespace, out: TextIO, err: TextIO, load: Callable[..., Settings | None]
) -> int:
    settings = load(args, err)
    if settings is None:
        return EXIT_USAGE
    import anyio  # noqa: PLC0415

    from connector.deadletters.scan import ScanError  # noqa: PLC0415
    from connector.deadletters.story import tell_story  # noqa: PLC0415

    try:
        entity = _entity_name(args.entity)
        found = anyio.run(functools.partial(tell_story, settings, args.id, entity, out, err))
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except ScanError as exc:
        print(f"FAILED: {exc}", file=err)
        return EXIT_FAILED
    return EXIT_OK if found else EXIT_FAILED
