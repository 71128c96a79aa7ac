"""Operator tools: inspect, replay and purge the dead-letter queues, publish CloudEvent files.

Inspection, replay and purge take messages with ``basic.get`` and manual acks and hold every message
they do not move or delete until the end, then return them all at once (``nack`` with ``multiple``
and ``requeue``): RabbitMQ puts requeued messages back at their old place, so the order is kept, and
no held message is taken twice. A run is bounded by the queue's depth when it starts, so it ends
even while replayed events come back dead-lettered again. If the tool dies, the broker requeues
whatever it held when the connection closes.

Replay is at-least-once: a message is acked in the dead-letter queue only after its new copy was
confirmed (RabbitMQ publisher confirm, or SQS SendMessage). Purge acks what matches, which deletes it.

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

``send`` checks every file with the rules of ``validate`` (catalogue_cli.py: the envelope, then the
catalogue data of a known type) before it publishes anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import io
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, DeliveryMode
from aiormq.exceptions import ProbableAuthenticationError

from .amqp import AmqpGateway, persistent_copy, string_headers, vhost_refusal
from .config import APP_ID, Settings, mask_url
from .events import ParsedEvent, Rejection, identify, parse_amqp, parse_structured
from .metrics import Metrics
from .outcomes import header_text, is_own_header
from .sqs import SqsGateway

CONNECT_TIMEOUT_SECONDS = 30.0
CENSUS_MAX_BYTES = 64 * 1024 * 1024  # bodies a census holds at most (the messages are given back after)
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
    sqs_message_id: str = ""  # replies: the SQS message they were received as
    amqp_message_id: str = ""  # the AMQP message-id property (v3: the event id too)


@dataclass(slots=True)
class DeadLetterDetail:
    """One dead letter in full: AMQP properties, every header, the body as it is in the queue."""

    letter: DeadLetter
    properties: dict[str, str]
    headers: dict[str, Any]
    body: bytes


@dataclass(slots=True)
class ReplayResult:
    seen: int = 0
    replayed: int = 0
    kept: int = 0  # did not match the filters
    failed: int = 0  # matched, but the new copy was not confirmed: left in the queue
    matched: list[DeadLetter] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PurgeResult:
    seen: int = 0
    purged: int = 0
    kept: int = 0  # did not match the filters
    matched: list[DeadLetter] = field(default_factory=list)


@dataclass(slots=True)
class DeadLetterCensus:
    """A dead-letter queue at a glance: depth, and the ``x-error-code`` of the messages looked at."""

    depth: int
    peeked: int
    by_code: dict[str, int]
    oldest_age_seconds: float | None


def describe(message: AbstractIncomingMessage, now: dt.datetime | None = None, *, is_reply: bool = False) -> DeadLetter:
    headers = message.headers or {}
    named = identify(message.body, headers)
    event_type = named.get("event_type") or header_text(message.type)
    event_id = named.get("event_id") or header_text(message.message_id)
    age = None
    stamp = header_text(headers.get("x-dead-lettered-at"))
    if stamp:
        try:
            age = ((now or dt.datetime.now(dt.UTC)) - dt.datetime.fromisoformat(stamp)).total_seconds()
        except (ValueError, TypeError):
            age = None
    return DeadLetter(
        code=header_text(headers.get("x-error-code")) or "?",
        message=header_text(headers.get("x-error-message")),
        event_type=event_type,
        event_id=event_id,
        age_seconds=age,
        size=len(message.body),
        is_reply=is_reply,
        sqs_message_id=header_text(headers.get("x-sqs-message-id")),
        amqp_message_id=header_text(message.message_id),
    )


def resolve_queue(settings: Settings, queue: str | None) -> str:
    """``events`` / ``replies`` name the configured dead-letter queues; anything else is a queue name."""
    if queue in (None, "", "events"):
        return settings.amqp.dead_letter_queue
    if queue == "replies":
        return settings.amqp.reply_dead_letter_queue
    assert queue is not None
    return queue


def masked_error(settings: Settings, exc: BaseException) -> str:
    """An exception as one line, the broker password masked wherever it appears."""
    text = str(exc) or type(exc).__name__
    url = settings.amqp.url
    text = text.replace(url, mask_url(url))
    userinfo = url.partition("://")[2].rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    if password and password != user:
        text = text.replace(password, "***")
    return " ".join(text.split())


def _broker_address(settings: Settings) -> tuple[str, int]:
    scheme, _, rest = settings.amqp.url.partition("://")
    parts = urlsplit(f"{scheme}://{rest.rpartition('@')[2]}")  # no user info: a password may hold anything
    default = 5671 if scheme == "amqps" else 5672
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return parts.hostname or "127.0.0.1", port


async def tcp_problem(host: str, port: int, wait_seconds: float) -> str | None:
    """Why nothing accepts a TCP connection at host:port (refused, unknown host, no answer), or None.

    A plain connect, closed at once: a closed port is named in milliseconds, not after a client's
    retries, and in the words of the system (``Connection refused``)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_seconds)
    except TimeoutError:
        return f"no answer within {wait_seconds:.0f} s"
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
    writer.close()
    with suppress(Exception):
        await writer.wait_closed()
    return None


