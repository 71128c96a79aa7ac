"""Outbound flow on a real RabbitMQ and a real SQS server: RabbitMQ -> lamassu-command."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from cloudevents.core.bindings import rabbitmq as sdk_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkCloudEvent
from structlog.testing import capture_logs

from lamassu_aws_connector.amqp import _DeliveryQueue
from lamassu_aws_connector.config import APP_ID
from lamassu_aws_connector.events import derive_id
from lamassu_aws_connector.service import Service, StartupError

from . import samples
from .conftest import SQS_ENDPOINT, World, running, wait_for
from .tcpproxy import TcpProxy

pytestmark = pytest.mark.integration


def metric(service: Service, name: str, **labels: str) -> float:
    """A counter's value, summed over the label sets that carry ``labels`` (all of them when none)."""
    full = f"lamassu_connector_{name}_total"
    return sum(
        sample.value
        for family in service.metrics.registry.collect()
        for sample in family.samples
        if sample.name == full and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in message.get("MessageAttributes", {}).items()}


async def test_every_generation_arrives_with_body_and_attributes(world: World) -> None:
    v1 = samples.body(samples.v1_ca_update())
    v1_cert = samples.body(samples.v1_cert_update())
    v2_event = samples.v2_certificate_update(event_id="4bf92f3577b34da6:00f067aa0ba902b7")
    v2 = samples.body(v2_event)
    v3_event = samples.v3_status_update()
    v3 = samples.body(v3_event)
    sdk_event = SdkCloudEvent(
        {"id": "sdk-1", "type": "device.create", "source": "lamassu/test", "datacontenttype": "application/json"},
        {"id": "dev-sdk"},
    )
    sdk_binary = sdk_rabbitmq.to_binary(sdk_event, JSONFormat())

    async with running(world.settings()) as service:
        await world.publish(v1, exchange="", content_type="text/json")
        await world.publish(v1_cert, exchange="", content_type="text/json")
        await world.publish(
            v2,
            exchange=world.exchange_v2,
            routing_key=v2_event["type"],
            content_type="text/json",
            headers={"traceparent": v2_event["id"]},
        )
        await world.publish(v3, routing_key=v3_event["type"], headers=samples.v3_headers(v3_event))
        for index, prefix in enumerate(["ce-", "cloudEvents_", "cloudEvents:"]):
            headers = {**samples.binary_headers(prefix), f"{prefix}id": f"binary-{index}"}
            await world.publish(
                b'{"name":"CA2","status":"REVOKED"}',
                routing_key="io.lamassu.ca.update",
                content_type="application/json",
                headers=headers,
            )
        await world.publish(
            sdk_binary.body,
            routing_key="device.create",
            content_type=sdk_binary.content_type,
            headers=dict(sdk_binary.headers),
        )
        received = await world.take_sqs(world.command_queue, 8)
        await wait_for(lambda: metric(service, "events_forwarded") == 8, what="8 forwarded")
        assert await world.queue_depth(world.queue) == 0
        assert await world.queue_depth(world.dlq) == 0

    by_id = {attributes(m)["ce-id"]: m for m in received}
    assert len(by_id) == 8
    # Structured events travel byte for byte.
    for raw in (v1, v1_cert, v2, v3):
        event = orjson.loads(raw)
        assert by_id[event["id"]]["Body"] == raw.decode()
    v1_attrs = attributes(by_id[orjson.loads(v1)["id"]])
    assert v1_attrs == {
        "ce-specversion": "1.0",
        "ce-type": "io.lamassu.ca.update",
        "ce-source": "lamassu/ca",
        "ce-id": orjson.loads(v1)["id"],
        "ce-time": "2022-03-31T07:10:55.371676082Z",
        "ce-correlationid": orjson.loads(v1)["id"],
    }
    v3_attrs = attributes(by_id["unknown"])
    assert v3_attrs["ce-subject"] == "device/dev-0001"
    assert v3_attrs["traceparent"] == samples.W3C_TRACEPARENT
    # Lamassu v2.0 put the event id in its traceparent header; that is no trace context.
    assert "traceparent" not in attributes(by_id[v2_event["id"]])
    # Binary mode becomes one structured event.
    for index in range(3):
        event = orjson.loads(by_id[f"binary-{index}"]["Body"])
        assert event["data"] == {"name": "CA2", "status": "REVOKED"}
        assert event["type"] == "io.lamassu.ca.update" and event["specversion"] == "1.0"
    assert orjson.loads(by_id["sdk-1"]["Body"])["data"] == {"id": "dev-sdk"}


