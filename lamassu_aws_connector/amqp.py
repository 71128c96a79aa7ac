"""Thin AMQP adapter over aio-pika: robust connection, topology, consumer, confirming publisher.

Two channels: one consumes (per-consumer prefetch; acks must go back on it), one publishes with
publisher confirms and ``on_return_raises`` so an unroutable message is an error, not a silent drop.
Topology declared through robust channels is restored by aio-pika after a reconnect, the events
consumer included.

The events consumer receives aiormq's frames as a :class:`Delivery`, not as aio-pika's
``IncomingMessage``: building that object and the extra task aio-pika starts per message cost
≈ 19 µs of CPU per event (62 against 43 µs per message in a bare consume loop on this project's
machine), a tenth of the connector's whole CPU per event. aio-pika still owns the connection, the
channels, the topology and the consumer's restore after a reconnect (:class:`_DeliveryQueue`).
aiormq itself starts a task per delivery to run the consumer; the events consumer's handler is
started at once instead, in delivery order, and becomes a task only if it has to wait
(:class:`_EagerChannel`): most events are parsed, checked and batched without waiting on anything.
The frames of deliveries, confirms, publishes and acks are read and written by :mod:`.amqp_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    ConsumerTag,
    DeliveryMode,
)
from aio_pika.exceptions import ChannelPreconditionFailed
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError

from . import amqp_wire
from .config import APP_ID, AmqpConfig, mask_url
from .logs import get_logger
from .metrics import Metrics
from .outcomes import STARTUP, dead_letter_headers, exception_chain, failed_and, header_text

log = get_logger(__name__)

amqp_wire.install()


class Consumed(Protocol):
    """A message read from a queue, as the pipelines and the dead-letter copy use it: a
    :class:`Delivery` of the events consumer, or aio-pika's ``IncomingMessage`` (dlq tools, fleet)."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, Any]: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def timestamp(self) -> dt.datetime | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def app_id(self) -> str | None: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def redelivered(self) -> bool | None: ...
    @property
    def delivery_tag(self) -> int | None: ...
    @property
    def channel(self) -> aiormq.abc.AbstractChannel: ...

    async def ack(self, multiple: bool = False) -> None: ...


class Delivery:
    """One message of the events consumer, read straight from aiormq's frames (see the module doc).

    The same names as aio-pika's ``IncomingMessage``; properties are read from the content header
    only when asked. ``channel`` raises once the channel it came on is closed, as aio-pika does.
    """

    __slots__ = ("_channel", "_properties", "body", "delivery_tag", "exchange", "headers", "redelivered", "routing_key")

    def __init__(self, message: DeliveredMessage) -> None:
        self._channel = message.channel
        self._properties = message.header.properties
        self.body: bytes = message.body
        self.delivery_tag: int | None = message.delivery_tag
        self.redelivered: bool | None = message.redelivered
        self.routing_key: str | None = message.routing_key
        self.exchange: str | None = message.exchange
        self.headers: dict[str, Any] = self._properties.headers or {}

    @property
    def content_type(self) -> str | None:
        return self._properties.content_type

    @property
    def content_encoding(self) -> str | None:
        return self._properties.content_encoding

    @property
    def priority(self) -> int | None:
        return self._properties.priority or 0  # as aio-pika reads an absent priority

    @property
    def correlation_id(self) -> str | None:
        return self._properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self._properties.reply_to

    @property
    def message_id(self) -> str | None:
        return self._properties.message_id

    @property
    def timestamp(self) -> dt.datetime | None:
        return self._properties.timestamp

    @property
    def type(self) -> str | None:
        return self._properties.message_type

    @property
    def app_id(self) -> str | None:
        return self._properties.app_id

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        if self._channel.is_closed:
            raise ChannelInvalidStateError
        return self._channel

    async def ack(self, multiple: bool = False) -> None:
        """Queue the ack frame for the connection's writer (frames leave in the order queued)."""
        if self.delivery_tag is not None:
            await self.channel.basic_ack(delivery_tag=self.delivery_tag, multiple=multiple, wait=False)


