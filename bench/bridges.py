"""Hand-written baselines the connector is compared with, each run as its own process.

    python bench/bridges.py naive   --queue Q --sqs-url URL      consume one -> SendMessage -> ack
    python bench/bridges.py batched --queue Q --sqs-url URL      prefetch 200, batches of 10 or 5 ms, 8 in flight
    python bench/bridges.py same-messages --queue Q --sqs-url URL   the batched bridge, sending the messages
                                                                 the connector sends (its ce-* attributes)
    python bench/bridges.py drain   --sqs-url URL --count N --pollers K   ReceiveMessage(10, all attrs) + delete

None of them validates anything, logs or counts: they are what a quick script would do.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from common import AMQP_URL, sqs_client


async def naive(queue_name: str, sqs_url: str) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    queue = await channel.get_queue(queue_name)
    async with sqs_client() as sqs, queue.iterator() as messages:
        async for message in messages:
            await sqs.send_message(QueueUrl=sqs_url, MessageBody=message.body.decode())
            await message.ack()


def connector_attributes(body: bytes) -> dict[str, dict[str, str]]:
    """The SQS message attributes the connector puts on an event (README "What goes to SQS")."""
    event = orjson.loads(body)
    names = ("specversion", "type", "source", "id", "subject", "time")
    attributes = {f"ce-{name}": str(event[name]) for name in names if event.get(name)}
    attributes["ce-correlationid"] = str(event.get("correlationid") or event["id"])
    return {name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()}


async def batched(queue_name: str, sqs_url: str, *, same_messages: bool = False) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=200)
    queue = await channel.get_queue(queue_name)
    buffer: list[AbstractIncomingMessage] = []
    slots = asyncio.Semaphore(8)
    flush_timer: asyncio.TimerHandle | None = None
    sending: set[asyncio.Task[None]] = set()

    async with sqs_client() as sqs:

        async def send(batch: list[AbstractIncomingMessage]) -> None:
            async with slots:
                pending = dict(enumerate(batch))
                while pending:
                    entries: list[dict[str, Any]] = [
                        {"Id": str(i), "MessageBody": m.body.decode()} for i, m in pending.items()
                    ]
                    if same_messages:
                        for item, message in zip(entries, pending.values(), strict=True):
                            item["MessageAttributes"] = connector_attributes(message.body)
                    response: dict[str, Any] = await sqs.send_message_batch(QueueUrl=sqs_url, Entries=entries)
                    for success in response.get("Successful", []):
                        await pending.pop(int(success["Id"])).ack()

        def flush() -> None:
            nonlocal flush_timer, buffer
            flush_timer = None
            if buffer:
                batch, buffer = buffer, []
                task = asyncio.ensure_future(send(batch))
                sending.add(task)
                task.add_done_callback(sending.discard)

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal flush_timer
            buffer.append(message)
            if len(buffer) >= 10:
                if flush_timer is not None:
                    flush_timer.cancel()
                flush()
            elif flush_timer is None:
                flush_timer = asyncio.get_running_loop().call_later(0.005, flush)

        await queue.consume(on_message)
        await asyncio.Future()


async def drain(sqs_url: str, count: int, pollers: int) -> None:
    done = 0
    async with sqs_client() as sqs:

        async def poll() -> None:
            nonlocal done
            while done < count:
                # The same request as the connector's pollers (all attributes), so both parse the same answer.
                response = await sqs.receive_message(
                    QueueUrl=sqs_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                )
                messages = response.get("Messages", [])
                if messages:
                    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                    await sqs.delete_message_batch(QueueUrl=sqs_url, Entries=entries)
                    done += len(messages)

        await asyncio.gather(*(poll() for _ in range(pollers)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["naive", "batched", "same-messages", "drain"])
    parser.add_argument("--queue")
    parser.add_argument("--sqs-url", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--pollers", type=int, default=2)
    args = parser.parse_args()
    if args.mode == "naive":
        asyncio.run(naive(args.queue, args.sqs_url))
    elif args.mode in ("batched", "same-messages"):
        asyncio.run(batched(args.queue, args.sqs_url, same_messages=args.mode == "same-messages"))
    else:
        asyncio.run(drain(args.sqs_url, args.count, args.pollers))


if __name__ == "__main__":
    main()
