"""Shared driver of the reliability scenarios: the real connector as a subprocess, counted traffic.

A scenario starts ``python -m lamassu_aws_connector run --config <file>`` (so SIGKILL and SIGTERM
are real signals to a real process), streams uniquely numbered events at a steady rate, injects a
fault part-way through, drains, and counts: sent (confirmed by the broker or by SQS), arrived
(unique, on the far side), lost, duplicated, dead-lettered, recovery time and the connector's peak
RSS. Every figure is saved as JSON when ``LAMASSU_RELIABILITY_RESULTS`` names a directory;
``python -m tests.reliability.report`` turns those files into ``docs/reliability.md``.

Credentials are distinctive per run so the logs can be searched for them: the connector talks to
the private broker as a user with :data:`AMQP_PASSWORD` and gets :data:`AWS_SECRET` as its AWS
secret key (LocalStack accepts any).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import yaml
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from ..conftest import wait_for
from ..private_broker import PrivateBroker
from ..tls_broker import free_port

RESULTS_ENV = "LAMASSU_RELIABILITY_RESULTS"
LONG_ENV = "LAMASSU_LONG_TESTS"
LONG = os.environ.get(LONG_ENV, "") not in ("", "0")

AMQP_USER = "lamassu-connector"
AMQP_PASSWORD = "amqpPw-" + secrets.token_hex(12)
AWS_ACCESS_KEY = "AKIARELIABILITY" + secrets.token_hex(4).upper()
AWS_SECRET = "awsSecret-" + secrets.token_hex(16)
SECRETS = (AMQP_PASSWORD, AWS_SECRET)

SQS_OUTAGE_SECONDS = 30  # how long the SQS endpoint is unreachable in the outage scenarios (3, 7c)

EVENT_TYPE = "io.lamassuiot.certificate.update"
REPLY_TYPE = "io.lamassuiot.aws.certificate.revoked"


# ------------------------------------------------------------------------------------------------
# Events
# ------------------------------------------------------------------------------------------------


def event(run: str, seq: int, event_type: str = EVENT_TYPE, pad: int = 0) -> bytes:
    """A Lamassu v3-shaped revocation event carrying its sequence number (``pad``: bytes of filler)."""
    data: dict[str, Any] = {"serial_number": f"{seq:08x}", "status": "REVOKED", "seq": seq, "run": run}
    if pad:
        data["pad"] = "p" * pad
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"{run}-{seq:07d}",
            "source": "lamassuiot/ca",
            "type": event_type,
            "subject": f"cert-{seq:07d}",
            "time": "2026-11-26T09:00:00Z",
            "datacontenttype": "application/json",
            "data": data,
        }
    )


def seq_of(body: str | bytes) -> int | None:
    """The sequence number of one of our events: its data's ``seq``, else (data claim-checked to
    S3) its subject ``cert-NNNNNNN``."""
    try:
        event = orjson.loads(body)
        if "data" in event:
            return int(event["data"]["seq"])
        subject = str(event["subject"])
        return int(subject.removeprefix("cert-")) if subject.startswith("cert-") else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Names:
    """Unique names for one scenario (queues on the private broker, queues in the shared SQS)."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def exchange(self) -> str:
        return f"r{self.tag}.lamassu-events"

    @property
    def queue(self) -> str:
        return f"r{self.tag}.lamassu_events"

    @property
    def dlq(self) -> str:
        return f"r{self.tag}.lamassu_events.dlq"

    @property
    def reply_exchange(self) -> str:
        return f"r{self.tag}.replies"

    @property
    def reply_dlq(self) -> str:
        return f"r{self.tag}.lamassu-response.dlq"

    @property
    def reply_count_queue(self) -> str:
        return f"r{self.tag}.replies.counted"

    @property
    def command_queue(self) -> str:
        return f"r{self.tag}-command"

    @property
    def response_queue(self) -> str:
        return f"r{self.tag}-response"


