"""Outbound throughput: N Lamassu events pre-loaded in RabbitMQ, drained by the connector into SQS.

Prints msgs/s (start of the daemon to the last message visible in SQS), the connector's own CPU per
message (user+sys from /proc) and its peak RSS. Needs the services of scripts/services.sh.

    .venv/bin/python bench/outbound_throughput.py --events 20000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import orjson
import yaml
from aiobotocore.session import get_session

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SQS_ENDPOINT = os.environ.get("SQS_ENDPOINT_URL", "http://127.0.0.1:4566")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def event(index: int) -> bytes:
    device = f"bench-{index:06d}"
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": "source://lamassu.io/ctx/source/service/devmanager",
            "type": "device.status.update",
            "subject": f"device/{device}",
            "datacontenttype": "application/json",
            "time": "2026-02-03T08:01:02.123456789Z",
            "data": {
                "previous": {"id": device, "status": "ACTIVE", "tags": ["bench"], "metadata": {"k": "v" * 200}},
                "updated": {"id": device, "status": "REVOKED", "tags": ["bench"], "metadata": {"k": "v" * 200}},
            },
        }
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_once(count: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    queue_name, exchange_name, command = f"bench{tag}.events", f"bench{tag}.ex", f"bench{tag}-command"
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(queue_name, durable=True)
    await queue.bind(exchange, "#")
    bodies = [event(i) for i in range(count)]
    for start in range(0, count, 200):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(b), routing_key="device.status.update")
                for b in bodies[start : start + 200]
            )
        )
    config = {
        "amqp": {"url": AMQP_URL, "exchanges": [exchange_name], "queue": queue_name,
                 "dead_letter_queue": f"{queue_name}.dlq", "reply_dead_letter_queue": f"{queue_name}.rdlq"},
        "sqs": {"endpoint_url": SQS_ENDPOINT, "command_queue": command, "response_queue": f"bench{tag}-response",
                "create_queues": True},
        "log": {"format": "json", "level": "info"},
        "http": {"host": "127.0.0.1", "port": 0},
    }  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(config, handle)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    started = time.monotonic()
    # BENCH_WRAP="py-spy record -f raw -o /tmp/profile.txt --" profiles the connector.
    wrap = os.environ.get("BENCH_WRAP", "").split()
    process = subprocess.Popen(
        [*wrap, sys.executable, "-m", "lamassu_aws_connector", "run", "--config", handle.name],
        stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    async with get_session().create_client("sqs", region_name="us-east-1", endpoint_url=SQS_ENDPOINT) as sqs:
        url = None
        while True:
            try:
                url = url or (await sqs.get_queue_url(QueueName=command))["QueueUrl"]
                attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]))[
                    "Attributes"
                ]
                if int(attrs["ApproximateNumberOfMessages"]) >= count:
                    break
            except Exception:  # the queue does not exist until the connector created it
                pass
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu, rss = cpu_seconds(process.pid), peak_rss_mb(process.pid)
        process.terminate()
        process.wait(30)
        await sqs.delete_queue(QueueUrl=url)
        for name in (f"bench{tag}-response",):
            await sqs.delete_queue(QueueUrl=(await sqs.get_queue_url(QueueName=name))["QueueUrl"])
    for name in (queue_name, f"{queue_name}.dlq", f"{queue_name}.rdlq"):
        await channel.queue_delete(name)
    await channel.exchange_delete(exchange_name)
    await connection.close()
    os.unlink(handle.name)
    return {"msgs_per_s": count / elapsed, "cpu_us_per_msg": cpu / count * 1e6, "peak_rss_mb": rss}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = [await run_once(args.events) for _ in range(args.runs)]
    print(f"outbound, {args.events} events pre-loaded, median of {args.runs} runs")
    for key in ("msgs_per_s", "cpu_us_per_msg", "peak_rss_mb"):
        values = [r[key] for r in results]
        print(f"  {key:16} {statistics.median(values):10.1f}   (runs: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    asyncio.run(main())