async def test_malformed_input_is_dead_lettered_with_its_code(world: World) -> None:
    cases: dict[str, tuple[bytes, str, str | None, dict[str, Any]]] = {
        name: (raw, code, "text/json", {}) for name, (raw, code) in samples.BAD_BODIES.items()
    }
    missing_type = samples.binary_headers("cloudEvents_")
    del missing_type["cloudEvents_type"]
    cases["binary_missing_type"] = (b"{}", "invalid_attribute", "application/json", missing_type)
    oversized = samples.v1_ca_update(name="x" * 1_100_000)
    cases["too_large"] = (samples.body(oversized), "too_large", "text/json", {})
    # Ambiguous or hostile JSON: a clean code, never internal_error (and never a crash of the consumer).
    duplicate = b'{"specversion":"1.0","id":"dup","source":"lamassu/ca","type":"ca.create","type":"device.create"}'
    cases["duplicate_member"] = (duplicate, "invalid_json", None, {})
    deep = b'{"specversion":"1.0","id":"deep","source":"s","type":"t","data":' + b"[" * 300 + b"]" * 300 + b"}"
    cases["nested_300_deep"] = (deep, "invalid_json", None, {})
    very_deep = b'{"specversion":"1.0","id":"deeper","source":"s","type":"t","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    cases["nested_5000_deep"] = (very_deep, "invalid_json", None, {})
    binary_deep = {**samples.binary_headers("ce-"), "ce-id": "binary-deep"}
    cases["binary_nested_300_deep"] = (b"[" * 300 + b"]" * 300, "invalid_json", "application/json", binary_deep)
    good = samples.body(samples.v1_cert_update())

    with capture_logs() as logs:
        async with running(world.settings()) as service:
            for name, (raw, _code, content_type, headers) in cases.items():
                published = {**headers, "x-test-case": name}
                await world.publish(raw, exchange="", content_type=content_type, headers=published, message_id=name)
            await world.publish(good, exchange="", content_type="text/json")
            dead = await world.take_amqp(world.dlq, len(cases))
            forwarded = await world.take_sqs(world.command_queue, 1)
            await wait_for(lambda: metric(service, "events_consumed") == len(cases) + 1, what="all consumed")
            assert await world.queue_depth(world.queue) == 0
            for code in {code for _raw, code, _ct, _h in cases.values()}:
                expected = sum(1 for _raw, c, _ct, _h in cases.values() if c == code)
                assert metric(service, "events_dead_lettered", code=code) == expected, code
    # Each dead letter's log line names the event as far as it can be read (README: id, type, routing key, code).
    lines = {line["message_id"]: line for line in logs if line["event"] == "outbound.dead_lettered"}
    assert set(lines) == set(cases)
    named = {name: (line.get("event_id"), line.get("event_type")) for name, line in lines.items()}
    v1_update = samples.v1_ca_update()
    assert named["bom"] == (v1_update["id"], v1_update["type"])  # not JSON (a BOM): read from its first bytes
    assert named["truncated"] == (None, None)  # cut inside its id
    assert named["time_js"] == (v1_update["id"], v1_update["type"])  # JSON, not a valid CloudEvent
    assert named["too_large"] == (oversized["id"], oversized["type"])
    assert named["duplicate_member"] == ("dup", "ca.create (and device.create)")  # both readings of the type
    assert named["nested_5000_deep"] == ("deeper", "t")
    assert named["binary_nested_300_deep"] == ("binary-deep", binary_deep["ce-type"])  # from its ce- headers
    assert named["array"] == (None, None)
    assert all(
        line["routing_key"] == world.queue and line["error_code"] == cases[name][1] for name, line in lines.items()
    )

    assert forwarded[0]["Body"] == good.decode()
    assert await world.sqs_count(world.command_queue) == 0
    seen = {}
    for message in dead:
        headers = message.headers or {}
        name = str(headers["x-test-case"])
        seen[name] = message
        raw, code, content_type, _ = cases[name]
        assert headers["x-error-code"] == code, name
        assert isinstance(headers["x-error-message"], str) and len(headers["x-error-message"]) > 10
        assert headers["x-original-exchange"] == ""
        assert headers["x-original-routing-key"] == world.queue
        assert message.body == raw
        assert message.content_type == content_type
    assert set(seen) == set(cases)
    assert "RFC 3339" in str(seen["time_no_offset"].headers["x-error-message"])


