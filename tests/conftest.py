"""Shared fixtures: real RabbitMQ and SQS endpoints on loopback, isolated names per test.

``scripts/test.sh`` starts the services; these fixtures only check they answer and fail loudly
if not (an integration test that silently skips proves nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from hypothesis import settings as hypothesis_settings

from lamassu_aws_connector.config import Settings
from lamassu_aws_connector.logs import configure_logging
from lamassu_aws_connector.service import Service

AMQP_URL = os.environ.get("LAMASSU_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SQS_ENDPOINT = os.environ.get("LAMASSU_TEST_SQS_ENDPOINT", "http://127.0.0.1:4566")

os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

# CI runs a fixed sequence of examples so a red build is reproducible; developers explore new ones.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

configure_logging("debug" if os.environ.get("LAMASSU_TEST_DEBUG") else "warning", "console")


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def services() -> None:
    missing = [name for name, url in (("RabbitMQ", AMQP_URL), ("SQS", SQS_ENDPOINT)) if not _port_open(url)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not reachable ({AMQP_URL.split('@')[-1]}, {SQS_ENDPOINT}); "
            "run the tests through scripts/test.sh, which starts them"
        )


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll a condition until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def connector_ready(port: int) -> bool:
    """A connector process answers /readyz with 200: topology declared, consumer and pollers running."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


class World:
    """Unique AMQP and SQS names for one test, plus helpers to publish and observe."""

    def __init__(self, amqp: aio_pika.abc.AbstractRobustConnection, sqs: Any) -> None:
        self.tag = uuid.uuid4().hex[:10]
        self.amqp = amqp
        self.sqs = sqs
        self.exchange = f"t{self.tag}.lamassu-events"
        self.exchange_v2 = f"t{self.tag}.lamassu"
        self.queue = f"t{self.tag}.lamassu_events"
        self.dlq = f"t{self.tag}.lamassu_events.dlq"
        self.reply_exchange = self.exchange
        self.reply_dlq = f"t{self.tag}.lamassu-response.dlq"
        self.command_queue = f"t{self.tag}-command"
        self.response_queue = f"t{self.tag}-response"
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self.amqp_queues = [self.queue, self.dlq, self.reply_dlq]
        self.exchanges = [self.exchange, self.exchange_v2]
        self.sqs_queues: list[str] = []

    def settings(self, **sections: dict[str, Any]) -> Settings:
        data: dict[str, dict[str, Any]] = {
            "amqp": {
                "url": AMQP_URL,
                "exchanges": [self.exchange, self.exchange_v2],
                "queue": self.queue,
                "dead_letter_queue": self.dlq,
                "reply_exchange": self.reply_exchange,
                "reply_dead_letter_queue": self.reply_dlq,
                "prefetch": 50,
            },
            "sqs": {
                "endpoint_url": SQS_ENDPOINT,
                "command_queue": self.command_queue,
                "response_queue": self.response_queue,
                "create_queues": True,
                "wait_time_seconds": 1,
            },
            "forward": {"linger_ms": 5, "retry_max_backoff_seconds": 1},
            "shutdown": {"grace_seconds": 10},
            "http": {"host": "127.0.0.1", "port": 0},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return Settings(**data)

    async def channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.amqp.channel(publisher_confirms=True)
        return self._channel

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str | None = None,
        routing_key: str = "",
        content_type: str | None = None,
        headers: dict[str, Any] | None = None,
        app_id: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish like a Lamassu service; ``exchange=""`` is the v1 default-exchange path."""
        channel = await self.channel()
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange or self.exchange)
        message = aio_pika.Message(
            body, content_type=content_type, headers=headers, app_id=app_id, message_id=message_id
        )
        await target.publish(message, routing_key=routing_key or self.queue if exchange == "" else routing_key)

    async def queue_depth(self, name: str) -> int:
        # The raw channel: aio-pika's robust channel may answer from its own cache.
        channel = await (await self.channel()).get_underlay_channel()
        declared = await channel.queue_declare(name, passive=True)
        return int(declared.message_count or 0)

    async def take_amqp(
        self, name: str, count: int, timeout: float = 20.0
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Take exactly ``count`` messages from a queue (acking them), failing after ``timeout``."""
        channel = await self.channel()
        queue = await channel.declare_queue(name, passive=True)
        taken: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def more() -> bool:
            message = await queue.get(fail=False)
            if message is not None:
                await message.ack()
                taken.append(message)
            return len(taken) >= count

        await wait_for(more, timeout, f"{count} messages in {name} (got {len(taken)})")
        return taken

    async def sqs_url(self, name: str) -> str:
        return str((await self.sqs.get_queue_url(QueueName=name))["QueueUrl"])

    async def create_sqs_queue(self, name: str, attributes: dict[str, str] | None = None) -> str:
        self.sqs_queues.append(name)
        return str((await self.sqs.create_queue(QueueName=name, Attributes=attributes or {}))["QueueUrl"])

    async def take_sqs(self, name: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Receive and delete exactly ``count`` messages from an SQS queue."""
        url = await self.sqs_url(name)
        got: list[dict[str, Any]] = []

        async def more() -> bool:
            response = await self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            for message in response.get("Messages", []):
                got.append(message)
                await self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            return len(got) >= count

        await wait_for(more, timeout, f"{count} messages in SQS {name} (got {len(got)})")
        return got

    async def sqs_count(self, name: str) -> int:
        url = await self.sqs_url(name)
        attrs = (
            await self.sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    async def cleanup(self) -> None:
        channel = await self.amqp.channel()
        for name in self.amqp_queues:
            await channel.queue_delete(name)
        for name in self.exchanges:
            await channel.exchange_delete(name)
        await channel.close()
        for name in {*self.sqs_queues, self.command_queue, self.response_queue}:
            with contextlib.suppress(Exception):  # never created by this test
                await self.sqs.delete_queue(QueueUrl=await self.sqs_url(name))


@pytest.fixture
async def world(services: None) -> AsyncIterator[World]:
    amqp = await aio_pika.connect_robust(AMQP_URL)
    async with get_session().create_client("sqs", region_name="us-east-1", endpoint_url=SQS_ENDPOINT) as sqs:
        w = World(amqp, sqs)
        try:
            yield w
        finally:
            await w.cleanup()
            await amqp.close()


@asynccontextmanager
async def running(settings: Settings, timeout: float = 30.0) -> AsyncIterator[Service]:
    """Run the connector in this event loop until the block ends, then stop it gracefully."""
    service = Service(settings)
    task = asyncio.create_task(service.run())
    started = asyncio.create_task(service.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()
        raise AssertionError("connector stopped during start-up")
    if started not in done:
        task.cancel()
        raise AssertionError("connector did not start in time")
    try:
        yield service
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, settings.shutdown.grace_seconds + 10) == 0


@pytest.fixture
async def s3_bucket(services: None) -> AsyncIterator[tuple[str, Any]]:
    """A fresh S3 bucket on the same endpoint as SQS (LocalStack serves both), emptied and removed after."""
    name = f"t{uuid.uuid4().hex[:12]}-claim-check"
    session = get_session()
    config = AioConfig(s3={"addressing_style": "path"})
    async with session.create_client("s3", region_name="us-east-1", endpoint_url=SQS_ENDPOINT, config=config) as s3:
        await s3.create_bucket(Bucket=name)
        try:
            yield name, s3
        finally:
            listed = await s3.list_objects_v2(Bucket=name)
            for item in listed.get("Contents", []):
                await s3.delete_object(Bucket=name, Key=item["Key"])
            await s3.delete_bucket(Bucket=name)
