"""Acknowledge consumed deliveries in as few AMQP frames as possible, without acking early.

A delivery is *settled* by the outbound pipeline once its fate is sealed (SQS confirmed it, it was
dead-lettered, or skipped). Settled deliveries are acked together: the longest run of settled
delivery tags at the front of a channel's outstanding tags goes out as one ``basic.ack`` with
``multiple=true``. Batches finish out of order (several are in flight), so a settled delivery can
sit behind an unsettled one; such stragglers are acked one by one after ``straggler_delay``, or at
once when they would hold back a large part of the prefetch window. Nothing unsettled is ever
covered by a multiple ack: the top tag of the run is always the highest *contiguous* settled tag.

Per channel, because delivery tags restart on every channel (after a reconnect the old channel's
deliveries cannot be acked any more; RabbitMQ redelivers them).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from dataclasses import dataclass, field

from .amqp import Consumed
from .logs import get_logger

log = get_logger(__name__)


def _open_channel_key(delivery: Consumed) -> int | None:
    """Which channel the delivery came on, or None once that channel is closed (acking is void then)."""
    try:
        channel = delivery.channel  # aio-pika raises once the channel is closed
        return None if channel.is_closed else id(channel)
    except Exception:
        return None


@dataclass(slots=True)
class _ChannelAcks:
    outstanding: list[int] = field(default_factory=list)  # sorted tags received and not acked
    settled: set[int] = field(default_factory=set)  # settled and not acked yet
    deliveries: dict[int, Consumed] = field(default_factory=dict)


class Acker:
    def __init__(
        self, *, straggler_delay: float = 0.05, straggler_limit: int = 50, write_check_seconds: float = 5.0
    ) -> None:
        self._straggler_delay = straggler_delay
        self._write_check_seconds = write_check_seconds
        self._straggler_limit = straggler_limit
        self._channels: dict[int, _ChannelAcks] = {}
        self._flush_scheduled = False
        self._straggler_timer: asyncio.TimerHandle | None = None
        self._outbox: deque[tuple[Consumed, bool, int]] = deque()
        self._sender: asyncio.Future[None] | None = None
        self.frames_sent = 0
        self.deliveries_acked = 0

    def track(self, delivery: Consumed) -> None:
        """Register a delivery as it arrives (before it can be settled)."""
        tag, key = delivery.delivery_tag, _open_channel_key(delivery)
        if tag is None or key is None:
            return
        state = self._channels.setdefault(key, _ChannelAcks())
        if not state.outstanding or tag > state.outstanding[-1]:
            state.outstanding.append(tag)
        else:
            bisect.insort(state.outstanding, tag)
        state.deliveries[tag] = delivery

    def settle(self, delivery: Consumed) -> bool:
        """Mark a delivery done; it is acked shortly. False if its channel is gone (it will be redelivered)."""
        key = _open_channel_key(delivery)
        if key is None:
            self._schedule_flush()  # which also forgets the closed channel's deliveries
            return False
        state = self._channels.get(key)
        tag = delivery.delivery_tag
        if state is None or tag is None or tag not in state.deliveries:
            # Not tracked (should not happen): ack it on its own rather than leave it unacked.
            self._send(delivery, multiple=False, count=1)
            return True
        state.settled.add(tag)
        self._schedule_flush()
        return True

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # Coalesce every settle of this loop iteration (a whole SQS batch) into one flush.
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self, *, stragglers: bool = False) -> None:
        self._flush_scheduled = False
        waiting = 0
        for key, state in list(self._channels.items()):
            if state.deliveries and _open_channel_key(next(iter(state.deliveries.values()))) is None:
                del self._channels[key]  # its deliveries return to the queue; nothing to ack
                continue
            top = None
            count = 0
            while state.outstanding and state.outstanding[0] in state.settled:
                top = state.outstanding.pop(0)
                state.settled.discard(top)
                count += 1
            if top is not None:
                delivery = state.deliveries[top]
                for tag in [t for t in state.deliveries if t <= top]:
                    del state.deliveries[tag]
                self._send(delivery, multiple=count > 1, count=count)
            if state.settled and (stragglers or len(state.settled) >= self._straggler_limit):
                for tag in sorted(state.settled):
                    state.outstanding.remove(tag)
                    self._send(state.deliveries.pop(tag), multiple=False, count=1)
                state.settled.clear()
            waiting += len(state.settled)
            if not state.deliveries:
                del self._channels[key]
        if waiting and self._straggler_timer is None:
            loop = asyncio.get_running_loop()
            self._straggler_timer = loop.call_later(self._straggler_delay, self._on_straggler_timer)

    def _on_straggler_timer(self) -> None:
        self._straggler_timer = None
        self._flush(stragglers=True)

    def _send(self, delivery: Consumed, *, multiple: bool, count: int) -> None:
        self._outbox.append((delivery, multiple, count))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_in_order())

    async def _send_in_order(self) -> None:
        # One writer, one frame at a time: concurrent acks can overtake each other in aiormq's
        # bounded write queue, and a multiple ack that overtakes a single ack it covers makes
        # that single ack an unknown delivery tag, which closes the channel.
        while self._outbox:
            delivery, multiple, count = self._outbox.popleft()
            try:
                await self._write_ack(delivery, multiple)
            except Exception as exc:
                # The channel closed in between: RabbitMQ delivers these again (a duplicate in SQS at worst).
                log.warning("outbound.ack_failed", deliveries=count, error=repr(exc))
                continue
            self.frames_sent += 1
            self.deliveries_acked += count

    async def _write_ack(self, delivery: Consumed, multiple: bool) -> None:
        """Queue the ack frame for the connection's writer, however long a live channel makes it wait.

        aiormq's write queue holds ten frames. When the broker closes the connection its writer stops
        first, and an ack waiting for room there would wait forever: every later ack, those of the
        channels that come after the reconnect included, would queue behind it, the prefetch window
        would fill and the consumer would stall. So the wait is checked every few seconds: a channel
        closed meanwhile drops the ack (RabbitMQ delivers those messages again); a live one keeps it.
        """
        waited = 0.0
        while True:
            try:
                async with asyncio.timeout(self._write_check_seconds):
                    await delivery.ack(multiple=multiple)
                return
            except TimeoutError:
                if _open_channel_key(delivery) is None:
                    raise ConnectionError("channel closed while its ack waited for the connection's writer") from None
                waited += self._write_check_seconds
                log.warning("outbound.ack_waiting", waited_seconds=waited, reason="the broker does not read our frames")

    async def flush(self) -> None:
        """Ack everything settled now (stragglers included) and wait until the frames are written."""
        if self._straggler_timer is not None:
            self._straggler_timer.cancel()
            self._straggler_timer = None
        self._flush(stragglers=True)
        if self._sender is not None:
            await self._sender
