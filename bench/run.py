"""The connector's benchmark: one table, medians of several runs, ratios taken in the same run.

Runs against the real RabbitMQ and LocalStack of scripts/services.sh (scripts/bench.sh starts
them). Figures (see docs/performance.md for what each means and the targets):

  outbound   N pre-loaded events drained into SQS by (a) the connector, (b) a naive bridge,
             (c) a hand-written batched bridge: msgs/s from process start to the last message
             visible in SQS; client CPU µs per message (/proc user+sys); peak RSS; the CPU the
             run cost RabbitMQ and the SQS emulator per message (they share the cores)
  latency    steady offered load (200 msgs/s, 60 s): publish -> visible to a long-polling consumer
  reply      N replies pre-loaded in SQS: connector until all confirmed in RabbitMQ and deleted,
             beside a raw ReceiveMessage + DeleteMessageBatch loop with the same number of pollers
             (CPU per message of both)
  replicas   (only when asked: --only replicas) the reply flow with 1 and with 3 replicas
  idle       an idle connector: ReceiveMessage calls per minute per poller, CPU %
  memory     peak RSS while draining a large backlog

    .venv/bin/python bench/run.py                       # everything, 3 runs each (≈ 20 min)
    .venv/bin/python bench/run.py --quick               # small sizes, 1 run: a smoke check
    .venv/bin/python bench/run.py --only outbound,reply --markdown docs/performance.md
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import yaml
from common import (
    AMQP_URL,
    BENCH_ENV,
    EVENT_TYPE,
    SQS_ENDPOINT,
    cpu_seconds,
    create_sqs_queue,
    free_port,
    lamassu_event,
    lambda_reply,
    peak_rss_mb,
    preload_amqp,
    preload_sqs,
    service_pids,
    services_cpu,
    sqs_client,
    sqs_depth,
    sqs_wire,
    unique,
    wait_until,
)

import lamassu_aws_connector
from lamassu_aws_connector.sqs_wire import SqsJsonWire

HERE = Path(__file__).resolve().parent


@dataclass
class Figures:
    """Named series of per-run values; the table shows their medians."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name]) if name in self.values else float("nan")

    def runs(self, name: str) -> str:
        return ", ".join(f"{v:.4g}" for v in self.values.get(name, []))


