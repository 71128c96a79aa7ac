"""The events consumer's handler starts at once and becomes a task only when it waits (amqp._EagerChannel).

The first tests drive ``_resume`` with no services: whatever the handler waits for, it sees what it
would see in a task of its own. The last runs a gateway's consumer against the real RabbitMQ.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from typing import Any

import aio_pika
import aiormq
import pytest

from lamassu_aws_connector.amqp import AmqpGateway, Consumed, _EagerChannel, _resume
from lamassu_aws_connector.metrics import Metrics

from .conftest import World, wait_for

pytestmark = pytest.mark.asyncio


def resumed(handler: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """What the channel does: run the handler until it first waits, then hand the rest to _resume."""
    return asyncio.ensure_future(_resume(handler, handler.send(None)))


async def test_a_handler_that_waits_is_resumed_with_the_result() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def handler() -> None:
        seen.append("before")
        seen.append(await future)
        await asyncio.sleep(0)  # a bare yield, then a second wait
        seen.append(await asyncio.sleep(0.01, result="slept"))

    task = resumed(handler())
    assert seen == ["before"]
    future.set_result("result")
    await asyncio.wait_for(task, 5)
    assert seen == ["before", "result", "slept"]


async def test_a_handler_sees_the_exception_of_what_it_waited_for() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    caught: list[BaseException] = []

    async def handler() -> None:
        try:
            await future
        except ValueError as exc:
            caught.append(exc)

    task = resumed(handler())
    future.set_exception(ValueError("refused"))
    await asyncio.wait_for(task, 5)
    assert [str(exc) for exc in caught] == ["refused"]


@pytest.mark.parametrize("waits_on", ["future", "task"])
async def test_cancelling_the_task_cancels_the_handler_where_it_waits(waits_on: str) -> None:
    loop = asyncio.get_running_loop()
    inner = loop.create_future() if waits_on == "future" else asyncio.ensure_future(asyncio.sleep(60))
    cleaned: list[str] = []

    async def handler() -> None:
        try:
            await inner
        except asyncio.CancelledError:
            cleaned.append("cancelled at its await")
            raise

    task = resumed(handler())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cancelled at its await"]
    await asyncio.sleep(0)
    assert inner.cancelled()


async def test_cancelling_reaches_a_handler_that_only_yields() -> None:
    turns: list[int] = []

    async def handler() -> None:
        for turn in range(10_000):
            turns.append(turn)
            await asyncio.sleep(0)  # a bare yield each time, no future to cancel

    task = resumed(handler())
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 1 < len(turns) < 100  # stopped where it yielded, not run to its end


async def test_a_handler_may_survive_a_cancellation_and_go_on() -> None:
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    second: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def handler() -> None:
        try:
            await first
        except asyncio.CancelledError:
            seen.append("cancelled")
        seen.append(await second)

    task = resumed(handler())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    second.set_result("went on")
    await asyncio.wait_for(task, 5)
    assert seen == ["cancelled", "went on"]


async def test_deliveries_reach_the_handler_in_order_and_waiting_ones_finish(world: World) -> None:
    settings = world.settings(amqp={"prefetch": 50})
    gateway = AmqpGateway(settings.amqp, Metrics())
    await gateway.connect()
    started_order: list[int] = []
    finished: list[int] = []

    async def handler(delivery: Consumed) -> None:
        number = int(delivery.body)
        started_order.append(number)
        if number % 7 == 0:
            await asyncio.sleep(0.02)  # waits: the rest of this handler runs as a task
        finished.append(number)
        await delivery.ack()

    try:
        await gateway.declare_events_queue()
        await gateway.consume(handler)
        channel = await world.channel()
        exchange = await channel.get_exchange(world.exchange)
        for number in range(300):
            await exchange.publish(aio_pika.Message(str(number).encode()), routing_key="ca.create")
        await wait_for(lambda: len(finished) == 300, 30, "300 deliveries handled")
        assert started_order == list(range(300))  # started as they arrived, none overtaking another
        assert sorted(finished) == list(range(300))
        assert any(a > b for a, b in itertools.pairwise(finished))  # waiting ones did finish later
        consume_channel = gateway._consume_channel
        assert consume_channel is not None
        underlay = await consume_channel.get_underlay_channel()
        assert isinstance(underlay, _EagerChannel) and isinstance(underlay, aiormq.Channel)
    finally:
        await gateway.close()
    # Closed: anything not acked would be back in the queue.
    assert await world.queue_depth(world.queue) == 0
