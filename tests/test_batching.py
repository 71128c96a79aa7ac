"""Unit tests of batching and entry retries, with in-memory fakes (the real thing is in test_outbound)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiormq.exceptions import ChannelInvalidStateError, ConnectionClosed
from botocore.exceptions import ClientError

from lamassu_aws_connector import inbound
from lamassu_aws_connector.config import Settings
from lamassu_aws_connector.events import parse_structured
from lamassu_aws_connector.inbound import InboundPipeline
from lamassu_aws_connector.metrics import Metrics
from lamassu_aws_connector.outbound import Batcher, OutboundPipeline, Pending
from lamassu_aws_connector.outcomes import RetryPolicy
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
        self.routing_key = "io.lamassu.test"
        self.exchange = "lamassu-events"
        self.redelivered = False

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
    # The sender fault is the content's; the entry that kept failing alone while SQS took the others
    # spent its budget. Neither is retried forever, neither takes the batch with it.
    assert [(body, code) for body, code, _ in amqp.dead] == [
        (raws[0], "sqs_rejected"),
        (raws[2], "attempts_exhausted"),
    ]
    assert "4 times" in amqp.dead[1][2]
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


async def test_batcher_sends_at_once_when_idle_and_batches_while_busy() -> None:
    """send_when_idle: no batch in flight -> a partial batch leaves this loop turn, not after the linger;
    batches in flight -> entries wait (for ten, the linger, or the pipe to go idle)."""
    sent: list[int] = []
    release = asyncio.Event()

    async def send(batch: list[Pending]) -> None:
        sent.append(len(batch))
        await release.wait()

    batcher = Batcher(send, max_bytes=10_000, linger_seconds=60, max_in_flight=2, send_when_idle=True)
    for _ in range(3):  # read together: they leave together
        batcher.add(Pending(None, None, {}, 10, time.monotonic()))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert sent == [3]
    for _ in range(4):  # a batch is in flight: these wait, the linger is a minute
        batcher.add(Pending(None, None, {}, 10, time.monotonic()))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert sent == [3]
    release.set()  # the pipe goes idle: what waits leaves at once
    await asyncio.sleep(0.01)
    assert sent == [3, 4]
    await batcher.drain()


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


def _fifo_pipeline(sqs: FlakySqs, amqp: RecordingAmqp) -> OutboundPipeline:
    settings = Settings(forward={"retry_max_backoff_seconds": 0.01, "linger_ms": 1}, sqs={"fifo_group_by": "type"})
    queue = QueueInfo(name="cmd.fifo", url="http://sqs/cmd.fifo", max_message_bytes=1_048_576, fifo=True)
    return OutboundPipeline(settings, amqp, sqs, queue, Metrics())  # type: ignore[arg-type]


async def test_a_missing_queue_holds_the_batch_and_reports_the_queue_down() -> None:
    raws = [samples.body(samples.v1_cert_update(serial=f"4{i}")) for i in range(3)]
    sqs = RefusingSqs(poison=raws[1].decode(), code="AWS.SimpleQueueService.NonExistentQueue", times=5)
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp)
    batch = [_pending(pipeline, raw) for raw in raws]
    sending = asyncio.create_task(pipeline._send_with_retries(batch))
    while len(sqs.calls) < 2:
        await asyncio.sleep(0.005)
    assert not pipeline._health.is_up("sqs_command_queue")
    await asyncio.wait_for(sending, 10)
    await pipeline._acker.flush()
    assert sorted(sqs.stored) == sorted(raw.decode() for raw in raws)
    assert amqp.dead == []  # the stream is held, never flushed into the dead-letter queue
    assert pipeline._health.is_up("sqs_command_queue")
    assert all(len(call) == 3 for call in sqs.calls)  # never split: not the content's fault


class AwaySqs(FlakySqs):
    """The command queue missing (a dependency outage) until ``away`` is cleared."""

    def __init__(self) -> None:
        super().__init__({})
        self.away = True

    async def send_batch(self, queue: QueueInfo, entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.away:
            self.calls.append([e["MessageBody"] for e in entries])
            error = {
                "Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "gone"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            }
            raise ClientError(error, "SendMessageBatch")  # type: ignore[arg-type]
        return await super().send_batch(queue, entries)


async def test_batches_held_through_an_outage_go_as_soon_as_sqs_takes_one_again() -> None:
    raws = [samples.body(samples.v1_cert_update(serial=f"7{i}")) for i in range(4)]
    sqs = AwaySqs()
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp)
    pipeline._hold_policy = RetryPolicy("sqs_hold", first=600, cap=3600)  # each held batch waits minutes
    held = [asyncio.create_task(pipeline._send_with_retries([_pending(pipeline, raw)])) for raw in raws[:3]]
    while len(sqs.calls) < 3:  # each tried once, now backing off
        await asyncio.sleep(0.005)
    sqs.away = False
    await asyncio.wait_for(pipeline._send_with_retries([_pending(pipeline, raws[3])]), 10)
    # The first batch through after the outage wakes the held ones: not their own backoff.
    await asyncio.wait_for(asyncio.gather(*held), 10)
    await pipeline._acker.flush()
    assert sorted(sqs.stored) == sorted(raw.decode() for raw in raws)
    assert amqp.dead == []


async def test_entries_failing_while_sqs_accepts_nothing_are_held_beyond_their_budget() -> None:
    raw = samples.body(samples.v1_cert_update(serial="50"))
    sqs = FlakySqs({raw.decode(): 12})  # InternalError for every entry, far beyond max_entry_attempts
    amqp = RecordingAmqp()
    pipeline = _pipeline(sqs, amqp, max_entry_attempts=3)
    item = _pending(pipeline, raw)
    await asyncio.wait_for(pipeline._send_with_retries([item]), 10)
    await pipeline._acker.flush()
    assert sqs.stored == [raw.decode()] and amqp.dead == [] and item.delivery.acked


async def test_fifo_split_sends_one_at_a_time_in_order_and_holds_the_rest_of_a_group() -> None:
    a = [samples.body(samples.v1_cert_update(serial=f"6{i}")) for i in range(4)]
    sqs = RefusingSqs(poison=a[1].decode())  # the batch is refused for a[1]'s content: split
    sqs.failures = {a[2].decode(): 2}  # ... and a[2] then fails twice on its own
    amqp = RecordingAmqp()
    pipeline = _fifo_pipeline(sqs, amqp)
    batch = [_pending(pipeline, raw) for raw in a]
    await asyncio.wait_for(pipeline._send_with_retries(batch), 10)
    await pipeline._acker.flush()
    # All four share one message group (same type): a[3] must never overtake a[2].
    assert sqs.stored == [a[0].decode(), a[2].decode(), a[3].decode()]
    assert [(body, code) for body, code, _ in amqp.dead] == [(a[1], "sqs_rejected")]
    singles = [call for call in sqs.calls[1:] if len(call) == 1]
    assert [call[0] for call in singles][:3] == [a[0].decode(), a[1].decode(), a[2].decode()]


class ReplyAmqp:
    """Publishes as RabbitMQ would, with a scripted failure per routing key."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None, fail_after: float = 0.0) -> None:
        self.failures = failures or {}
        self.fail_after = fail_after  # seconds a failing publish takes (a confirm timeout takes long)
        self.published: list[tuple[str, str, Any]] = []
        self.connected = True

    async def wait_connected(self) -> None:
        return None

    async def publish(self, exchange: str, routing_key: str, message: Any) -> None:
        pending = self.failures.get(routing_key)
        if pending:
            await asyncio.sleep(self.fail_after)
            raise pending.pop(0)
        self.published.append((exchange, routing_key, message))


