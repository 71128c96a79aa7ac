"""Thin AMQP adapter over aio-pika: robust connection, topology, consumer, confirming publisher.

Two channels: one consumes (per-consumer prefetch; acks must go back on it), one publishes with
publisher confirms and ``on_return_raises`` so an unroutable message is an error, not a silent drop.
Topology declared through robust channels is restored by aio-pika after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.exceptions import ChannelPreconditionFailed
from aiormq.exceptions import ChannelInvalidStateError

from .config import APP_ID, AmqpConfig, mask_url
from .logs import get_logger
from .metrics import Metrics
from .outcomes import STARTUP, dead_letter_headers, failed_and

log = get_logger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]

PUBLISH_TIMEOUT_SECONDS = 30.0


class TlsError(Exception):
    """The broker's certificate (or ours) is not accepted: a configuration problem, not an outage."""


def _transient_connect_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error somewhere in an exception's chain (aiormq wraps it), if any."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def channel_open(delivery: AbstractIncomingMessage) -> bool:
    """False once the channel a delivery came on is gone: it can no longer be acked."""
    try:
        return not delivery.channel.is_closed
    except ChannelInvalidStateError:
        return False


def string_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Lamassu v2.5+ subscribers (watermill-amqp) accept string header values only."""
    return {key: value if isinstance(value, str) else str(value) for key, value in headers.items()}


def persistent_copy(delivery: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
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


class AmqpGateway:
    def __init__(self, config: AmqpConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self.connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._fleet_channel: AbstractRobustChannel | None = None
        self._fleet_exchange: AbstractExchange | None = None
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
            detail="the queue exists with other properties (Lamassu v1's cloud-proxy declares it non-durable); "
            "it is used as it is. Messages in a non-durable queue do not survive a broker restart, and "
            "another consumer of it competes for every event (docs/deployment.md, 'Beside Lamassu v1')",
        )
        return queue

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
        self._exchanges[name] = await self._publish_channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def consume(self, handler: Handler) -> None:
        assert self._queue is not None
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

    async def consume_fanout(self, exchange: str, handler: Handler) -> None:
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
        """Publish on the fanout channel without waiting for a confirm (announcements only)."""
        assert self._fleet_exchange is not None and self._fleet_exchange.name == exchange
        await self._fleet_exchange.publish(message, routing_key="")

    async def cancel_consumer(self) -> None:
        if self._queue is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            try:
                await self._queue.cancel(tag)
            except Exception as exc:  # the channel may already be gone; deliveries then return anyway
                log.warning("amqp.cancel_failed", error=repr(exc))

    async def publish(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        """Publish and wait for the broker's confirm; raises on nack, return (unroutable) or timeout."""
        assert self._publish_channel is not None
        target = self._exchanges.get(exchange)
        if target is None:
            if exchange:
                target = await self._publish_channel.get_exchange(exchange, ensure=False)
            else:
                target = self._publish_channel.default_exchange
            self._exchanges[exchange] = target
        await target.publish(message, routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS)

    async def dead_letter(self, delivery: AbstractIncomingMessage, queue: str, code: str, reason: str) -> None:
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