async def probe_amqp(settings: Settings, wait_seconds: float = 10.0) -> str:
    """Connect once, as the daemon would (URL, TLS), and return the broker's product and version.

    One attempt, no retries, so a refused login or a closed port is a clear error at once (the
    daemon's own connect waits for the broker instead). Raises :class:`ToolError` with the reason,
    the password masked.
    """
    host, port = _broker_address(settings)
    problem = await tcp_problem(host, port, wait_seconds)
    if problem is not None:
        raise ToolError(f"cannot connect to RabbitMQ at {host}:{port}: {problem}")
    gateway = AmqpGateway(settings.amqp, Metrics())
    try:
        # The gateway's own TLS set-up, so the probe negotiates exactly as the daemon does.
        ssl_context = gateway._ssl_context()
        connection = await asyncio.wait_for(
            aio_pika.connect(
                settings.amqp.url,
                ssl_context=ssl_context,
                timeout=wait_seconds,
                client_properties={"connection_name": SENDER_APP_ID},
            ),
            wait_seconds + 1,
        )
    except TimeoutError:
        raise ToolError(
            f"RabbitMQ at {host}:{port} did not complete the AMQP handshake within {wait_seconds:.0f} s"
        ) from None
    except ProbableAuthenticationError as exc:
        raise ToolError(f"RabbitMQ at {host}:{port} refused the login: {masked_error(settings, exc)}") from None
    except Exception as exc:
        refused = vhost_refusal(exc, settings.amqp.url)
        if refused is not None:
            raise ToolError(f"{refused} (at {host}:{port})") from None
        raise ToolError(f"RabbitMQ at {host}:{port}: {type(exc).__name__}: {masked_error(settings, exc)}") from None
    try:
        transport: Any = connection.transport
        properties: dict[str, Any] = dict(
            getattr(getattr(transport, "connection", None), "server_properties", {}) or {}
        )
    except Exception:  # the version is a courtesy
        properties = {}
    finally:
        await connection.close()
    product, version = header_text(properties.get("product")), header_text(properties.get("version"))
    return f"{product} {version}".strip() or "AMQP 0-9-1 broker"


@asynccontextmanager
async def amqp_session(
    settings: Settings, wait_seconds: float = CONNECT_TIMEOUT_SECONDS, *, probe: bool = True
) -> AsyncIterator[AmqpGateway]:
    """A connected gateway for a tool; a broker that cannot be reached is a :class:`ToolError` at once
    (``probe``: one plain attempt first, whose failure names the reason)."""
    if probe:
        await probe_amqp(settings, min(wait_seconds, 10.0))
    gateway = AmqpGateway(settings.amqp, Metrics())
    try:
        try:
            await asyncio.wait_for(gateway.connect(), wait_seconds)
        except TimeoutError:
            raise ToolError(f"RabbitMQ did not answer within {wait_seconds:.0f} s") from None
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