def _reply(number: int, **overrides: Any) -> dict[str, Any]:
    event = {**samples.v1_cert_update(f"7{number}"), **overrides}
    return {"MessageId": f"m{number}", "ReceiptHandle": f"r{number}", "Body": samples.body(event).decode()}


def _inbound(amqp: ReplyAmqp, sqs: RecordingSqs, **sqs_settings: Any) -> InboundPipeline:
    settings = Settings(sqs={"visibility_timeout": 30, **sqs_settings})
    queue = QueueInfo(name="resp", url="http://sqs/resp", max_message_bytes=1_048_576, fifo=False)
    return InboundPipeline(settings, amqp, sqs, queue, Metrics())  # type: ignore[arg-type]


async def test_replies_amqp_cannot_carry_are_dead_lettered_at_once_and_the_rest_relayed() -> None:
    amqp, sqs = ReplyAmqp(), RecordingSqs()
    pipeline = _inbound(amqp, sqs)
    messages = [_reply(0), _reply(1, id="i" * 300), _reply(2, type="t" * 300), _reply(3)]
    await asyncio.wait_for(pipeline._handle_batch(messages), 10)
    dead = [(key, message.headers["x-error-code"]) for exchange, key, message in amqp.published if not exchange]
    relayed = [routing_key for exchange, routing_key, _ in amqp.published if exchange]
    assert len(relayed) == 2
    assert dead == [("lamassu-response.dlq", "amqp_rejected")] * 2
    assert set().union(*sqs.deleted) == {"r0", "r1", "r2", "r3"}


