"""Inbound pipeline: SQS ``lamassu-response`` -> RabbitMQ ``amqp.reply_exchange``, at-least-once.

Every received SQS message ends in exactly one of these ways, and is deleted from SQS only after it:

* relayed: published to the reply exchange (routing key = event type) and confirmed by RabbitMQ;
* dead-lettered: published (confirmed) to ``amqp.reply_dead_letter_queue`` with ``x-error-code``
  and the SQS message id and receive count, when it can never be relayed as it is: not a valid
  CloudEvent, a dataref that names nothing readable, an id or type AMQP cannot carry (shortstr
  limits), unroutable ``sqs.unroutable_max_receives`` times, or publishing it failed
  ``sqs.reply_max_attempts`` times for reasons that are neither the reply's nor an outage's;
* left in SQS: RabbitMQ is unavailable, S3 is (for a dataref), or nothing is bound for the reply's
  type yet. It becomes visible again and is retried.

A nack or a missing confirm spends the reply's attempts only while it is the reply's own trouble:
once ``STREAM_FAILURE_REPLIES`` different replies have failed within a minute with no publish
confirmed since (a subscriber queue full with ``reject-publish``, a broker out of memory), it is the
exchange's, an outage: ``amqp_reply_exchange`` goes down in ``/readyz`` and the replies wait,
spending nothing, until a publish is confirmed again, instead of flushing the stream into the
dead-letter queue. A reply waits so for at most ``OUTAGE_HOLD_SECONDS`` (then spends its attempts):
nothing tells a burst of replies that fail for their own reason from an outage.

So every reply settles or goes back to SQS within bounded time, and one poison reply never holds
its batch: the replies of a batch that are settled are deleted while the others still wait. While
publishes wait for RabbitMQ, the messages' visibility is extended so they are not delivered to
another poller; pollers do not receive while the AMQP connection is down. A flow that holds
batches and settles nothing for ``health.stall_seconds`` reports ``reply_progress`` down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import DeliveryMode
from aiormq.exceptions import PublishError

from . import tracing
from .actions import ReplyActions
from .amqp import AmqpGateway, Outgoing, string_headers
from .claimcheck import ClaimCheck, Unresolvable
from .config import APP_ID, Settings
from .correlation import CorrelationTable
from .events import (
    CloudEvent,
    ParsedEvent,
    Rejection,
    carried_tracestate,
    identify,
    is_w3c_traceparent,
    parse_structured,
)
from .health import REPLY_EXCHANGE, RESPONSE_QUEUE, S3, DependencyHealth, ProgressWatch
from .logs import get_logger
from .metrics import Metrics
from .outcomes import (
    POLLER,
    REPLY_PUBLISH,
    SQS_DELETE,
    ErrorCode,
    Outcome,
    amqp_limit_problem,
    aws_error_code,
    classify_amqp_publish_error,
    dead_letter_headers,
    failed_and,
)
from .sqs import QueueInfo, SqsGateway

log = get_logger(__name__)

_BATCHES_PER_POLLER = 4
# A batch whose replies are not all settled after this long has the settled ones deleted already,
# so a reply that waits (for RabbitMQ, for its attempts) never makes the others come twice.
_EARLY_DELETE_SECONDS = 1.0


STREAM_FAILURE_REPLIES = 3  # different replies failing, none confirmed: the exchange's trouble, not theirs
STREAM_FAILURE_WINDOW_SECONDS = 60.0  # ... within this long of each other
# A reply held through a declared outage spends its attempts again after this long: a burst of replies
# that fail for their own reason (bigger than a queue's max-length-bytes) cannot be told apart from an
# outage, and must not be held for ever.
OUTAGE_HOLD_SECONDS = 300.0


class _PublishFailed(Exception):
    """A reply cannot be published: ``code`` says why, for its dead letter."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Received:
    """One SQS message and what became of it."""

    key: str
    message: dict[str, Any]
    received_at: float
    settled: bool = False  # relayed or dead-lettered: delete it
    deleted: bool = False

    @property
    def sqs_message_id(self) -> str:
        return str(self.message.get("MessageId", ""))

    @property
    def receive_count(self) -> int:
        return int(self.message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


class InboundPipeline:
    def __init__(
        self,
        settings: Settings,
        amqp: AmqpGateway,
        sqs: SqsGateway,
        response_queue: QueueInfo,
        metrics: Metrics,
        *,
        claim_check: ClaimCheck | None = None,
        correlation: CorrelationTable | None = None,
        health: DependencyHealth | None = None,
        actions: ReplyActions | None = None,
        on_relayed: Callable[[CloudEvent], None] | None = None,
    ) -> None:
        self._settings = settings
        self._actions = actions  # reply actions (actions.py), when actions.enabled
        self._on_relayed = on_relayed  # sees every reply once RabbitMQ has it (the config cache)
        self._correlation = correlation
        self._amqp = amqp
        self._sqs = sqs
        self._queue = response_queue
        self._metrics = metrics
        self._health = health or DependencyHealth(metrics, (RESPONSE_QUEUE,))
        resolve = claim_check is not None and settings.claim_check.resolve_replies
        self._claim_check = claim_check if resolve else None
        self._stopping = asyncio.Event()
        # Resolved by stop(): one future the pollers race their waits against (created in start()).
        self._stop_signal: asyncio.Future[None] | None = None
        self._pollers: list[asyncio.Task[None]] = []
        # A poller receives the next batch while RabbitMQ confirms the previous one; this bounds
        # how many received batches (held invisible in SQS) each poller may have in hand.
        self._batch_slots = asyncio.Semaphore(settings.sqs.pollers * _BATCHES_PER_POLLER)
        self._batches: set[asyncio.Task[None]] = set()
        self._progress = ProgressWatch(settings.health.stall_seconds)
        # Replies whose publish failed (nack, confirm timeout) since one was last confirmed, and when;
        # the ones still being tried.
        self._failing_replies: dict[str, float] = {}
        self._retrying: set[str] = set()
        self._delete_policy = SQS_DELETE.with_limits(max_seconds=settings.sqs.visibility_timeout * 0.75)

    async def start(self) -> None:
        self._stop_signal = asyncio.get_running_loop().create_future()
        await self._amqp.declare_topic_exchange(self._settings.amqp.reply_exchange)
        await self._amqp.declare_durable_queue(self._settings.amqp.reply_dead_letter_queue)
        self._pollers = [
            asyncio.create_task(self._poll_forever(number), name=f"poller-{number}")
            for number in range(self._settings.sqs.pollers)
        ]
        log.info(
            "inbound.started",
            sqs_queue=self._queue.name,
            pollers=len(self._pollers),
            exchange=self._settings.amqp.reply_exchange,
        )

    @property
    def pollers_running(self) -> int:
        return sum(1 for task in self._pollers if not task.done())

    @property
    def stalled(self) -> bool:
        """Batches are in hand and no reply has been settled for ``health.stall_seconds``."""
        return self._progress.stalled(bool(self._batches))

    async def stop(self) -> None:
        """Stop receiving; let the batches being published settle. Bound it with a timeout."""
        self._stopping.set()
        if self._stop_signal is not None and not self._stop_signal.done():
            self._stop_signal.set_result(None)
        if self._actions is not None:
            self._actions.stop()  # a reply whose action keeps failing is left in SQS
        await asyncio.gather(*self._pollers, return_exceptions=True)
        await asyncio.gather(*self._batches, return_exceptions=True)

    async def abort(self) -> None:
        for task in [*self._pollers, *self._batches]:
            task.cancel()
        await asyncio.gather(*self._pollers, *self._batches, return_exceptions=True)

    async def _poll_forever(self, number: int) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self._amqp.connected:
                    log.warning("inbound.paused", reason="AMQP connection down", poller=number)
                    await self._until_stopping(self._amqp.wait_connected())
                    continue
                if not self._batch_slots.locked():
                    await self._batch_slots.acquire()  # a free slot is taken at once: nothing to race
                elif await self._until_stopping(self._batch_slots.acquire()) is None:
                    continue  # stopping
                try:
                    # Not cut short by a stop: SQS may already have handed this poll its messages (a
                    # long poll abandoned by the client still takes them), which would then stay
                    # invisible for the visibility timeout. A stop waits for it, at most
                    # wait_time_seconds, and relays what it brings (bounded by shutdown.grace_seconds).
                    messages = await self._sqs.receive(
                        self._queue,
                        wait_seconds=self._settings.sqs.wait_time_seconds,
                        visibility_timeout=self._settings.sqs.visibility_timeout,
                    )
                except BaseException:
                    self._batch_slots.release()
                    raise
                failures = 0
                self._health.up(RESPONSE_QUEUE)
                if messages:
                    task = asyncio.create_task(self._handle_batch_in_slot(messages))
                    self._batches.add(task)
                    task.add_done_callback(self._batches.discard)
                else:
                    self._batch_slots.release()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a poller must survive anything; back off and go on
                failures += 1
                self._health.down(RESPONSE_QUEUE, aws_error_code(exc), str(exc))
                delay = POLLER.delay(failures)
                self._metrics.retries.labels(POLLER.name).inc()
                # The outage itself is one dependency.down line; each poller says why once, then quietly.
                (log.warning if failures == 1 else log.debug)(
                    "inbound.poll_failed",
                    sqs_queue=self._queue.name,
                    poller=number,
                    error=aws_error_code(exc),
                    detail=str(exc)[:300],
                    retry_in_seconds=round(delay, 1),
                    attempt=failures,
                )
                await self._health.wait_recovery(delay, stop=self._stopping)

    async def _until_stopping(self, awaitable: Any) -> Any:
        """Await something, but give up (returning None) as soon as a stop is requested."""
        work = asyncio.ensure_future(awaitable)
        stop = self._stop_signal
        if stop is None:  # not started: nothing to stop
            return await work
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        return None

    async def _handle_batch_in_slot(self, messages: list[dict[str, Any]]) -> None:
        try:
            await self._handle_batch(messages)
        except Exception:  # each message is settled or left in SQS; a bug here must not go unseen
            log.exception("inbound.batch_failed", queue=self._queue.name, messages=len(messages))
        finally:
            self._batch_slots.release()

    async def _handle_batch(self, messages: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        batch = [Received(str(index), message, now) for index, message in enumerate(messages)]
        self._metrics.replies_received.inc(len(batch))
        keeper = asyncio.create_task(self._keep_invisible(batch))
        try:
            pending = {asyncio.create_task(self._settle(item)) for item in batch}
            while pending:
                _, pending = await asyncio.wait(pending, timeout=_EARLY_DELETE_SECONDS)
                if pending:
                    await self._delete(batch)  # the settled ones, while the others still wait
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self._delete(batch)

    async def _settle(self, item: Received) -> None:
        raw = item.message.get("Body", "").encode("utf-8")
        try:
            await self._relay(item, raw)
        except Exception as exc:  # a bug must park the message, not return it to SQS forever
            log.exception("inbound.internal_error", queue=self._queue.name, sqs_message_id=item.sqs_message_id)
            await self._dead_letter(item, raw, ErrorCode.INTERNAL_ERROR, f"connector error: {exc!r}")
        if item.settled:
            self._progress.progressed()

    async def _relay(self, item: Received, raw: bytes) -> None:
        try:
            parsed = parse_structured(raw, repair_missing_id=self._settings.validation.repair_missing_id)
        except Rejection as rejection:
            await self._dead_letter(item, raw, rejection.code, rejection.message)
            return
        fields = {"event_id": parsed.id, "event_type": parsed.type, "queue": self._queue.name}
        if self._claim_check is not None:
            try:
                resolved = await self._claim_check.resolve(parsed, fields)
            except (Unresolvable, Rejection) as exc:
                await self._dead_letter(item, raw, ErrorCode.DATAREF_UNRESOLVED, str(exc), fields)
                return
            except Exception as exc:
                # S3 is unavailable: the reply stays in SQS and is tried again after its visibility timeout.
                self._health.down(S3, aws_error_code(exc), str(exc))
                log.debug("inbound.dataref_unavailable", **fields, error=aws_error_code(exc), detail=str(exc)[:300])
                return
            if resolved is not None:
                self._health.up(S3)
                parsed, raw = resolved, resolved.body
        if self._actions is not None:
            # Reply actions (actions.py): act first, relay after, so a reply that waits for its action
            # is never relayed twice. Lamassu or SQS away: the reply stays in SQS, like an S3 outage.
            verdict = await self._actions.act(parsed, fields)
            if verdict.held:
                return
            if verdict.code is not None:
                await self._dead_letter(item, raw, verdict.code, verdict.reason, fields)
                return
        try:
            await self._publish_reply(item, raw, parsed)
        except PublishError:
            await self._unroutable(item, raw, parsed)
            return
        except _PublishFailed as failed:
            await self._dead_letter(item, raw, failed.code, str(failed), fields)
            return
        item.settled = True
        self._metrics.replies_relayed.inc()
        self._metrics.inbound_latency.observe(time.monotonic() - item.received_at)
        log.debug(
            "inbound.relayed",
            **fields,
            sqs_message_id=item.sqs_message_id,
            exchange=self._settings.amqp.reply_exchange,
        )
        try:  # the reply is relayed: a failure below must not dead-letter it as well
            if self._correlation is not None:
                self._correlation.reply_received(parsed.event, fields)
            if self._on_relayed is not None:
                self._on_relayed(parsed.event)
            if tracing.enabled():
                self._trace_span(item, parsed)
        except Exception:
            log.exception("inbound.observe_failed", **fields)

    def _trace_span(self, item: Received, parsed: ParsedEvent) -> None:
        trace = _trace_context(parsed, item.message)
        carrier = {"traceparent": trace[0], **({"tracestate": trace[1]} if trace[1] else {})} if trace else {}
        tracing.record(
            f"{self._queue.name} receive",
            tracing.CONSUMER,
            carrier,
            item.received_at,
            {
                "messaging.system": "aws_sqs",
                "messaging.destination.name": self._queue.name,
                "messaging.message.id": item.sqs_message_id,
                "cloudevents.event_id": parsed.id,
                "cloudevents.event_type": parsed.type,
            },
        )

    async def _publish_reply(self, item: Received, raw: bytes, parsed: ParsedEvent) -> None:
        headers = string_headers({"_watermill_message_uuid": parsed.id, "x-sqs-message-id": item.sqs_message_id})
        trace = _trace_context(parsed, item.message)
        if trace is not None:
            headers["traceparent"], tracestate = trace
            if tracestate:
                headers["tracestate"] = tracestate
        problem = amqp_limit_problem(parsed.type, parsed.id, headers)
        if problem is not None:
            raise _PublishFailed(ErrorCode.AMQP_REJECTED, f"the reply cannot be an AMQP message: {problem}")
        message = Outgoing(
            parsed.body if parsed.repaired_id else raw,
            aiormq.spec.Basic.Properties(
                content_type="application/cloudevents+json",
                message_id=parsed.id,
                app_id=APP_ID,
                delivery_mode=DeliveryMode.PERSISTENT,
                headers=headers,
            ),
        )
        reply_key = item.sqs_message_id or f"reply-{id(item)}"
        await self._publish_confirmed(self._settings.amqp.reply_exchange, parsed.type, message, reply_key=reply_key)

    async def _publish_confirmed(
        self, exchange: str, routing_key: str, message: aio_pika.Message | Outgoing, *, reply_key: str = ""
    ) -> None:
        """Publish until RabbitMQ confirms, within the reply's attempt budget (outcomes.py decides).

        An unroutable return (PublishError) is raised at once; an error the message itself causes
        (encoding, limits) raises _PublishFailed(AMQP_REJECTED) at once; while the connection is
        down the reply waits without spending its budget; any other failure (a nack, a confirm
        timeout) spends one attempt, and the last raises _PublishFailed(ATTEMPTS_EXHAUSTED) — except
        while the reply exchange is down (``reply_key`` given: the module's docstring), for at most
        ``OUTAGE_HOLD_SECONDS`` of this reply's failures.
        """
        spent = 0
        attempt = 0
        first_failure: float | None = None
        try:
            while True:
                if not self._amqp.connected:
                    await self._amqp.wait_connected()
                try:
                    await self._amqp.publish(exchange, routing_key, message)
                except PublishError:
                    raise
                except Exception as exc:
                    outcome = classify_amqp_publish_error(exc)
                    # During a declared outage, dependency.down said it once; each retry is detail.
                    (log.warning if self._health.is_up(REPLY_EXCHANGE) else log.debug)(
                        "inbound.publish_failed",
                        exchange=exchange,
                        routing_key=routing_key[:255],
                        error=repr(exc)[:300],
                        outcome=outcome.value,
                    )
                    if outcome is Outcome.PERMANENT:
                        raise _PublishFailed(ErrorCode.AMQP_REJECTED, f"RabbitMQ cannot take it: {exc!r}") from exc
                    if outcome is Outcome.TRANSIENT and reply_key:
                        now = time.monotonic()
                        first_failure = now if first_failure is None else first_failure
                        held = now - first_failure < OUTAGE_HOLD_SECONDS
                        if self._stream_failing(reply_key, now, exc) and held:
                            outcome = Outcome.DEPENDENCY
                    if outcome is Outcome.TRANSIENT:
                        spent += 1
                        if spent >= self._settings.sqs.reply_max_attempts:
                            message_text = f"publishing failed {spent} times (sqs.reply_max_attempts): {exc!r}"
                            raise _PublishFailed(ErrorCode.ATTEMPTS_EXHAUSTED, message_text) from exc
                else:
                    if reply_key and self._failing_replies:  # confirmed again: whatever failed was not the exchange
                        self._failing_replies.clear()
                        self._health.up(REPLY_EXCHANGE)
                    return
                attempt += 1
                self._metrics.retries.labels(REPLY_PUBLISH.name).inc()
                await self._health.wait_recovery(REPLY_PUBLISH.delay(attempt))
        finally:
            if first_failure is not None:  # this reply failed on the way: it no longer does
                self._retrying.discard(reply_key)
                if not self._retrying:
                    # Nothing is failing any more (the rest settled or went to the dead-letter queue).
                    self._health.up(REPLY_EXCHANGE)

    def _stream_failing(self, reply_key: str, now: float, exc: BaseException) -> bool:
        """Whether this failure is the exchange's rather than the reply's (see the module's docstring)."""
        self._retrying.add(reply_key)
        self._failing_replies[reply_key] = now
        for key, failed_at in list(self._failing_replies.items()):
            if failed_at < now - STREAM_FAILURE_WINDOW_SECONDS:
                del self._failing_replies[key]
        if len(self._failing_replies) < STREAM_FAILURE_REPLIES and self._health.is_up(REPLY_EXCHANGE):
            return False
        detail = f"{len(self._failing_replies)} replies failing, none confirmed since: {exc!r}"
        self._health.down(REPLY_EXCHANGE, type(exc).__name__, detail)
        return True

    async def _unroutable(self, item: Received, raw: bytes, parsed: ParsedEvent) -> None:
        self._metrics.replies_unroutable.inc()
        limit = self._settings.sqs.unroutable_max_receives
        fields = {"event_id": parsed.id, "event_type": parsed.type, "queue": self._queue.name}
        if item.receive_count >= limit:
            reason = (
                f"no queue is bound to exchange {self._settings.amqp.reply_exchange!r} for routing key "
                f"{parsed.type!r} (tried {item.receive_count} times)"
            )
            await self._dead_letter(item, raw, ErrorCode.UNROUTABLE, reason, fields)
            return
        retry_in = min(self._settings.sqs.visibility_timeout, 2**item.receive_count)
        log.warning(
            "inbound.unroutable",
            **fields,
            sqs_message_id=item.sqs_message_id,
            receive_count=item.receive_count,
            kept_in_sqs_seconds=retry_in,
        )
        with contextlib.suppress(Exception):  # if this fails it comes back after the visibility timeout
            await self._sqs.change_visibility_batch(self._queue, {item.key: item.message["ReceiptHandle"]}, retry_in)

    async def _dead_letter(
        self, item: Received, raw: bytes, code: ErrorCode, reason: str, fields: dict[str, Any] | None = None
    ) -> None:
        fields = fields or {"queue": self._queue.name, **identify(raw)}
        dlq = self._settings.amqp.reply_dead_letter_queue
        provenance = {
            "x-sqs-message-id": item.sqs_message_id,
            "x-sqs-receive-count": str(item.receive_count),
            "x-sqs-queue": self._queue.name,
        }
        # A Binary attribute cannot be a header value here: it is named in the dropped-headers note.
        attributes: dict[str, str | None] = {
            f"x-sqs-attribute-{name}": value.get("StringValue")
            if value.get("DataType", "").startswith(("String", "Number")) and isinstance(value.get("StringValue"), str)
            else None
            for name, value in item.message.get("MessageAttributes", {}).items()
        }
        headers: dict[str, Any] = dead_letter_headers(code.value, reason, provenance, droppable=attributes)
        message = aio_pika.Message(body=raw, headers=headers, delivery_mode=DeliveryMode.PERSISTENT, app_id=APP_ID)
        try:
            await self._publish_confirmed("", dlq, message)
        except (PublishError, _PublishFailed) as exc:
            # Bounded headers make this next to impossible; the reply then waits in SQS (whose own
            # redrive policy is the last resort) and the error is loud.
            log.error("inbound.dead_letter_failed", **fields, sqs_message_id=item.sqs_message_id, error=repr(exc))
            return
        item.settled = True
        self._metrics.replies_dead_lettered.labels(code.value).inc()
        log.warning(
            "inbound.dead_lettered",
            **fields,
            sqs_message_id=item.sqs_message_id,
            error_code=code.value,
            reason=reason,
            dead_letter_queue=dlq,
        )

    async def _keep_invisible(self, batch: list[Received]) -> None:
        """Extend the visibility of messages still waiting for RabbitMQ, so no poller gets them twice."""
        timeout = self._settings.sqs.visibility_timeout
        while True:
            await asyncio.sleep(timeout / 2)
            pending = {item.key: item.message["ReceiptHandle"] for item in batch if not item.settled}
            if not pending:
                return
            try:
                await self._sqs.change_visibility_batch(self._queue, pending, timeout)
                log.info("inbound.visibility_extended", queue=self._queue.name, messages=len(pending))
            except Exception as exc:
                log.warning("inbound.visibility_extend_failed", queue=self._queue.name, error=aws_error_code(exc))

    async def _delete(self, batch: list[Received]) -> None:
        """Delete the settled replies not deleted yet."""
        receipts = {item.key: item.message["ReceiptHandle"] for item in batch if item.settled and not item.deleted}
        if not receipts:
            return
        # Keep trying while the messages are still invisible: once they reappear they are relayed
        # again anyway. Meanwhile this batch holds its poller slot, so nothing more is received.
        try:
            try:
                response = await self._sqs.delete_batch(self._queue, receipts)
            except Exception:
                # The retry loop is built only after a failure: it costs more than the call's own work.
                async for attempt in self._delete_policy.retrying(failed_and(lambda _: True)):
                    with attempt:
                        response = await self._sqs.delete_batch(self._queue, receipts)
        except Exception as exc:
            # They reappear after the visibility timeout and are relayed again: a duplicate, not a loss.
            log.error(
                "inbound.delete_failed", queue=self._queue.name, messages=len(receipts), error=aws_error_code(exc)
            )
            return
        by_key = {item.key: item for item in batch}
        for key in receipts:
            by_key[key].deleted = True
        for failure in response.get("Failed", []):
            self._metrics.sqs_errors.labels("DeleteMessageBatchEntry", failure.get("Code", "unknown")).inc()
            log.warning(
                "inbound.delete_entry_failed",
                queue=self._queue.name,
                sqs_message_id=by_key[str(failure["Id"])].sqs_message_id,
                error=failure.get("Code"),
                detail=failure.get("Message"),
            )


def _trace_context(parsed: ParsedEvent, message: dict[str, Any]) -> tuple[str, str | None] | None:
    """W3C (traceparent, tracestate) from the reply's extension, else from the SQS message attributes."""
    traceparent = parsed.traceparent
    if traceparent is not None and is_w3c_traceparent(traceparent):
        return traceparent, carried_tracestate(parsed.event.extension("tracestate"))
    traceparent = _attribute(message, "traceparent")
    if traceparent is None or not is_w3c_traceparent(traceparent):
        return None
    return traceparent, carried_tracestate(_attribute(message, "tracestate"))


def _attribute(message: dict[str, Any], name: str) -> str | None:
    value = message.get("MessageAttributes", {}).get(name, {})
    string = value.get("StringValue")
    return string if isinstance(string, str) and string else None
