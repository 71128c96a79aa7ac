"""Scenario 13: three replicas act as one (fleet.py) — correlation and POST /v1/commands.

Three connector processes share the queues. A stand-in Lambda answers every command on the SQS
command queue with a reply carrying its correlation id; 60 commands are posted round robin to the
three command APIs. Whichever replica receives a reply, the caller of the replica that sent the
command gets it, and the correlation metrics summed over the replicas count each once. Then one
replica is SIGKILLed while commands are in flight: its callers get an error, nothing is lost. Then a
new replica joins while 24 commands sent by the others await their replies (the Lambda holds them
until it is ready): it relays its share, and every caller still gets its own reply, no orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest

from .driver import Connector, Env, Figures, Names, assert_no_secrets, connector_config, poll

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

TOKEN = "fleet-test-token-" + uuid.uuid4().hex
COMMAND = "io.lamassu.iotcore.thing.config.request"
REPLY = "io.lamassu.iotcore.thing.config.response"


def command(device: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"cmd-{device}",
        "source": "lamassu/test",
        "type": COMMAND,
        "datacontenttype": "application/json",
        "data": {"device_id": device},
    }


class Held:
    """Commands whose device id starts with ``prefix`` are answered only once ``release`` is set."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.release = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()


async def stand_in_lambda(env: Env, names: Names, answered: list[str], held: Held | None = None) -> None:
    """Answers each command as the AWS Lambda would: a reply quoting the command's correlation id."""
    command_url = await env.sqs_url(names.command_queue)
    response_url = await env.sqs_url(names.response_queue)

    async def answer_later(body: str) -> None:
        assert held is not None
        await held.release.wait()
        await env.sqs.send_message(QueueUrl=response_url, MessageBody=body)

    while True:
        try:
            received = await env.sqs.receive_message(
                QueueUrl=command_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
            )
        except Exception:
            await asyncio.sleep(0.2)
            continue
        for message in received.get("Messages", []):
            body = orjson.loads(message["Body"])
            key = message["MessageAttributes"]["ce-correlationid"]["StringValue"]
            reply = {
                "specversion": "1.0",
                "id": f"reply-{body['data']['device_id']}",
                "source": "aws/lambda",
                "type": REPLY,
                "correlationid": key,
                "data": {"device_id": body["data"]["device_id"], "status": 200},
            }
            if held is not None and body["data"]["device_id"].startswith(held.prefix):
                task = asyncio.create_task(answer_later(orjson.dumps(reply).decode()))
                held.tasks.add(task)
                task.add_done_callback(held.tasks.discard)
            else:
                await env.sqs.send_message(QueueUrl=response_url, MessageBody=orjson.dumps(reply).decode())
            await env.sqs.delete_message(QueueUrl=command_url, ReceiptHandle=message["ReceiptHandle"])
            answered.append(body["data"]["device_id"])