async def test_missing_ids_are_repaired_with_a_stable_id(world: World) -> None:
    empty_id = samples.body(samples.v2_certificate_update(event_id=""))
    no_id_event = samples.v2_certificate_update(serial="01-02")
    del no_id_event["id"]
    no_id = samples.body(no_id_event)
    async with running(world.settings()) as service:
        for raw in (empty_id, empty_id, no_id):
            await world.publish(raw, exchange=world.exchange_v2, routing_key="io.lamassuiot.certificate.update")
        received = await world.take_sqs(world.command_queue, 3)
        await wait_for(lambda: metric(service, "events_repaired") == 3, what="3 repaired")
    ids = sorted(attributes(m)["ce-id"] for m in received)
    assert ids == sorted([derive_id(empty_id), derive_id(empty_id), derive_id(no_id)])
    for message in received:
        assert orjson.loads(message["Body"])["id"] == attributes(message)["ce-id"]


async def test_repair_disabled_dead_letters_missing_ids(world: World) -> None:
    async with running(world.settings(validation={"repair_missing_id": False})):
        await world.publish(samples.body(samples.v2_certificate_update(event_id="")), exchange="")
        [dead] = await world.take_amqp(world.dlq, 1)
    assert dead.headers["x-error-code"] == "invalid_attribute"
    assert await world.sqs_count(world.command_queue) == 0


async def test_fifo_queue_gets_group_and_content_based_dedup_ids(world: World) -> None:
    world.command_queue = f"t{world.tag}-command.fifo"
    first = samples.body(samples.v3_status_update("dev-a"))
    second = samples.body(samples.v3_status_update("dev-b"))
    v1 = samples.body(samples.v1_ca_update())
    async with running(world.settings()) as service:
        # Same body twice (ids are "unknown" in both): SQS must drop the copy, not a different event.
        for raw in (first, first, second, v1):
            await world.publish(raw, exchange="")
        received = await world.take_sqs(world.command_queue, 3)
        await wait_for(lambda: metric(service, "events_forwarded") == 4, what="4 forwarded")
    assert await world.sqs_count(world.command_queue) == 0
    by_body = {m["Body"].encode(): m["Attributes"] for m in received}
    assert set(by_body) == {first, second, v1}
    assert by_body[first]["MessageGroupId"] == "device/dev-a"
    assert by_body[second]["MessageGroupId"] == "device/dev-b"
    assert by_body[v1]["MessageGroupId"] == "lamassu/ca"  # no subject: grouped by source
    for raw, attrs in by_body.items():
        assert attrs["MessageDeduplicationId"] == hashlib.sha256(raw).hexdigest()