def connector_config(names: Names, amqp_url: str, sqs_endpoint: str, **overrides: dict[str, Any]) -> dict[str, Any]:
    """Production defaults except names, endpoints, a free HTTP port, JSON logs and 5 s long polls:
    a graceful stop waits for the polls in flight, and 20 s each would add minutes to the suite."""
    config: dict[str, Any] = {
        "amqp": {
            "url": amqp_url,
            "exchanges": [names.exchange],
            "queue": names.queue,
            "dead_letter_queue": names.dlq,
            "reply_exchange": names.reply_exchange,
            "reply_dead_letter_queue": names.reply_dlq,
            "reconnect_interval_seconds": 1,
        },
        "sqs": {
            "endpoint_url": sqs_endpoint,
            "command_queue": names.command_queue,
            "response_queue": names.response_queue,
            "create_queues": True,
            "wait_time_seconds": 5,
        },
        "log": {"level": "info", "format": "json"},
        "http": {"host": "127.0.0.1", "port": 0},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


# ------------------------------------------------------------------------------------------------
# The connector as a process
# ------------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a live process, {} once it is gone."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


class Connector:
    """One connector process (restartable); its logs from every run go to one file."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, name: str = "connector", module: str = "lamassu_aws_connector"
    ) -> None:
        self.module = module  # what `python -m` runs: the connector, or a test wrapper around it
        self.config = json.loads(json.dumps(config))
        self.http_port = free_port()
        self.config.setdefault("http", {})["port"] = self.http_port
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.peak_rss_kb = 0  # max VmHWM over every run of this connector
        self.rss_samples: list[tuple[float, int]] = []  # (monotonic, VmRSS kB)
        self.starts = 0
        self._sampler: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMASSU_", "AWS_"))}
        env.update(AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=AWS_SECRET, AWS_DEFAULT_REGION="us-east-1")
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, "run", "--config", str(self.config_path),
                stdout=log, stderr=log, env=env, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1
        self._sampler = asyncio.create_task(self._sample(self.process))

    async def _sample(self, process: asyncio.subprocess.Process) -> None:
        while process.returncode is None:
            self.sample()
            await asyncio.sleep(0.2)

    def sample(self) -> dict[str, int]:
        if not self.running:
            return {}
        status = _proc_status(self.pid)
        if "VmHWM" in status:
            self.peak_rss_kb = max(self.peak_rss_kb, status["VmHWM"])
            self.rss_samples.append((time.monotonic(), status["VmRSS"]))
        return status

    async def ready(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"http://127.0.0.1:{self.http_port}/readyz") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """/readyz status and JSON body; (0, {}) when the endpoint does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"http://127.0.0.1:{self.http_port}/readyz") as response,
            ):
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, {}

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"http://127.0.0.1:{self.http_port}/metrics") as response,
        ):
            return await response.text()

    async def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds until /readyz answers 200 (fails if the process exits first)."""
        t0 = time.monotonic()

        async def check() -> bool:
            if not self.running:
                raise AssertionError(f"connector exited with {self.returncode} before it was ready:\n{self.log_tail()}")
            return await self.ready()

        await wait_for(check, timeout, "connector ready")
        return time.monotonic() - t0

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def kill(self) -> None:
        """SIGKILL, no chance to settle anything."""
        assert self.process is not None
        self.sample()
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    def terminate(self) -> None:
        assert self.process is not None
        self.sample()
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = 40.0) -> int:
        """Graceful stop; returns the exit code."""
        if not self.running:
            return self.returncode if self.returncode is not None else 0
        self.terminate()
        return await self.wait_exit(timeout)

    def open_fds(self, amqp_port: int, sqs_port: int) -> dict[str, int]:
        """Open file descriptors of the live process: total, sockets, and TCP connections to the
        broker and to the SQS endpoint (by the remote port in /proc/net/tcp)."""
        inodes: set[str] = set()
        total = 0
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                total += 1
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        remote_ports: Counter[int] = Counter()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
                        remote_ports[int(fields[2].rsplit(":", 1)[1], 16)] += 1
        return {
            "fds": total,
            "sockets": len(inodes),
            "amqp_connections": remote_ports[amqp_port],
            "sqs_connections": remote_ports[sqs_port],
        }

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """Parsed JSON log lines whose ``event`` is ``name``."""
        found = []
        for line in self.log_text().splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    if isinstance(record, dict) and record.get("event") == name:
                        found.append(record)
        return found

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def assert_no_secrets(*texts: str) -> None:
    """No credential in any captured output: the AMQP password and the AWS secret key."""
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, "a credential appears in the connector's output"


# ------------------------------------------------------------------------------------------------
# Traffic: publisher, counters
# ------------------------------------------------------------------------------------------------


class Publisher:
    """Publishes like a Lamassu service with publisher confirms; an unconfirmed publish is retried
    until confirmed, so ``sent`` counts exactly the events the broker took responsibility for."""

    def __init__(self, url: str, exchange: str, routing_key: str = EVENT_TYPE) -> None:
        self.url = url
        self.exchange_name = exchange
        self.routing_key = routing_key
        self.sent: set[int] = set()
        self.republished = 0  # publishes retried after an error (a duplicate in the queue is possible)
        self.flowing = asyncio.Event()  # cleared: the stream pauses (a fault needs a quiet moment)
        self.flowing.set()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def open(self) -> Publisher:
        self._connection = await aio_pika.connect_robust(self.url, reconnect_interval=0.5)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        return self

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def publish(self, seq: int, body: bytes, headers: dict[str, Any] | None = None) -> None:
        assert self._exchange is not None
        message = aio_pika.Message(
            body, delivery_mode=DeliveryMode.PERSISTENT, headers={"x-test-seq": str(seq), **(headers or {})}
        )
        while True:
            try:
                await self._exchange.publish(message, self.routing_key, timeout=5)
                break
            except (TypeError, ValueError):
                raise  # the message cannot be encoded: a test bug, not an outage
            except Exception:
                self.republished += 1
                await asyncio.sleep(0.25)
        self.sent.add(seq)

    async def stream(
        self, items: list[tuple[int, bytes]], rate: float, headers: Callable[[int], dict[str, Any]] | None = None
    ) -> float:
        """Publish at ``rate`` per second (a few in flight at once); returns the seconds it took."""
        t0 = time.monotonic()
        window = asyncio.Semaphore(32)
        tasks: list[asyncio.Task[None]] = []

        async def one(seq: int, body: bytes) -> None:
            try:
                await self.publish(seq, body, headers(seq) if headers else None)
            finally:
                window.release()

        for index, (seq, body) in enumerate(items):
            delay = t0 + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.flowing.wait()
            await window.acquire()
            tasks.append(asyncio.create_task(one(seq, body)))
        await asyncio.gather(*tasks)
        return time.monotonic() - t0


class SqsCounter:
    """Receives and deletes everything arriving in an SQS queue, counting sequence numbers."""

    def __init__(self, sqs: Any, queue_url: str, loops: int = 4) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.seen: Counter[int] = Counter()
        self.foreign: list[str] = []  # bodies that are not ours (must stay empty)
        self.last_new_at = 0.0
        self._loops = loops
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def unique(self) -> int:
        return len(self.seen)

    @property
    def duplicated(self) -> int:
        return sum(self.seen.values()) - len(self.seen)

    def start(self) -> SqsCounter:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self._loops)]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                response = await self.sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
                )
            except Exception:
                await asyncio.sleep(0.5)
                continue
            messages = response.get("Messages", [])
            for message in messages:
                seq = seq_of(message["Body"])
                if seq is None:
                    self.foreign.append(message["Body"][:200])
                    continue
                if seq not in self.seen:
                    self.last_new_at = time.monotonic()
                self.seen[seq] += 1
            if messages:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                with contextlib.suppress(Exception):
                    await self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)

    async def depth(self) -> int:
        attrs = (
            await self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


class AmqpCounter:
    """Consumes a queue on the private broker (acking), counting sequence numbers; survives restarts."""

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue_name = queue
        self.seen: Counter[int] = Counter()
        self.foreign: list[bytes] = []
        self.messages: dict[int, AbstractIncomingMessage] = {}
        self.last_new_at = 0.0
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    @property
    def unique(self) -> int:
        return len(self.seen)

    @property
    def duplicated(self) -> int:
        return sum(self.seen.values()) - len(self.seen)

    async def start(self, bind_exchange: str | None = None) -> AmqpCounter:
        self._connection = await aio_pika.connect_robust(self.url, reconnect_interval=0.5)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue(self.queue_name, durable=True)
        if bind_exchange is not None:
            exchange = await channel.declare_exchange(bind_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            await queue.bind(exchange, "#")
        await queue.consume(self._on_message)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # The publisher's x-test-seq header survives dead-lettering; replies carry it in the body.
        header = (message.headers or {}).get("x-test-seq")
        seq = seq_of(message.body) if header is None else int(str(header))
        if seq is None:
            self.foreign.append(message.body[:200])
        else:
            if seq not in self.seen:
                self.last_new_at = time.monotonic()
                self.messages[seq] = message
            self.seen[seq] += 1
        with contextlib.suppress(Exception):
            await message.ack()

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()


async def queue_depth(url: str, queue: str) -> int:
    """Ready messages in a queue on the private broker (fresh connection: works across restarts)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    title: str
    sent: int
    arrived: int
    lost: int
    duplicated: int
    dead_lettered: int
    recovery_seconds: float | None
    drain_seconds: float | None
    peak_rss_mb: float
    notes: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        directory = os.environ.get(RESULTS_ENV)
        print(f"\n[reliability] {json.dumps(asdict(self))}")
        if directory:
            path = Path(directory)
            path.mkdir(parents=True, exist_ok=True)
            (path / f"{self.scenario}.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# The outbound and reply scenarios
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a fault injector may act on, and where it notes when the fault was cleared."""

    broker: PrivateBroker
    names: Names
    connectors: list[Connector]
    publisher: Publisher | None = None
    counter: SqsCounter | None = None
    dead_letters: AmqpCounter | None = None
    cleared_at: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def cleared(self) -> None:
        self.cleared_at = time.monotonic()

    async def kill_broker(self, down_seconds: float = 3.0) -> None:
        await asyncio.to_thread(self.broker.kill)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.broker.start)
        self.cleared_at = self.broker.listening_at  # clients may connect from then on

    async def bounce_broker_gracefully(self, down_seconds: float = 3.0) -> None:
        await asyncio.to_thread(self.broker.stop)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.broker.start)
        self.cleared_at = self.broker.listening_at


Fault = Callable[[Run], Awaitable[None]]


@dataclass
class Env:
    """A scenario's surroundings: the module's private broker, an SQS client, a work dir."""

    broker: PrivateBroker
    sqs: Any
    sqs_endpoint: str
    workdir: Path

    @property
    def amqp_url(self) -> str:
        return self.broker.url(AMQP_USER, AMQP_PASSWORD)

    @property
    def test_url(self) -> str:
        return self.broker.url(AMQP_USER, AMQP_PASSWORD)

    async def sqs_url(self, name: str) -> str:
        return str((await self.sqs.get_queue_url(QueueName=name))["QueueUrl"])

    async def delete_sqs_queues(self, names: Names) -> None:
        for name in (names.command_queue, names.response_queue):
            with contextlib.suppress(Exception):
                await self.sqs.delete_queue(QueueUrl=await self.sqs_url(name))


async def _after_fault(run: Run, fault: Fault, when: Callable[[], bool]) -> float | None:
    await wait_for(when, 600, "the moment to inject the fault")
    await fault(run)
    if run.cleared_at is None:
        return None
    live = [c for c in run.connectors if c.running]
    for connector in live:
        await connector.wait_ready(120)
    return time.monotonic() - run.cleared_at


async def outbound_scenario(
    env: Env,
    scenario: str,
    title: str,
    fault: Fault | None,
    *,
    count: int = 2000,
    rate: float = 400.0,
    fault_at: float = 0.33,
    sqs_endpoint: str | None = None,
    replicas: int = 1,
    config: dict[str, dict[str, Any]] | None = None,
    drain_timeout: float = 240.0,
    bad: dict[int, tuple[bytes, dict[str, Any]]] | None = None,
    before_stop: Fault | None = None,
    counter_loops: int = 4,
    pad: int = 0,
) -> tuple[Figures, Run]:
    """Stream ``count`` numbered events through the connector(s), inject ``fault``, drain, count.

    ``bad`` maps further sequence numbers to (body, headers) of bad messages, spread evenly through
    the stream; they must all end in the dead-letter queue (``run.dead_letters``), once each.
    """
    names = Names()
    bad = bad or {}
    base = connector_config(names, env.amqp_url, sqs_endpoint or env.sqs_endpoint, **(config or {}))
    connectors = [Connector(base, env.workdir / names.tag, f"connector-{i}") for i in range(replicas)]
    run = Run(env.broker, names, connectors)
    counter: SqsCounter | None = None
    publisher: Publisher | None = None
    dead_letters = AmqpCounter(env.test_url, names.dlq)
    try:
        for connector in connectors:
            await connector.start()
        for connector in connectors:
            await connector.wait_ready()
        counter = run.counter = SqsCounter(env.sqs, await env.sqs_url(names.command_queue), counter_loops).start()
        await dead_letters.start()
        run.dead_letters = dead_letters
        publisher = run.publisher = await Publisher(env.test_url, names.exchange).open()
        items = _interleave([(seq, event(names.tag, seq, pad=pad)) for seq in range(count)], bad)
        watcher = None
        if fault is not None:
            threshold = int(len(items) * fault_at)
            watcher = asyncio.create_task(_after_fault(run, fault, lambda: len(publisher.sent) >= threshold))
        stream_seconds = await publisher.stream(items, rate, lambda seq: bad[seq][1] if seq in bad else {})
        recovery = await watcher if watcher is not None else None
        drain_from = max(run.cleared_at or 0.0, time.monotonic())  # fault over and stream ended
        good_sent = publisher.sent - set(bad)
        try:
            await wait_for(lambda: counter.unique >= len(good_sent), drain_timeout, "every sent event in SQS")
        except AssertionError as exc:
            missing = sorted(good_sent - set(counter.seen))
            found = await diagnosis(env, connectors)
            raise AssertionError(f"{exc}: {len(missing)} missing, first {missing[:10]}\n{found}") from None
        drain = max(0.0, counter.last_new_at - drain_from)
        await wait_for(lambda: dead_letters.unique >= len(bad), 60, "every bad message dead-lettered")
        # Late copies (redeliveries) would still be on their way: wait until nothing is in flight.
        await poll(_settled(env, names, connectors), 120, "events queue empty and nothing in flight")
        await poll(_sqs_empty(counter), 60, "SQS command queue read to the end")
        await poll(_drained(env, names.dlq), 30, "dead-letter queue read to the end")
        dead = sum(dead_letters.seen.values()) + len(dead_letters.foreign)
        run.notes.update(stream_seconds=round(stream_seconds, 1), publisher_retries=publisher.republished)
        if before_stop is not None:
            await before_stop(run)
        exit_codes = [await c.stop() for c in connectors if c.running]
        run.notes["exit_codes"] = exit_codes
        # Stopped, every unacked delivery is back in the queue: it must be empty.
        assert await queue_depth(env.test_url, names.queue) == 0, "events left in RabbitMQ"
        lost = len(good_sent - set(counter.seen))
        figures = Figures(
            scenario=scenario,
            title=title,
            sent=len(publisher.sent),
            arrived=counter.unique,
            lost=lost,
            duplicated=counter.duplicated,
            dead_lettered=dead,
            recovery_seconds=None if recovery is None else round(recovery, 1),
            drain_seconds=round(drain, 1),
            peak_rss_mb=round(max(c.peak_rss_kb for c in connectors) / 1024, 1),
            notes=run.notes,
        )
        figures.save()
        assert not counter.foreign, f"unexpected bodies in SQS: {counter.foreign[:3]}"
        assert not set(counter.seen) & set(bad), "a bad message reached SQS"
        assert_no_secrets(*(c.log_text() for c in connectors))
        return figures, run
    finally:
        await dead_letters.close()
        if counter is not None:
            await counter.stop()
        if publisher is not None:
            await publisher.close()
        for connector in connectors:
            if connector.running:
                await connector.kill()
        await env.delete_sqs_queues(names)


DIAGNOSTIC_METRICS = tuple(
    f"lamassu_connector_{name}"
    for name in ("outbound_in_flight", "events_consumed_total", "amqp_connected", "events_forwarded_total")
)


async def diagnosis(env: Env, connectors: list[Connector]) -> str:
    """What a timed-out scenario left behind: the broker's queues and channels, each connector's gauges and log."""
    parts: list[str] = []
    for what, args in (
        ("queues", ("list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers")),
        ("channels", ("list_channels", "connection", "number", "consumer_count", "messages_unacknowledged")),
    ):
        try:
            parts.append(f"--- broker {what}\n" + await asyncio.to_thread(env.broker.rabbitmqctl, *args, timeout=30))
        except Exception as exc:  # the broker itself may be what failed
            parts.append(f"--- broker {what}: {exc!r}\n{env.broker.log_tail(15)}")
    for connector in connectors:
        gauges = ""
        if connector.running:
            with contextlib.suppress(Exception):
                text = await connector.metrics()
                gauges = "\n".join(line for line in text.splitlines() if line.startswith(DIAGNOSTIC_METRICS))
        tail = [line for line in connector.log_text().splitlines() if '"level":"debug"' not in line][-40:]
        parts.append(f"--- {connector.log_path.name} (running: {connector.running})\n{gauges}\n" + "\n".join(tail))
    return "\n".join(parts)


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.5) -> None:
    """Like ``wait_for``, for checks too costly to run every 50 ms."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def in_flight(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("lamassu_connector_outbound_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge in /metrics")


def _settled(env: Env, names: Names, connectors: list[Connector]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        if await queue_depth(env.test_url, names.queue) != 0:
            return False
        for connector in connectors:
            if connector.running and in_flight(await connector.metrics()) != 0:
                return False
        return True

    return check


def _interleave(
    items: list[tuple[int, bytes]], bad: dict[int, tuple[bytes, dict[str, Any]]]
) -> list[tuple[int, bytes]]:
    if not bad:
        return items
    step = max(1, len(items) // (len(bad) + 1))
    mixed: list[tuple[int, bytes]] = []
    pending = sorted(bad.items())
    for index, item in enumerate(items):
        mixed.append(item)
        if pending and (index + 1) % step == 0:
            seq, (body, _headers) = pending.pop(0)
            mixed.append((seq, body))
    mixed.extend((seq, body) for seq, (body, _headers) in pending)
    return mixed


def _drained(env: Env, queue: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await queue_depth(env.test_url, queue) == 0

    return check


def _sqs_empty(counter: SqsCounter) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await counter.depth() == 0

    return check


REPLY_VISIBILITY_TIMEOUT = 10


async def reply_scenario(
    env: Env,
    scenario: str,
    title: str,
    fault: Fault,
    *,
    count: int = 2000,
    rate: float = 400.0,
    fault_at: float = 0.33,
    drain_timeout: float = 240.0,
    sqs_endpoint: str | None = None,
    before_stop: Fault | None = None,
    visibility_timeout: int | None = None,
) -> tuple[Figures, Run]:
    """Put ``count`` numbered replies into SQS, inject ``fault``, count them on RabbitMQ.

    The replies are sent straight to the SQS server; the connector may reach it through
    ``sqs_endpoint`` instead (a proxy the fault cuts). ``before_stop`` runs once everything arrived
    and SQS is empty, before the connector is stopped.
    """
    names = Names()
    # A short visibility timeout by default: replies a killed connector had received come back in seconds.
    visibility = REPLY_VISIBILITY_TIMEOUT if visibility_timeout is None else visibility_timeout
    base = connector_config(
        names, env.amqp_url, sqs_endpoint or env.sqs_endpoint, sqs={"visibility_timeout": visibility}
    )
    connector = Connector(base, env.workdir / names.tag, "connector")
    run = Run(env.broker, names, [connector])
    counter = AmqpCounter(env.test_url, names.reply_count_queue)
    try:
        await connector.start()
        await connector.wait_ready()
        await counter.start(bind_exchange=names.reply_exchange)
        queue_url = await env.sqs_url(names.response_queue)
        sent: set[int] = set()
        state = {"sent": 0}

        async def produce() -> float:
            t0 = time.monotonic()
            for start in range(0, count, 10):
                delay = t0 + start / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                batch = list(range(start, min(start + 10, count)))
                entries = [{"Id": str(seq), "MessageBody": event(names.tag, seq, REPLY_TYPE).decode()} for seq in batch]
                while entries:
                    try:
                        response = await env.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
                    except Exception:
                        await asyncio.sleep(0.2)
                        continue
                    done = {int(ok["Id"]) for ok in response.get("Successful", [])}
                    sent.update(done)
                    entries = [e for e in entries if int(e["Id"]) not in done]
                state["sent"] = len(sent)
            return time.monotonic() - t0

        threshold = int(count * fault_at)
        watcher = asyncio.create_task(_after_fault(run, fault, lambda: state["sent"] >= threshold))
        stream_seconds = await produce()
        recovery = await watcher
        drain_from = max(run.cleared_at or 0.0, time.monotonic())  # fault over and stream ended
        await wait_for(lambda: counter.unique >= len(sent), drain_timeout, "every reply on RabbitMQ")
        drain = max(0.0, counter.last_new_at - drain_from)
        sqs_counter = SqsCounter(env.sqs, queue_url)
        await poll(_sqs_empty(sqs_counter), 90, "SQS response queue empty")
        dead = await queue_depth(env.test_url, names.reply_dlq)
        run.notes.update(stream_seconds=round(stream_seconds, 1), sqs_left=0)
        if before_stop is not None:
            await before_stop(run)
        run.notes["exit_codes"] = [await connector.stop()]
        figures = Figures(
            scenario=scenario,
            title=title,
            sent=len(sent),
            arrived=counter.unique,
            lost=len(sent - set(counter.seen)),
            duplicated=counter.duplicated,
            dead_lettered=dead,
            recovery_seconds=None if recovery is None else round(recovery, 1),
            drain_seconds=round(drain, 1),
            peak_rss_mb=round(connector.peak_rss_kb / 1024, 1),
            notes=run.notes,
        )
        figures.save()
        assert not counter.foreign, f"unexpected messages on the reply exchange: {counter.foreign[:3]}"
        assert_no_secrets(connector.log_text())
        return figures, run
    finally:
        await counter.close()
        if connector.running:
            await connector.kill()
        await env.delete_sqs_queues(names)
