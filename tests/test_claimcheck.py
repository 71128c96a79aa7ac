"""Claim-check: oversize events through S3 (real LocalStack S3 and SQS), dataref replies resolved."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from lamassu_aws_connector.claimcheck import join_data, parse_s3_url, split_data

from .conftest import SQS_ENDPOINT, World, running, wait_for
from .tcpproxy import TcpProxy
from .test_inbound import bind_observer, send_replies
from .test_outbound import attributes, metric

CERT_TYPE = "io.lamassu.certificate.update"


def big_event(event_id: str, size: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "lamassu/ca",
        "type": CERT_TYPE,
        "subject": "certificate/61-5e-0b-9c",
        "time": "2024-05-01T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {"serial_number": "61-5e-0b-9c", "status": "REVOKED", "crl_pem": "A" * size},
    }


async def read_object(s3: Any, url: str) -> tuple[bytes, dict[str, Any]]:
    bucket, key = parse_s3_url(url)
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as stream:
        return await stream.read(), response


@pytest.mark.parametrize(
    ("event", "stored"),
    [
        ({"data": {"a": [1, 2]}}, b'{"a":[1,2]}'),
        ({"data": "just a string"}, b'"just a string"'),  # no content type: JSON
        ({"datacontenttype": "text/plain", "data": "héllo"}, "héllo".encode()),
        (
            {"datacontenttype": "application/pkix-cert", "data_base64": base64.b64encode(b"\x00\xff").decode()},
            b"\x00\xff",
        ),
    ],
)
def test_data_splits_and_joins_back(event: dict[str, Any], stored: bytes) -> None:
    original = {"specversion": "1.0", "id": "x", "source": "s", "type": "t", **event}
    slim = dict(original)
    split = split_data(slim)
    assert split is not None and split[0] == stored
    assert "data" not in slim and "data_base64" not in slim
    join_data(slim, split[0])
    assert slim == original


def test_an_event_without_data_cannot_be_claim_checked() -> None:
    assert split_data({"specversion": "1.0", "id": "x", "source": "s", "type": "t"}) is None


@pytest.mark.integration
async def test_a_2mb_event_round_trips_through_s3(world: World, s3_bucket: tuple[str, Any]) -> None:
    bucket, s3 = s3_bucket
    big = big_event("big-1", 2_000_000)
    small = big_event("small-1", 100)
    too_big = big_event("too-big-1", 3_500_000)
    settings = world.settings(claim_check={"bucket": bucket, "key_prefix": "events/", "max_bytes": 3_000_000})
    async with running(settings) as service:
        # The same event twice (as after a redelivery): one object, two SQS messages pointing at it.
        for event in (big, big, small, too_big):
            await world.publish(orjson.dumps(event), routing_key=CERT_TYPE)
        received = await world.take_sqs(world.command_queue, 3)
        [dead] = await world.take_amqp(world.dlq, 1)
        await wait_for(lambda: metric(service, "events_forwarded") == 3, what="3 forwarded")
        assert metric(service, "claim_checked") == 2
        assert metric(service, "claim_checked_bytes") > 4_000_000
        limit = service.outbound._queue.max_message_bytes if service.outbound else 0
    assert dead.headers["x-error-code"] == "too_large"
    assert "claim_check.max_bytes" in str(dead.headers["x-error-message"])
    by_id: dict[str, list[dict[str, Any]]] = {}
    for message in received:
        by_id.setdefault(attributes(message)["ce-id"], []).append(message)
    assert orjson.loads(by_id["small-1"][0]["Body"]) == small
    assert "ce-dataref" not in attributes(by_id["small-1"][0])
    refs = set()
    for message in by_id["big-1"]:
        assert len(message["Body"].encode()) < 1000 < limit
        body = orjson.loads(message["Body"])
        ref = attributes(message)["ce-dataref"]
        assert body == {**{k: v for k, v in big.items() if k != "data"}, "dataref": ref}
        assert attributes(message)["ce-type"] == CERT_TYPE
        refs.add(ref)
    [ref] = refs
    assert ref.startswith(f"s3://{bucket}/events/")
    content, response = await read_object(s3, ref)
    assert orjson.loads(content) == big["data"]
    assert response["ContentType"] == "application/json"
    assert response["ServerSideEncryption"] == "AES256"
    listed = await s3.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == [ref.split("/", 3)[3]]


@pytest.mark.integration
async def test_s3_outage_holds_the_event_until_it_is_stored(world: World, s3_bucket: tuple[str, Any]) -> None:
    bucket, s3 = s3_bucket
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    settings = world.settings(
        claim_check={
            "bucket": bucket,
            "endpoint_url": proxy.url,
            "threshold_bytes": 2048,
            "retry_max_backoff_seconds": 1,
        }
    )
    event = big_event("outage-1", 10_000)
    try:
        async with running(settings) as service:
            await proxy.stop()
            await world.publish(orjson.dumps(event), routing_key=CERT_TYPE)
            await wait_for(
                lambda: (
                    (
                        service.metrics.registry.get_sample_value(
                            "lamassu_connector_s3_errors_total",
                            {"operation": "PutObject", "code": "EndpointConnectionError"},
                        )
                        or 0
                    )
                    >= 2
                ),
                what="PutObject failing",
            )
            # Not acked, not sent: the event is still RabbitMQ's.
            assert service.metrics.registry.get_sample_value("lamassu_connector_outbound_in_flight") == 1
            assert await world.sqs_count(world.command_queue) == 0
            await proxy.start()
            [message] = await world.take_sqs(world.command_queue, 1)
            await wait_for(lambda: metric(service, "events_forwarded") == 1, what="forwarded")
    finally:
        await proxy.stop()
    content, _ = await read_object(s3, attributes(message)["ce-dataref"])
    assert orjson.loads(content) == event["data"]
    assert await world.queue_depth(world.queue) == 0


@pytest.mark.integration
async def test_dataref_replies_get_their_data_back(world: World, s3_bucket: tuple[str, Any]) -> None:
    bucket, s3 = s3_bucket
    data = {"certificate": "B" * 300_000, "status": "ACTIVE"}
    await s3.put_object(Bucket=bucket, Key="replies/r-1", Body=orjson.dumps(data))
    reply = {
        "specversion": "1.0",
        "id": "r-1",
        "source": "aws/lambda",
        "type": "io.lamassu.iotcore.cert.response",
        "datacontenttype": "application/json",
        "dataref": f"s3://{bucket}/replies/r-1",
    }
    await s3.put_object(Bucket=bucket, Key="replies/huge", Body=orjson.dumps({"blob": "C" * 500_000}))
    missing = {**reply, "id": "r-2", "dataref": f"s3://{bucket}/replies/nothing-here"}
    huge = {**reply, "id": "r-3", "dataref": f"s3://{bucket}/replies/huge"}
    # A key S3 could never hold (over 1024 bytes): the reply's fault, not S3 down (LocalStack drops the connection).
    no_such_key = {**reply, "id": "r-4", "dataref": f"s3://{bucket}/" + "k" * 200_000}
    observer = await bind_observer(world)
    # Resolving needs no bucket of the connector's own, only the bucket named as one replies may use.
    async with running(world.settings(claim_check={"max_bytes": 400_000, "reply_buckets": [bucket]})) as service:
        await send_replies(world, [orjson.dumps(event) for event in (reply, missing, huge, no_such_key)])
        [relayed] = await world.take_amqp(observer.name, 1)
        dead = await world.take_amqp(world.reply_dlq, 3)
        await wait_for(lambda: metric(service, "replies_resolved") == 1, what="1 resolved")
        assert service.readiness()["s3"]
    assert orjson.loads(relayed.body) == {**{k: v for k, v in reply.items() if k != "dataref"}, "data": data}
    assert relayed.message_id == "r-1"
    reasons = {orjson.loads(message.body)["id"]: message.headers for message in dead}
    assert {headers["x-error-code"] for headers in reasons.values()} == {"dataref_unresolved"}
    assert "NoSuchKey" in str(reasons["r-2"]["x-error-message"])
    assert "claim_check.max_bytes" in str(reasons["r-3"]["x-error-message"])
    assert "longer than S3's 1024 bytes" in str(reasons["r-4"]["x-error-message"])


@pytest.mark.integration
async def test_replies_may_name_only_the_configured_buckets(world: World, s3_bucket: tuple[str, Any]) -> None:
    bucket, s3 = s3_bucket
    await s3.put_object(Bucket=bucket, Key="replies/ok", Body=b'{"status": "ACTIVE"}')
    reply = {
        "specversion": "1.0",
        "id": "r-ok",
        "source": "aws/lambda",
        "type": "io.lamassu.iotcore.cert.response",
        "datacontenttype": "application/json",
        "dataref": f"s3://{bucket}/replies/ok",
    }
    elsewhere = {**reply, "id": "r-elsewhere", "dataref": f"s3://someone-elses-bucket-{world.tag}/secrets.json"}
    observer = await bind_observer(world)
    async with running(world.settings(claim_check={"bucket": bucket})):
        await send_replies(world, [orjson.dumps(reply), orjson.dumps(elsewhere)])
        [relayed] = await world.take_amqp(observer.name, 1)
        [dead] = await world.take_amqp(world.reply_dlq, 1)
    assert orjson.loads(relayed.body)["data"] == {"status": "ACTIVE"}
    assert orjson.loads(dead.body)["id"] == "r-elsewhere"
    assert dead.headers["x-error-code"] == "dataref_unresolved"
    assert "outside the buckets replies may name" in str(dead.headers["x-error-message"])
    assert await world.sqs_count(world.response_queue) == 0


@pytest.mark.integration
async def test_datarefs_are_closed_by_default(world: World, s3_bucket: tuple[str, Any]) -> None:
    bucket, s3 = s3_bucket
    await s3.put_object(Bucket=bucket, Key="replies/secret", Body=b'{"private": "key material"}')
    reply = {
        "specversion": "1.0",
        "id": "r-closed",
        "source": "aws/lambda",
        "type": "io.lamassu.iotcore.cert.response",
        "dataref": f"s3://{bucket}/replies/secret",
    }
    observer = await bind_observer(world)
    async with running(world.settings()) as service:  # no claim_check.bucket, no reply_buckets
        await send_replies(world, [orjson.dumps(reply)])
        [relayed] = await world.take_amqp(observer.name, 1)
        assert metric(service, "replies_resolved") == 0
        assert "s3" not in service.readiness()
    assert orjson.loads(relayed.body) == reply  # relayed as it came: nothing was read from S3