# What a visitor of :func:`_sweep` did with a message: hold it (given back at the end), it settled
# it itself (acked: moved or deleted), or hold it and take no more.
Verdict = Literal["hold", "settled", "stop"]
Visitor = Callable[[AbstractIncomingMessage, DeadLetter], Awaitable[Verdict]]


async def _sweep(gateway: AmqpGateway, settings: Settings, name: str, visit: Visitor, most: int | None = None) -> int:
    """Take up to the queue's depth at the start (at most ``most``), let ``visit`` decide on each,
    then give back every message it held, in place. Returns the depth at the start."""
    source, depth = await _open_queue(gateway, name)
    is_reply = name == settings.amqp.reply_dead_letter_queue  # by the queue, never by headers
    held: list[AbstractIncomingMessage] = []
    now = dt.datetime.now(dt.UTC)
    try:
        # Bounded by the depth at the start: what is dead-lettered meanwhile waits for the next run.
        for _ in range(depth if most is None else min(depth, most)):
            message = await source.get(no_ack=False, fail=False)
            if message is None:
                break
            verdict = await visit(message, describe(message, now, is_reply=is_reply))
            if verdict != "settled":
                held.append(message)
            if verdict == "stop":
                break
    finally:
        await _return_all(held)
    return depth


def matches_id(letter: DeadLetter, event_id: str) -> bool:
    """The event id (body), the AMQP message id, or the SQS message id of a dead reply."""
    return event_id in {letter.event_id, letter.amqp_message_id, letter.sqs_message_id} - {""}


def _matches(letter: DeadLetter, code: str | None, type_glob: str | None, event_id: str | None = None) -> bool:
    if code is not None and letter.code != code:
        return False
    if event_id is not None and not matches_id(letter, event_id):
        return False
    return type_glob is None or fnmatch.fnmatchcase(letter.event_type, type_glob)


async def list_dead_letters(
    settings: Settings, queue: str | None = None, limit: int = 50, *, event_id: str | None = None
) -> tuple[int, list[DeadLetter]]:
    """(queue depth, up to ``limit`` messages from the head); every message stays in the queue.

    With ``event_id``, the whole queue is looked through for the letters with that id."""
    name = resolve_queue(settings, queue)
    shown: list[DeadLetter] = []

    async def visit(_: AbstractIncomingMessage, letter: DeadLetter) -> Verdict:
        if event_id is None or matches_id(letter, event_id):
            shown.append(letter)
        return "stop" if len(shown) >= limit else "hold"

    async with amqp_session(settings) as gateway:
        if limit <= 0:
            return (await _open_queue(gateway, name))[1], []
        depth = await _sweep(gateway, settings, name, visit, None if event_id is not None else limit)
    return depth, shown


async def show_dead_letters(
    settings: Settings, event_id: str, queue: str | None = None
) -> tuple[int, list[DeadLetterDetail]]:
    """(queue depth, every dead letter with this event id or SQS message id, in full); all stay in place."""
    name = resolve_queue(settings, queue)
    found: list[DeadLetterDetail] = []

    async def visit(message: AbstractIncomingMessage, letter: DeadLetter) -> Verdict:
        if matches_id(letter, event_id):
            found.append(DeadLetterDetail(letter, _properties(message), dict(message.headers or {}), message.body))
        return "hold"

    async with amqp_session(settings) as gateway:
        depth = await _sweep(gateway, settings, name, visit)
    return depth, found


def _properties(message: AbstractIncomingMessage) -> dict[str, str]:
    values = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "message_id": message.message_id,
        "type": message.type,
        "app_id": message.app_id,
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "timestamp": message.timestamp.isoformat() if message.timestamp else None,
        "delivery_mode": "persistent" if message.delivery_mode == DeliveryMode.PERSISTENT else "transient",
        "priority": message.priority,
    }
    return {key: header_text(value) for key, value in values.items() if value not in (None, "")}