Handler = Callable[[Consumed], Coroutine[Any, Any, None]]
FanoutHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class _EagerConsumer:
    """The events consumer's callback as aiormq stores it; :class:`_EagerChannel` recognises it."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def __call__(self, message: DeliveredMessage) -> Coroutine[Any, Any, None]:
        # aiormq's own way (a task per message), used by a channel that is not an _EagerChannel.
        return self.handler(Delivery(message))


async def _resume(handler: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Drive a handler that :class:`_EagerChannel` started, from where it first waited, as a task would.

    ``awaited`` is what the handler yielded: the asyncio future it waits for (its own ``await``
    reads the result or exception once resumed), or None for a bare yield (``sleep(0)``)."""
    while True:
        try:
            if awaited is None:
                await asyncio.sleep(0)
            else:
                awaited._asyncio_future_blocking = False  # what a task does with a future it is given
                await asyncio.wait((awaited,))
        except asyncio.CancelledError as cancelled:
            # As Task.cancel(): cancel what the handler waits for and raise CancelledError where it waits.
            if awaited is not None:
                awaited.cancel()
            try:
                awaited = handler.throw(cancelled)
            except StopIteration:
                return
            continue
        try:
            awaited = handler.send(None)
        except StopIteration:
            return


class _EagerChannel(aiormq.Channel):
    """aiormq's channel, handing a delivery for an :class:`_EagerConsumer` to its handler at once.

    aiormq runs every consumer callback as a new task: ≈ 4 % of the connector's CPU per event for
    a handler that, for most events, never waits. Here the handler runs until it first waits, in
    the channel's reader; only then does the rest become a task, owned by the channel like aiormq's
    own (cancelled when the channel closes). Other consumers go aiormq's way.
    """

    async def _on_deliver_frame(self, frame: aiormq.spec.Basic.Deliver) -> None:
        consumer = self.consumers.get(frame.consumer_tag) if frame.consumer_tag is not None else None
        eager = getattr(consumer, "__wrapped__", None)  # aiormq wraps a plain callable
        if not isinstance(eager, _EagerConsumer):
            await super()._on_deliver_frame(frame)
            return
        header = await self._Channel__get_content_header()  # type: ignore[attr-defined]
        message = await self._read_content(frame, header)
        handler = eager.handler(Delivery(message))
        try:
            awaited = handler.send(None)
        except StopIteration:
            return
        except (Exception, asyncio.CancelledError):  # never into the channel's reader
            log.exception("amqp.consumer_failed", routing_key=message.routing_key)
            return
        task = self.create_task(_resume(handler, awaited))
        task.add_done_callback(self._on_consumer_done)


def _eager_channel_fits(channel: aiormq.abc.AbstractChannel) -> bool:
    """This aiormq reads a delivery's frames the way :class:`_EagerChannel` calls them."""
    return type(channel) is aiormq.Channel and hasattr(channel, "_Channel__get_content_header")


class _DeliveryQueue(RobustQueue):
    """A robust queue whose consumer callback gets a :class:`Delivery` per message.

    aio-pika's robust channel restores its queues after a reconnect by calling ``consume`` again
    with what was registered here, so the consumer comes back exactly as aio-pika's own would. Its
    recovery of a consumer the broker cancelled calls aio-pika's own ``Queue.consume`` instead: the
    handler then gets ``IncomingMessage`` objects, which have the same names (:class:`Consumed`).
    """

    __slots__ = ()

    async def consume(  # type: ignore[override]
        self,
        callback: Handler,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        consumer_tag: ConsumerTag | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - aio-pika's signature, called by its restore
        robust: bool = True,
    ) -> ConsumerTag:
        channel = await self.channel.get_underlay_channel()
        if _eager_channel_fits(channel):
            channel.__class__ = _EagerChannel  # the same object, read frames the same; see the class
        result = await channel.basic_consume(
            queue=self.name,
            consumer_callback=_EagerConsumer(callback),
            exclusive=exclusive,
            no_ack=no_ack,
            arguments=arguments,
            consumer_tag=consumer_tag,
            timeout=timeout,
        )
        if result.consumer_tag is None:
            raise RuntimeError("RabbitMQ answered basic.consume without a consumer tag")
        if robust:
            self._consumers[result.consumer_tag] = {
                "callback": callback,
                "no_ack": no_ack,
                "exclusive": exclusive,
                "arguments": arguments,
            }
        return result.consumer_tag


PUBLISH_TIMEOUT_SECONDS = 30.0


class TlsError(Exception):
    """The broker's certificate (or ours) is not accepted: a configuration problem, not an outage."""


# A basic.cancel the broker does not answer in this time is given up (the channel is in trouble).
CANCEL_TIMEOUT_SECONDS = 5.0


