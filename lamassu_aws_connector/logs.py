"""structlog set-up: JSON lines in production, a readable console on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _orjson_dumps(obj: Any, default: Any = None) -> bytes:
    return orjson.dumps(obj, default=default or str)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    on_terminal = sys.stderr.isatty()
    use_console = fmt == "console" or (fmt == "auto" and on_terminal)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_console:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=on_terminal)]
        factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries (aiormq, aio-pika, botocore) log through the standard library: at warning, on the same
    # stream and in the same format, so a JSON log stays one JSON object per line (tracebacks included).
    foreign: list[Any] = [*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=on_terminal)
        if use_console
        else structlog.processors.JSONRenderer(serializer=lambda obj, **_: orjson.dumps(obj, default=str).decode())
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([] if use_console else [structlog.processors.format_exc_info]),
                renderer,
            ],
        )
    )
    handler.addFilter(_Repeats())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


class _Repeats(logging.Filter):
    """A library line repeated within a minute is shown once, and the next one says how many were left
    out: a credential refresh failing on every call (aiobotocore, with a traceback each) would otherwise
    flood the log for as long as an outage lasts."""

    def __init__(self, window_seconds: float = 60.0, remembered: int = 1000) -> None:
        super().__init__()
        self._window = window_seconds
        self._remembered = remembered
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # when last shown, left out since

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        shown_at, left_out = self._seen.get(key, (None, 0))
        if shown_at is not None and record.created - shown_at < self._window:
            self._seen[key] = (shown_at, left_out + 1)
            return False
        if len(self._seen) >= self._remembered:
            self._seen.clear()
        self._seen[key] = (record.created, 0)
        if left_out:
            record.repeats_left_out = left_out
        return True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