class Connector:
    """The daemon as its own process, with logs (JSON, info) going to a file as in production."""

    def __init__(self, *, queue: str, exchanges: list[str], command: str, response: str, reply_exchange: str) -> None:
        self.http_port = free_port()
        self.config = {
            "amqp": {"url": AMQP_URL, "exchanges": exchanges, "queue": queue, "dead_letter_queue": f"{queue}.dlq",
                     "reply_exchange": reply_exchange, "reply_dead_letter_queue": f"{queue}.rdlq"},
            "sqs": {"endpoint_url": SQS_ENDPOINT, "command_queue": command, "response_queue": response,
                    "create_queues": True},
            "log": {"format": "json", "level": "info"},
            "http": {"host": "127.0.0.1", "port": self.http_port},
        }  # fmt: skip
        self.directory = Path(tempfile.mkdtemp(prefix="lamassu-bench-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        config = self.directory / "config.yaml"
        config.write_text(yaml.safe_dump(self.config))
        # BENCH_WRAP="py-spy record -f speedscope -o /tmp/profile.json --" profiles the connector.
        wrap = os.environ.get("BENCH_WRAP", "").split()
        # BENCH_ENTRY="/path/to/script.py" runs the CLI through another entry point (e.g. cProfile).
        entry = os.environ.get("BENCH_ENTRY", "-m lamassu_aws_connector").split()
        with (self.directory / "connector.log").open("wb") as log:
            self.process = subprocess.Popen(
                [*wrap, sys.executable, *entry, "run", "--config", str(config)],
                stdout=log, stderr=log, env=BENCH_ENV,
            )  # fmt: skip
        return self.pid

    @property
    def pid(self) -> int:
        assert self.process is not None
        if os.environ.get("BENCH_WRAP"):  # the daemon is the wrapper's child
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            return int(children[0]) if children else self.process.pid
        return self.process.pid

    def metric(self, name: str, labels: str = "") -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).read().decode()
        pattern = re.compile(rf"^{re.escape(name)}(?:{{{re.escape(labels)}}})? ([0-9.e+]+)$", re.M)
        match = pattern.search(text)
        return float(match.group(1)) if match else 0.0

    def ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2 if os.environ.get("BENCH_WRAP") else 15)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def bridge(mode: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE / "bridges.py"), mode, *args], env=BENCH_ENV)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Broker:
    def __init__(self) -> None:
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def __aenter__(self) -> Broker:
        self.connection = await aio_pika.connect_robust(AMQP_URL)
        self.channel = await self.connection.channel(publisher_confirms=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.connection is not None
        await self.connection.close()

    async def events_queue(self, bodies: list[bytes]) -> tuple[str, str]:
        """A durable queue bound to a topic exchange, pre-loaded with the bodies."""
        assert self.channel is not None
        queue_name, exchange_name = unique("q"), unique("x")
        exchange = await self.channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await self.channel.declare_queue(queue_name, durable=True)
        await queue.bind(exchange, "#")
        await preload_amqp(exchange, bodies, EVENT_TYPE)
        return queue_name, exchange_name

    async def depth(self, queue_name: str) -> int:
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
            count = queue.declaration_result.message_count
            return int(count or 0)
        finally:
            await channel.close()

    async def delete(self, queues: list[str], exchanges: list[str]) -> None:
        assert self.channel is not None
        for name in queues:
            await self.channel.queue_delete(name)
        for name in exchanges:
            await self.channel.exchange_delete(name)


async def outbound_once(variant: str, count: int, figures: Figures) -> None:
    bodies = [lamassu_event(i) for i in range(count)]
    async with Broker() as broker, sqs_client() as sqs:
        queue_name, exchange_name = await broker.events_queue(bodies)
        command, response = unique("cmd"), unique("rsp")
        url = await create_sqs_queue(sqs, command)
        started = time.monotonic()
        services = service_pids()
        services_before = services_cpu(services)
        connector = None
        if variant == "connector":
            connector = Connector(
                queue=queue_name, exchanges=[exchange_name], command=command, response=response,
                reply_exchange=unique("rx"),
            )  # fmt: skip
            pid = connector.start()
            process = connector.process
        else:
            process = bridge(variant, "--queue", queue_name, "--sqs-url", url)
            pid = process.pid
        assert process is not None
        try:

            async def all_visible() -> bool:
                return await sqs_depth(sqs, url) >= count

            finished = await wait_until(all_visible, timeout=count / 40 + 120, what=f"{count} messages in SQS")
            if connector is not None:
                pid = connector.pid
            elapsed = finished - started
            figures.add(f"{variant} msgs/s", count / elapsed)
            figures.add(f"{variant} cpu µs/msg", cpu_seconds(pid) / count * 1e6)
            figures.add(f"{variant} peak RSS MB", peak_rss_mb(pid))
            for name, seconds in services_cpu(services).items():
                # What the run cost the broker and the emulator, who share the two cores with the client.
                figures.add(f"{variant}: {name} cpu µs/msg", (seconds - services_before[name]) / count * 1e6)
            if connector is not None:
                entries = connector.metric("lamassu_connector_sqs_batch_entries_sum")
                calls = connector.metric("lamassu_connector_sqs_batch_entries_count")
                figures.add("connector entries per SendMessageBatch", entries / calls if calls else 0)
            await wait_until(lambda: _zero(broker.depth(queue_name)), 60, "AMQP queue drained")
            figures.add(f"{variant} duplicates", await sqs_depth(sqs, url, invisible=True) - count)
        finally:
            if connector is not None:
                connector.stop()
            else:
                stop_process(process)
        await sqs.delete_queue(QueueUrl=url)
        if variant == "connector":
            await sqs.delete_queue(QueueUrl=(await sqs.get_queue_url(QueueName=response))["QueueUrl"])
            await broker.delete([f"{queue_name}.dlq", f"{queue_name}.rdlq"], [])
        await broker.delete([queue_name], [exchange_name])


async def _zero(depth: Any) -> bool:
    return bool(await depth == 0)


async def offered_load(
    sqs: SqsJsonWire,
    url: str,
    send: Callable[[bytes], Any],
    *,
    rate: float,
    seconds: float,
    label: str,
    figures: Figures,
) -> None:
    """Send timestamped events at a steady rate; long-poll them from SQS; record the latencies."""
    latencies: list[float] = []
    total = int(rate * seconds)
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            answer = await sqs.call(
                "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}
            )
            messages = answer.get("Messages", [])
            now = time.time()
            for message in messages:
                latencies.append(now - orjson.loads(message["Body"])["data"]["sent_at"])
            if messages:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                await sqs.call("DeleteMessageBatch", {"QueueUrl": url, "Entries": entries})
            if len(latencies) >= total:
                stop.set()

    pollers = [asyncio.create_task(poll()) for _ in range(4)]
    sends: set[asyncio.Task[Any]] = set()
    begin = time.monotonic()
    for index in range(total):
        delay = begin + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(send(lamassu_event(index, sent_at=time.time())))
        sends.add(task)
        task.add_done_callback(sends.discard)
    await asyncio.gather(*sends)
    await asyncio.wait_for(stop.wait(), 60)
    await asyncio.gather(*pollers)
    latencies.sort()
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        figures.add(f"{label} {name} ms", latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000)


async def latency_once(rate: float, seconds: float, figures: Figures) -> None:
    async with Broker() as broker, sqs_client() as sqs, sqs_wire() as wire:
        queue_name, exchange_name = await broker.events_queue([])
        command, response = unique("cmd"), unique("rsp")
        url = await create_sqs_queue(sqs, command)
        connector = Connector(
            queue=queue_name, exchanges=[exchange_name], command=command, response=response, reply_exchange=unique("rx")
        )
        connector.start()
        try:
            await wait_until(lambda: asyncio.to_thread(connector.ready), 60, "connector ready", interval=0.2)
            assert broker.channel is not None
            exchange = await broker.channel.get_exchange(exchange_name)

            async def publish(body: bytes) -> None:
                await exchange.publish(aio_pika.Message(body), EVENT_TYPE)

            await offered_load(wire, url, publish, rate=rate, seconds=seconds, label="latency", figures=figures)
        finally:
            connector.stop()

        # Baseline in the same run: the same load sent straight to SQS, one SendMessage per event,
        # measured by the same pollers. What the connector adds is the difference.
        async def send_direct(body: bytes) -> None:
            await wire.call("SendMessage", {"QueueUrl": url, "MessageBody": body.decode()})

        await offered_load(
            wire, url, send_direct, rate=rate, seconds=seconds, label="direct SendMessage latency", figures=figures
        )
        await sqs.delete_queue(QueueUrl=url)
        await sqs.delete_queue(QueueUrl=(await sqs.get_queue_url(QueueName=response))["QueueUrl"])
        await broker.delete([queue_name, f"{queue_name}.dlq", f"{queue_name}.rdlq"], [exchange_name])


async def reply_once(variant: str, count: int, figures: Figures, replicas: int = 1) -> None:
    async with Broker() as broker, sqs_client() as sqs:
        response = unique("rsp")
        url = await create_sqs_queue(sqs, response)
        await preload_sqs(sqs, url, [lambda_reply(i) for i in range(count)])
        await wait_until(lambda: _at_least(sqs_depth(sqs, url), count), 60, "replies visible in SQS")
        if variant == "raw":
            started = time.monotonic()
            process = bridge("drain", "--sqs-url", url, "--count", str(count), "--pollers", "2")
            _, status, usage = await asyncio.to_thread(os.wait4, process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            elapsed = time.monotonic() - started
            figures.add("raw receive+delete msgs/s", count / elapsed)
            figures.add("raw receive+delete cpu µs/msg", (usage.ru_utime + usage.ru_stime) / count * 1e6)
            await sqs.delete_queue(QueueUrl=url)
            return
        assert broker.channel is not None
        reply_exchange, landing = unique("rx"), unique("landing")
        exchange = await broker.channel.declare_exchange(reply_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await broker.channel.declare_queue(landing, durable=True)
        await queue.bind(exchange, "#")
        queue_name, exchange_name = await broker.events_queue([])
        command = unique("cmd")
        connectors = [
            Connector(
                queue=queue_name,
                exchanges=[exchange_name],
                command=command,
                response=response,
                reply_exchange=reply_exchange,
            )
            for _ in range(replicas)
        ]
        started = time.monotonic()
        for connector in connectors:
            connector.start()
        try:

            async def relayed() -> bool:
                return await broker.depth(landing) >= count and await sqs_depth(sqs, url, invisible=True) == 0

            finished = await wait_until(relayed, count / 40 + 120, f"{count} replies relayed and deleted")
            suffix = "" if replicas == 1 else f" ({replicas} replicas)"
            figures.add(f"connector replies msgs/s{suffix}", count / (finished - started))
            cpu = sum(cpu_seconds(connector.pid) for connector in connectors)
            figures.add(f"connector replies cpu µs/msg{suffix}", cpu / count * 1e6)
        finally:
            for connector in connectors:
                connector.stop()
        await sqs.delete_queue(QueueUrl=url)
        await sqs.delete_queue(QueueUrl=(await sqs.get_queue_url(QueueName=command))["QueueUrl"])
        await broker.delete(
            [landing, queue_name, f"{queue_name}.dlq", f"{queue_name}.rdlq"], [reply_exchange, exchange_name]
        )


async def _at_least(depth: Any, count: int) -> bool:
    return bool(await depth >= count)


async def idle(seconds: float, replicas: int, figures: Figures) -> None:
    """Several idle connectors side by side (each its own queues); one figure per connector."""
    async with Broker() as broker, sqs_client() as sqs:
        connectors = []
        for _ in range(replicas):
            queue_name, exchange_name = await broker.events_queue([])
            connectors.append(
                Connector(
                    queue=queue_name,
                    exchanges=[exchange_name],
                    command=unique("cmd"),
                    response=unique("rsp"),
                    reply_exchange=unique("rx"),
                )
            )
        for connector in connectors:
            connector.start()
        try:
            for connector in connectors:
                await wait_until(lambda c=connector: asyncio.to_thread(c.ready), 60, "ready", interval=0.2)
            for connector in connectors:
                figures.add("connector start-up CPU s", cpu_seconds(connector.pid))
            await asyncio.sleep(5)  # start-up calls and the first long polls are behind us
            label = 'operation="ReceiveMessage"'
            before = [(c.metric("lamassu_connector_sqs_calls_total", label), cpu_seconds(c.pid)) for c in connectors]
            begin = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - begin
            for connector, (calls, cpu) in zip(connectors, before, strict=True):
                receives = connector.metric("lamassu_connector_sqs_calls_total", label) - calls
                all_calls = _all_sqs_calls(connector)
                figures.add("idle ReceiveMessage /min/poller", receives / (elapsed / 60) / 2)
                figures.add("idle CPU %", (cpu_seconds(connector.pid) - cpu) / elapsed * 100)
                figures.add("idle SQS calls total since start", all_calls)
        finally:
            for connector in connectors:
                connector.stop()
        for connector in connectors:
            amqp, sqs_config = connector.config["amqp"], connector.config["sqs"]
            for name in (sqs_config["command_queue"], sqs_config["response_queue"]):
                await sqs.delete_queue(QueueUrl=(await sqs.get_queue_url(QueueName=name))["QueueUrl"])
            await broker.delete(
                [amqp["queue"], amqp["dead_letter_queue"], amqp["reply_dead_letter_queue"]], amqp["exchanges"]
            )


def _all_sqs_calls(connector: Connector) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{connector.http_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lamassu_connector_sqs_calls_total{") and 'Entry"' not in line  # entries are no calls
    )


async def memory_once(count: int, figures: Figures) -> None:
    figures_here = Figures()
    await outbound_once("connector", count, figures_here)
    figures.add("backlog peak RSS MB", figures_here.median("connector peak RSS MB"))
    figures.add("backlog msgs/s", figures_here.median("connector msgs/s"))


def table(figures: Figures, args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str]] = []

    def row(name: str, target: str = "") -> None:
        if name in figures.values:
            rows.append((name, f"{figures.median(name):,.1f}", f"{target}  ({figures.runs(name)})".strip()))

    def ratio(name: str, top: str, bottom: str, target: str) -> None:
        if top in figures.values and bottom in figures.values:
            value = figures.median(top) / figures.median(bottom)
            rows.append((name, f"{value:.2f}", target))

    for variant in ("connector", "naive", "batched", "same-messages"):
        row(f"{variant} msgs/s", "(c'): bridge (c) sending the connector's attributes" if "-" in variant else "")
    ratio("(a)/(b) connector / naive", "connector msgs/s", "naive msgs/s", "target ≥ 10")
    ratio("(a)/(c) connector / batched", "connector msgs/s", "batched msgs/s", "target ≥ 1.5")
    ratio("(a)/(c') connector / same-messages", "connector msgs/s", "same-messages msgs/s", "same SQS messages")
    row("connector cpu µs/msg", "target ≤ 150 on a quick host")
    row("connector start-up CPU s", "imports and connections, in the figure above")
    if "connector cpu µs/msg" in figures.values and "connector start-up CPU s" in figures.values:
        steady = figures.median("connector cpu µs/msg") - figures.median("connector start-up CPU s") / args.events * 1e6
        rows.append(("connector cpu µs/msg excl. start-up", f"{steady:,.1f}", "derived from the two rows above"))
    row("batched cpu µs/msg")
    row("same-messages cpu µs/msg")
    row("naive cpu µs/msg")
    ratio("CPU (a)/(c)", "connector cpu µs/msg", "batched cpu µs/msg", "target ≤ 0.6")
    for variant in ("connector", "batched", "same-messages"):
        for service in ("rabbitmq", "sqs emulator"):
            row(f"{variant}: {service} cpu µs/msg", "the service's CPU during the run, per event")
    row("connector entries per SendMessageBatch")
    row("connector peak RSS MB")
    row("connector duplicates")
    for name in ("p50", "p95", "p99"):
        row(f"latency {name} ms", "target p99 ≤ 1.5 x the baseline's" if name == "p99" else "")
    for name in ("p50", "p95", "p99"):
        row(f"direct SendMessage latency {name} ms", "baseline: same load straight to SQS" if name == "p50" else "")
    ratio("latency p99 / baseline p99", "latency p99 ms", "direct SendMessage latency p99 ms", "target ≤ 1.5")
    row("connector replies msgs/s")
    row("raw receive+delete msgs/s")
    ratio("reply / raw", "connector replies msgs/s", "raw receive+delete msgs/s", "target ≥ 0.90")
    row("connector replies cpu µs/msg")
    row("raw receive+delete cpu µs/msg", "start-up included, as for the connector")
    row("connector replies msgs/s (3 replicas)", "one SQS queue, three processes")
    ratio("replies 3 replicas / 1", "connector replies msgs/s (3 replicas)", "connector replies msgs/s", "scaling")
    row("connector replies cpu µs/msg (3 replicas)", "summed over the three")
    row("idle ReceiveMessage /min/poller", "target ≤ 3")
    row("idle CPU %", "target < 1")
    row("backlog msgs/s")
    row("backlog peak RSS MB", "target ≤ 100")
    width = max(len(r[0]) for r in rows) if rows else 10
    lines = [f"| {'figure':<{width}} | {'median':>10} | notes (runs) |", f"|{'-' * (width + 2)}|{'-' * 12}|---|"]
    lines += [f"| {name:<{width}} | {value:>10} | {notes} |" for name, value, notes in rows]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--naive-events", type=int, default=None, help="events for the naive bridge (default --events)")
    parser.add_argument("--latency-rate", type=float, default=200)
    parser.add_argument("--latency-seconds", type=float, default=60)
    parser.add_argument("--reply-events", type=int, default=20_000)
    parser.add_argument("--idle-seconds", type=float, default=120)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--memory-runs", type=int, default=None, help="runs of the backlog drain (default --runs)")
    parser.add_argument("--only", default="outbound,latency,reply,idle,memory")
    parser.add_argument("--quick", action="store_true", help="small sizes and one run: check the benchmark works")
    parser.add_argument("--markdown", type=Path, help="replace the table between bench markers in this file")
    parser.add_argument(
        "--variants",
        default="connector,batched,same-messages,naive,raw",
        help="outbound/reply variants to run (e.g. connector)",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.events, args.reply_events, args.backlog = 1, 2_000, 2_000, 5_000
        args.latency_seconds, args.idle_seconds = 10, 20
    only = set(args.only.split(","))
    figures = Figures()
    steps: list[tuple[str, Callable[[], Any]]] = []
    for _ in range(args.runs):
        if "outbound" in only:
            steps += [
                ("outbound connector", lambda: outbound_once("connector", args.events, figures)),
                ("outbound batched", lambda: outbound_once("batched", args.events, figures)),
                ("outbound same-messages", lambda: outbound_once("same-messages", args.events, figures)),
                ("outbound naive", lambda: outbound_once("naive", args.naive_events or args.events, figures)),
            ]
        if "reply" in only:
            steps += [
                ("reply connector", lambda: reply_once("connector", args.reply_events, figures)),
                ("reply raw", lambda: reply_once("raw", args.reply_events, figures)),
            ]
        if "replicas" in only:  # the reply flow with 1 and 3 replicas (fleet announcements on)
            steps += [
                ("reply 1 replica", lambda: reply_once("connector", args.reply_events, figures)),
                ("reply 3 replicas", lambda: reply_once("connector", args.reply_events, figures, replicas=3)),
            ]
        if "latency" in only:
            steps.append(("latency", lambda: latency_once(args.latency_rate, args.latency_seconds, figures)))
    variants = set(args.variants.split(","))
    steps = [(name, step) for name, step in steps if name.split()[-1] in variants or len(name.split()) != 2]
    if "idle" in only:
        steps.append(("idle", lambda: idle(args.idle_seconds, max(args.runs, 1), figures)))
    if "memory" in only:
        steps += [("memory", lambda: memory_once(args.backlog, figures))] * (args.memory_runs or args.runs)
    for name, step in steps:
        began = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        await step()
        print(f"bench: {name} done in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    command = "bench/run.py " + " ".join(sys.argv[1:])
    header = (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; `{command.strip()}`; events {args.events:,}, replies "
        f"{args.reply_events:,}, latency {args.latency_rate:g} msgs/s for {args.latency_seconds:g} s, "
        f"backlog {args.backlog:,}; medians of {args.runs} run(s)"
    )
    output = f"{header}\n\n{table(figures, args)}\n"
    print(output)
    if args.markdown:
        text = args.markdown.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        args.markdown.write_text(f"{before}{start}\n{output}{end}{after}")


def compile_bytecode() -> None:
    """Compile the connector's and the bridges' modules first, as the image ships them (pip compiles
    a wheel's modules at install). From a source checkout with PYTHONDONTWRITEBYTECODE set, every
    process would otherwise compile its modules at start: ≈ 10,000 lines, ≈ 0.25 s of CPU for the
    connector, next to nothing for a bridge."""
    for directory in (Path(lamassu_aws_connector.__file__).parent, HERE):
        compileall.compile_dir(directory, quiet=1)


if __name__ == "__main__":
    compile_bytecode()
    asyncio.run(main())
