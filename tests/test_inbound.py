"""Reply flow on a real RabbitMQ and a real SQS server: lamassu-response -> RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import orjson
import pytest
from structlog.testing import capture_logs

from lamassu_aws_connector.config import APP_ID
from lamassu_aws_connector.service import Service

from . import samples
from .conftest import AMQP_URL, World, running, wait_for
from .tcpproxy import TcpProxy
from .test_outbound import metric

pytestmark = pytest.mark.integration


def config_response(request_id: str = "6f1c2b4e-2d57-4c1a-8a5e-0f3b9d1e7a10") -> bytes:
    # What the v1 Lambdas write with the cloudevents JS SDK: their own key order, no datacontenttype.
    return orjson.dumps(
        {
            "id": request_id,
            "time": "2022-06-01T10:00:00.000Z",
            "type": "io.lamassu.iotcore.config.response",
            "source": "aws/lambda",
            "specversion": "1.0",
            "data": {"account_id": "123456789012", "iot_core_endpoint": "abc-ats.iot.eu-west-1.amazonaws.com"},
        }
    )


def registration_code_response() -> bytes:
    return orjson.dumps(
        {
            "id": "2a7d9c1e-5b3f-4d6a-8e2c-9f1b0a3c4d5e",
            "time": "2022-06-01T10:00:01.000Z",
            "type": "io.lamassu.iotcore.ca.registration.response-code",
            "source": "aws/lambda",
            "specversion": "1.0",
            "data": {"ca_name": "Lamassu-CA", "registration_code": "b9e1f0c2d3a4"},
        }
    )


def cert_status_notification() -> bytes:
    # The CloudTrail notifier Lambda reports a certificate status change made in AWS IoT.
    return orjson.dumps(
        {
            "id": "4e3d2c1b-0a9f-4e8d-b7c6-5a4f3e2d1c0b",
            "time": "2022-06-01T10:00:02.000Z",
            "type": "io.lamassu.iotcore.cert.status.update",
            "source": "aws/cloudtrail",
            "specversion": "1.0",
            "data": {"certificate_id": "a1b2c3", "serial_number": "4a-1c-77-02-9e", "status": "REVOKED"},
        }
    )


async def bind_observer(world: World, binding_key: str = "io.lamassu.#") -> aio_pika.abc.AbstractQueue:
    """A queue bound to the reply exchange, like a Lamassu service subscribing to replies."""
    channel = await world.channel()
    exchange = await channel.declare_exchange(world.reply_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    name = f"t{world.tag}.observer"
    world.amqp_queues.append(name)
    queue = await channel.declare_queue(name, durable=False)
    await queue.bind(exchange, routing_key=binding_key)
    return queue


async def send_replies(world: World, bodies: list[bytes], **attributes: str) -> list[str]:
    url = await world.sqs_url(world.response_queue)
    ids = []
    for raw in bodies:
        extra: dict[str, Any] = {}
        if attributes:
            extra["MessageAttributes"] = {
                name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
            }
        response = await world.sqs.send_message(QueueUrl=url, MessageBody=raw.decode(), **extra)
        ids.append(response["MessageId"])
    return ids


async def test_replies_are_published_with_lamassu_headers_and_deleted(world: World) -> None:
    await bind_observer(world)
    replies = [config_response(), registration_code_response(), cert_status_notification()]
    async with running(world.settings()) as service:
        await send_replies(world, replies[:2])
        await send_replies(world, replies[2:], traceparent=samples.W3C_TRACEPARENT)
        received = await world.take_amqp(f"t{world.tag}.observer", 3)
        await wait_for(lambda: _sqs_empty(world), what="SQS response queue empty")
        assert metric(service, "replies_relayed") == 3
    by_id = {message.message_id: message for message in received}
    for raw in replies:
        event = orjson.loads(raw)
        message = by_id[event["id"]]
        assert message.body == raw
        assert message.routing_key == event["type"]
        assert message.exchange == world.reply_exchange
        assert message.content_type == "application/cloudevents+json"
        assert message.app_id == APP_ID
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        headers = message.headers or {}
        assert all(isinstance(value, str) for value in headers.values()), headers
        assert headers["_watermill_message_uuid"] == event["id"]
    notification = by_id[orjson.loads(replies[2])["id"]]
    assert notification.headers["traceparent"] == samples.W3C_TRACEPARENT


async def _sqs_empty(world: World) -> bool:
    return await world.sqs_count(world.response_queue) == 0


async def test_bad_replies_are_dead_lettered_once_and_deleted(world: World) -> None:
    bad = {
        "not json": (b"Thu Apr 28 2022 11:33:01 GMT+0000", "invalid_json"),
        "not a cloudevent": (b'{"status":"REVOKED"}', "not_cloudevent"),
        "bad time": (samples.BAD_BODIES["time_js"][0], "invalid_attribute"),
        "specversion 0.3": (samples.BAD_BODIES["specversion_03"][0], "invalid_attribute"),
    }
    await bind_observer(world, "#")
    with capture_logs() as logs:
        async with running(world.settings()) as service:
            sqs_ids = await send_replies(world, [raw for raw, _ in bad.values()])
            dead = await world.take_amqp(world.reply_dlq, len(bad))
            await wait_for(lambda: _sqs_empty(world), what="SQS response queue empty")
            assert metric(service, "replies_relayed") == 0
            assert await world.queue_depth(f"t{world.tag}.observer") == 0
    by_body = {message.body: message for message in dead}
    lines = {line["sqs_message_id"]: line for line in logs if line["event"] == "inbound.dead_lettered"}
    for (raw, code), sqs_id in zip(bad.values(), sqs_ids, strict=True):
        headers = by_body[raw].headers or {}
        assert headers["x-error-code"] == code
        assert len(str(headers["x-error-message"])) > 10
        assert headers["x-sqs-message-id"] == sqs_id
        assert headers["x-sqs-receive-count"] == "1"
        assert headers["x-sqs-queue"] == world.response_queue
        assert lines[sqs_id]["error_code"] == code
    # The log line names the reply as far as it can be read.
    time_js = orjson.loads(samples.BAD_BODIES["time_js"][0])
    assert (lines[sqs_ids[2]]["event_id"], lines[sqs_ids[2]]["event_type"]) == (time_js["id"], time_js["type"])
    assert "event_id" not in lines[sqs_ids[0]]


async def test_unroutable_reply_stays_in_sqs_then_is_dead_lettered(world: World) -> None:
    # A reply exchange of its own: the events queue binds "#" on the default one, routing everything.
    world.reply_exchange = f"t{world.tag}.replies"
    world.exchanges.append(world.reply_exchange)
    await bind_observer(world, "io.lamassu.#")
    orphan = orjson.dumps({**orjson.loads(config_response("orphan-1")), "type": "com.example.nobody.listens"})
    settings = world.settings(
        amqp={"reply_exchange": world.reply_exchange}, sqs={"unroutable_max_receives": 2, "visibility_timeout": 5}
    )
    async with running(settings) as service:
        await send_replies(world, [orphan, config_response("routable-1")])
        [relayed] = await world.take_amqp(f"t{world.tag}.observer", 1)
        await wait_for(lambda: metric(service, "replies_unroutable") == 1, what="first unroutable")
        # Kept: still in SQS, not dead-lettered yet.
        assert await world.sqs_count(world.response_queue) == 1
        assert await world.queue_depth(world.reply_dlq) == 0
        [dead] = await world.take_amqp(world.reply_dlq, 1, timeout=30)
        await wait_for(lambda: _sqs_empty(world), what="orphan deleted after dead-lettering")
        assert metric(service, "replies_unroutable") == 2
    assert relayed.message_id == "routable-1"
    assert dead.body == orphan
    assert dead.headers["x-error-code"] == "unroutable"
    assert dead.headers["x-sqs-receive-count"] == "2"


async def test_rabbitmq_outage_deletes_nothing_and_loses_nothing(world: World) -> None:
    await bind_observer(world)
    amqp_host_port = AMQP_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = amqp_host_port.split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxied_url = AMQP_URL.replace(amqp_host_port, f"127.0.0.1:{proxy.port}")
    replies = [config_response(f"outage-{i}") for i in range(10)]
    try:
        async with running(world.settings(amqp={"url": proxied_url})) as service:
            await proxy.stop()
            gauge = service.metrics.registry.get_sample_value
            await wait_for(lambda: gauge("lamassu_connector_amqp_connected") == 0, what="connection loss noticed")
            await send_replies(world, replies)
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:  # an invariant over a window, not a sleep
                assert await world.sqs_count(world.response_queue) == 10
                assert metric(service, "replies_relayed") == 0
                await asyncio.sleep(0.2)
            await proxy.start()
            received = await world.take_amqp(f"t{world.tag}.observer", 10, timeout=40)
            await wait_for(lambda: _sqs_empty(world), what="SQS empty after recovery")
            assert metric(service, "replies_relayed") == 10
        assert sorted(m.body for m in received) == sorted(replies)
    finally:
        await proxy.stop()


async def test_relayed_reply_is_not_forwarded_back_but_lamassu_events_are(world: World) -> None:
    """Both flows on one exchange: the loop guard stops replies from going back to SQS."""
    await bind_observer(world)
    event = samples.body(samples.v3_device_create())
    with capture_logs() as logs:
        async with running(world.settings()) as service:
            await send_replies(world, [config_response("loop-1")])
            await world.take_amqp(f"t{world.tag}.observer", 1)
            await world.publish(event, routing_key="device.create")
            [forwarded] = await world.take_sqs(world.command_queue, 1)
            await wait_for(lambda: metric(service, "events_skipped", reason="loop_guard") == 1, what="loop guard")
            assert await world.queue_depth(world.queue) == 0
    assert forwarded["Body"].encode() == event
    # The relayed reply carries the relay's own x-sqs-message-id: no forgery to warn about (without the
    # loop-guard exception this list holds one warning: break-tested).
    assert [line for line in logs if line["event"] == "outbound.own_headers_removed"] == []
    assert await world.sqs_count(world.command_queue) == 0


async def test_idle_pollers_long_poll_instead_of_spinning(world: World) -> None:
    settings = world.settings(sqs={"pollers": 2, "wait_time_seconds": 2})
    async with running(settings) as service:
        calls = service.metrics.registry.get_sample_value
        start = calls("lamassu_connector_sqs_calls_total", {"operation": "ReceiveMessage"}) or 0
        window_end = time.monotonic() + 4
        while time.monotonic() < window_end:
            await asyncio.sleep(0.2)
        made = (calls("lamassu_connector_sqs_calls_total", {"operation": "ReceiveMessage"}) or 0) - start
    # Two pollers, 2 s long polls, 4 s window: about 4-6 calls; a busy loop would make hundreds.
    assert 2 <= made <= 8


async def test_a_stop_relays_what_the_long_poll_in_flight_brings(world: World) -> None:
    """SQS hands a message to a long poll even if its client gave up on it, and that message then stays
    invisible for the visibility timeout: a graceful stop waits for the poll and relays what it brings."""
    observer = await bind_observer(world)
    settings = world.settings(sqs={"wait_time_seconds": 5, "pollers": 1})
    service = Service(settings)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.started.wait(), 30)
    polls = service.metrics.registry.get_sample_value
    await wait_for(lambda: (polls("lamassu_connector_sqs_calls_total", {"operation": "ReceiveMessage"}) or 0) >= 1)
    await asyncio.sleep(0.5)  # the poll's request reaches SQS (shorter only makes this test weaker, never red)
    service.request_stop()
    await send_replies(world, [config_response("during-stop")])
    assert await asyncio.wait_for(task, 20) == 0
    [relayed] = await world.take_amqp(observer.name, 1, timeout=5)
    assert orjson.loads(relayed.body)["id"] == "during-stop"
    assert await world.sqs_count(world.response_queue) == 0  # deleted, not left invisible


async def test_an_oversized_tracestate_is_dropped_not_the_reply(world: World) -> None:
    """W3C asks no platform to carry more than 512 characters of tracestate: the reply goes on without it."""
    observer = await bind_observer(world)
    async with running(world.settings()) as service:
        await send_replies(
            world, [config_response("big-state")], traceparent=samples.W3C_TRACEPARENT, tracestate="v=" + "x" * 100_000
        )
        [relayed] = await world.take_amqp(observer.name, 1)
        await wait_for(lambda: _sqs_empty(world), what="SQS empty")
        assert metric(service, "replies_dead_lettered", code="amqp_rejected") == 0
    headers = relayed.headers or {}
    assert headers["traceparent"] == samples.W3C_TRACEPARENT and "tracestate" not in headers