async def test_partial_batch_failure_dead_letters_only_the_rejected_entry(world: World) -> None:
    # All ten in one SendMessageBatch: wait the linger even while no batch is in flight.
    settings = world.settings(forward={"linger_ms": 2000, "linger_when_idle": True})
    small = [samples.body(samples.v1_cert_update(serial=f"00-{i:02d}")) for i in range(9)]
    big = samples.body(samples.v1_ca_update(name="y" * 3000))
    async with running(settings) as service:
        # The queue's limit shrinks after the connector read it: SQS itself must reject the entry.
        url = await world.sqs_url(world.command_queue)
        await world.sqs.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
        for raw in [*small[:5], big, *small[5:]]:
            await world.publish(raw, exchange="")
        received = await world.take_sqs(world.command_queue, 9)
        [dead] = await world.take_amqp(world.dlq, 1)
        await wait_for(lambda: metric(service, "events_forwarded") == 9, what="9 forwarded")
        assert service.metrics.registry.get_sample_value("lamassu_connector_sqs_batch_entries_count") == 1
        assert (
            metric(service, "sqs_errors", operation="SendMessageBatchEntry", code="InvalidParameterValueException") == 1
        )
    assert sorted(m["Body"].encode() for m in received) == sorted(small)
    assert dead.body == big
    assert dead.headers["x-error-code"] == "sqs_rejected"
    assert "InvalidParameterValue" in str(dead.headers["x-error-message"])


async def test_sqs_outage_acks_nothing_and_loses_nothing(world: World) -> None:
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    settings = world.settings(sqs={"endpoint_url": proxy.url}, shutdown={"grace_seconds": 1})
    events = [samples.body(samples.v3_device_create()) for _ in range(30)]
    try:
        # 1. SQS goes away under a running connector, which is then stopped: every event is back in RabbitMQ.
        async with running(settings) as service:
            await proxy.stop()
            for raw in events[:20]:
                await world.publish(raw, routing_key="device.create")
            await wait_for(
                lambda: (
                    (
                        service.metrics.registry.get_sample_value(
                            "lamassu_connector_sqs_errors_total",
                            {"operation": "SendMessageBatch", "code": "EndpointConnectionError"},
                        )
                        or 0
                    )
                    >= 2
                ),
                what="failed sends",
            )
            assert metric(service, "events_forwarded") == 0
        await wait_for(lambda: _depth_is(world, 20), what="20 events back in the queue")
        assert await world.sqs_count(world.command_queue) == 0

        # 2. SQS comes back while a connector retries: everything arrives, nothing is dead-lettered.
        await proxy.start()
        async with running(world.settings(sqs={"endpoint_url": proxy.url})) as service:
            pass_through = [*events[20:]]
            await wait_for(lambda: metric(service, "events_forwarded") == 20, what="backlog forwarded")
            await proxy.stop()
            for raw in pass_through:
                await world.publish(raw, routing_key="device.create")
            await wait_for(
                lambda: (
                    metric(service, "sqs_errors", operation="SendMessageBatch", code="EndpointConnectionError") >= 1
                ),
                what="failed sends",
            )
            await proxy.start()
            received = await world.take_sqs(world.command_queue, 30)
            await wait_for(lambda: metric(service, "events_forwarded") == 30, what="all forwarded")
            assert await world.queue_depth(world.queue) == 0
            assert await world.queue_depth(world.dlq) == 0
        assert sorted(m["Body"].encode() for m in received) == sorted(events)
    finally:
        await proxy.stop()


async def _depth_is(world: World, expected: int) -> bool:
    return await world.queue_depth(world.queue) == expected


async def test_loop_guard_acks_our_own_messages_without_forwarding(world: World) -> None:
    ours = samples.body(samples.v3_device_create())
    theirs = samples.body(samples.v3_device_create())
    async with running(world.settings()) as service:
        await world.publish(ours, routing_key="device.create", app_id=APP_ID)
        await world.publish(theirs, routing_key="device.create")
        [received] = await world.take_sqs(world.command_queue, 1)
        await wait_for(lambda: metric(service, "events_skipped", reason="loop_guard") == 1, what="loop guard")
        assert await world.queue_depth(world.queue) == 0
    assert received["Body"].encode() == theirs
    assert await world.sqs_count(world.command_queue) == 0