async def test_a_reply_that_keeps_failing_spends_its_budget_and_the_others_are_deleted_first() -> None:
    stuck_type = "io.lamassu.stuck"
    amqp = ReplyAmqp({stuck_type: [TimeoutError() for _ in range(10)]}, fail_after=0.6)
    sqs = RecordingSqs()
    pipeline = _inbound(amqp, sqs, reply_max_attempts=3)
    messages = [_reply(0), _reply(1, type=stuck_type)]
    await asyncio.wait_for(pipeline._handle_batch(messages), 30)
    # The good reply was deleted while the other one was still being tried.
    assert sqs.deleted[0] == {"r0"} and sqs.deleted[-1] == {"r1"}
    [(_, _dlq, letter)] = [p for p in amqp.published if not p[0]]
    assert letter.headers["x-error-code"] == "attempts_exhausted" and "3 times" in letter.headers["x-error-message"]
    assert len(amqp.failures[stuck_type]) == 7  # three attempts spent, no more


async def test_when_every_reply_fails_alike_the_exchange_is_down_and_nothing_is_dead_lettered() -> None:
    """A subscriber queue full with reject-publish nacks every reply: that is an outage of the reply
    exchange, not five poison replies (QA: 50 of 50 good replies dead-lettered in 8 s before)."""
    full = "io.lamassu.full"
    amqp = ReplyAmqp({full: [TimeoutError() for _ in range(12)]})
    sqs = RecordingSqs()
    pipeline = _inbound(amqp, sqs, reply_max_attempts=2)  # alone, each reply would be dead-lettered twice over
    down_seen: list[bool] = []
    original = pipeline._health.down

    def spy(name: str, error: str, detail: str = "") -> None:
        if pipeline._health.is_up(name):  # a change of state, as /readyz and the log see it
            down_seen.append(name == "amqp_reply_exchange")
        original(name, error, detail)

    pipeline._health.down = spy  # type: ignore[method-assign]
    await asyncio.wait_for(pipeline._handle_batch([_reply(n, type=full) for n in range(5)]), 60)
    assert not amqp.failures[full]  # every scripted failure was met
    assert [exchange for exchange, _, _ in amqp.published] == ["lamassu-events"] * 5  # relayed, none dead-lettered
    assert set().union(*sqs.deleted) == {f"r{n}" for n in range(5)}
    assert down_seen == [True] and pipeline._health.is_up("amqp_reply_exchange")  # down once, up again


async def test_replies_failing_alike_are_held_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three replies too big for a subscriber's max-length-bytes look like an outage: they are held,
    but not for ever; then they spend their attempts and are dead-lettered, and readiness is back."""
    monkeypatch.setattr(inbound, "OUTAGE_HOLD_SECONDS", 0.5)
    big = "io.lamassu.big"
    amqp = ReplyAmqp({big: [TimeoutError() for _ in range(1000)]})
    sqs = RecordingSqs()
    pipeline = _inbound(amqp, sqs, reply_max_attempts=2)
    await asyncio.wait_for(pipeline._handle_batch([_reply(n, type=big) for n in range(3)]), 60)
    codes = [message.headers["x-error-code"] for exchange, _, message in amqp.published if not exchange]
    assert codes == ["attempts_exhausted"] * 3
    assert pipeline._health.is_up("amqp_reply_exchange")


async def test_a_lost_connection_spends_no_attempts() -> None:
    amqp = ReplyAmqp({"io.lamassu.flaky": [ConnectionClosed(320, "gone") for _ in range(5)]})
    sqs = RecordingSqs()
    pipeline = _inbound(amqp, sqs, reply_max_attempts=2)
    await asyncio.wait_for(pipeline._handle_batch([_reply(0, type="io.lamassu.flaky")]), 60)
    assert [routing_key for exchange, routing_key, _ in amqp.published] == ["io.lamassu.flaky"]
    assert sqs.deleted == [{"r0"}]