class VhostRefused(ConnectionError):
    """RabbitMQ closed the connection at Connection.Open: the virtual host does not exist, or the user
    may not use it (530 NOT_ALLOWED). aiormq reports it as an unexpected frame."""


def vhost_refusal(exc: BaseException, url: str) -> VhostRefused | None:
    """The refusal of the URL's virtual host hidden in ``exc``, as a sentence an operator can act on."""
    for error in exception_chain(exc):
        text = str(error)
        if isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.OpenOk" in text:
            parts = urlsplit(url)
            vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
            return VhostRefused(
                f"RabbitMQ refused virtual host {vhost!r} to user {unquote(parts.username or 'guest')!r}: it does "
                "not exist or the user has no permission on it (rabbitmqctl add_vhost / set_permissions, or fix "
                "the path of amqp.url)"
            )
    return None


def _transient_connect_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error somewhere in an exception's chain (aiormq wraps it), if any."""
    return next((e for e in exception_chain(exc) if isinstance(e, ssl.SSLError)), None)


def channel_open(delivery: Consumed) -> bool:
    """False once the channel a delivery came on is gone: it can no longer be acked."""
    try:
        return not delivery.channel.is_closed
    except ChannelInvalidStateError:
        return False


def string_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Lamassu v2.5+ subscribers (watermill-amqp) accept string header values only."""
    return {key: value if isinstance(value, str) else header_text(value) for key, value in headers.items()}


def persistent_copy(delivery: Consumed, headers: dict[str, Any]) -> aio_pika.Message:
    """The delivery as a new persistent message with its body and properties, and these headers."""
    return aio_pika.Message(
        body=delivery.body,
        headers=headers,
        content_type=delivery.content_type,
        content_encoding=delivery.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=delivery.priority,
        correlation_id=delivery.correlation_id,
        reply_to=delivery.reply_to,
        message_id=delivery.message_id,
        timestamp=delivery.timestamp,
        type=delivery.type,
        app_id=delivery.app_id,
    )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish, already in wire form: the reply relay's hot path builds these rather
    than aio-pika ``Message`` objects (≈ 4 % of the relay's CPU per reply went into building those)."""

    body: bytes
    properties: aiormq.spec.Basic.Properties


