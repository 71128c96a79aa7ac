"""Command line: ``run``, ``check-config``, ``version``, and the operator tools ``dlq`` and ``send``.

Exit codes: 0 success or clean stop, 1 the daemon could not start or failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import yaml

from . import __version__, dlq
from .config import ConfigError, Settings, load_settings
from .logs import configure_logging, get_logger
from .service import Service, StartupError

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamassu-aws-connector", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = "YAML config file (default: $LAMASSU_CONFIG; environment variables LAMASSU_* override it)"
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)
    check = commands.add_parser("check-config", help="validate the config and print it, secrets masked")
    check.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)
    commands.add_parser("version", help="print the version")
    _add_operator_tools(commands, config_help)
    events = commands.add_parser(
        "events", help="list the Lamassu event catalogue (type, generation, direction, fields)"
    )
    events.add_argument("--json", action="store_true", help="machine-readable output")
    events.add_argument("--schemas", metavar="DIR", help="write one JSON Schema per type into DIR")
    validate = commands.add_parser("validate", help="check event files offline: envelope and catalogue data")
    validate.add_argument("files", nargs="+", metavar="FILE")
    return parser


def _add_operator_tools(commands: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str) -> None:
    queue_help = "events (default: amqp.dead_letter_queue), replies (amqp.reply_dead_letter_queue), or a queue name"
    dlq = commands.add_parser("dlq", help="inspect or replay a dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="show dead letters; every message stays in the queue")
    listing.add_argument("--queue", "-q", default="events", help=queue_help)
    listing.add_argument("--limit", "-n", type=int, default=50, help="at most this many, from the head (50)")
    replay = dlq_commands.add_parser("replay", help="move matching dead letters back; the others stay")
    replay.add_argument("--queue", "-q", default="events", help=queue_help)
    replay.add_argument("--code", help="only this x-error-code (e.g. too_large)")
    replay.add_argument("--type", dest="type_glob", help="only event types matching this glob (e.g. 'io.lamassu.ca.*')")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed, change nothing")
    replay.add_argument(
        "--to-original",
        action="store_true",
        help="events: publish to x-original-exchange/-routing-key (every subscriber gets them again) "
        "instead of the connector's own queue",
    )
    send = commands.add_parser("send", help="publish CloudEvent JSON files to the first of amqp.exchanges")
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")
    send.add_argument("--exchange", help="another exchange than amqp.exchanges[0]")
    for sub in (listing, replay, send):
        sub.add_argument("--config", "-c", default=os.environ.get("LAMASSU_CONFIG"), help=config_help)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return EXIT_OK
    if args.command in ("events", "validate"):
        return _catalogue_command(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"lamassu-aws-connector: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.command == "check-config":
        print(yaml.safe_dump(settings.masked(), sort_keys=False), end="")
        return EXIT_OK
    if args.command in ("dlq", "send"):
        return _operator_tool(settings, args)
    return _run(settings)


def _operator_tool(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging("warning", settings.log.format)
    try:
        if args.command == "send":
            try:
                events = dlq.load_events(args.files, repair_missing_id=settings.validation.repair_missing_id)
            except dlq.ToolError as exc:
                print(f"lamassu-aws-connector: nothing sent: {exc}", file=sys.stderr)
                return EXIT_BAD_CONFIG
        if args.command == "dlq" and args.dlq_command == "list":
            depth, letters = asyncio.run(dlq.list_dead_letters(settings, args.queue, args.limit))
            name = dlq.resolve_queue(settings, args.queue)
            print(f"{name}: {depth} message(s); showing {len(letters)} (all left in the queue)")
            for letter in letters:
                print(
                    f"{dlq.format_age(letter.age_seconds):>6}  {letter.code:<18} {letter.event_type or '-':<40} "
                    f"{letter.event_id or '-':<38} {letter.message[:160]}"
                )
            return EXIT_OK
        if args.command == "dlq":
            result = asyncio.run(
                dlq.replay(
                    settings,
                    args.queue,
                    code=args.code,
                    type_glob=args.type_glob,
                    dry_run=args.dry_run,
                    to_original=args.to_original,
                )
            )
            for letter in result.matched if args.dry_run else []:
                print(f"would replay: {letter.code:<18} {letter.event_type or '-':<40} {letter.event_id or '-'}")
            for error in result.errors:
                print(f"not replayed: {error}", file=sys.stderr)
            verb = "would replay" if args.dry_run else "replayed"
            count = len(result.matched) if args.dry_run else result.replayed
            print(f"{verb} {count}, kept {result.kept}, failed {result.failed} (of {result.seen} seen)")
            return EXIT_FAILED if result.failed else EXIT_OK
        target = asyncio.run(dlq.send_events(settings, events, args.exchange))
        print(f"sent {len(events)} event(s) to exchange {target}")
        return EXIT_OK
    except dlq.ToolError as exc:
        print(f"lamassu-aws-connector: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        print(f"lamassu-aws-connector: {args.command} failed: {exc!r}", file=sys.stderr)
        return EXIT_FAILED


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
            log.info("connector.signal", signal=signal.Signals(signum).name, action="graceful stop")
            service.request_stop()
        else:
            # Unacked deliveries return to RabbitMQ and undeleted SQS messages reappear: nothing is lost.
            log.warning("connector.signal", signal=signal.Signals(signum).name, action="exit now")
            os._exit(EXIT_FAILED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return await service.run()
