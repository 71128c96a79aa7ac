"""Unit tests of the acker: multiple-ack frames, never covering an unsettled delivery."""

from __future__ import annotations

import asyncio
import random

from structlog.testing import capture_logs

from lamassu_aws_connector.acks import Acker

from .test_batching import FakeChannel, FakeDelivery


def _deliveries(acker: Acker, channel: FakeChannel, count: int) -> list[FakeDelivery]:
    deliveries = [FakeDelivery(b"x", channel) for _ in range(count)]
    for delivery in deliveries:
        acker.track(delivery)  # type: ignore[arg-type]
    return deliveries


async def test_a_settled_run_goes_out_as_one_multiple_ack() -> None:
    acker, channel = Acker(), FakeChannel()
    deliveries = _deliveries(acker, channel, 10)
    for delivery in deliveries:
        assert acker.settle(delivery)  # type: ignore[arg-type]
    await acker.flush()
    assert channel.acked == set(range(1, 11)) and channel.frames == 1


async def test_an_unsettled_delivery_is_never_covered() -> None:
    acker, channel = Acker(straggler_delay=10), FakeChannel()
    deliveries = _deliveries(acker, channel, 6)
    for delivery in deliveries[:2] + deliveries[3:]:
        acker.settle(delivery)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the coalesced flush runs: the run before the gap is acked
    await asyncio.sleep(0)
    assert channel.acked == {1, 2}
    assert 3 in channel.unacked
    acker.settle(deliveries[2])  # type: ignore[arg-type]
    await acker.flush()
    assert channel.acked == set(range(1, 7)) and channel.frames == 2


async def test_stragglers_behind_a_stuck_delivery_are_acked_after_the_delay() -> None:
    acker, channel = Acker(straggler_delay=0.01), FakeChannel()
    deliveries = _deliveries(acker, channel, 5)
    for delivery in deliveries[1:]:
        acker.settle(delivery)  # type: ignore[arg-type]
    for _ in range(200):
        if channel.acked:
            break
        await asyncio.sleep(0.005)
    assert channel.acked == {2, 3, 4, 5} and channel.unacked == {1}
    acker.settle(deliveries[0])  # type: ignore[arg-type]
    await acker.flush()
    assert channel.acked == set(range(1, 6)) and not channel.unacked


async def test_random_settle_order_acks_everything_exactly_once() -> None:
    rng = random.Random(7)
    acker, channel = Acker(straggler_delay=0.001, straggler_limit=20), FakeChannel()
    deliveries = _deliveries(acker, channel, 500)
    order = deliveries[:]
    rng.shuffle(order)
    for index, delivery in enumerate(order):
        acker.settle(delivery)  # type: ignore[arg-type]
        if index % 7 == 0:
            await asyncio.sleep(0)
    await acker.flush()
    assert channel.acked == set(range(1, 501)) and not channel.unacked
    assert channel.frames < 500


async def test_a_closed_channel_is_not_acked_and_is_forgotten() -> None:
    acker, channel = Acker(), FakeChannel()
    deliveries = _deliveries(acker, channel, 3)
    acker.settle(deliveries[0])  # type: ignore[arg-type]
    channel.is_closed = True  # the broker went away before the flush
    assert not acker.settle(deliveries[1])  # type: ignore[arg-type]
    await acker.flush()
    assert channel.frames == 0
    assert acker._channels == {}
    # After a reconnect, deliveries on the new channel are acked as usual.
    fresh = FakeChannel()
    [delivery] = _deliveries(acker, fresh, 1)
    assert acker.settle(delivery)  # type: ignore[arg-type]
    await acker.flush()
    assert fresh.acked == {1}


class _WedgedDelivery(FakeDelivery):
    """Its ack waits for room in a write queue that never drains: aiormq's, once the connection's writer stopped."""

    async def ack(self, multiple: bool = False) -> None:
        await asyncio.Event().wait()


class _SlowDelivery(FakeDelivery):
    """Its ack waits a while for room, on a channel that stays open: a busy writer, not a dead one."""

    def __init__(self, raw: bytes, channel: FakeChannel) -> None:
        super().__init__(raw, channel)
        self.room = asyncio.Event()

    async def ack(self, multiple: bool = False) -> None:
        await self.room.wait()
        await super().ack(multiple)


async def test_an_ack_wedged_on_a_dead_connection_does_not_hold_back_the_next_channel() -> None:
    acker = Acker(write_check_seconds=0.02)
    old = FakeChannel()
    wedged = _WedgedDelivery(b"x", old)
    acker.track(wedged)  # type: ignore[arg-type]
    acker.settle(wedged)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # its ack is now waiting for the writer
    old.is_closed = True  # the broker closed the connection; RabbitMQ redelivers on the new one
    new = FakeChannel()
    deliveries = _deliveries(acker, new, 5)
    for delivery in deliveries:
        acker.settle(delivery)  # type: ignore[arg-type]
    await asyncio.wait_for(acker.flush(), 2)
    assert new.acked == set(range(1, 6)) and not new.unacked
    assert old.frames == 0


async def test_an_ack_a_live_channel_makes_wait_is_kept() -> None:
    acker, channel = Acker(write_check_seconds=0.02), FakeChannel()
    slow = _SlowDelivery(b"x", channel)
    acker.track(slow)  # type: ignore[arg-type]
    acker.settle(slow)  # type: ignore[arg-type]
    with capture_logs() as logs:
        await asyncio.sleep(0.1)  # five checks of the wait, the channel open each time
    assert channel.unacked == {1}
    assert any(entry["event"] == "outbound.ack_waiting" for entry in logs)  # a broker that does not read is seen
    slow.room.set()
    await asyncio.wait_for(acker.flush(), 2)
    assert channel.acked == {1} and not channel.unacked
