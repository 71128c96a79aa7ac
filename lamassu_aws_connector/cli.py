"""Command line: ``run``, ``check-config`` and ``version``.

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

from . import __version__
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
    events = commands.add_parser(
        "events", help="list the Lamassu event catalogue (type, generation, direction, fields)"
    )
    events.add_argument("--json", action="store_true", help="machine-readable output")
    events.add_argument("--schemas", metavar="DIR", help="write one JSON Schema per type into DIR")
    validate = commands.add_parser("validate", help="check event files offline: envelope and catalogue data")
    validate.add_argument("files", nargs="+", metavar="FILE")
    return parser


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
    return _run(settings)


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
