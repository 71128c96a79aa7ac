"""Unit tests of batching and entry retries, with in-memory fakes (the real thing is in test_outbound)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.exceptions import ChannelInvalidStateError
from botocore.exceptions import ClientError

from lamassu_aws_connector.config import Settings
from lamassu_aws_connector.events import parse_structured
from lamassu_aws_connector.inbound import InboundPipeline
from lamassu_aws_connector.metrics import Metrics
from lamassu_aws_connector.outbound import Batcher, OutboundPipeline, Pending
from lamassu_aws_connector.sqs import QueueInfo

from . import samples


class FakeChannel:
    """Acks as RabbitMQ counts them: an unknown or already-acked tag is a channel error."""

    def __init__(self) -> None:
        self.is_closed = False
        self.unacked: set[int] = set()
        self.acked: set[int] = set()
        self.frames = 0
        self._next_tag = 0

    def deliver(self) -> int:
        self._next_tag += 1
        self.unacked.add(self._next_tag)
        return self._next_tag

    def basic_ack(self, tag: int, multiple: bool) -> None:
        if tag not in self.unacked:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        covered = {t for t in self.unacked if t <= tag} if multiple else {tag}
        self.unacked -= covered
        self.acked |= covered
        self.frames += 1


class FakeDelivery:
    def __init__(self, raw: bytes, channel: FakeChannel | None = None) -> None:
        self.body = raw
        self._channel = channel or FakeChannel()
        self.delivery_tag = self._channel.deliver()
        self.headers: dict[str, Any] = {}
        self.message_id = None

    @property
    def channel(self) -> FakeChannel:
        if self._channel.is_closed:  # as aio-pika does
            raise ChannelInvalidStateError
        return self._channel

    @property
    def acked(self) -> bool:
        return self.delivery_tag in self._channel.acked

    async def ack(self, multiple: bool = False) -> None:
        self.channel.basic_ack(self.delivery_tag, multiple)


class FlakySqs:
    """Fails the given entries (by body) with a transient, receiver-side error a number of times."""

    def __init__(self, failures: dict[str, int], sender_fault: set[str] | None = None) -> None:
        self.failures = failures
        self.sender_fault = sender_fault or set()
        self.calls: list[list[str]] = []
        self.stored: list[str] = []

    async def send_batch(self, queue: QueueInfo, entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append([e["MessageBody"] for e in entries])
        ok, failed = [], []
        for entry in entries:
            body = entry["MessageBody"]
            if body in self.sender_fault:
                failed.append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "no"}
                )
            elif self.failures.get(body, 0) > 0:
                self.failures[body] -= 1
                failed.append(
                    {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
                )
            else:
                self.stored.append(body)
                ok.append({"Id": entry["Id"], "MessageId": f"m-{len(self.stored)}"})
        return {"Successful": ok, "Failed": failed}


class RecordingAmqp:
    def __init__(self) -> None:
        self.dead: list[tuple[bytes, str, str]] = []

    async def dead_letter(self, delivery: FakeDelivery, queue: str, code: str, reason: str) -> None:
        self.dead.append((delivery.body, code, reason))


def _pipeline(sqs: FlakySqs, amqp: RecordingAmqp, **forward: Any) -> OutboundPipeline:
    settings = Settings(forward={"retry_max_backoff_seconds": 0.01, "linger_ms": 1, **forward})
    queue = QueueInfo(name="cmd", url="http://sqs/cmd", max_message_bytes=1_048_576, fifo=False)
    return OutboundPipeline(settings, amqp, sqs, queue, Metrics())  # type: ignore[arg-type]


def _pending(pipeline: OutboundPipeline, raw: bytes) -> Pending:
    delivery = FakeDelivery(raw)
    parsed = parse_structured(raw)
    entry = pipeline._entry(parsed, delivery)  # type: ignore[arg-type]
    return Pending(delivery, parsed, entry, len(raw), 0.0)  # type: ignore[arg-type]


async def test_transient_entry_failures_are_retried_until_they_succeed() -> None:
    raws = [samples.body(samples.v1_cert_update(serial=f"0{i}")) for i in range(5)]
    sqs = FlakySqs({raws[1].decode(): 3, raws[3].decode(): 1})
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp)
    batch = [_pending(pipeline, raw) for raw in raws]
    await pipeline._send_with_retries(batch)
    await pipeline._acker.flush()
    assert sorted(sqs.stored) == sorted(raw.decode() for raw in raws)
    assert all(item.delivery.acked for item in batch)
    assert amqp.dead == []
    # First call carries all five, later calls only what failed.
    assert len(sqs.calls[0]) == 5 and sqs.calls[1] == [raws[1].decode(), raws[3].decode()]
    assert len(sqs.calls) == 4


async def test_sender_fault_and_exhausted_attempts_are_dead_lettered() -> None:
    raws = [samples.body(samples.v1_cert_update(serial=f"1{i}")) for i in range(3)]
    sqs = FlakySqs({raws[2].decode(): 100}, sender_fault={raws[0].decode()})
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp, max_entry_attempts=4)
    batch = [_pending(pipeline, raw) for raw in raws]
    await pipeline._send_with_retries(batch)
    await pipeline._acker.flush()
    assert sqs.stored == [raws[1].decode()]
    assert [(body, code) for body, code, _ in amqp.dead] == [(raws[0], "sqs_rejected"), (raws[2], "sqs_rejected")]
    assert "after 4 attempt(s)" in amqp.dead[1][2]
    assert all(item.delivery.acked for item in batch)  # dead-lettered, then acked


async def test_batcher_fills_batches_while_slots_are_busy() -> None:
    sent: list[int] = []
    release = asyncio.Event()

    async def send(batch: list[Pending]) -> None:
        sent.append(len(batch))
        await release.wait()

    batcher = Batcher(send, max_bytes=1000, linger_seconds=0.001, max_in_flight=1)
    item = Pending(None, None, {}, 10, 0.0)  # type: ignore[arg-type]
    batcher.add(item)
    await asyncio.sleep(0.01)  # linger passes: the lone entry leaves, taking the only slot
    for _ in range(25):
        batcher.add(Pending(None, None, {}, 10, 0.0))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert sent == [1]
    release.set()
    await batcher.drain()
    assert sent == [1, 10, 10, 5]


async def test_batcher_respects_the_byte_limit() -> None:
    sent: list[int] = []

    async def send(batch: list[Pending]) -> None:
        sent.append(sum(item.size for item in batch))

    batcher = Batcher(send, max_bytes=100, linger_seconds=0.001, max_in_flight=4)
    for _ in range(7):
        batcher.add(Pending(None, None, {}, 40, 0.0))  # type: ignore[arg-type]
    await batcher.drain()
    assert sent == [80, 80, 80, 40]


class SlowAmqp:
    """Publishes hang until released, like a broker under flow control."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.published: list[tuple[str, str]] = []
        self.connected = True

    async def publish(self, exchange: str, routing_key: str, message: Any) -> None:
        await self.release.wait()
        self.published.append((exchange, routing_key))