async def census(
    gateway: AmqpGateway, settings: Settings, name: str, limit: int, max_bytes: int = CENSUS_MAX_BYTES
) -> DeadLetterCensus:
    """Depth and counts by ``x-error-code`` of the first ``limit`` messages (fewer once ``max_bytes`` of
    bodies are held: dead letters may be large); all stay in the queue."""
    codes: Counter[str] = Counter()
    ages: list[float] = []
    held_bytes = 0

    async def visit(_: AbstractIncomingMessage, letter: DeadLetter) -> Verdict:
        nonlocal held_bytes
        codes[letter.code] += 1
        if letter.age_seconds is not None:
            ages.append(letter.age_seconds)
        held_bytes += letter.size
        return "stop" if held_bytes >= max_bytes else "hold"

    if limit <= 0:
        depth = (await _open_queue(gateway, name))[1]
        return DeadLetterCensus(depth, 0, {}, None)
    depth = await _sweep(gateway, settings, name, visit, limit)
    return DeadLetterCensus(depth, sum(codes.values()), dict(codes.most_common()), max(ages, default=None))


class _Replayer:
    def __init__(self, settings: Settings, gateway: AmqpGateway, to_original: bool) -> None:
        self._settings = settings
        self._gateway = gateway
        self._to_original = to_original
        self._sqs: SqsGateway | None = None

    async def close(self) -> None:
        if self._sqs is not None:
            await self._sqs.__aexit__(None, None, None)

    async def send(self, message: AbstractIncomingMessage, letter: DeadLetter, *, dry_run: bool = False) -> str:
        """Validate, publish the new copy and wait for its confirm; returns where it went.
        ``dry_run``: the same checks, nothing sent."""
        if letter.is_reply:
            return await self._to_sqs(message, dry_run=dry_run)
        headers = string_headers({k: v for k, v in (message.headers or {}).items() if not is_own_header(str(k))})
        try:
            parse_amqp(message.body, message.content_type, headers, repair_missing_id=True)
        except Rejection as rejection:
            raise ToolError(
                f"not replayed, still not a valid event: {rejection.code.value}: {rejection.message}"
            ) from None
        if self._to_original:
            original = message.headers or {}
            exchange = header_text(original.get("x-original-exchange"))
            routing_key = header_text(original.get("x-original-routing-key"))
            if not exchange and not routing_key:
                raise ToolError("no x-original-exchange / x-original-routing-key header")
            if exchange and exchange not in self._settings.amqp.exchanges:
                configured = ", ".join(self._settings.amqp.exchanges)
                raise ToolError(f"x-original-exchange {exchange!r} is not one of amqp.exchanges ({configured})")
            if not exchange and routing_key != self._settings.amqp.queue:
                raise ToolError(f"default-exchange routing key {routing_key!r} is not amqp.queue")
        else:
            exchange, routing_key = "", self._settings.amqp.queue
        if not dry_run:
            await self._gateway.publish(exchange, routing_key, persistent_copy(message, headers))
        return f"amqp exchange {exchange!r} routing key {routing_key!r}"

    async def _to_sqs(self, message: AbstractIncomingMessage, *, dry_run: bool) -> str:
        headers = message.headers or {}
        try:
            parse_structured(message.body, repair_missing_id=True)
        except Rejection as rejection:
            raise ToolError(
                f"not replayed, still not a valid reply: {rejection.code.value}: {rejection.message}"
            ) from None
        name = self._settings.sqs.response_queue
        if dry_run:
            return f"sqs queue {name}"
        if self._sqs is None:
            self._sqs = await SqsGateway(self._settings.sqs, Metrics()).__aenter__()
        queue = await self._sqs.resolve(name, create=False)
        attributes = {}
        for key, value in headers.items():
            attribute = str(key).removeprefix("x-sqs-attribute-")
            text = header_text(value)
            if str(key).startswith("x-sqs-attribute-") and attribute.startswith(_REPLAYED_ATTRIBUTES) and text:
                attributes[attribute] = {"DataType": "String", "StringValue": text}
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
    event_id: str | None = None,
    dry_run: bool = False,
    to_original: bool = False,
) -> ReplayResult:
    """Move the matching dead letters back (see the module doc); the others stay where they were."""
    name = resolve_queue(settings, queue)
    result = ReplayResult()
    async with amqp_session(settings) as gateway:
        replayer = _Replayer(settings, gateway, to_original)

        async def visit(message: AbstractIncomingMessage, letter: DeadLetter) -> Verdict:
            result.seen += 1
            if not _matches(letter, code, type_glob, event_id):
                result.kept += 1
                return "hold"
            try:
                await replayer.send(message, letter, dry_run=dry_run)
            except Exception as exc:
                result.failed += 1
                result.errors.append(f"{letter.event_id or '?'} ({letter.event_type or '?'}): {exc}")
                return "hold"
            result.matched.append(letter)
            if dry_run:
                return "hold"
            await message.ack()
            result.replayed += 1
            return "settled"

        try:
            await _sweep(gateway, settings, name, visit)
        finally:
            await replayer.close()
    return result


