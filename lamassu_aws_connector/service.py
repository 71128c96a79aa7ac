"""Wiring and lifecycle: start the adapters and pipelines, wait for a stop, drain, close.

Start-up waits (with backoff) for RabbitMQ and the SQS endpoint rather than crash-looping; a
configuration that can never work (missing queue, conflicting exchange type, no AWS
credentials) stops it with one clear error. A stop drains within ``shutdown.grace_seconds``:
whatever is still unsettled then is not acked, so RabbitMQ delivers it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from contextlib import AsyncExitStack
from typing import Any

from . import __version__
from .actions import LAMASSU_CA, ActionsUnusable, ReplyActions, open_reply_actions
from .amqp import AmqpGateway, TlsError
from .claimcheck import BucketMissing, ClaimCheck
from .commands import CommandApi, ConfigCache
from .config import Settings
from .correlation import CorrelationTable
from .events import CloudEvent
from .fleet import Fleet
from .health import COMMAND_QUEUE, REPLY_EXCHANGE, RESPONSE_QUEUE, S3, DependencyHealth
from .http import OpsServer
from .inbound import InboundPipeline
from .logs import get_logger
from .metrics import Metrics, counter_total
from .outbound import OutboundPipeline
from .outcomes import QUEUE_MISSING_CODES, STARTUP, aws_error_code, failed_and, is_unavailable, normalized_sqs_code
from .sqs import QueueInfo, SqsGateway

log = get_logger(__name__)


class StartupError(Exception):
    pass


class Service:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self.outbound: OutboundPipeline | None = None
        self.inbound: InboundPipeline | None = None
        self.amqp: AmqpGateway | None = None
        self.sqs: SqsGateway | None = None
        self.correlation = CorrelationTable(settings.correlation, self.metrics)
        dependencies: tuple[str, ...] = (COMMAND_QUEUE, RESPONSE_QUEUE, REPLY_EXCHANGE)
        if settings.claim_check.bucket or settings.claim_check.reply_buckets:
            dependencies += (S3,)
        if settings.actions.enabled:  # reply actions (actions.py)
            dependencies += (LAMASSU_CA,)
        self.health = DependencyHealth(self.metrics, dependencies)
        self.commands: CommandApi | None = None
        self.config_cache: ConfigCache | None = None  # GET /v1/config (actions.config_cache)
        self.fleet: Fleet | None = None
        if settings.http.commands:
            token = settings.http.auth_token.get_secret_value() if settings.http.auth_token else None
            self.config_cache = (
                ConfigCache(settings.actions.config_cache_seconds) if settings.actions.config_cache else None
            )
            self.commands = CommandApi(
                self.correlation, self.metrics, settings.http.commands_timeout_seconds, token, self.config_cache
            )
        routes = self.commands.routes() if self.commands is not None else []
        self.http = OpsServer(settings.http, self.metrics, self.readiness, routes)
        self.metrics.build_info.labels(version=__version__).set(1)

    def _observe_relayed(self, reply: CloudEvent) -> None:
        """The config cache sees every reply relayed here; a reply about a CA drops every replica's."""
        assert self.config_cache is not None
        if self.config_cache.observe(reply) and self.fleet is not None:
            self.fleet.announce("config_drop", {})

    def readiness(self) -> dict[str, bool]:
        """What /readyz reports: every part must be up for the pod to receive traffic.

        ``sqs``: the endpoint answers; ``sqs_command_queue`` / ``sqs_response_queue`` / ``s3``: the
        last call to it succeeded (a missing queue, refused credentials, KMS: down); the two
        ``*_progress`` checks: the flow is not holding work without settling any for
        ``health.stall_seconds``.
        """
        checks = {
            "amqp_connection": self.amqp is not None and self.amqp.connected,
            "amqp_consumer": self.amqp is not None and self.amqp.consuming,
            "sqs": self.sqs is not None and self.sqs.available and self.outbound is not None,
            "pollers": self.inbound is not None and self.inbound.pollers_running == self.settings.sqs.pollers,
        }
        checks.update(self.health.checks())
        checks["outbound_progress"] = self.outbound is not None and not self.outbound.stalled
        checks["reply_progress"] = self.inbound is not None and not self.inbound.stalled
        return checks

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        serving = asyncio.create_task(self._serve())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done() and not self.started.is_set():
                log.info("connector.stopped_during_startup")
                serving.cancel()
            try:
                return await serving
            except asyncio.CancelledError:
                if serving.cancelled() and self._stop.is_set():
                    return 0
                raise
        finally:
            stopping.cancel()

    async def _serve(self) -> int:
        settings = self.settings
        log.info("connector.starting", version=__version__, config=settings.masked())
        advice = settings.visibility_advice()
        if advice is not None:
            log.warning("config.visibility_outlasts_callers", detail=advice)
        async with AsyncExitStack() as stack:
            try:
                await self.http.start()
            except OSError as exc:
                raise StartupError(f"cannot listen on {settings.http.host}:{settings.http.port}: {exc}") from exc
            stack.push_async_callback(self.http.stop)
            self.sqs = sqs = await stack.enter_async_context(SqsGateway(settings.sqs, self.metrics))
            command_queue = await self._resolve(sqs, settings.sqs.command_queue)
            response_queue = await self._resolve(sqs, settings.sqs.response_queue)
            claim_check = await self._claim_check(stack)
            self.amqp = amqp = AmqpGateway(settings.amqp, self.metrics)
            stack.push_async_callback(amqp.close)
            try:
                await amqp.connect()
            except TlsError as exc:
                raise StartupError(str(exc)) from exc
            correlation = self.correlation
            self.outbound = OutboundPipeline(
                settings,
                amqp,
                sqs,
                command_queue,
                self.metrics,
                claim_check=claim_check,
                correlation=correlation,
                health=self.health,
            )
            actions = await self._reply_actions(stack, sqs, command_queue)
            self.inbound = InboundPipeline(
                settings,
                amqp,
                sqs,
                response_queue,
                self.metrics,
                claim_check=claim_check,
                correlation=correlation,
                health=self.health,
                actions=actions,
                on_relayed=self._observe_relayed if self.config_cache is not None else None,
            )
            self.correlation.start()
            stack.push_async_callback(self.correlation.stop)
            if settings.correlation.enabled and settings.correlation.fleet:
                cache = self.config_cache
                fleet = Fleet(
                    settings, amqp, self.correlation, self.metrics, on_config_drop=cache.drop if cache else None
                )
                self.fleet = fleet
                try:
                    await fleet.start()
                except Exception as exc:
                    raise StartupError(f"cannot set up the AMQP topology: {exc}") from exc
                stack.push_async_callback(fleet.stop)
            if self.commands is not None:
                self.commands.attach(self.outbound, sqs, command_queue)
            try:
                await self.outbound.start()
                await self.inbound.start()
            except Exception as exc:
                raise StartupError(f"cannot set up the AMQP topology: {exc}{_topology_hint(exc)}") from exc
            self.started.set()
            _settle_heap()
            log.info("connector.started")
            self._start_background(stack, command_queue, response_queue)
            await self._stop.wait()
            await self._shut_down()
        log.info("connector.stopped")
        return 0

    async def _shut_down(self) -> None:
        """Drain within the grace, while RabbitMQ, SQS and the fleet are still up (the exit stack closes them)."""
        assert self.outbound is not None and self.inbound is not None
        grace = self.settings.shutdown.grace_seconds
        log.info("connector.stopping", grace_seconds=grace)
        started = time.monotonic()
        if self.commands is not None:
            self.commands.stop_accepting()
        try:
            await asyncio.wait_for(self._drain(), grace)
        except TimeoutError:
            log.warning(
                "connector.grace_expired",
                detail="unsettled deliveries are left unacked; RabbitMQ will deliver them again",
            )
            await asyncio.gather(self.outbound.abort(), self.inbound.abort())
        if self.commands is not None:
            # The API's waiting callers may still get their replies for what is left of the grace;
            # then they are answered 503 at once, not left to their timeout.
            await self.commands.close(grace - (time.monotonic() - started))

    def _start_background(self, stack: AsyncExitStack, command_queue: QueueInfo, response_queue: QueueInfo) -> None:
        """The periodic depth samples and summary line, cancelled on the way out."""
        settings = self.settings
        if settings.health.depth_seconds > 0:
            depths = self._sample_depths(settings.health.depth_seconds, command_queue, response_queue)
            stack.callback(asyncio.create_task(depths, name="depths").cancel)
        if settings.log.summary_seconds > 0:
            summary = self._summarize(settings.log.summary_seconds)
            stack.callback(asyncio.create_task(summary, name="summary").cancel)

    async def _sample_depths(self, interval: float, command_queue: QueueInfo, response_queue: QueueInfo) -> None:
        """The depth gauges, at a low rate: a dashboard's view of both sides without a second tool."""
        assert self.amqp is not None and self.sqs is not None
        amqp = self.settings.amqp
        names = [amqp.queue, amqp.dead_letter_queue, amqp.reply_dead_letter_queue]
        while True:
            with contextlib.suppress(Exception):  # a sample missed is a gauge a minute old, nothing more
                if self.amqp.connected:
                    depths = await asyncio.wait_for(self.amqp.queue_depths(names), interval)
                    for name, (ready, _) in depths.items():
                        self.metrics.queue_depth.labels("amqp", name).set(ready)
            for queue, dependency in ((command_queue, COMMAND_QUEUE), (response_queue, RESPONSE_QUEUE)):
                try:
                    visible, hidden = await self.sqs.depth(queue)
                except Exception as exc:
                    # A queue deleted while no event flows: the sample is what notices (readiness).
                    if normalized_sqs_code(aws_error_code(exc)) in QUEUE_MISSING_CODES:
                        self.health.down(dependency, aws_error_code(exc), str(exc))
                    continue
                if normalized_sqs_code(self.health.error(dependency)) in QUEUE_MISSING_CODES:
                    self.health.up(dependency)  # only what a sample found missing; sends judge the rest
                self.metrics.queue_depth.labels("sqs", queue.name).set(visible)
                self.metrics.queue_in_flight.labels(queue.name).set(hidden)
            await asyncio.sleep(interval)

    async def _summarize(self, interval: float) -> None:
        """One info line per interval: what both flows did since the last one, and the rates."""
        m = self.metrics
        counters = {
            "consumed": m.events_consumed,
            "forwarded": m.events_forwarded,
            "skipped": m.events_skipped,
            "dead_lettered": m.events_dead_lettered,
            "replies_received": m.replies_received,
            "replies_relayed": m.replies_relayed,
            "replies_dead_lettered": m.replies_dead_lettered,
        }
        last = {name: counter_total(counter) for name, counter in counters.items()}
        while True:
            await asyncio.sleep(interval)
            now = {name: counter_total(counter) for name, counter in counters.items()}
            delta = {name: int(now[name] - last[name]) for name in counters}
            last = now
            log.info(
                "connector.summary",
                interval_seconds=interval,
                **delta,
                forwarded_per_second=round(delta["forwarded"] / interval, 2),
                relayed_per_second=round(delta["replies_relayed"] / interval, 2),
                down=sorted(name for name, ok in self.readiness().items() if not ok),
            )

    async def _drain(self) -> None:
        assert self.outbound is not None and self.inbound is not None
        await asyncio.gather(self.outbound.stop(), self.inbound.stop())

    async def _resolve(self, sqs: SqsGateway, name: str) -> QueueInfo:
        async for attempt in STARTUP.retrying(
            failed_and(is_unavailable),
            before_sleep=lambda state: log.warning(
                "sqs.unavailable", sqs_queue=name, attempt=state.attempt_number, error=_outcome_error(state)
            ),
        ):
            with attempt:
                try:
                    return await sqs.resolve(name, create=self.settings.sqs.create_queues)
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    raise StartupError(f"cannot use SQS queue {name!r}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _reply_actions(
        self, stack: AsyncExitStack, sqs: SqsGateway, command_queue: QueueInfo
    ) -> ReplyActions | None:
        """The reply actions and their Lamassu CA client (closed on the way out), when actions.enabled."""
        if not self.settings.actions.enabled:
            return None
        assert self.outbound is not None
        opened = open_reply_actions(
            self.settings, self.metrics, self.health, outbound=self.outbound, sqs=sqs, command_queue=command_queue
        )
        try:
            return await stack.enter_async_context(opened)
        except ActionsUnusable as exc:
            raise StartupError(str(exc)) from exc

    async def _claim_check(self, stack: AsyncExitStack) -> ClaimCheck | None:
        """The S3 client when a claim-check bucket or reply buckets are set; the bucket must exist.

        Datarefs are closed by default: with neither set, nothing is ever read from S3 (a reply's
        dataref is relayed as it came)."""
        config = self.settings.claim_check
        if not config.bucket and not config.reply_buckets:
            return None
        claim_check = await stack.enter_async_context(ClaimCheck(config, self.settings.sqs, self.metrics))
        claim_check.health = self.health
        if not config.bucket:
            return claim_check
        async for attempt in STARTUP.retrying(
            failed_and(is_unavailable),
            before_sleep=lambda state: log.warning(
                "s3.unavailable", bucket=config.bucket, attempt=state.attempt_number, error=_outcome_error(state)
            ),
        ):
            with attempt:
                try:
                    await claim_check.check_bucket(create=self.settings.sqs.create_queues)
                except BucketMissing as exc:
                    raise StartupError(str(exc)) from exc
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    raise StartupError(f"cannot use S3 bucket {config.bucket!r}: {exc}") from exc
        log.info("claimcheck.enabled", bucket=config.bucket, resolve_replies=config.resolve_replies)
        return claim_check


def _outcome_error(state: Any) -> str | None:
    return repr(state.outcome.exception()) if state.outcome is not None else None


def _settle_heap() -> None:
    """Once started: what imports and start-up built lives as long as the process, so the cyclic
    collector stops re-scanning it (gc.freeze), and young collections run ten times less often
    than Python's default (700 allocations).

    Measured: the collector cost ≈ 5 % of the connector's CPU per event (bench/run.py, gc off vs on);
    each event allocates only short-lived, acyclic objects, which reference counting frees anyway.
    """
    gc.freeze()
    threshold, *older = gc.get_threshold()
    gc.set_threshold(max(threshold, 7000), *older)


def _topology_hint(exc: BaseException) -> str:
    """What an operator can do about a topology error RabbitMQ names too tersely."""
    if "in exclusive use" in str(exc):
        return (
            " — another consumer holds the queue exclusively (Lamassu v1's cloud-proxy does): stop it"
            " before starting the connector (docs/deployment.md, 'Beside Lamassu v1')"
        )
    return ""
