"""Command line: the daemon (``run``), its configuration (``check-config``), the operator's tools
(``status``, ``dlq``, ``send``) and the event catalogue (``events``, ``validate``).

Exit codes: 0 success or clean stop, 1 the daemon could not start or failed (a tool: something did
not answer, or failed), 2 bad configuration or input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import yaml

from . import __version__, dlq
from .config import ConfigError, Settings, load_settings, mask_url
from .events import ParsedEvent
from .logs import configure_logging, get_logger
from .outcomes import ErrorCode
from .service import Service, StartupError

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2
KNOWN_CODES = frozenset(code.value for code in ErrorCode)
SHOW_BODY_BYTES = 64 * 1024  # dlq show prints this much of a body unless --full

_DESCRIPTION = """\
Bridge Lamassu IoT's RabbitMQ and AWS SQS, at-least-once, both ways.

Every command that talks to RabbitMQ or SQS takes --config (default:
$LAMASSU_CONFIG; LAMASSU_* environment variables override the file).
`lamassu-aws-connector COMMAND --help` shows a command's options."""

_EPILOG = """\
exit codes: 0 success or clean stop; 1 the daemon failed, or a tool found
something that does not answer or failed; 2 bad configuration or input."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Commands and their help on one line each: argparse measures sub-commands two columns short."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamassu-aws-connector",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Each command's help is one line in an 80-column terminal: keep them under 54 characters.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "YAML config file (default: $LAMASSU_CONFIG; environment variables LAMASSU_* override it)"
    run = commands.add_parser("run", help="run the daemon", description="Run the daemon in the foreground.")
    run.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)
    check = commands.add_parser(
        "check-config",
        help="validate the config (--connect: try each dependency)",
        description="Validate the configuration and print it, secrets masked. With --connect, try RabbitMQ, "
        "both SQS queues and the claim-check bucket instead, one line each; exit 1 if any fails.",
    )
    check.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)
    check.add_argument("--connect", action="store_true", help="try RabbitMQ, SQS and S3 with these settings")
    check.add_argument("--wait", type=float, default=10.0, metavar="SECONDS", help="per dependency (10)")
    status = commands.add_parser(
        "status",
        help="queue depths, dead letters and the daemon's health",
        description="Both sides at a glance: the events queue, both dead-letter queues (depth, counts by "
        "x-error-code, peeked as `dlq list` does: nothing is consumed), the SQS command and response queues, "
        "and with --url a running connector's /readyz and key /metrics counters. Exit 1 when RabbitMQ, SQS, a "
        "queue or the connector does not answer, or the connector is not ready.",
    )
    status.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)
    status.add_argument("--url", help="the connector's HTTP endpoint, e.g. http://127.0.0.1:8080")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--peek",
        type=int,
        default=1000,
        metavar="N",
        help="count x-error-codes over at most N dead letters per queue (1000, at most 64 MiB; 0: depth only)",
    )
    status.add_argument("--wait", type=float, default=10.0, metavar="SECONDS", help="per dependency (10)")
    commands.add_parser("version", help="print the version")
    _add_operator_tools(commands, config_help)
    events = commands.add_parser("events", help="list the Lamassu event catalogue")
    events.add_argument("--json", action="store_true", help="machine-readable output")
    events.add_argument("--schemas", metavar="DIR", help="write one JSON Schema per type into DIR")
    validate = commands.add_parser(
        "validate",
        help="check event files offline (- reads stdin)",
        description="Check CloudEvent JSON files as the connector would: the envelope, then the catalogue "
        "data of a known type. One line per file; exit 0 when all are valid, 1 otherwise.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="an event file, or - for standard input")
    return parser


def _add_operator_tools(commands: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str) -> None:
    queue_help = "events (default: amqp.dead_letter_queue), replies (amqp.reply_dead_letter_queue), or a queue name"
    id_help = "only the dead letter(s) with this event id (or SQS message id, for replies)"
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description="Inspect, replay or purge a dead-letter queue. Messages looked at stay in place, in order.",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = dlq_commands.add_parser("list", help="show dead letters; every message stays in the queue")
    listing.add_argument("--queue", "-q", default="events", help=queue_help)
    listing.add_argument("--limit", "-n", type=int, default=50, help="at most this many, from the head (50)")
    listing.add_argument("--id", dest="event_id", metavar="ID", help=id_help)
    show = dlq_commands.add_parser("show", help="one dead letter in full (headers, body); it stays")
    show.add_argument("event_id", metavar="ID", help="event id, AMQP message id, or SQS message id (replies)")
    show.add_argument(
        "--queue",
        "-q",
        default=None,
        help="events (amqp.dead_letter_queue), replies (amqp.reply_dead_letter_queue), or a queue name "
        "(default: events, then replies)",
    )
    show.add_argument("--full", action="store_true", help="the whole body, however large (default: its first 64 KiB)")
    replay = dlq_commands.add_parser("replay", help="move matching dead letters back; the others stay")
    replay.add_argument("--queue", "-q", default="events", help=queue_help)
    replay.add_argument("--code", help="only this x-error-code (e.g. too_large)")
    replay.add_argument("--type", dest="type_glob", help="only event types matching this glob (e.g. 'io.lamassu.ca.*')")
    replay.add_argument("--id", dest="event_id", metavar="ID", help=id_help)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed, change nothing")
    replay.add_argument(
        "--to-original",
        action="store_true",
        help="events: publish to x-original-exchange/-routing-key (every subscriber gets them again) "
        "instead of the connector's own queue",
    )
    purge = dlq_commands.add_parser("purge", help="delete matching dead letters (only with --yes)")
    purge.add_argument("--queue", "-q", default="events", help=queue_help)
    purge.add_argument("--code", help="only this x-error-code (--code or --id is required)")
    purge.add_argument("--type", dest="type_glob", help="only event types matching this glob")
    purge.add_argument("--id", dest="event_id", metavar="ID", help=id_help)
    purge.add_argument("--yes", action="store_true", help="delete them; without it, show what would be deleted")
    send = commands.add_parser(
        "send",
        help="publish CloudEvent files to RabbitMQ",
        description="Publish structured CloudEvent JSON files to amqp.exchanges[0] (routing key = type, "
        "persistent, each confirmed). Every file is checked first with the rules of `validate`; one "
        "rejected file means nothing is sent (exit 2).",
    )
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")
    send.add_argument("--exchange", help="another exchange than amqp.exchanges[0]")
    send.add_argument("--dry-run", action="store_true", help="validate and show what would be sent, send nothing")
    for sub in (listing, show, replay, purge, send):
        sub.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return EXIT_OK
    if args.command in ("events", "validate"):
        try:
            return _catalogue_command(args)
        except BrokenPipeError:  # `events | head`: the reader has what it wanted
            # Python would report the pipe again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"lamassu-aws-connector: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.config is None and args.command != "run":
        # An operator's tool with no file talks to whatever the defaults name: real AWS SQS, say so.
        sqs = settings.sqs.endpoint_url or f"AWS SQS in {settings.sqs.region}"
        print(
            f"lamassu-aws-connector: no --config (or LAMASSU_CONFIG): built-in defaults and LAMASSU_* variables;"
            f" RabbitMQ {mask_url(settings.amqp.url)}, {sqs}",
            file=sys.stderr,
        )
    if args.command == "check-config":
        if args.connect:
            return _check_connections(settings, args.wait)
        print(yaml.safe_dump(settings.masked(), sort_keys=False), end="")
        advice = settings.visibility_advice()
        if advice is not None:
            print(f"lamassu-aws-connector: warning: {advice}", file=sys.stderr)
        return EXIT_OK
    if args.command == "status":
        return _status(settings, args)
    if args.command in ("dlq", "send"):
        return _operator_tool(settings, args)
    return _run(settings)


def _check_connections(settings: Settings, wait_seconds: float) -> int:
    from . import status  # noqa: PLC0415 - the daemon does not need it

    configure_logging("error", settings.log.format)
    checks = asyncio.run(status.check_connections(settings, wait_seconds))
    for check in checks:
        print(check.line())
    failed = [check.name for check in checks if not check.ok]
    if failed:
        print(f"lamassu-aws-connector: check-config --connect failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from . import status  # noqa: PLC0415 - the daemon does not need it

    configure_logging("error", settings.log.format)
    found = asyncio.run(status.collect(settings, url=args.url, peek=args.peek, wait_seconds=args.wait))
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print(status.render(found), end="")
    for problem in found.problems:
        print(f"lamassu-aws-connector: status: {problem}", file=sys.stderr)
    return EXIT_FAILED if found.problems else EXIT_OK


def _operator_tool(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging("warning", settings.log.format)
    code = getattr(args, "code", None)
    if code is not None and code not in KNOWN_CODES:
        # A typo would otherwise match nothing and look like success ("purged 0").
        print(
            f"lamassu-aws-connector: unknown --code {code!r}; dead-letter codes are: {', '.join(sorted(KNOWN_CODES))}",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    try:
        if args.command == "send":
            return _send(settings, args)
        if args.dlq_command == "list":
            return _dlq_list(settings, args)
        if args.dlq_command == "show":
            return _dlq_show(settings, args)
        if args.dlq_command == "purge":
            return _dlq_purge(settings, args)
        return _dlq_replay(settings, args)
    except dlq.ToolError as exc:
        print(f"lamassu-aws-connector: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        print(f"lamassu-aws-connector: {args.command} failed: {dlq.masked_error(settings, exc)}", file=sys.stderr)
        return EXIT_FAILED


def _letter_line(prefix: str, letter: dlq.DeadLetter) -> str:
    return f"{prefix}{letter.code:<18} {letter.event_type or '-':<40} {letter.event_id or '-'}"


def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    depth, letters = asyncio.run(dlq.list_dead_letters(settings, args.queue, args.limit, event_id=args.event_id))
    name = dlq.resolve_queue(settings, args.queue)
    which = f" with id {args.event_id}" if args.event_id is not None else ""
    print(f"{name}: {depth} message(s); showing {len(letters)}{which} (all left in the queue)")
    for letter in letters:
        print(
            f"{dlq.format_age(letter.age_seconds):>6}  {letter.code:<18} {letter.event_type or '-':<40} "
            f"{letter.event_id or '-':<38} {letter.message[:160]}"
        )
    return EXIT_OK


def _dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    # Without --queue, both dead-letter queues: an id copied from a log line may be an event's or a reply's.
    queues = [args.queue] if args.queue is not None else ["events", "replies"]
    looked: list[str] = []
    for queue in queues:
        depth, found = asyncio.run(dlq.show_dead_letters(settings, args.event_id, queue))
        name = dlq.resolve_queue(settings, queue)
        looked.append(f"{name} ({depth} message(s))")
        if found:
            break
    if not found:
        print(
            f"lamassu-aws-connector: no dead letter with id {args.event_id!r} in {' or '.join(looked)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"{name}: {len(found)} dead letter(s) with id {args.event_id} (of {depth}; all left in the queue)")
    for number, detail in enumerate(found, 1):
        letter = detail.letter
        print(f"\n--- {number} of {len(found)}: {letter.code}, {letter.event_type or '-'}, ", end="")
        print(f"dead-lettered {dlq.format_age(letter.age_seconds)} ago, {letter.size} bytes ---")
        print("properties:")
        for key, value in detail.properties.items():
            print(f"  {key}: {value}")
        print("headers:")
        for key, value in sorted(detail.headers.items()):
            shown = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value
            print(f"  {key}: {shown}")
        print("body:")
        shown_body = detail.body if args.full else detail.body[:SHOW_BODY_BYTES]
        print(shown_body.decode("utf-8", "replace"))
        if len(shown_body) < len(detail.body):
            print(f"[... {len(detail.body) - len(shown_body)} more bytes; --full shows the whole body]")
    return EXIT_OK


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    if args.to_original and dlq.resolve_queue(settings, args.queue) == settings.amqp.reply_dead_letter_queue:
        print(
            "lamassu-aws-connector: --to-original is for dead-lettered events; a reply is replayed to "
            f"sqs.response_queue ({settings.sqs.response_queue}) and relayed from there",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    result = asyncio.run(
        dlq.replay(
            settings,
            args.queue,
            code=args.code,
            type_glob=args.type_glob,
            event_id=args.event_id,
            dry_run=args.dry_run,
            to_original=args.to_original,
        )
    )
    for letter in result.matched if args.dry_run else []:
        print(_letter_line("would replay: ", letter))
    for error in result.errors:
        print(f"not replayed: {error}", file=sys.stderr)
    verb = "would replay" if args.dry_run else "replayed"
    count = len(result.matched) if args.dry_run else result.replayed
    print(f"{verb} {count}, kept {result.kept}, failed {result.failed} (of {result.seen} seen)")
    return EXIT_FAILED if result.failed else EXIT_OK


def _dlq_purge(settings: Settings, args: argparse.Namespace) -> int:
    if args.code is None and args.event_id is None:
        print("lamassu-aws-connector: dlq purge needs --code or --id (what to delete)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    result = asyncio.run(
        dlq.purge(
            settings,
            args.queue,
            code=args.code,
            type_glob=args.type_glob,
            event_id=args.event_id,
            dry_run=not args.yes,
        )
    )
    prefix = "purged: " if args.yes else "would purge: "
    for letter in result.matched:
        print(_letter_line(prefix, letter))
    if args.yes:
        print(f"purged {result.purged}, kept {result.kept} (of {result.seen} seen)")
    else:
        print(
            f"would purge {len(result.matched)}, keep {result.kept} (of {result.seen} seen); "
            "nothing deleted: add --yes to delete them"
        )
    return EXIT_OK


def _send(settings: Settings, args: argparse.Namespace) -> int:
    try:
        events = dlq.load_events(args.files)
    except dlq.ToolError as exc:
        print(f"lamassu-aws-connector: nothing sent: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    target = args.exchange or settings.amqp.exchanges[0]
    if args.dry_run:
        for parsed in events:
            print(f"would send: {parsed.id}  {parsed.type}  ({len(parsed.body)} bytes, routing key {parsed.type})")
        print(f"would send {len(events)} event(s) to exchange {target}; nothing sent (--dry-run)")
        return EXIT_OK

    def sent(parsed: ParsedEvent) -> None:
        print(f"sent: {parsed.id}  {parsed.type}", flush=True)

    target = asyncio.run(dlq.send_events(settings, events, args.exchange, on_sent=sent))
    print(f"sent {len(events)} event(s) to exchange {target}")
    return EXIT_OK


def _catalogue_command(args: argparse.Namespace) -> int:
    from . import catalogue_cli  # noqa: PLC0415 - the daemon does not need it

    if args.command == "validate":
        return catalogue_cli.validate_files(args.files)
    if args.schemas:
        written = catalogue_cli.write_schemas(Path(args.schemas))
        print(f"wrote {len(written)} schemas to {args.schemas}")
        return EXIT_OK
    return catalogue_cli.list_events(as_json=args.json)


def _run(settings: Settings) -> int:
    configure_logging(settings.log.level, settings.log.format)
    log = get_logger("lamassu_aws_connector")
    try:
        return asyncio.run(_serve(settings))
    except StartupError as exc:
        log.error("connector.startup_failed", error=str(exc))
        return EXIT_FAILED


async def _serve(settings: Settings) -> int:
    log = get_logger("lamassu_aws_connector")
    service = Service(settings)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info(
                "connector.signal",
                signal=signal.Signals(signum).name,
                action="graceful stop",
                detail=f"finishing in-flight work and long polls (up to {settings.sqs.wait_time_seconds} s); "
                "a second signal exits at once",
            )
            service.request_stop()
        else:
            # Unacked deliveries return to RabbitMQ and undeleted SQS messages reappear: nothing is lost.
            log.warning("connector.signal", signal=signal.Signals(signum).name, action="exit now")
            os._exit(EXIT_FAILED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return await service.run()