async def test_type_filter_skips_other_types(world: World) -> None:
    wanted = samples.body(samples.v3_device_create())
    other = samples.body(samples.v1_ca_update())
    async with running(world.settings(forward={"types": ["device.*", "certificate.*"]})) as service:
        await world.publish(other, routing_key="io.lamassu.ca.update")
        await world.publish(wanted, routing_key="device.create")
        [received] = await world.take_sqs(world.command_queue, 1)
        await wait_for(lambda: metric(service, "events_skipped", reason="type_not_forwarded") == 1, what="skip")
        assert await world.queue_depth(world.queue) == 0
    assert received["Body"].encode() == wanted


async def test_events_published_while_stopped_are_forwarded_after_start(world: World) -> None:
    """The queue is durable and bound at start-up: what arrives while the connector is down waits."""
    async with running(world.settings()):
        pass
    events = [samples.body(samples.v3_device_create(f"dev-{uuid.uuid4().hex[:6]}")) for _ in range(25)]
    for raw in events:
        await world.publish(raw, routing_key="device.create")
    assert await world.queue_depth(world.queue) == 25
    async with running(world.settings()):
        received = await world.take_sqs(world.command_queue, 25)
    assert sorted(m["Body"].encode() for m in received) == sorted(events)


async def test_starts_beside_a_v1_cloud_proxy_queue_declared_non_durable(world: World) -> None:
    channel = await world.channel()
    await channel.declare_queue(world.queue, durable=False)  # as Lamassu v1's cloud-proxy declares it
    v1 = samples.body(samples.v1_cert_update())
    async with running(world.settings()) as service:
        assert service.readiness()["amqp_consumer"]
        await world.publish(v1, exchange="", content_type="text/json")  # v1: default exchange
        [forwarded] = await world.take_sqs(world.command_queue, 1)
        await wait_for(lambda: metric(service, "events_forwarded") == 1, what="forwarded")
    assert forwarded["Body"] == v1.decode()


