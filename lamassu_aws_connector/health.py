"""Dependency health: what the pipelines learnt about each dependency, for /readyz, metrics and logs.

A dependency (``sqs_command_queue``, ``sqs_response_queue``, ``s3``) is marked down by the
pipelines when a call fails with a DEPENDENCY outcome (outcomes.py) and up again on the next call
that succeeds. Each change of state is one log line (a warning going down, info coming back) and
the gauge ``lamassu_connector_dependency_up{dependency}``: an outage of an hour is two lines, not
thousands. Progress watchdogs say when a flow holds work but has settled nothing for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)

# Dependency names, as /readyz checks and the ``dependency`` label.
COMMAND_QUEUE = "sqs_command_queue"
RESPONSE_QUEUE = "sqs_response_queue"
S3 = "s3"
REPLY_EXCHANGE = "amqp_reply_exchange"  # RabbitMQ refuses (nacks, no confirm) every reply alike


@dataclass(slots=True)
class _State:
    up: bool = True
    since: float = 0.0
    error: str = ""


class DependencyHealth:
    def __init__(self, metrics: Metrics, names: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._states = {name: _State(since=time.monotonic()) for name in names}
        for name in names:
            metrics.dependency_up.labels(name).set(1)
        # Set (and replaced) whenever a dependency comes back: see wait_recovery.
        self._recovered = asyncio.Event()

    def down(self, name: str, error: str, detail: str = "") -> None:
        state = self._states.setdefault(name, _State(since=time.monotonic()))
        if state.up:
            state.up, state.since, state.error = False, time.monotonic(), error
            self._metrics.dependency_up.labels(name).set(0)
            self._metrics.dependency_failures.labels(name, error).inc()
            log.warning("dependency.down", dependency=name, error=error, detail=detail[:300])

    def up(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None and not state.up:
            down_seconds = time.monotonic() - state.since
            state.up, state.since, state.error = True, time.monotonic(), ""
            self._metrics.dependency_up.labels(name).set(1)
            log.info("dependency.up", dependency=name, down_seconds=round(down_seconds, 1))
            recovered, self._recovered = self._recovered, asyncio.Event()
            recovered.set()

    async def wait_recovery(self, seconds: float, *, stop: asyncio.Event | None = None) -> None:
        """Back off for ``seconds``, cut short when a dependency comes back (or ``stop`` is set): what
        waits out an outage tries again as soon as one call has shown it is over, not at the end of
        its own, by then long, backoff. Only a change from down to up wakes anyone: work failing
        while its dependency is up keeps its whole backoff."""
        waits = [asyncio.ensure_future(self._recovered.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wait

    def error(self, name: str) -> str:
        """What took the dependency down ("" while it is up)."""
        state = self._states.get(name)
        return state.error if state is not None else ""

    def is_up(self, name: str) -> bool:
        state = self._states.get(name)
        return state is None or state.up

    def checks(self) -> dict[str, bool]:
        return {name: state.up for name, state in self._states.items()}


class ProgressWatch:
    """A flow that holds work and has settled nothing for ``stall_seconds`` is stalled."""

    def __init__(self, stall_seconds: float) -> None:
        self._stall_seconds = stall_seconds
        self._last_progress = time.monotonic()

    def progressed(self) -> None:
        self._last_progress = time.monotonic()

    def stalled(self, holding_work: bool) -> bool:
        if not holding_work:
            self._last_progress = time.monotonic()
            return False
        return time.monotonic() - self._last_progress > self._stall_seconds
