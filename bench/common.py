"""Shared pieces of the benchmarks: events, service clients, process figures, queue set-up."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from lamassu_aws_connector.sqs_wire import SqsJsonWire

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SQS_ENDPOINT = os.environ.get("SQS_ENDPOINT_URL", "http://127.0.0.1:4566")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_ENV = {
    **os.environ,
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
EVENT_TYPE = "device.status.update"


def lamassu_event(index: int, *, sent_at: float | None = None) -> bytes:
    """A ≈1 KB Lamassu v3 device status update (structured mode, no content type on the wire)."""
    device = f"bench-{index:07d}"
    data: dict[str, Any] = {
        "previous": {"id": device, "status": "ACTIVE", "tags": ["bench"], "metadata": {"k": "v" * 200}},
        "updated": {"id": device, "status": "REVOKED", "tags": ["bench"], "metadata": {"k": "v" * 200}},
    }
    if sent_at is not None:
        data["sent_at"] = sent_at
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": "source://lamassu.io/ctx/source/service/devmanager",
            "type": EVENT_TYPE,
            "subject": f"device/{device}",
            "time": "2026-02-03T08:01:02.123456789Z",
            "data": data,
        }
    )


def lambda_reply(index: int) -> str:
    """A reply as the Lambdas write it: cloudevents JS SDK key order, no datacontenttype."""
    return orjson.dumps(
        {
            "id": uuid.uuid4().hex,
            "time": "2026-02-03T08:01:02.123Z",
            "type": "io.lamassu.iotcore.cert.status.update",
            "source": "aws/lambda",
            "specversion": "1.0",
            "data": {"serial_number": f"{index:040x}", "status": "REVOKED", "certificate_id": "c" * 64},
        }
    ).decode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def service_pids() -> dict[str, int]:
    """The RabbitMQ and SQS-emulator processes on this machine, to count the CPU a run costs them."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "beam.smp" in command and "rabbit" in command:
            found["rabbitmq"] = int(entry.name)
        elif ("localstack" in command and "runtime.main" in command) or "moto_server" in command:
            found["sqs emulator"] = int(entry.name)
    return found


def services_cpu(pids: dict[str, int]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            figures[name] = cpu_seconds(pid)
        except OSError:
            continue
    return figures


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    return f"bench{prefix}{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def sqs_client() -> AsyncIterator[Any]:
    # Timeouts: a stuck call must fail and be retried, not hang the benchmark.
    config = AioConfig(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 5})
    async with get_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=SQS_ENDPOINT, config=config
    ) as client:
        yield client


@asynccontextmanager
async def sqs_wire() -> AsyncIterator[SqsJsonWire]:
    """The connector's cheap signed-JSON SQS caller, for the latency instrument and its baseline:
    on a slow host the full client's CPU per call would saturate the benchmark process itself."""
    wire = SqsJsonWire(
        get_session,
        region="us-east-1",
        endpoint_url=SQS_ENDPOINT,
        connect_timeout=5,
        read_timeout=30,
        max_connections=32,
        attempts=5,
    )
    await wire.start()
    try:
        yield wire
    finally:
        await wire.close()


async def create_sqs_queue(sqs: Any, name: str) -> str:
    url: str = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    return url


async def sqs_depth(sqs: Any, url: str, *, invisible: bool = False) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names))["Attributes"]
    depth = int(attributes["ApproximateNumberOfMessages"])
    if invisible:
        depth += int(attributes["ApproximateNumberOfMessagesNotVisible"])
    return depth


async def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll an async predicate; return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return time.monotonic()
        except Exception as exc:  # a failed poll is retried; the deadline bounds it
            last = exc
        else:
            last = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        await asyncio.sleep(interval)


async def preload_amqp(exchange: aio_pika.abc.AbstractExchange, bodies: list[bytes], routing_key: str) -> None:
    """Publish persistent messages with confirms, 500 in flight."""
    for start in range(0, len(bodies), 500):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key)
                for body in bodies[start : start + 500]
            )
        )


async def preload_sqs(sqs: Any, url: str, bodies: list[str]) -> None:
    batches = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]
    semaphore = asyncio.Semaphore(8)

    async def send(batch: list[str]) -> None:
        async with semaphore:
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)]
            while entries:
                response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
                failed = {f["Id"] for f in response.get("Failed", [])}
                entries = [e for e in entries if e["Id"] in failed]

    await asyncio.gather(*(send(batch) for batch in batches))