class ReplyCollector:
    """Every message published to the reply exchange, as bytes (a queue bound with "#")."""

    def __init__(self, url: str, exchange: str, queue: str) -> None:
        self.url, self.exchange, self.queue = url, exchange, queue
        self.bodies: list[bytes] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue, durable=True)
        await queue.bind(exchange, "#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.bodies.append(message.body)

    def devices(self) -> set[str]:
        return {str(orjson.loads(body)["data"]["device_id"]) for body in self.bodies}

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


def metric_sum(texts: list[str], name: str, **labels: str) -> float:
    """A metric summed over every replica's /metrics text (absent = 0)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.eE+-]+)$", re.MULTILINE)
    total = 0.0
    for text in texts:
        for found_labels, value in pattern.findall(text):
            present = ",".join(sorted(part for part in found_labels.split(",") if part))
            if not labels or all(f'{k}="{v}"' in present.split(",") for k, v in labels.items()):
                total += float(value)
    return total


async def post(session: aiohttp.ClientSession, connector: Connector, body: dict[str, Any]) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{connector.http_port}/v1/commands"
    async with session.post(url, data=orjson.dumps(body), headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json(content_type=None)


async def test_13_three_replicas_answer_every_command_and_count_each_once(env: Env) -> None:
    names = Names()
    config = connector_config(
        names,
        env.amqp_url,
        env.sqs_endpoint,
        http={"commands": True, "auth_token": TOKEN, "commands_timeout_seconds": 30},
        correlation={"fleet_exchange": f"r{names.tag}.fleet"},
        # A reply the killed replica held comes back to the others within 10 s, inside the callers' 30 s.
        sqs={"wait_time_seconds": 2, "visibility_timeout": 10},
    )
    replicas = [Connector(config, env.workdir / names.tag, f"replica-{i}") for i in range(3)]
    observer = ReplyCollector(env.test_url, names.reply_exchange, names.reply_count_queue)
    answered: list[str] = []
    lambda_task: asyncio.Task[None] | None = None
    held = Held(f"{names.tag}-j")
    try:
        for replica in replicas:
            await replica.start()
        for replica in replicas:
            await replica.wait_ready()
        await observer.start()
        lambda_task = asyncio.create_task(stand_in_lambda(env, names, answered, held))
        t0 = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            window = asyncio.Semaphore(12)

            async def one(index: int) -> tuple[str, int, Any]:
                device = f"{names.tag}-{index:03d}"
                async with window:
                    status, body = await post(session, replicas[index % 3], command(device))
                return device, status, body

            results = await asyncio.gather(*(one(index) for index in range(60)))
        round_robin_seconds = time.monotonic() - t0
        for device, status, body in results:
            assert status == 200, (device, status, body)
            assert body["type"] == REPLY and body["data"]["device_id"] == device  # its own reply
        texts = [await replica.metrics() for replica in replicas]
        relayed_by = [metric_sum([text], "lamassu_connector_replies_relayed_total") for text in texts]
        matched = metric_sum(texts, "lamassu_connector_replies_correlated_total", outcome="matched")
        orphan = metric_sum(texts, "lamassu_connector_replies_correlated_total", outcome="orphan")
        expired = metric_sum(texts, "lamassu_connector_commands_expired_total")
        tracked = metric_sum(texts, "lamassu_connector_commands_tracked_total")
        assert (matched, orphan, expired, tracked) == (60, 0, 0, 60)
        answered_elsewhere = sum(1 for count in relayed_by if count) > 1  # the replies really were spread

        # One replica killed while commands are in flight: its callers get an error, nothing is lost.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def second(index: int) -> tuple[str, int | None]:
                device = f"{names.tag}-k{index:03d}"
                try:
                    status, _ = await post(session, replicas[index % 3], command(device))
                except (aiohttp.ClientError, TimeoutError):
                    return device, None
                return device, status

            batch = [asyncio.create_task(second(index)) for index in range(30)]
            await asyncio.sleep(0.3)
            await replicas[2].kill()
            outcomes = await asyncio.gather(*batch)
        survivors = replicas[:2]
        for device, status in outcomes:
            if status != 200:
                assert int(device.rsplit("k", 1)[1]) % 3 == 2, (device, status)  # only the killed replica's callers
        # Every command that reached SQS was answered, and every answer reached RabbitMQ.
        await poll(lambda: _all_relayed(observer, answered), 90, "every reply relayed to RabbitMQ")
        before_join = [await replica.metrics() for replica in survivors]

        # A replica joins (scale-up, restart) while commands sent by the others await their replies:
        # it missed their announcements, yet relays its share of the replies; every caller still gets
        # its own reply, and no reply is an orphan anywhere.
        joining = Connector(config, env.workdir / names.tag, "replica-3")
        replicas.append(joining)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def waiting(index: int) -> tuple[str, int, Any]:
                device = f"{held.prefix}{index:03d}"
                status, body = await post(session, survivors[index % 2], command(device))
                return device, status, body

            joined_batch = [asyncio.create_task(waiting(index)) for index in range(24)]
            await poll(lambda: _answered_count(answered, held.prefix, 24), 60, "the 24 commands received, held")
            await joining.start()
            await joining.wait_ready()
            held.release.set()
            joined = await asyncio.gather(*joined_batch)
        for device, status, body in joined:
            assert status == 200, (device, status, body)
            assert body["data"]["device_id"] == device  # its own reply
        await poll(lambda: _all_relayed(observer, answered), 60, "every reply relayed to RabbitMQ")
        after_join = [await replica.metrics() for replica in [*survivors, joining]]
        relayed_by_joining = metric_sum(after_join[2:], "lamassu_connector_replies_relayed_total")
        join_outcomes = [
            metric_sum(after_join, "lamassu_connector_replies_correlated_total", outcome=outcome)
            - metric_sum(before_join, "lamassu_connector_replies_correlated_total", outcome=outcome)
            for outcome in ("matched", "orphan")
        ]
        assert join_outcomes == [24, 0], (join_outcomes, relayed_by_joining)

        lost = len(set(answered) - observer.devices())
        survivors = [*survivors, joining]
        texts = [await replica.metrics() for replica in survivors]
        exit_codes = [await replica.stop() for replica in survivors]
        figures = Figures(
            scenario="13-three-replicas",
            title=(
                "3 replicas: 60 commands round robin through POST /v1/commands, then one replica SIGKILLed,"
                " then a replica joins while 24 commands await their replies"
            ),
            sent=60 + len(outcomes) + len(joined),
            arrived=len(observer.devices()),
            lost=lost,
            duplicated=len(observer.bodies) - len(observer.devices()),
            dead_lettered=0,
            recovery_seconds=None,
            drain_seconds=None,
            peak_rss_mb=round(max(replica.peak_rss_kb for replica in replicas) / 1024, 1),
            notes={
                "answered_200_round_robin": sum(1 for _, status, _ in results if status == 200),
                "round_robin_seconds": round(round_robin_seconds, 1),
                "matched_orphan_expired_tracked": [matched, orphan, expired, tracked],
                "replies_relayed_per_replica": relayed_by,
                "after_kill_answered_200": sum(1 for _, status in outcomes if status == 200),
                "after_kill_errors": sum(1 for _, status in outcomes if status != 200),
                "joined_answered_200_matched_orphan": [
                    sum(1 for _, status, _ in joined if status == 200),
                    *join_outcomes,
                ],
                "replies_relayed_by_the_joining_replica": relayed_by_joining,
                "exit_codes": exit_codes,
            },
        )
        figures.save()
        assert lost == 0 and answered_elsewhere, figures.notes
        assert relayed_by_joining > 0, figures.notes  # the joining replica did relay replies to others' commands
        assert exit_codes == [0, 0, 0]
        assert_no_secrets(*(replica.log_text() for replica in replicas))
        assert all(TOKEN not in replica.log_text() for replica in replicas)
    finally:
        if lambda_task is not None:
            for task in held.tasks:
                task.cancel()
            lambda_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lambda_task
        await observer.close()
        for replica in replicas:
            if replica.running:
                await replica.kill()
        await env.delete_sqs_queues(names)


async def _all_relayed(observer: ReplyCollector, answered: list[str]) -> bool:
    return bool(answered) and set(answered) <= observer.devices()


async def _answered_count(answered: list[str], prefix: str, count: int) -> bool:
    return sum(1 for device in answered if device.startswith(prefix)) >= count