async def test_a_v1_cloud_proxy_consuming_exclusively_is_named_when_start_up_fails(world: World) -> None:
    channel = await world.amqp.channel()
    queue = await channel.declare_queue(world.queue, durable=False)

    async def cloud_proxy(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()

    await queue.consume(cloud_proxy, exclusive=True)  # as the v1.1 cloud-proxy consumes
    try:
        with pytest.raises(StartupError, match=r"in exclusive use.*Lamassu v1's cloud-proxy"):
            await asyncio.wait_for(Service(world.settings()).run(), 30)
    finally:
        await channel.close()
    async with running(world.settings()) as service:  # once it is gone, the queue is adopted
        assert service.readiness()["amqp_consumer"]


async def test_forged_provenance_headers_are_removed_before_anything_reads_them(world: World) -> None:
    forged = {
        "x-sqs-queue": "attacker-queue",
        "x-sqs-attribute-ce-type": "io.lamassu.evil",
        "x-original-exchange": "amq.topic",
        "x-original-routing-key": "somewhere.else",
        "x-error-code": "none",
        "x-dead-lettered-by": "someone",
        "x-kept": "yes",
    }
    raw = samples.body({**samples.v1_cert_update(), "time": "yesterday"})  # to be dead-lettered
    async with running(world.settings()):
        await world.publish(raw, exchange="", content_type="text/json", headers=forged)
        [dead] = await world.take_amqp(world.dlq, 1)
    headers = dead.headers or {}
    assert headers["x-error-code"] == "invalid_attribute"
    assert headers["x-original-exchange"] == "" and headers["x-original-routing-key"] == world.queue
    assert "x-sqs-queue" not in headers and "x-sqs-attribute-ce-type" not in headers
    assert headers["x-dead-lettered-by"] == "lamassu-aws-connector"
    assert headers["x-kept"] == "yes"
    assert all(isinstance(value, str) for value in headers.values())  # watermill's rule


async def test_audit_copies_are_skipped_and_error_records_forwarded_and_counted(world: World) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "lamassu" / "v3.8.0"
    bodies = {
        name: (fixtures / f"{name}.json").read_bytes() for name in ("ca.create", "audit.ca.create", "ca.create.error")
    }
    async with running(world.settings()) as service:
        for name, raw in bodies.items():
            await world.publish(raw, routing_key=name)
        received = await world.take_sqs(world.command_queue, 2)
        await wait_for(lambda: metric(service, "events_skipped", reason="audit_copy") == 1, what="audit copy skipped")
        assert metric(service, "lamassu_failures", action="ca.create") == 1
    assert sorted(orjson.loads(message["Body"])["type"] for message in received) == ["ca.create", "ca.create.error"]
    assert await world.sqs_count(world.command_queue) == 0


async def test_a_lone_event_does_not_wait_the_linger_when_no_batch_is_in_flight(world: World) -> None:
    """forward.linger_when_idle: false (the default): an idle pipe sends a partial batch at once. With a
    10 s linger the event can only be in SQS within 8 s if it did not wait."""
    settings = world.settings(forward={"linger_ms": 10_000})
    raw = samples.body(samples.v3_status_update("dev-idle"))
    async with running(settings) as service:
        await world.publish(raw, exchange="")
        [received] = await world.take_sqs(world.command_queue, 1, timeout=8)
        assert received["Body"].encode() == raw
        assert service.metrics.registry.get_sample_value("lamassu_connector_sqs_batch_entries_sum") == 1
        # The events consumer hands the pipeline aiormq's frames as a Delivery, not aio-pika's IncomingMessage.
        assert isinstance(service.amqp._queue, _DeliveryQueue)


async def _give_back(world: World, times: int) -> None:
    """Take the events queue's one message without acking it and give it back, ``times`` times:
    RabbitMQ then delivers it as redelivered (a quorum queue also counts x-delivery-count)."""
    for _ in range(times):
        channel = await world.amqp.channel()
        queue = await channel.declare_queue(world.queue, passive=True)
        taken: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def took(queue: aio_pika.abc.AbstractQueue = queue, taken: list[Any] = taken) -> bool:
            message = await queue.get(fail=False)
            if message is not None:
                taken.append(message)
            return bool(taken)

        await wait_for(took, what="the message back in the events queue")
        await taken[0].reject(requeue=True)
        await channel.close()


async def test_a_delivery_count_is_believed_only_where_rabbitmq_writes_it(world: World, tmp_path: Path) -> None:
    """x-delivery-count is RabbitMQ's on a quorum queue; on a classic one only a publisher can set it."""
    settings = world.settings(amqp={"state_dir": str(tmp_path), "redelivery_limit": 3})
    async with running(settings):
        pass  # the classic events queue, declared and bound
    raw = samples.body(samples.v3_device_create("dev-forged-count"))
    await world.publish(raw, routing_key="device.create", headers={"x-delivery-count": 99})
    await _give_back(world, 1)
    async with running(settings):
        [forwarded] = await world.take_sqs(world.command_queue, 1)
    assert forwarded["Body"] == raw.decode()
    assert await world.queue_depth(world.dlq) == 0


async def test_a_quorum_queues_delivery_count_sets_a_message_aside(world: World, tmp_path: Path) -> None:
    channel = await world.channel()
    await channel.declare_queue(world.queue, durable=True, arguments={"x-queue-type": "quorum"})
    settings = world.settings(amqp={"state_dir": str(tmp_path), "redelivery_limit": 3})
    async with running(settings):
        pass  # adopted as it is, and bound
    raw = samples.body(samples.v3_device_create("dev-delivered-often"))
    await world.publish(raw, routing_key="device.create")
    await _give_back(world, 4)  # RabbitMQ has counted 4 deliveries beyond the first
    async with running(settings):
        [dead] = await world.take_amqp(world.dlq, 1)
    assert (dead.headers or {})["x-error-code"] == "redelivery_limit"
    assert "RabbitMQ delivered it" in str((dead.headers or {})["x-error-message"])
    assert dead.body == raw