class AmqpGateway:
    def __init__(self, config: AmqpConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self.connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._fleet_channel: AbstractRobustChannel | None = None
        self._fleet_exchange: AbstractExchange | None = None
        self._events_queue_quorum: bool | None = None
        self._closing = False

    def _ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self._config.url).scheme != "amqps":
            return None
        tls = self._config.tls
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file and tls.key_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"cannot load the TLS files of amqp.tls: {exc}") from exc
        if not tls.verify:
            log.warning(
                "amqp.tls_verification_disabled", detail="amqp.tls.verify is false: the broker is not authenticated"
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def connect(self) -> None:
        """Connect, retrying with backoff: a broker that is still starting is not a fatal error.

        A TLS verification failure is: retrying would not make the certificate valid.
        """
        ssl_context = self._ssl_context()
        async for attempt in STARTUP.retrying(
            failed_and(lambda exc: _transient_connect_error(exc) and _tls_failure(exc) is None),
            before_sleep=lambda state: log.warning(
                "amqp.connect_failed",
                url=mask_url(self._config.url),
                attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None,
            ),
        ):
            with attempt:
                try:
                    self.connection = await aio_pika.connect_robust(
                        self._config.url,
                        heartbeat=self._config.heartbeat_seconds,
                        client_properties={"connection_name": APP_ID},
                        timeout=10,
                        ssl_context=ssl_context,
                        reconnect_interval=self._config.reconnect_interval_seconds,
                    )
                except Exception as exc:
                    failure = _tls_failure(exc)
                    if failure is not None:
                        raise TlsError(f"TLS handshake with {mask_url(self._config.url)} failed: {failure}") from exc
                    # Retried like a refused login: the vhost may be about to be provisioned.
                    refused = vhost_refusal(exc, self._config.url)
                    if refused is not None:
                        raise refused from exc
                    raise
        assert self.connection is not None
        self._metrics.amqp_connected.set(1)
        self.connection.close_callbacks.add(self._on_connection_lost)
        self.connection.reconnect_callbacks.add(self._on_reconnected)
        self._consume_channel = await self.connection.channel()
        await self._consume_channel.set_qos(prefetch_count=self._config.prefetch)
        self._publish_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        log.info("amqp.connected", url=mask_url(self._config.url))

    def _on_connection_lost(self, *_: Any) -> None:
        self._metrics.amqp_connected.set(0)
        if not self._closing:
            log.warning("amqp.connection_lost", url=mask_url(self._config.url))

    def _on_reconnected(self, *_: Any) -> None:
        self._metrics.amqp_connected.set(1)
        log.info("amqp.reconnected", url=mask_url(self._config.url))

    @property
    def consuming(self) -> bool:
        channel = self._consume_channel
        return self._consumer_tag is not None and channel is not None and not channel.is_closed

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def wait_connected(self) -> None:
        assert self.connection is not None
        await self.connection.connected.wait()

    async def declare_events_queue(self) -> AbstractQueue:
        """The durable events queue, bound to every configured exchange with every binding key.

        A queue that already exists with other properties is adopted, with a warning, instead of
        stopping the connector: Lamassu v1's cloud-proxy declares ``lamassu_events`` non-durable.
        """
        assert self._consume_channel is not None
        queue = await self._declare_or_adopt(self._config.queue)
        channel = self._consume_channel
        for exchange_name in self._config.exchanges:
            exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            for key in self._config.binding_keys:
                await queue.bind(exchange, routing_key=key)
        # The v1 path (default exchange, routing key = queue name) needs no binding.
        await channel.declare_queue(self._config.dead_letter_queue, durable=True)
        self._queue = queue
        return queue

    async def _declare_or_adopt(self, name: str) -> AbstractQueue:
        assert self.connection is not None and self._consume_channel is not None
        try:
            return await self._consume_channel.declare_queue(name, durable=True)
        except ChannelPreconditionFailed as exc:
            difference = str(exc)[:300]
        # The failed declare closed the channel: continue on a fresh one.
        await self._fresh_consume_channel()
        assert self._consume_channel is not None
        try:
            # As Lamassu v1 declares it; declared (not passive) so a broker restart restores it.
            queue = await self._consume_channel.declare_queue(name, durable=False)
            adopted_as = "non-durable"
        except ChannelPreconditionFailed:
            await self._fresh_consume_channel()
            assert self._consume_channel is not None
            queue = await self._consume_channel.declare_queue(name, passive=True)
            adopted_as = "as it is (passive)"
        log.warning(
            "amqp.events_queue_adopted",
            queue=name,
            adopted_as=adopted_as,
            difference=difference,
            detail=(
                "the queue exists with other properties (Lamassu v1's cloud-proxy declares it non-durable); "
                "it is used as it is. Messages in a non-durable queue do not survive a broker restart, and "
                "another consumer of it competes for every event (docs/deployment.md, 'Beside Lamassu v1')"
                if adopted_as == "non-durable"
                else "the queue exists with other properties (its arguments or type differ from a plain durable "
                "queue's); it is used as it is, and another consumer of it competes for every event"
            ),
        )
        return queue

    async def events_queue_is_quorum(self) -> bool:
        """Whether the events queue is a quorum queue, whose ``x-delivery-count`` RabbitMQ writes.

        On a classic queue that header can only come from a publisher. Asked rarely (a redelivered
        message carrying it), answered by a declare that must match the queue's type, on a channel of
        its own, since a mismatch closes the channel; remembered once known. A quorum queue declared
        with arguments of its own (``x-delivery-limit``) refuses this declare too: its count is then
        not believed, which errs on the safe side (the crash guard's strikes, and RabbitMQ's own
        delivery limit, still apply).
        """
        if self._events_queue_quorum is not None:
            return self._events_queue_quorum
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            await channel.declare_queue(self._config.queue, durable=True, arguments={"x-queue-type": "quorum"})
        except ChannelPreconditionFailed:
            self._events_queue_quorum = False
        else:
            self._events_queue_quorum = True
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
        return self._events_queue_quorum

    async def _fresh_consume_channel(self) -> None:
        assert self.connection is not None
        old = self._consume_channel
        self._consume_channel = await self.connection.channel()
        await self._consume_channel.set_qos(prefetch_count=self._config.prefetch)
        if old is not None and not old.is_closed:
            with contextlib.suppress(Exception):
                await old.close()

    async def declare_durable_queue(self, name: str) -> None:
        assert self._publish_channel is not None
        await self._publish_channel.declare_queue(name, durable=True)

    async def declare_topic_exchange(self, name: str) -> None:
        assert self._publish_channel is not None
        await self._publish_channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)

    async def consume(self, handler: Handler) -> None:
        """Consume the events queue; ``handler`` gets a :class:`Delivery` per message."""
        assert self._queue is not None
        if isinstance(self._queue, RobustQueue) and not isinstance(self._queue, _DeliveryQueue):
            # Same slots, one method more: the robust channel keeps restoring this very object.
            self._queue.__class__ = _DeliveryQueue
        self._consumer_tag = await self._queue.consume(handler)

    async def queue_depths(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """(messages ready, consumers) of each queue that exists, on channels of their own: a passive
        declare of a missing queue closes its channel, never the consumer's."""
        assert self.connection is not None
        depths: dict[str, tuple[int, int]] = {}
        channel: AbstractChannel | None = None
        try:
            for name in names:
                if channel is None or channel.is_closed:
                    channel = await self.connection.channel(publisher_confirms=False)
                try:
                    declared = await (await channel.get_underlay_channel()).queue_declare(name, passive=True)
                except Exception as exc:  # no such queue (the channel closed; the next name gets a new one)
                    log.debug("amqp.depth_unavailable", queue=name, error=repr(exc)[:200])
                    continue
                depths[name] = (int(declared.message_count or 0), int(declared.consumer_count or 0))
        finally:
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
        return depths

    async def consume_fanout(self, exchange: str, handler: FanoutHandler) -> None:
        """Consume a durable fanout exchange through a queue of this process alone (server-named,
        exclusive, auto-deleted with the connection; restored by aio-pika after a reconnect).

        A channel of its own, without confirms: the announcements published there are best effort."""
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=100)
        self._fleet_exchange = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(self._fleet_exchange)
        await queue.consume(handler, no_ack=True)
        self._fleet_channel = channel

    async def publish_unconfirmed(self, exchange: str, message: aio_pika.Message) -> None:
        """Publish on the fanout channel without waiting for a confirm (announcements only).

        Bounded: a publish that waits for room in the write queue of a connection the broker has
        closed would otherwise wait forever, and every announcement after it."""
        assert self._fleet_exchange is not None and self._fleet_exchange.name == exchange
        await self._fleet_exchange.publish(message, routing_key="", timeout=PUBLISH_TIMEOUT_SECONDS)

    async def cancel_consumer(self) -> None:
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            if not self.connected:
                # A robust queue's cancel waits for the broker to come back: a stop would sit out its
                # whole grace. With the connection gone, its deliveries are back in the queue anyway.
                log.info("amqp.cancel_skipped", reason="the connection is down; its deliveries return to the queue")
                return
            try:
                await asyncio.wait_for(self._queue.cancel(tag), CANCEL_TIMEOUT_SECONDS)
            except Exception as exc:  # the channel may already be gone; deliveries then return anyway
                log.warning("amqp.cancel_failed", error=repr(exc))

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message | Outgoing) -> None:
        """Publish and wait for the broker's confirm; raises on nack, return (unroutable) or timeout.

        Straight to the channel under aio-pika's robust one (what aio-pika's ``Exchange.publish``
        does, without an exchange object per target). ``wait=False``: the frames are queued for the
        connection's writer and this waits for the broker's confirm only. With aiormq's default each
        publish held the channel's lock until its frames were written, one publish per loop turn and
        socket write (≈ 25 % of the reply relay's CPU); the write queue is bounded, so a broker that
        stops reading still holds publishers back.
        """
        assert self._publish_channel is not None
        if self._publish_channel.is_closed:
            raise ChannelInvalidStateError(f"{self._publish_channel!r} closed")
        # aiormq's Channel, whose basic_publish takes wait= (its abstract signature does not say so).
        channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
        await channel.basic_publish(
            message.body,
            exchange=exchange,
            routing_key=routing_key,
            properties=message.properties,
            mandatory=True,
            timeout=PUBLISH_TIMEOUT_SECONDS,
            wait=False,
        )

    async def dead_letter(self, delivery: Consumed, queue: str, code: str, reason: str) -> None:
        """Publish a copy of the delivery, with the reason in headers (bounded), to a dead-letter queue."""
        # Where RabbitMQ says it came from: never a header, which any publisher could have set.
        provenance = {
            "x-original-exchange": delivery.exchange or "",
            "x-original-routing-key": delivery.routing_key or "",
        }
        copy = persistent_copy(delivery, dead_letter_headers(code, reason, provenance, delivery.headers))
        await self.publish("", queue, copy)

    async def close(self) -> None:
        self._closing = True
        if self.connection is not None:
            await self.connection.close()
            self._metrics.amqp_connected.set(0)
