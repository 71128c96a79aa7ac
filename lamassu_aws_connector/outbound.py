"""Outbound pipeline: RabbitMQ ``lamassu_events`` -> SQS ``lamassu-command``, at-least-once.

Every delivery ends in exactly one of three ways, and is acked only after it:

* forwarded: SQS confirmed its batch entry;
* skipped: published by this connector (loop guard) or its type is not in ``forward.types``;
* dead-lettered: published (confirmed) to ``amqp.dead_letter_queue`` with ``x-error-code``. That is
  where a message goes when it cannot be parsed, is too large, SQS refuses its *content* (an
  allowlisted error code, outcomes.py), it failed alone ``forward.max_entry_attempts`` times while
  SQS took the others, or the connector died handling it ``amqp.redelivery_limit`` times.

Everything else SQS answers — the queue missing, credentials or KMS refused, throttling, 5xx, codes
never seen — is a dependency problem (outcomes.py): the batch is held and retried with capped,
jittered backoff for as long as it takes, the queue is reported down (/readyz, metric, one log line
per change), and nothing is dead-lettered. The deliveries stay unacked meanwhile, so prefetch and
``amqp.max_in_flight_bytes`` are the backpressure. If the AMQP channel is lost before the ack,
RabbitMQ redelivers the message and SQS may receive it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import tracing
from .acks import Acker
from .amqp import AmqpGateway, Consumed, channel_open
from .catalogue import AUDITED_ACTIONS, DataCheck, EventKind, action_of, event_kind, is_known
from .claimcheck import Abandoned, ClaimCheck
from .config import APP_ID, Settings
from .correlation import CorrelationTable, correlation_id
from .crashguard import CrashGuard, content_key
from .events import (
    ParsedEvent,
    Rejection,
    carried_tracestate,
    forbidden_sqs_character,
    identify,
    is_w3c_traceparent,
    parse_amqp,
)
from .health import COMMAND_QUEUE, DependencyHealth, ProgressWatch
from .logs import get_logger
from .metrics import OTHER_TYPE, Metrics
from .outcomes import (
    DEAD_LETTER,
    SQS_HOLD,
    ErrorCode,
    Outcome,
    aws_error_code,
    classify_sqs_entry_failure,
    classify_sqs_error,
    failed_and,
    is_batch_too_long,
    strip_own_headers,
)
from .sqs import QueueInfo, SqsGateway, message_attributes_size

log = get_logger(__name__)

_MAX_BATCH_ENTRIES = 10
# An entry that fails while SQS accepted other entries within this window fails on its own (its
# attempt budget counts); one that fails while SQS accepts nothing is SQS's trouble (held).
_ACCEPTING_WINDOW_SECONDS = 30.0
_FIFO_ID = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}\Z")


@dataclass(slots=True, eq=False)
class Pending:
    """One delivery waiting for SQS."""

    delivery: Consumed
    parsed: ParsedEvent
    entry: dict[str, Any]
    size: int
    received_at: float
    failed_attempts: int = 0
    log_fields: dict[str, Any] = field(default_factory=dict)


class ByteBudget:
    """Bytes of bodies in flight, beside the prefetch count; first come, first served.

    A body larger than the whole budget is let in when nothing else is held, so it is handled
    alone rather than never.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    async def acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self.used += size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted, then cancelled before it was used
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((size, waiter))
            raise

    def release(self, size: int) -> None:
        self.used -= size
        while self._waiters and self._fits(self._waiters[0][0]):
            wanted, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.used += wanted
            waiter.set_result(None)