class RecordingSqs:
    def __init__(self) -> None:
        self.visibility_calls: list[tuple[set[str], int]] = []
        self.deleted: list[set[str]] = []

    async def change_visibility_batch(
        self, queue: QueueInfo, receipts: dict[str, str], visibility_seconds: int
    ) -> dict[str, Any]:
        self.visibility_calls.append((set(receipts.values()), visibility_seconds))
        return {"Successful": [{"Id": key} for key in receipts], "Failed": []}

    async def delete_batch(self, queue: QueueInfo, receipts: dict[str, str]) -> dict[str, Any]:
        self.deleted.append(set(receipts.values()))
        return {"Successful": [{"Id": key} for key in receipts], "Failed": []}


async def test_visibility_is_extended_while_replies_wait_and_deleted_after_confirm() -> None:
    settings = Settings(sqs={"visibility_timeout": 5})
    amqp, sqs = SlowAmqp(), RecordingSqs()
    queue = QueueInfo(name="resp", url="http://sqs/resp", max_message_bytes=1_048_576, fifo=False)
    pipeline = InboundPipeline(settings, amqp, sqs, queue, Metrics())  # type: ignore[arg-type]
    messages = [
        {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": samples.body(samples.v1_cert_update(f"0{i}")).decode()}
        for i in range(3)
    ]
    handling = asyncio.create_task(pipeline._handle_batch(messages))
    deadline = asyncio.get_running_loop().time() + 10
    while not sqs.visibility_calls and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    # Still waiting for RabbitMQ after half the visibility timeout: extended, nothing deleted.
    assert sqs.visibility_calls == [({"r0", "r1", "r2"}, 5)]
    assert sqs.deleted == []
    amqp.release.set()
    await asyncio.wait_for(handling, 5)
    assert len(amqp.published) == 3
    assert sqs.deleted == [{"r0", "r1", "r2"}]


class RefusingSqs(FlakySqs):
    """Refuses a whole request (HTTP 4xx) when it carries a poison body, like SQS on bad content."""

    def __init__(self, poison: str, code: str = "InvalidParameterValue", status: int = 400, times: int = 10**6):
        super().__init__({})
        self.poison, self.code, self.status, self.times = poison, code, status, times

    async def send_batch(self, queue: QueueInfo, entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.times > 0 and any(entry["MessageBody"] == self.poison for entry in entries):
            self.times -= 1
            self.calls.append([e["MessageBody"] for e in entries])
            error = {
                "Error": {"Code": self.code, "Message": "refused"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            }
            raise ClientError(error, "SendMessageBatch")  # type: ignore[arg-type]
        return await super().send_batch(queue, entries)


async def test_a_request_refused_for_its_content_isolates_and_dead_letters_the_culprit() -> None:
    raws = [samples.body(samples.v1_cert_update(serial=f"2{i}")) for i in range(4)]
    sqs = RefusingSqs(poison=raws[2].decode())
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp)
    batch = [_pending(pipeline, raw) for raw in raws]
    await pipeline._send_with_retries(batch)
    await pipeline._acker.flush()
    assert sorted(sqs.stored) == sorted(raw.decode() for i, raw in enumerate(raws) if i != 2)
    assert [(body, code) for body, code, _ in amqp.dead] == [(raws[2], "sqs_rejected")]
    assert "InvalidParameterValue" in amqp.dead[0][2]
    assert all(item.delivery.acked for item in batch)


async def test_a_credentials_refusal_is_retried_not_dead_lettered() -> None:
    raws = [samples.body(samples.v1_cert_update(serial=f"3{i}")) for i in range(2)]
    sqs = RefusingSqs(poison=raws[0].decode(), code="AccessDenied", status=403, times=3)
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp)
    batch = [_pending(pipeline, raw) for raw in raws]
    await pipeline._send_with_retries(batch)
    await pipeline._acker.flush()
    assert sorted(sqs.stored) == sorted(raw.decode() for raw in raws)
    assert amqp.dead == []
    assert len(sqs.calls) == 4  # three refusals, then the whole batch went through
