"""``POST /v1/commands`` (``http.commands: true``): send one CloudEvent to the command queue, answer with its reply.

The request/response form of the two flows, for callers that want an answer now (the original
connector's ``GET /v1/config``, generalized): the body is a structured CloudEvent; it is validated
like an outbound event (envelope, then catalogue data), sent to ``lamassu-command`` with the same
attributes, and the handler waits for the reply the correlation table matches to it (it is still
relayed to RabbitMQ as usual). Answers: 200 with the reply, 400 invalid event, 413 too large,
503 not ready or SQS unreachable, 502 SQS refused it, 504 no reply within
``http.commands_timeout_seconds``. A reply received by another replica is not seen here (504).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from .catalogue import Direction, check_data
from .correlation import CorrelationTable, correlation_id
from .events import Rejection, parse_structured
from .logs import get_logger
from .metrics import Metrics
from .outbound import OutboundPipeline
from .outcomes import ErrorCode, Outcome, aws_error_code, classify_sqs_entry_failure, classify_sqs_error
from .sqs import QueueInfo, SqsGateway, message_attributes_size

log = get_logger(__name__)


class CommandApi:
    def __init__(self, correlation: CorrelationTable, metrics: Metrics, timeout_seconds: float) -> None:
        self._correlation = correlation
        self._metrics = metrics
        self._timeout = timeout_seconds
        self._target: tuple[OutboundPipeline, SqsGateway, QueueInfo] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/commands", self.post_command)]

    def attach(self, outbound: OutboundPipeline, sqs: SqsGateway, queue: QueueInfo) -> None:
        """Called once the pipelines run; until then the endpoint answers 503."""
        self._target = (outbound, sqs, queue)

    async def post_command(self, request: web.Request) -> web.Response:
        if self._target is None:
            return self._answer("unavailable", 503, {"error": "not_ready", "message": "the connector is starting"})
        outbound, sqs, queue = self._target
        try:
            parsed = parse_structured(await request.read(), repair_missing_id=False)
        except Rejection as rejection:
            return self._answer("invalid", 400, {"error": rejection.code.value, "message": rejection.message})
        event = parsed.event
        problem = check_data(event.type, event.data, Direction.COMMAND)
        if problem is not None:
            return self._answer("invalid", 400, {"error": ErrorCode.INVALID_DATA.value, "message": problem})
        entry = outbound.build_entry(parsed, request.headers)
        size = len(parsed.body) + message_attributes_size(entry["MessageAttributes"])
        if size > queue.max_message_bytes:
            message = f"event is {size} bytes with its attributes; SQS queue {queue.name} accepts at most"
            body = {"error": ErrorCode.TOO_LARGE.value, "message": f"{message} {queue.max_message_bytes}"}
            return self._answer("invalid", 413, body)
        fields = {"event_id": event.id, "event_type": event.type, "queue": queue.name}
        key = correlation_id(event)
        reply = self._correlation.wait_for_reply(event)
        try:
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
            try:
                answer = await asyncio.wait_for(asyncio.shield(reply), self._timeout)
            except TimeoutError:
                log.warning("commands.timeout", **fields, correlation_id=key, timeout_seconds=self._timeout)
                body = {"error": "timeout", "message": f"no reply within {self._timeout} s", "correlation_id": key}
                return self._answer("timeout", 504, body)
        finally:
            self._correlation.stop_waiting(event)
            reply.cancel()
        self._metrics.api_commands.labels("replied").inc()
        return web.Response(
            body=orjson.dumps(answer.model_dump(mode="json", exclude_unset=True)),
            content_type="application/cloudevents+json",
        )

    def _answer(self, outcome: str, status: int, body: dict[str, Any]) -> web.Response:
        self._metrics.api_commands.labels(outcome).inc()
        return web.json_response(body, status=status)