async def purge(
    settings: Settings,
    queue: str | None = None,
    *,
    code: str | None = None,
    type_glob: str | None = None,
    event_id: str | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Delete the matching dead letters (ack them); the others stay in place. ``dry_run``: delete nothing.

    At least one of ``code`` and ``event_id`` is required: a purge never takes a whole queue by accident.
    """
    if code is None and event_id is None:
        raise ToolError("purge needs --code or --id (what to delete)")
    name = resolve_queue(settings, queue)
    result = PurgeResult()

    async def visit(message: AbstractIncomingMessage, letter: DeadLetter) -> Verdict:
        result.seen += 1
        if not _matches(letter, code, type_glob, event_id):
            result.kept += 1
            return "hold"
        result.matched.append(letter)
        if dry_run:
            return "hold"
        await message.ack()
        result.purged += 1
        return "settled"

    async with amqp_session(settings) as gateway:
        await _sweep(gateway, settings, name, visit)
    return result


def check_event_file(path: Path) -> bytes:
    """The file's bytes if ``validate`` accepts it (the same function: envelope, then catalogue data);
    else :class:`ToolError` with validate's reason."""
    from . import catalogue_cli  # noqa: PLC0415 - the catalogue is only needed by the tools that check files

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"{path}: {exc.strerror}") from None
    verdict = io.StringIO()
    if catalogue_cli.validate_files([str(path)], out=verdict) != 0:
        line = verdict.getvalue().strip().splitlines()[-1] if verdict.getvalue().strip() else "invalid"
        reason = line.removeprefix(f"{path}: ").removeprefix("invalid: ")
        raise ToolError(f"{path}: rejected by validate: {reason}")
    return raw.rstrip(b"\r\n")


def load_events(paths: list[Path]) -> list[ParsedEvent]:
    """Check every file first, with the rules of ``validate``, so that one bad file sends nothing.

    ``validate`` accepts an event without an id, as the daemon does (``validation.repair_missing_id``,
    for Lamassu v2.0), but that is a tolerance, not a licence to publish such events: ``send``
    refuses them. The body is published byte for byte as it was validated."""
    events = []
    for path in paths:
        raw = check_event_file(path)
        try:
            events.append(parse_structured(raw, repair_missing_id=False))
        except Rejection as rejection:
            raise ToolError(
                f"{path}: not sent: {rejection.code.value}: {rejection.message} (give the event an id)"
            ) from None
    return events


async def send_events(
    settings: Settings,
    events: list[ParsedEvent],
    exchange: str | None = None,
    on_sent: Callable[[ParsedEvent], None] | None = None,
) -> str:
    """Publish to the (first) configured exchange, routing key = type, each confirmed; returns the exchange."""
    target = exchange or settings.amqp.exchanges[0]
    async with amqp_session(settings) as gateway:
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
            if on_sent is not None:
                on_sent(parsed)
    return target


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
