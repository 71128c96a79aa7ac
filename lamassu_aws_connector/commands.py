"""``POST /v1/commands`` (``http.commands: true``): send one CloudEvent to the command queue, answer with its reply.

The request/response form of the two flows, for callers that want an answer now (the original
connector's ``GET /v1/config``, generalized): the body is a structured CloudEvent; it is validated
like an outbound event (envelope, then catalogue data), sent to ``lamassu-command`` with the same
attributes, and the handler waits for the reply the correlation table matches to it (it is still
relayed to RabbitMQ as usual). Answers: 200 with the reply, 400 invalid event or a type that is
not a tracked command (catalogue commands with a known reply, or ``correlation.command_types``),
401 without the bearer token (``http.auth_token``), 409 when the correlation id is outstanding (a
caller waits on it, or a command sent with it still awaits its reply), 413 too large, 503 not ready,
stopping, or SQS (or S3, for a claim-checked command) unreachable, 502 SQS refused it, 504 no reply
within ``http.commands_timeout_seconds``. In a fleet, a reply relayed by another replica is announced to
this one (fleet.py), so any replica answers.

``GET /v1/config`` (``actions.config_cache``): the original connector's endpoint. The AWS IoT
configuration the Lambda answers ``io.lamassu.iotcore.config.request`` with, asked for once (one
request for any number of callers) and kept for ``actions.config_cache_seconds``; every
``io.lamassu.iotcore.config.response`` relayed here refreshes it, every reply about a CA
(``io.lamassu.iotcore.ca.*``: a registration, a status change) drops it. Same token as the commands.

The event passes the outbound flow's checks (``OutboundPipeline.entry_for``: characters SQS refuses,
size, claim-check) and its data is always checked against the catalogue, whatever
``validation.data`` says: a caller waiting for an answer can fix it now.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson
from aiohttp import web

from .catalogue import Direction, check_data
from .claimcheck import Abandoned
from .correlation import CorrelationTable, correlation_id
from .events import CloudEvent, ParsedEvent, Rejection, parse_structured
from .logs import get_logger
from .metrics import Metrics
from .outbound import OutboundPipeline
from .outcomes import ErrorCode, Outcome, aws_error_code, classify_sqs_entry_failure, classify_sqs_error
from .sqs import QueueInfo, SqsGateway

log = get_logger(__name__)

CONFIG_REQUEST = "io.lamassu.iotcore.config.request"
CONFIG_RESPONSE = "io.lamassu.iotcore.config.response"
_CA_REPLIES = "io.lamassu.iotcore.ca."  # a CA registered, imported, or its status changed in AWS IoT


class ConfigCache:
    """The latest AWS IoT configuration a Lambda answered with, for ``GET /v1/config``."""

    def __init__(self, max_age_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age_seconds
        self._clock = clock
        self._kept: tuple[dict[str, Any], float] | None = None

    def observe(self, reply: CloudEvent) -> bool:
        """Every reply relayed (and every one a ``GET /v1/config`` waited for) passes here; True for a
        reply about a CA, which drops the configuration (the other replicas' too: fleet.py)."""
        if reply.type == CONFIG_RESPONSE and isinstance(reply.data, dict):
            self._kept = (reply.data, self._clock())
        elif reply.type.startswith(_CA_REPLIES):
            self.drop()  # the registered CAs it lists may have changed
            return True
        return False

    def drop(self) -> None:
        self._kept = None

    def get(self) -> tuple[dict[str, Any], float] | None:
        """The configuration and its age in seconds, while younger than the maximum age."""
        if self._kept is None:
            return None
        data, stored_at = self._kept
        age = self._clock() - stored_at
        return (data, age) if age < self._max_age else None


Render = Callable[[CloudEvent], web.Response]
# GET /v1/config callers that waited for another caller's request: counted by its answer.
_FOLLOWER_OUTCOMES = {200: "cached", 400: "invalid", 413: "invalid", 502: "rejected", 504: "timeout"}


class CommandApi:
    def __init__(
        self,
        correlation: CorrelationTable,
        metrics: Metrics,
        timeout_seconds: float,
        token: str | None,
        config_cache: ConfigCache | None = None,
    ) -> None:
        self._correlation = correlation
        self._config_cache = config_cache
        self._config_fetch: asyncio.Future[tuple[int, bytes, dict[str, str]]] | None = None  # GET /v1/config
        self._metrics = metrics
        self._timeout = timeout_seconds
        self._expected = token.encode() if token else None
        self._target: tuple[OutboundPipeline, SqsGateway, QueueInfo] | None = None
        # A stop: no new command is taken, and callers still waiting are answered at once when the
        # drain is over (their replies are still relayed to RabbitMQ), not left to their timeout.
        self._stopping = False
        self._closed = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def routes(self) -> list[web.RouteDef]:
        routes = [web.post("/v1/commands", self.post_command)]
        if self._config_cache is not None:
            routes.append(web.get("/v1/config", self.get_config))
        return routes

    def stop_accepting(self) -> None:
        """The connector is stopping: new commands get 503; callers already waiting keep waiting."""
        self._stopping = True

    async def close(self, wait_seconds: float) -> None:
        """Give waiting callers up to ``wait_seconds`` for their replies, then answer the rest with 503."""
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(wait_seconds, 0.0))
        self._closed.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5.0)

    def attach(self, outbound: OutboundPipeline, sqs: SqsGateway, queue: QueueInfo) -> None:
        """Called once the pipelines run; until then the endpoint answers 503."""
        self._target = (outbound, sqs, queue)

    def _authorized(self, request: web.Request) -> bool:
        if self._expected is None:  # only possible on a loopback address (config.py)
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # RFC 7235: the scheme is case-insensitive; the token is compared in constant time.
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._expected)

    async def post_command(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._command)

    async def get_config(self, request: web.Request) -> web.Response:
        return await self._guarded(request, self._config)

    async def _guarded(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.Response:
        if not self._authorized(request):
            denied = self._answer("unauthorized", 401, {"error": "unauthorized", "message": "bearer token required"})
            denied.headers["WWW-Authenticate"] = 'Bearer realm="lamassu-aws-connector"'
            return denied
        if self._target is None:
            return self._answer("unavailable", 503, {"error": "not_ready", "message": "the connector is starting"})
        if self._stopping:
            return self._answer("unavailable", 503, {"error": "stopping", "message": "the connector is stopping"})
        self._in_flight += 1
        self._idle.clear()
        try:
            response: web.Response = await handler(request)
            return response
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _config(self, _: web.Request) -> web.Response:
        assert self._config_cache is not None
        kept = self._config_cache.get()
        if kept is not None:
            data, age = kept
            self._metrics.api_commands.labels("cached").inc()
            return web.json_response(data, headers={"Age": str(int(age))})
        # One config.request for every caller that comes while it is out; its answer (a reply, 504,
        # 502, 503) is every one's. Shielded: a caller that goes away does not take it from the others.
        fetch = self._config_fetch
        if fetch is not None and not fetch.done():
            status, body, headers = await asyncio.shield(fetch)
            self._metrics.api_commands.labels(_FOLLOWER_OUTCOMES.get(status, "unavailable")).inc()
        else:
            fetch = self._config_fetch = asyncio.ensure_future(self._fetch_config())
            status, body, headers = await asyncio.shield(fetch)
        return web.Response(body=body, status=status, headers=headers)

    async def _fetch_config(self) -> tuple[int, bytes, dict[str, str]]:
        request_event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "lamassu-aws-connector",
            "type": CONFIG_REQUEST,
            "time": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {},
        }
        parsed = parse_structured(orjson.dumps(request_event), repair_missing_id=False)
        response = await self._send(parsed, {}, self._render_config)
        headers = {name: value for name, value in response.headers.items() if name in ("Content-Type", "Age")}
        return response.status, bytes(cast(bytes, response.body)), headers

    def _render_config(self, reply: CloudEvent) -> web.Response:
        assert self._config_cache is not None
        self._config_cache.observe(reply)
        if reply.type == CONFIG_RESPONSE and isinstance(reply.data, dict):
            self._metrics.api_commands.labels("replied").inc()
            return web.json_response(reply.data, headers={"Age": "0"})
        message = f"the Lambda answered {CONFIG_REQUEST} with {reply.type[:200]!r}, without a configuration"
        return self._answer("rejected", 502, {"error": "unexpected_reply", "message": message})

    def _render_event(self, reply: CloudEvent) -> web.Response:
        self._metrics.api_commands.labels("replied").inc()
        return web.Response(
            body=orjson.dumps(reply.model_dump(mode="json", exclude_unset=True)),
            content_type="application/cloudevents+json",
        )

    async def _command(self, request: web.Request) -> web.Response:
        try:
            parsed = parse_structured(await request.read(), repair_missing_id=False)
        except Rejection as rejection:
            return self._answer("invalid", 400, {"error": rejection.code.value, "message": rejection.message})
        event = parsed.event
        if not self._correlation.tracks(event.type):
            message = (
                f"{event.type[:200]!r} is not a tracked command type (catalogue commands with a known reply, "
                "or correlation.command_types)"
            )
            return self._answer("invalid", 400, {"error": "untracked_type", "message": message})
        problem = check_data(event.type, event.data, Direction.COMMAND, has_data_base64=event.data_base64 is not None)
        if problem is not None:
            return self._answer("invalid", 400, {"error": ErrorCode.INVALID_DATA.value, "message": problem})
        return await self._send(parsed, request.headers, self._render_event)

    async def _send(self, parsed: ParsedEvent, headers: Mapping[str, Any], render: Render) -> web.Response:
        """Send a checked command to SQS and answer with ``render(reply)``, or the error that stopped it."""
        assert self._target is not None
        outbound, sqs, queue = self._target
        event = parsed.event
        key = correlation_id(event)
        if self._correlation.outstanding(event):
            message = (
                "a command with this correlation id still awaits its reply (correlation.timeout_seconds); use a new id"
            )
            return self._answer("conflict", 409, {"error": "conflict", "message": message, "correlation_id": key})
        # Registered before anything is awaited, so a second caller with the same id gets 409.
        reply = self._correlation.wait_for_reply(event)
        fields = {"event_id": event.id, "event_type": event.type, "queue": queue.name}
        deadline = time.monotonic() + self._timeout
        try:
            try:
                entry, _ = await outbound.entry_for(parsed, headers, fields, lambda: time.monotonic() < deadline)
            except Rejection as rejection:
                status = 413 if rejection.code is ErrorCode.TOO_LARGE else 400
                return self._answer("invalid", status, {"error": rejection.code.value, "message": rejection.message})
            except Abandoned:
                body = {"error": "s3_unavailable", "message": "the claim-check store failed"}
                return self._answer("unavailable", 503, body)
            try:
                response = await sqs.send_batch(queue, [{"Id": "0", **entry}])
            except Exception as exc:
                log.warning("commands.sqs_send_failed", **fields, error=aws_error_code(exc))
                if classify_sqs_error(exc) is Outcome.PERMANENT:
                    detail = f"{aws_error_code(exc)}: {str(exc)[:300]}"
                    return self._answer("rejected", 502, {"error": ErrorCode.SQS_REJECTED.value, "message": detail})
                return self._answer("unavailable", 503, {"error": "sqs_unavailable", "message": aws_error_code(exc)})
            for failure in response.get("Failed", []):
                code = str(failure.get("Code", "unknown"))
                detail = f"{code}: {failure.get('Message', '')}"
                if classify_sqs_entry_failure(code, others_succeeded=False) is Outcome.PERMANENT:
                    return self._answer("rejected", 502, {"error": ErrorCode.SQS_REJECTED.value, "message": detail})
                return self._answer("unavailable", 503, {"error": "sqs_unavailable", "message": detail})
            self._correlation.command_sent(event, track=True)
            log.info("commands.sent", **fields, correlation_id=key)
            return await self._answer_with(reply, fields, key, render)
        finally:
            self._correlation.stop_waiting(event)
            reply.cancel()

    async def _answer_with(
        self, reply: asyncio.Future[CloudEvent], fields: dict[str, Any], key: str, render: Render
    ) -> web.Response:
        """The reply (as ``render`` writes it), or 504 after the timeout, or 503 when the connector stops first."""
        closed: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
        waited: set[asyncio.Future[Any]] = {reply, closed}
        try:
            done, _ = await asyncio.wait(waited, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if reply in done:
            return render(reply.result())
        if closed in done:
            log.warning("commands.stopped_waiting", **fields, correlation_id=key)
            body = {
                "error": "stopping",
                "message": "the connector stopped before the reply came; it is still relayed to RabbitMQ",
                "correlation_id": key,
            }
            return self._answer("unavailable", 503, body)
        log.warning("commands.timeout", **fields, correlation_id=key, timeout_seconds=self._timeout)
        body = {"error": "timeout", "message": f"no reply within {self._timeout} s", "correlation_id": key}
        return self._answer("timeout", 504, body)

    def _answer(self, outcome: str, status: int, body: dict[str, Any]) -> web.Response:
        self._metrics.api_commands.labels(outcome).inc()
        return web.json_response(body, status=status)
