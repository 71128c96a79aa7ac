"""The SQS adapter's two paths (signed JSON requests, full botocore client) behave alike on a real server.

Every test runs on both paths and asserts the observable outcome: what lands in SQS, what comes
back, and how each failure is classified by the pipelines' helpers.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from botocore.exceptions import ClientError

from lamassu_aws_connector.config import SqsConfig
from lamassu_aws_connector.metrics import Metrics
from lamassu_aws_connector.sqs import (
    _NOT_FOUND_CODES,
    QueueInfo,
    SqsGateway,
    error_code,
    is_content_rejected,
    is_unavailable,
)

from .conftest import SQS_ENDPOINT, World
from .faultproxy import FaultProxy

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=[True, False], ids=["fast_path", "botocore"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@asynccontextmanager
async def gateway(fast_path: bool, endpoint: str = SQS_ENDPOINT) -> AsyncIterator[SqsGateway]:
    config = SqsConfig(endpoint_url=endpoint, fast_path=fast_path, connect_timeout_seconds=2, wait_time_seconds=1)
    async with SqsGateway(config, Metrics()) as sqs:
        yield sqs


@asynccontextmanager
async def proxy(fault_rates: dict[str, float], signing_secret: str | None = None) -> AsyncIterator[FaultProxy]:
    fault_proxy = FaultProxy(SQS_ENDPOINT, fault_rates, signing_secret=signing_secret)
    await fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.stop()


def entry(number: int) -> dict[str, object]:
    return {
        "Id": str(number),
        "MessageBody": f'{{"specversion":"1.0","id":"e{number}","data":"ünïcödé {number}"}}',
        "MessageAttributes": {
            "ce-id": {"DataType": "String", "StringValue": f"e{number}"},
            "ce-type": {"DataType": "String", "StringValue": "certificate.status.update"},
        },
    }


async def receive_all(sqs: SqsGateway, queue: QueueInfo, count: int) -> list[dict[str, object]]:
    received: list[dict[str, object]] = []
    for _ in range(20):
        received += await sqs.receive(queue, wait_seconds=1, visibility_timeout=30)
        if len(received) >= count:
            break
    return received


async def test_send_receive_delete_round_trip(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as sqs:
        queue = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        sent = await sqs.send_batch(queue, [entry(n) for n in range(10)])
        assert sorted(int(s["Id"]) for s in sent["Successful"]) == list(range(10))
        assert not sent.get("Failed")
        assert sent["ResponseMetadata"]["HTTPStatusCode"] == 200

        received = await receive_all(sqs, queue, 10)
        by_id = {m["MessageAttributes"]["ce-id"]["StringValue"]: m for m in received}  # type: ignore[index]
        assert sorted(by_id) == sorted(f"e{n}" for n in range(10))
        for number in range(10):
            message = by_id[f"e{number}"]
            assert message["Body"] == entry(number)["MessageBody"]
            assert message["MessageAttributes"]["ce-type"] == {  # type: ignore[index]
                "DataType": "String",
                "StringValue": "certificate.status.update",
            }
            assert message["Attributes"]["ApproximateReceiveCount"] == "1"  # type: ignore[index]

        receipts = {str(i): str(m["ReceiptHandle"]) for i, m in enumerate(received)}
        deleted = await sqs.delete_batch(queue, receipts)
        assert len(deleted["Successful"]) == 10 and not deleted.get("Failed")
        assert await world.sqs_count(world.command_queue) == 0


async def test_partial_batch_failure_comes_back_per_entry(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as sqs:
        queue = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        entries = [entry(n) for n in range(4)]
        entries[2]["MessageBody"] = "control character \x01 is not allowed in SQS"
        answer = await sqs.send_batch(queue, entries)
        assert sorted(s["Id"] for s in answer["Successful"]) == ["0", "1", "3"]
        assert [f["Id"] for f in answer["Failed"]] == ["2"]
        assert answer["Failed"][0]["Code"]  # the reason, for the dead-letter message
        assert await world.sqs_count(world.command_queue) == 3


async def test_missing_queue_and_closed_port_classified_alike(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as sqs:
        queue = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        missing = QueueInfo(
            "never-created", queue.url.replace(world.command_queue, f"t{world.tag}-never"), 262_144, False
        )
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(missing, [entry(0)])
        assert error_code(raised.value) in _NOT_FOUND_CODES
        assert not is_unavailable(raised.value) and is_content_rejected(raised.value)
        assert sqs.available  # the server answered

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    async with gateway(fast_path, closed) as sqs:
        with pytest.raises(Exception) as failed:
            await sqs.send_batch(QueueInfo("q", f"{closed}/000000000000/q", 262_144, False), [entry(0)])
        assert is_unavailable(failed.value), repr(failed.value)
        assert not sqs.available


@pytest.mark.parametrize("fault", ["503", "500", "throttle"])
async def test_server_faults_retried_then_raised_as_unavailable(world: World, fast_path: bool, fault: str) -> None:
    async with gateway(fast_path) as direct:
        queue = await direct.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
    async with proxy({fault: 1.0}) as faulty, gateway(fast_path, faulty.url) as sqs:
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(queue, [entry(0)])
        assert is_unavailable(raised.value) and not is_content_rejected(raised.value)
        assert error_code(raised.value) == {"503": "ServiceUnavailable", "500": "InternalError"}.get(
            fault, "RequestThrottled"
        )
        assert faulty.injected[fault] == 4  # the request and three quick retries, on either path
        faulty.enabled = False
        assert (await sqs.send_batch(queue, [entry(1)]))["Successful"]
    assert await world.sqs_count(world.command_queue) == 1


async def test_requests_carry_a_signature_aws_would_accept(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as direct:
        queue = await direct.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
    async with proxy({}, signing_secret="test") as checking, gateway(fast_path, checking.url) as sqs:
        assert (await sqs.send_batch(queue, [entry(n) for n in range(3)]))["Successful"]
        received = await receive_all(sqs, queue, 3)
        deleted = await sqs.delete_batch(queue, {str(i): str(m["ReceiptHandle"]) for i, m in enumerate(received)})
        assert len(deleted["Successful"]) == 3
        assert checking.signatures_checked >= 3

    async with proxy({}, signing_secret="not-the-secret") as strict, gateway(fast_path, strict.url) as sqs:
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(queue, [entry(9)])
        assert error_code(raised.value) == "SignatureDoesNotMatch"
        assert not is_unavailable(raised.value) and not is_content_rejected(raised.value)
    assert await world.sqs_count(world.command_queue) == 0