class Batcher:
    """Groups entries into SendMessageBatch calls: at most 10 entries and ``max_bytes``.

    A batch leaves when it is full, or when ``linger`` has passed since its oldest entry, or, with
    ``send_when_idle``, as soon as no batch is in flight: nothing is then gained by waiting (at 200
    events a second a 5 ms linger gathers one or two entries anyway) and the wait was most of the
    connector's latency (p99 12 ms against 5.5 ms for a direct SendMessage). While batches are in
    flight entries accumulate, and a freed slot takes a partial batch only once its oldest entry has
    lingered: under load every call carries 10 entries (each SQS call costs client CPU whatever its
    size, and is billed per request).
    """

    def __init__(
        self,
        send: Callable[[list[Pending]], Awaitable[None]],
        *,
        max_bytes: int,
        linger_seconds: float,
        max_in_flight: int,
        send_when_idle: bool = False,
    ) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._linger = linger_seconds
        self._max_in_flight = max_in_flight
        self._free_slots = max_in_flight
        self._send_when_idle = send_when_idle
        self._idle_check_scheduled = False
        self._buffer: deque[Pending] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, item: Pending) -> None:
        self._buffer.append(item)
        if len(self._buffer) >= _MAX_BATCH_ENTRIES:
            self._dispatch(force=False)
        if self._buffer and self._idle() and not self._idle_check_scheduled:
            # At the end of this loop turn, so the deliveries read together leave together.
            self._idle_check_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_idle_check)
        if self._buffer and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self._on_linger)

    def _idle(self) -> bool:
        return self._send_when_idle and self._free_slots == self._max_in_flight

    def _on_idle_check(self) -> None:
        self._idle_check_scheduled = False
        if self._idle():
            self._dispatch(force=True)

    def _on_linger(self) -> None:
        self._timer = None
        self._dispatch(force=True)

    def _dispatch(self, *, force: bool) -> None:
        while self._buffer and self._free_slots > 0 and (force or len(self._buffer) >= _MAX_BATCH_ENTRIES):
            batch = [self._buffer.popleft()]
            size = batch[0].size
            while self._buffer and len(batch) < _MAX_BATCH_ENTRIES and size + self._buffer[0].size <= self._max_bytes:
                item = self._buffer.popleft()
                batch.append(item)
                size += item.size
            self._free_slots -= 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._buffer and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _run(self, batch: list[Pending]) -> None:
        try:
            await self._send(batch)
        except Exception:
            # A connector bug: the deliveries stay unacked and return to RabbitMQ with the channel.
            log.exception("outbound.batch_failed", entries=len(batch))
        finally:
            self._free_slots += 1
            self._dispatch(force=self._lingered() or self._idle())

    def _lingered(self) -> bool:
        return bool(self._buffer) and time.monotonic() - self._buffer[0].received_at >= self._linger

    async def abort(self) -> None:
        """Give up on what is not settled: its deliveries stay unacked and RabbitMQ redelivers them."""
        self._buffer.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Send everything buffered and wait until every batch has settled."""
        while self._buffer or self._tasks:
            self._dispatch(force=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)


class OutboundPipeline:
    def __init__(
        self,
        settings: Settings,
        amqp: AmqpGateway,
        sqs: SqsGateway,
        command_queue: QueueInfo,
        metrics: Metrics,
        *,
        claim_check: ClaimCheck | None = None,
        correlation: CorrelationTable | None = None,
        health: DependencyHealth | None = None,
    ) -> None:
        self._settings = settings
        self._data_check = DataCheck(
            settings.validation.data, metrics, parse_certificates=settings.validation.certificates == "x509"
        )
        self._correlation = correlation
        self._amqp = amqp
        self._sqs = sqs
        self._queue = command_queue
        self._metrics = metrics
        self._health = health or DependencyHealth(metrics, (COMMAND_QUEUE,))
        self._claim_check = claim_check if claim_check is not None and claim_check.enabled else None
        self._source_queue = settings.amqp.queue
        self._forward = _type_matcher(settings.forward.types)
        self._fifo = command_queue.fifo
        self._batcher = Batcher(
            self._send_with_retries,
            max_bytes=command_queue.max_message_bytes,
            linger_seconds=settings.forward.linger_ms / 1000,
            # FIFO order within a message group survives only with one batch out at a time.
            max_in_flight=1 if command_queue.fifo else settings.forward.max_batches_in_flight,
            send_when_idle=not settings.forward.linger_when_idle,
        )
        # Deliveries inside on_delivery, and a future that the last of them to leave resolves (stop()).
        self._handling = 0
        self._handlers_idle: asyncio.Future[None] | None = None
        self._acker = Acker()
        self._budget = ByteBudget(settings.amqp.max_in_flight_bytes)
        self._held: dict[int, int] = {}  # id(delivery) -> body bytes, from receipt until settled
        self._crash_guard = CrashGuard(
            settings.amqp.state_dir, settings.amqp.queue, settings.amqp.redelivery_limit, metrics
        )
        self._progress = ProgressWatch(settings.health.stall_seconds)
        self._hold_policy = SQS_HOLD.with_limits(cap=settings.forward.retry_max_backoff_seconds)
        self._last_accepted = float("-inf")  # when SQS last accepted an entry
        self._forwarded_by_type: dict[str, Any] = {}
        # Read when scraped rather than updated twice per event.
        metrics.in_flight.set_function(lambda: len(self._held))
        metrics.inflight_bytes.set_function(lambda: self._budget.used)

    async def start(self) -> None:
        self._crash_guard.open()
        await self._amqp.declare_events_queue()
        await self._amqp.consume(self.on_delivery)
        log.info(
            "outbound.started",
            queue=self._source_queue,
            sqs_queue=self._queue.name,
            exchanges=self._settings.amqp.exchanges,
            max_message_bytes=self._queue.max_message_bytes,
            fifo=self._queue.fifo,
            crash_guard=str(self._crash_guard.path) if self._crash_guard.enabled else None,
        )

    @property
    def stalled(self) -> bool:
        """Deliveries are held and none has been settled for ``health.stall_seconds``."""
        return self._progress.stalled(bool(self._held))

    async def stop(self) -> None:
        """Stop consuming, then flush and settle what was received. Bound it with a timeout."""
        await self._amqp.cancel_consumer()
        # Deliveries already read from the socket have their handler tasks scheduled, not yet
        # started: let them register, so they are drained too rather than left to redelivery.
        for _ in range(3):
            await asyncio.sleep(0)
        while self._handling:
            self._handlers_idle = asyncio.get_running_loop().create_future()
            await self._handlers_idle
        await self._batcher.drain()
        await self._acker.flush()
        self._crash_guard.close()

    async def abort(self) -> None:
        await self._batcher.abort()
        await self._acker.flush()  # what was settled is acked, so it is not forwarded twice
        self._crash_guard.close()

    async def on_delivery(self, delivery: Consumed) -> None:
        self._acker.track(delivery)
        self._handling += 1
        self._metrics.events_consumed.inc()
        size = len(delivery.body)
        self._held[id(delivery)] = size
        if delivery.headers:
            forged = strip_own_headers(delivery.headers)
            # A reply this connector relayed (bound back to the events queue by the default "#") carries
            # its own x-sqs-message-id and is skipped by the loop guard: nothing forged, nothing to say.
            if forged and delivery.app_id != APP_ID:
                log.warning("outbound.own_headers_removed", **self._delivery_fields(delivery), headers=forged[:10])
        try:
            await self._budget.acquire(size)
            if delivery.redelivered and self._crash_guard.enabled:
                await self._handle_suspect(delivery)
            else:
                await self._handle(delivery)
        except Exception as exc:  # a bug must not kill the consumer or loop the message forever
            log.exception("outbound.internal_error", **self._delivery_fields(delivery))
            await self._dead_letter(delivery, ErrorCode.INTERNAL_ERROR, f"connector error: {exc!r}", {})
        finally:
            self._handling -= 1
            if not self._handling and self._handlers_idle is not None and not self._handlers_idle.done():
                self._handlers_idle.set_result(None)

    async def _handle_suspect(self, delivery: Consumed) -> None:
        """A redelivered message: handled alone under the crash guard (crashguard.py)."""
        key = content_key(delivery.body, delivery.routing_key)
        strikes = self._crash_guard.strikes(key)
        delivery_count = _int_header(delivery.headers, "x-delivery-count")  # quorum queues count for us
        limit = self._crash_guard.limit
        if delivery_count is not None and delivery_count > limit and not await self._counted_by_rabbitmq():
            # A classic queue counts nothing: the header came from the publisher, who cannot decide this.
            log.warning(
                "outbound.delivery_count_ignored",
                **self._delivery_fields(delivery),
                x_delivery_count=delivery_count,
                detail="the events queue is not a quorum queue: RabbitMQ did not write this x-delivery-count",
            )
            delivery_count = None
        if strikes >= limit or (delivery_count is not None and delivery_count > limit):
            reason = (
                f"the connector died while handling this message {strikes} time(s)"
                if strikes >= limit
                else f"RabbitMQ delivered it {delivery_count} times"
            ) + f" (amqp.redelivery_limit is {limit}); it is set aside instead of being handled again"
            await self._dead_letter(delivery, ErrorCode.REDELIVERY_LIMIT, reason, {})
            self._crash_guard.forget(key)
            return
        async with self._crash_guard.handling(key):
            await self._handle(delivery)

    async def _counted_by_rabbitmq(self) -> bool:
        try:
            return await self._amqp.events_queue_is_quorum()
        except Exception:
            return False  # not known: a header no one vouches for is not trusted

    def _delivery_fields(self, delivery: Consumed) -> dict[str, Any]:
        """Log fields of a delivery not (yet) parsed: what an operator needs to find it."""
        return {
            "queue": self._source_queue,
            "message_id": delivery.message_id,
            "routing_key": delivery.routing_key,
            "exchange": delivery.exchange,
        }

    async def _handle(self, delivery: Consumed) -> None:
        if delivery.app_id == APP_ID:
            await self._skip(delivery, "loop_guard", self._delivery_fields(delivery))
            return
        received_at = time.monotonic()
        limit = self._queue.max_message_bytes
        body = delivery.body
        # With a claim-check bucket, bodies beyond the SQS limit are welcome, up to claim_check.max_bytes.
        accepted = self._claim_check.config.max_bytes if self._claim_check else limit
        if len(body) > accepted:
            reason = f"message body is {len(body)} bytes; SQS queue {self._queue.name} accepts at most {limit}"
            if self._claim_check:
                reason = f"message body is {len(body)} bytes; claim_check.max_bytes is {accepted}"
            await self._dead_letter(delivery, ErrorCode.TOO_LARGE, reason, {})
            return
        try:
            parsed = parse_amqp(
                body,
                delivery.content_type,
                delivery.headers,
                repair_missing_id=self._settings.validation.repair_missing_id,
                add_correlation_id=True,
            )
        except Rejection as rejection:
            await self._dead_letter(delivery, rejection.code, rejection.message, {})
            return
        fields = {"event_id": parsed.id, "event_type": parsed.type, "queue": self._source_queue}
        if parsed.repaired_id:
            self._metrics.events_repaired.inc()
            # Lamassu v2.0 sends every event with id "": a warning each would drown the log (counted instead).
            log.debug("outbound.id_repaired", **fields, reason="event arrived without an id")
        if not self._forward(parsed.type):
            await self._skip(delivery, "type_not_forwarded", fields)
            return
        kind = event_kind(parsed.type)
        if kind is EventKind.AUDIT and self._settings.forward.audit == "skip":
            await self._skip(delivery, "audit_copy", fields)
            return
        if kind is EventKind.ERROR:
            action = action_of(parsed.type)
            self._metrics.lamassu_failures.labels(action if action in AUDITED_ACTIONS else "other").inc()
            if self._settings.forward.errors == "skip":
                await self._skip(delivery, "error_record", fields)
                return
        invalid_data = self._data_check.rejection(parsed.event, fields)
        if invalid_data is not None:
            await self._dead_letter(delivery, ErrorCode.INVALID_DATA, invalid_data, fields)
            return
        try:
            entry, size = await self.entry_for(parsed, delivery.headers, fields, lambda: channel_open(delivery))
        except Rejection as rejection:
            await self._dead_letter(delivery, rejection.code, rejection.message, fields)
            return
        except Abandoned:
            # The channel is gone: RabbitMQ redelivers the event and it is stored then.
            self._release(delivery)
            return
        self._batcher.add(Pending(delivery, parsed, entry, size, received_at, log_fields=fields))

    def _entry(self, parsed: ParsedEvent, delivery: Consumed) -> dict[str, Any]:
        return self.build_entry(parsed, delivery.headers)

    async def entry_for(
        self,
        parsed: ParsedEvent,
        headers: Mapping[str, Any] | None,
        fields: dict[str, Any],
        keep_trying: Callable[[], bool],
    ) -> tuple[dict[str, Any], int]:
        """The SQS entry of a valid event and its size as SQS counts it, its data stored in S3 first
        when it is too big (claim-check). The checks every event passes, from RabbitMQ or from
        ``POST /v1/commands``: raises Rejection (sqs_rejected, too_large), or Abandoned when S3 was
        away for as long as ``keep_trying()`` held."""
        bad_char = forbidden_sqs_character(parsed.body)
        if bad_char is not None:
            reason = f"event contains the character {bad_char}, which SQS does not accept in a message body"
            raise Rejection(ErrorCode.SQS_REJECTED, reason)
        entry = self.build_entry(parsed, headers)
        size = len(parsed.body) + message_attributes_size(entry["MessageAttributes"])
        limit = self._queue.max_message_bytes
        if self._claim_check and size > self._claim_check.threshold(limit):
            checked = await self._claim_check.check_in(parsed, entry, fields, keep_trying=keep_trying)
            if checked is not None:
                entry = checked
                size = len(entry["MessageBody"].encode()) + message_attributes_size(entry["MessageAttributes"])
        if size > limit:
            reason = f"event is {size} bytes with its attributes; SQS queue {self._queue.name} accepts at most {limit}"
            if "ce-dataref" in entry["MessageAttributes"]:
                reason = f"even without its data (stored in S3) the event is {size} bytes; the limit is {limit}"
            raise Rejection(ErrorCode.TOO_LARGE, reason)
        return entry, size

    def build_entry(self, parsed: ParsedEvent, headers: Mapping[str, Any] | None) -> dict[str, Any]:
        """The SendMessageBatch entry (without Id) for an event; ``headers``: its transport headers."""
        event = parsed.event
        attributes = {
            "ce-specversion": event.specversion,
            "ce-type": event.type,
            "ce-source": event.source,
            "ce-id": event.id,
        }
        if event.subject:
            attributes["ce-subject"] = event.subject
        if event.time:
            attributes["ce-time"] = event.time
        attributes["ce-correlationid"] = correlation_id(event)
        trace = _trace_context(parsed, headers)
        if trace is not None:
            attributes["traceparent"], tracestate = trace
            if tracestate:
                attributes["tracestate"] = tracestate
        entry: dict[str, Any] = {
            "MessageBody": parsed.body.decode("utf-8"),
            "MessageAttributes": {
                name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
            },
        }
        if self._queue.fifo:
            group_by = self._settings.sqs.fifo_group_by
            group = {"subject": event.subject or event.source, "source": event.source, "type": event.type}[group_by]
            entry["MessageGroupId"] = group if _FIFO_ID.match(group) else hashlib.sha256(group.encode()).hexdigest()
            # Lamassu ids are not unique ("unknown", ""), so deduplicate on content.
            entry["MessageDeduplicationId"] = hashlib.sha256(parsed.body).hexdigest()
        return entry

    def _observe_sent(self, item: Pending, sqs_message_id: str | None, *, traced: bool) -> None:
        """Correlation and tracing of a confirmed event: a failure here must never hold up its ack.

        ``traced``: tracing.enabled(), asked once per SQS answer rather than once per event."""
        try:
            if self._correlation is not None:
                self._correlation.command_sent(item.parsed.event)
            if traced:
                self._trace_span(item, sqs_message_id)
        except Exception:
            log.exception("outbound.observe_failed", **item.log_fields)

    def _trace_span(self, item: Pending, sqs_message_id: str | None) -> None:
        attributes = item.entry["MessageAttributes"]
        carrier = {
            name: attributes[name]["StringValue"] for name in ("traceparent", "tracestate") if name in attributes
        }
        tracing.record(
            f"{self._queue.name} send",
            tracing.PRODUCER,
            carrier,
            item.received_at,
            {
                "messaging.system": "aws_sqs",
                "messaging.destination.name": self._queue.name,
                "messaging.message.id": sqs_message_id,
                "cloudevents.event_id": item.parsed.id,
                "cloudevents.event_type": item.parsed.type,
            },
        )

    async def _send_with_retries(self, batch: list[Pending]) -> None:
        """Send until every entry is settled; what is held is sent again after a backoff (SQS_HOLD),
        which starts over whenever a round settled something."""
        remaining = await self._send_once(batch)
        failures = 0
        while remaining:
            failures += 1
            self._metrics.retries.labels(self._hold_policy.name).inc()
            # Back off, but not past the moment SQS takes another batch again: after an outage the
            # first batch through wakes the others instead of leaving them to their own backoff.
            await self._health.wait_recovery(self._hold_policy.delay(failures))
            before = len(remaining)
            remaining = await self._send_round(remaining)
            if len(remaining) < before:
                failures = 0

    async def _send_round(self, items: list[Pending]) -> list[Pending]:
        """A retry round. On a FIFO queue it carries only the first held entry of each message group,
        so an entry that failed is never overtaken by a later one of its group."""
        if not self._fifo:
            return await self._send_once(items)
        heads: list[Pending] = []
        groups: set[str] = set()
        for item in items:
            group = str(item.entry.get("MessageGroupId", ""))
            if group not in groups:
                groups.add(group)
                heads.append(item)
        held = await self._send_once(heads)
        head_ids = {id(head) for head in heads}
        waiting = [item for item in items if id(item) not in head_ids]
        order = {id(item): index for index, item in enumerate(items)}
        return sorted([*held, *waiting], key=lambda item: order[id(item)])

    async def _send_split(self, items: list[Pending]) -> list[Pending]:
        """Send each entry alone: each one either goes through, is held, or is dead-lettered.

        On a FIFO queue one at a time and in order, and once an entry of a message group is held,
        the later entries of that group are held with it (sent after it, never before).
        """
        if not self._fifo:
            parts = await asyncio.gather(*(self._send_once([item]) for item in items))
            return [item for part in parts for item in part]
        held: list[Pending] = []
        held_groups: set[str] = set()
        for item in items:
            group = str(item.entry.get("MessageGroupId", ""))
            if group in held_groups:
                held.append(item)
                continue
            rest = await self._send_once([item])
            if rest:
                held.extend(rest)
                held_groups.add(group)
        return held

    async def _send_once(self, items: list[Pending]) -> list[Pending]:
        """One SendMessageBatch; settles what succeeded or can never succeed, returns the rest."""
        entries = [{"Id": str(index), **item.entry} for index, item in enumerate(items)]
        try:
            response = await self._sqs.send_batch(self._queue, entries)
        except Exception as exc:
            return await self._on_send_error(items, exc)
        now = time.monotonic()
        by_id = dict(enumerate(items))
        successful = response.get("Successful", [])
        if successful:
            self._health.up(COMMAND_QUEUE)  # after an outage, this wakes the batches held meanwhile
            self._last_accepted = now
        sqs_accepting = now - self._last_accepted < _ACCEPTING_WINDOW_SECONDS
        traced = tracing.enabled()
        for success in successful:
            item = by_id.pop(int(success["Id"]))
            self._observe_sent(item, success.get("MessageId"), traced=traced)
            if self._ack(item.delivery, item.log_fields):
                self._forwarded_counter(item.parsed.type).inc()
                self._metrics.outbound_latency.observe(now - item.received_at)
                log.debug(
                    "outbound.forwarded",
                    **item.log_fields,
                    sqs_queue=self._queue.name,
                    sqs_message_id=success.get("MessageId"),
                )
        retry: list[Pending] = []
        for failure in response.get("Failed", []):
            item = by_id.pop(int(failure["Id"]))
            code = str(failure.get("Code", "unknown"))
            message = str(failure.get("Message", ""))
            self._metrics.sqs_errors.labels("SendMessageBatchEntry", code).inc()
            outcome = classify_sqs_entry_failure(code, others_succeeded=sqs_accepting)
            if outcome is Outcome.PERMANENT:
                reason = f"SQS refused the event: {code}: {message}"
                await self._dead_letter(item.delivery, ErrorCode.SQS_REJECTED, reason, item.log_fields)
                continue
            if outcome is Outcome.TRANSIENT:
                item.failed_attempts += 1
                if item.failed_attempts >= self._settings.forward.max_entry_attempts:
                    reason = (
                        f"SQS failed this entry {item.failed_attempts} times while accepting others "
                        f"(forward.max_entry_attempts): {code}: {message}"
                    )
                    await self._dead_letter(item.delivery, ErrorCode.ATTEMPTS_EXHAUSTED, reason, item.log_fields)
                    continue
            else:
                self._health.down(COMMAND_QUEUE, code, message)
            log.warning("outbound.entry_failed", **item.log_fields, error=code, detail=message, retrying=True)
            self._metrics.sqs_entry_retries.inc()
            retry.append(item)
        # An entry missing from both lists was not confirmed: send it again.
        retry.extend(by_id.values())
        if self._fifo:
            order = {id(item): index for index, item in enumerate(items)}
            retry.sort(key=lambda item: order[id(item)])  # the order they came in, within every group
        return retry

    async def _on_send_error(self, items: list[Pending], exc: Exception) -> list[Pending]:
        """The whole SendMessageBatch failed: split on a content error, hold on anything else."""
        if is_batch_too_long(exc):
            if len(items) > 1:
                return await self._send_split(items)  # the queue's limit shrank under us
            [item] = items
            reason = f"SQS refused the event as too long for queue {self._queue.name}: {exc}"
            await self._dead_letter(item.delivery, ErrorCode.TOO_LARGE, reason, item.log_fields)
            return []
        if classify_sqs_error(exc) is Outcome.PERMANENT:
            if len(items) > 1:
                return await self._send_split(items)  # find the entry SQS refuses
            [item] = items
            reason = f"SQS refused the event: {aws_error_code(exc)}: {str(exc)[:300]}"
            await self._dead_letter(item.delivery, ErrorCode.SQS_REJECTED, reason, item.log_fields)
            return []
        # A dependency problem: hold the whole batch, whatever the status code says.
        self._health.down(COMMAND_QUEUE, aws_error_code(exc), str(exc))
        log.debug(
            "outbound.sqs_send_failed",
            sqs_queue=self._queue.name,
            entries=len(items),
            error=aws_error_code(exc),
            detail=str(exc)[:300],
        )
        return items

    def _forwarded_counter(self, event_type: str) -> Any:
        """The forwarded counter of a type: catalogue types by name, every other as ``other``."""
        counter = self._forwarded_by_type.get(event_type)
        if counter is None:
            counter = self._metrics.events_forwarded.labels(event_type if is_known(event_type) else OTHER_TYPE)
            if len(self._forwarded_by_type) < 10_000:
                self._forwarded_by_type[event_type] = counter
        return counter

    def _release(self, delivery: Consumed) -> None:
        """The delivery leaves the pipeline (settled, or left to RabbitMQ's redelivery)."""
        size = self._held.pop(id(delivery), None)
        if size is None:
            return
        self._budget.release(size)
        self._progress.progressed()

    def _ack(self, delivery: Consumed, fields: dict[str, Any]) -> bool:
        """The delivery's fate is sealed: hand it to the acker (acks go out in multiple-ack frames)."""
        self._release(delivery)
        if self._acker.settle(delivery):
            return True
        # The channel closed since the delivery: RabbitMQ will redeliver it (a duplicate in SQS at worst).
        log.warning("outbound.ack_failed", **fields, error="channel closed")
        return False

    async def _skip(self, delivery: Consumed, reason: str, fields: dict[str, Any]) -> None:
        self._metrics.events_skipped.labels(reason).inc()
        log.debug("outbound.skipped", **fields, reason=reason)
        self._ack(delivery, fields)

    async def _dead_letter(self, delivery: Consumed, code: ErrorCode, reason: str, fields: dict[str, Any]) -> None:
        """Publish to the dead-letter queue (confirmed), then ack. Retries while the channel lives."""
        if "event_id" not in fields:  # rejected before it was parsed: name it as far as it can be read
            fields = {**identify(delivery.body, delivery.headers), **fields}
        fields = {**self._delivery_fields(delivery), **fields}
        dlq = self._settings.amqp.dead_letter_queue

        def retry(exc: BaseException) -> bool:
            log.warning("outbound.dead_letter_failed", **fields, error=repr(exc))
            return channel_open(delivery)

        try:
            async for attempt in DEAD_LETTER.retrying(failed_and(retry)):
                with attempt:
                    await self._amqp.dead_letter(delivery, dlq, code.value, reason)
        except Exception:
            if channel_open(delivery):
                raise
            # Redelivered later and dead-lettered then; nothing is lost.
            self._release(delivery)
            return
        self._metrics.events_dead_lettered.labels(code.value).inc()
        log.warning("outbound.dead_lettered", **fields, error_code=code.value, reason=reason, dead_letter_queue=dlq)
        self._ack(delivery, fields)


def _type_matcher(patterns: list[str]) -> Callable[[str], bool]:
    if "*" in patterns:
        return lambda _type: True
    regex = re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None
    cache: dict[str, bool] = {}

    def matches(event_type: str) -> bool:
        hit = cache.get(event_type)
        if hit is None:
            hit = bool(regex and regex.match(event_type))
            if len(cache) < 10_000:
                cache[event_type] = hit
        return hit

    return matches


def _int_header(headers: Mapping[str, Any] | None, name: str) -> int | None:
    value = (headers or {}).get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str | bytes) and value.strip().isdigit():
        return int(value)
    return None


def _header_traceparent(headers: Mapping[str, Any] | None) -> str | None:
    value = _header_string(headers, "traceparent")
    # Lamassu v2.0 put the event id in this header: forward only a real W3C trace context.
    return value if value is not None and is_w3c_traceparent(value) else None


def _header_string(headers: Mapping[str, Any] | None, name: str) -> str | None:
    value = (headers or {}).get(name)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) and value else None


def _trace_context(parsed: ParsedEvent, headers: Mapping[str, Any] | None) -> tuple[str, str | None] | None:
    """W3C (traceparent, tracestate) from the event's distributed-tracing extension, else the AMQP headers.

    tracestate only travels with the traceparent it belongs to, and only a W3C-formatted
    traceparent travels at all.
    """
    traceparent = parsed.traceparent
    if traceparent is not None and is_w3c_traceparent(traceparent):
        return traceparent, carried_tracestate(parsed.event.extension("tracestate"))
    traceparent = _header_traceparent(headers)
    if traceparent is None:
        return None
    return traceparent, carried_tracestate(_header_string(headers, "tracestate"))
