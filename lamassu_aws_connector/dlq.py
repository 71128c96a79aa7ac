"""Operator tools: inspect and replay the dead-letter queues, publish CloudEvent files.

Inspection and replay take messages with ``basic.get`` and manual acks and hold every message they
do not move until the end, then return them all at once (``nack`` with ``multiple`` and
``requeue``): RabbitMQ puts requeued messages back at their old place, so the order is kept, and no
held message is taken twice. A run is bounded by the queue's depth when it starts, so it ends even
while replayed events come back dead-lettered again. If the tool dies, the broker requeues whatever
it held when the connection closes.

Replay is at-least-once: a message is acked in the dead-letter queue only after its new copy was
confirmed (RabbitMQ publisher confirm, or SQS SendMessage).

What a dead letter is, and where it may go, is decided by the queue it is read from and by the
configuration, never by its headers (security.md: any publisher can set headers):

* Messages of ``amqp.reply_dead_letter_queue`` are replies: they go back to ``sqs.response_queue``
  with their recorded SQS attributes, and take the whole reply flow again (validation, dataref
  resolution, routing). An ``x-sqs-queue`` header naming another queue is ignored.
* Any other queue holds events: they go back to the connector's own queue (``amqp.queue``, through
  the default exchange), so other Lamassu services bound to the original exchange do not get the
  event twice; ``to_original`` publishes to ``x-original-exchange`` / ``x-original-routing-key``
  instead, and only to an exchange the connector is configured to consume from.
* What is sent is validated first (a CloudEvent, as the flows would check it); a message that is
  not one stays in the dead-letter queue and is reported. Copies carry string headers only
  (Lamassu v2.5+ consumers requeue anything else forever), without the dead-letter headers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, DeliveryMode

from .amqp import AmqpGateway, persistent_copy, string_headers
from .config import APP_ID, Settings
from .events import ParsedEvent, Rejection, parse_amqp, parse_structured
from .metrics import Metrics
from .outcomes import is_own_header
from .sqs import SqsGateway

CONNECT_TIMEOUT_SECONDS = 30.0
SENDER_APP_ID = f"{APP_ID}-cli"  # not APP_ID: the outbound loop guard would skip these
# The SQS attributes a replayed reply may carry (what the connector itself reads from replies).
_REPLAYED_ATTRIBUTES = ("ce-", "traceparent", "tracestate")


class ToolError(Exception):
    """Something the operator has to fix (no broker, no such queue, a bad file)."""


@dataclass(slots=True)
class DeadLetter:
    """What an operator wants to see of one dead-lettered message."""

    code: str
    message: str
    event_type: str
    event_id: str
    age_seconds: float | None
    size: int
    is_reply: bool


@dataclass(slots=True)
class ReplayResult:
    seen: int = 0
    replayed: int = 0
    kept: int = 0  # did not match the filters
    failed: int = 0  # matched, but the new copy was not confirmed: left in the queue
    matched: list[DeadLetter] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def describe(message: AbstractIncomingMessage, now: dt.datetime | None = None, *, is_reply: bool = False) -> DeadLetter:
    headers = message.headers or {}
    event_type, event_id = _text(message.type), _text(message.message_id)
    try:
        event = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict):
        event_type = _text(event.get("type")) or event_type
        event_id = _text(event.get("id")) or event_id
    age = None
    stamp = _text(headers.get("x-dead-lettered-at"))
    if stamp:
        try:
            age = ((now or dt.datetime.now(dt.UTC)) - dt.datetime.fromisoformat(stamp)).total_seconds()
        except ValueError:
            age = None
    return DeadLetter(
        code=_text(headers.get("x-error-code")) or "?",
        message=_text(headers.get("x-error-message")),
        event_type=event_type,
        event_id=event_id,
        age_seconds=age,
        size=len(message.body),
        is_reply=is_reply,
    )


def resolve_queue(settings: Settings, queue: str | None) -> str:
    """``events`` / ``replies`` name the configured dead-letter queues; anything else is a queue name."""
    if queue in (None, "", "events"):
        return settings.amqp.dead_letter_queue
    if queue == "replies":
        return settings.amqp.reply_dead_letter_queue
    assert queue is not None
    return queue


@asynccontextmanager
async def _amqp(settings: Settings) -> AsyncIterator[AmqpGateway]:
    gateway = AmqpGateway(settings.amqp, Metrics())
    try:
        await asyncio.wait_for(gateway.connect(), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        raise ToolError(f"RabbitMQ did not answer within {CONNECT_TIMEOUT_SECONDS:.0f} s") from None
    try:
        yield gateway
    finally:
        await gateway.close()


async def _open_queue(gateway: AmqpGateway, name: str) -> tuple[AbstractQueue, int]:
    assert gateway.connection is not None
    channel = await gateway.connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        raise ToolError(f"queue {name!r} does not exist") from None
    return queue, int(queue.declaration_result.message_count or 0)


async def _return_all(held: list[AbstractIncomingMessage]) -> None:
    """Give back every held message in one frame, keeping their order in the queue."""
    if held:
        await held[-1].nack(multiple=True, requeue=True)


async def list_dead_letters(
    settings: Settings, queue: str | None = None, limit: int = 50
) -> tuple[int, list[DeadLetter]]:
    """(queue depth, up to ``limit`` messages from the head); every message stays in the queue."""
    name = resolve_queue(settings, queue)
    async with _amqp(settings) as gateway:
        source, depth = await _open_queue(gateway, name)
        held: list[AbstractIncomingMessage] = []
        try:
            while len(held) < min(depth, limit):
                message = await source.get(no_ack=False, fail=False)
                if message is None:
                    break
                held.append(message)
            now = dt.datetime.now(dt.UTC)
            is_reply = name == settings.amqp.reply_dead_letter_queue
            return depth, [describe(message, now, is_reply=is_reply) for message in held]
        finally:
            await _return_all(held)


def _matches(letter: DeadLetter, code: str | None, type_glob: str | None) -> bool:
    if code is not None and letter.code != code:
        return False
    return type_glob is None or fnmatch.fnmatchcase(letter.event_type, type_glob)


class _Replayer:
    def __init__(self, settings: Settings, gateway: AmqpGateway, to_original: bool) -> None:
        self._settings = settings
        self._gateway = gateway
        self._to_original = to_original
        self._sqs: SqsGateway | None = None

    async def close(self) -> None:
        if self._sqs is not None:
            await self._sqs.__aexit__(None, None, None)

    async def send(self, message: AbstractIncomingMessage, letter: DeadLetter) -> str:
        """Validate, publish the new copy and wait for its confirm; returns where it went."""
        if letter.is_reply:
            return await self._to_sqs(message)
        headers = string_headers({k: v for k, v in (message.headers or {}).items() if not is_own_header(str(k))})
        try:
            parse_amqp(message.body, message.content_type, headers, repair_missing_id=True)
        except Rejection as rejection:
            raise ToolError(
                f"not replayed, still not a valid event: {rejection.code.value}: {rejection.message}"
            ) from None
        if self._to_original:
            original = message.headers or {}
            exchange = _text(original.get("x-original-exchange"))
            routing_key = _text(original.get("x-original-routing-key"))
            if not exchange and not routing_key:
                raise ToolError("no x-original-exchange / x-original-routing-key header")
            if exchange and exchange not in self._settings.amqp.exchanges:
                configured = ", ".join(self._settings.amqp.exchanges)
                raise ToolError(f"x-original-exchange {exchange!r} is not one of amqp.exchanges ({configured})")
            if not exchange and routing_key != self._settings.amqp.queue:
                raise ToolError(f"default-exchange routing key {routing_key!r} is not amqp.queue")
        else:
            exchange, routing_key = "", self._settings.amqp.queue
        copy = persistent_copy(message, headers)
        await self._gateway.publish(exchange, routing_key, copy)
        return f"amqp exchange {exchange!r} routing key {routing_key!r}"

    async def _to_sqs(self, message: AbstractIncomingMessage) -> str:
        headers = message.headers or {}
        try:
            parse_structured(message.body, repair_missing_id=True)
        except Rejection as rejection:
            raise ToolError(
                f"not replayed, still not a valid reply: {rejection.code.value}: {rejection.message}"
            ) from None
        name = self._settings.sqs.response_queue
        if self._sqs is None:
            self._sqs = await SqsGateway(self._settings.sqs, Metrics()).__aenter__()
        queue = await self._sqs.resolve(name, create=False)
        attributes = {}
        for key, value in headers.items():
            attribute = str(key).removeprefix("x-sqs-attribute-")
            if str(key).startswith("x-sqs-attribute-") and attribute.startswith(_REPLAYED_ATTRIBUTES) and _text(value):
                attributes[attribute] = {"DataType": "String", "StringValue": _text(value)}
        entry: dict[str, Any] = {"Id": "0", "MessageBody": message.body.decode("utf-8")}
        if attributes:
            entry["MessageAttributes"] = dict(list(attributes.items())[:10])
        response = await self._sqs.send_batch(queue, [entry])
        if not response.get("Successful"):
            failure = (response.get("Failed") or [{}])[0]
            raise ToolError(f"SQS refused it: {failure.get('Code')}: {failure.get('Message')}")
        return f"sqs queue {name}"


async def replay(
    settings: Settings,
    queue: str | None = None,
    *,
    code: str | None = None,
    type_glob: str | None = None,
    dry_run: bool = False,
    to_original: bool = False,
) -> ReplayResult:
    """Move the matching dead letters back (see the module doc); the others stay where they were."""
    name = resolve_queue(settings, queue)
    result = ReplayResult()
    async with _amqp(settings) as gateway:
        source, depth = await _open_queue(gateway, name)
        is_reply = name == settings.amqp.reply_dead_letter_queue  # by the queue, never by headers
        replayer = _Replayer(settings, gateway, to_original)
        held: list[AbstractIncomingMessage] = []
        try:
            # Bounded by the depth at the start: what is dead-lettered meanwhile waits for the next run.
            for _ in range(depth):
                message = await source.get(no_ack=False, fail=False)
                if message is None:
                    break
                result.seen += 1
                letter = describe(message, is_reply=is_reply)
                if not _matches(letter, code, type_glob):
                    result.kept += 1
                    held.append(message)
                    continue
                result.matched.append(letter)
                if dry_run:
                    held.append(message)
                    continue
                try:
                    await replayer.send(message, letter)
                except Exception as exc:
                    result.failed += 1
                    result.errors.append(f"{letter.event_id or '?'} ({letter.event_type or '?'}): {exc}")
                    held.append(message)
                    continue
                await message.ack()
                result.replayed += 1
        finally:
            try:
                await _return_all(held)
            finally:
                await replayer.close()
    return result


def load_events(paths: list[Path], *, repair_missing_id: bool) -> list[ParsedEvent]:
    """Parse every file first, so that one bad file sends nothing."""
    events = []
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ToolError(f"{path}: {exc.strerror}") from None
        try:
            events.append(parse_structured(raw, repair_missing_id=repair_missing_id))
        except Rejection as rejection:
            raise ToolError(f"{path}: {rejection.code.value}: {rejection.message}") from None
    return events


async def send_events(settings: Settings, events: list[ParsedEvent], exchange: str | None = None) -> str:
    """Publish to the (first) configured exchange, routing key = type, each confirmed; returns the exchange."""
    target = exchange or settings.amqp.exchanges[0]
    async with _amqp(settings) as gateway:
        await gateway.declare_topic_exchange(target)
        for parsed in events:
            message = aio_pika.Message(
                body=parsed.body,
                content_type="application/cloudevents+json",
                message_id=parsed.id,
                app_id=SENDER_APP_ID,
                delivery_mode=DeliveryMode.PERSISTENT,
            )
            try:
                await gateway.publish(target, parsed.type, message)
            except aio_pika.exceptions.PublishError:
                raise ToolError(
                    f"event {parsed.id} ({parsed.type}): no queue is bound to exchange {target!r} for it"
                ) from None
    return target


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
