"""Replicas act as one: correlation announcements over the broker the deployment already runs.

Every replica declares the fanout exchange ``correlation.fleet_exchange`` and consumes it through a
queue of its own (server-named, exclusive, auto-deleted with its connection). Two announcements go
out on it, each a small AMQP message:

* ``command``: a tracked command SQS confirmed here (its correlation key, id and type). The other
  replicas keep it, so the reply that answers it is matched, not an orphan, wherever it arrives.
* ``reply``: a reply this replica relayed to a command *another* replica sent (the reply itself).
  The owner of the command counts it matched and answers its ``POST /v1/commands`` caller; the
  others forget the command. Replies to this replica's own commands, and replies that answer no
  command (orphan, unsolicited), are counted here and announced to nobody: most replies cost the
  fleet nothing (measured: announcing every reply doubled the CPU per reply).

With ``actions.config_cache``, a reply about a CA relayed here is announced as ``config_drop``: every
replica drops its kept AWS IoT configuration, not only this one.

A replica that joins (a start, a scale-up, a restart, a reconnect that re-created its queue) missed
the ``command`` announcements of what is outstanding, yet may be the one that relays the replies:
it says ``hello``, and every other replica answers with ``commands``, the list of its own commands
still awaiting a reply. A reply relayed here before that list arrives is parked (correlation.py),
so it is still handed to its owner.

Announcements are published without confirms, in order, by one task, after the reply is already
relayed and the command already in SQS: they never hold up or drop an event or a reply. One that is
lost (the connection dropped at that moment) costs a metric or an API answer (504), nothing else.
No extra datastore, no protocol of our own beyond these two messages; RabbitMQ does the fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage

from .amqp import AmqpGateway
from .config import APP_ID, Settings
from .correlation import CorrelationTable
from .events import Rejection, parse_structured
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)

_QUEUE_BOUND = 10_000  # announcements waiting for the publisher task; beyond, the newest are dropped
_SNAPSHOT_CHUNK = 500  # commands per ``commands`` message: ~50 KB, far below any frame or message limit


class Fleet:
    def __init__(
        self,
        settings: Settings,
        amqp: AmqpGateway,
        correlation: CorrelationTable,
        metrics: Metrics,
        *,
        on_config_drop: Callable[[], None] | None = None,
    ) -> None:
        self._exchange = settings.correlation.fleet_exchange
        self._on_config_drop = on_config_drop  # GET /v1/config's cache (actions.config_cache)
        self._amqp = amqp
        self._correlation = correlation
        self._metrics = metrics
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._outbox: asyncio.Queue[aio_pika.Message] = asyncio.Queue(_QUEUE_BOUND)
        self._publisher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._amqp.consume_fanout(self._exchange, self._on_announcement)
        self._publisher = asyncio.create_task(self._publish_forever(), name="fleet-publisher")
        self._correlation.join_fleet(self.announce)
        self.announce("hello", {})
        connection = self._amqp.connection
        if connection is not None:  # the queue is new after a reconnect: what was announced meanwhile is lost
            connection.reconnect_callbacks.add(self._on_reconnected)
        log.info("fleet.joined", replica=self.replica, exchange=self._exchange)

    def _on_reconnected(self, *_: Any) -> None:
        self.announce("hello", {})

    async def stop(self) -> None:
        if self._publisher is not None:
            # What is announced by now goes out, within a second; the rest does not matter any more.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 1.0)
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None

    def announce(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "reply":
            reply = payload["reply"]
            body = orjson.dumps(reply.model_dump(mode="json", exclude_unset=True))
            headers = {"queue": str(payload.get("queue", ""))}
        else:
            body, headers = orjson.dumps(payload), {}
        message = aio_pika.Message(body, type=kind, app_id=APP_ID, headers={**headers, "replica": self.replica})
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._metrics.fleet_announcements.labels(kind, "dropped").inc()
            log.warning("fleet.announcement_dropped", kind=kind, reason="the broker does not keep up")

    async def _publish_forever(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                if not self._amqp.connected:
                    await self._amqp.wait_connected()
                await self._amqp.publish_unconfirmed(self._exchange, message)
                self._metrics.fleet_announcements.labels(str(message.type), "sent").inc()
            except Exception as exc:  # a lost announcement costs a metric, never an event
                self._metrics.fleet_announcements.labels(str(message.type), "failed").inc()
                log.warning("fleet.announce_failed", kind=message.type, error=repr(exc)[:200])
            finally:
                self._outbox.task_done()

    async def _on_announcement(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        origin = str(headers.get("replica", ""))
        kind = str(message.type or "")
        try:
            if kind == "command":
                if origin != self.replica:
                    data = orjson.loads(message.body)
                    self._correlation.on_command_announced(
                        str(data["key"]), str(data["event_id"]), str(data["event_type"])
                    )
            elif kind == "hello" and origin != self.replica:
                self._share_outstanding()
            elif kind == "config_drop" and origin != self.replica:
                if self._on_config_drop is not None:
                    self._on_config_drop()
            elif kind == "commands" and origin != self.replica:
                for key, event_id, event_type in orjson.loads(message.body)["commands"]:
                    self._correlation.on_command_announced(str(key), str(event_id), str(event_type))
            elif kind == "reply" and origin != self.replica:
                reply = parse_structured(message.body, repair_missing_id=False).event
                fields = {"event_id": reply.id, "event_type": reply.type, "queue": str(headers.get("queue", ""))}
                self._correlation.on_reply_announced(reply, fields, relayed_here=False)
            self._metrics.fleet_announcements.labels(kind or "unknown", "received").inc()
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, Rejection) as exc:
            log.warning("fleet.bad_announcement", kind=kind, origin=origin, error=repr(exc)[:200])

    def _share_outstanding(self) -> None:
        """A replica joined: tell it which of this replica's commands still await a reply."""
        owned = self._correlation.owned_commands()
        for start in range(0, len(owned), _SNAPSHOT_CHUNK):
            self.announce("commands", {"commands": owned[start : start + _SNAPSHOT_CHUNK]})
