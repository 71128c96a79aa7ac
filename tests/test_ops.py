"""Operations: health and readiness across outages, metrics that move, SIGTERM mid-stream."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from lamassu_aws_connector.outcomes import ErrorCode
from lamassu_aws_connector.service import Service

from . import samples
from .conftest import AMQP_URL, SQS_ENDPOINT, World, connector_ready, running, wait_for
from .tcpproxy import TcpProxy
from .test_outbound import metric
from .tls_broker import free_port

pytestmark = pytest.mark.integration


async def get(service: Service, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.http.port}{path}") as response,
    ):
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body


def scrape(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus text output (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def amqp_proxy() -> tuple[TcpProxy, str]:
    host_port = AMQP_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    return proxy, host_port


async def test_readiness_follows_the_broker_connection(world: World) -> None:
    proxy, host_port = amqp_proxy()
    await proxy.start()
    url = AMQP_URL.replace(host_port, f"127.0.0.1:{proxy.port}")
    try:
        async with running(world.settings(amqp={"url": url, "reconnect_interval_seconds": 1})) as service:
            assert await get(service, "/healthz") == (200, {"status": "ok"})
            status, body = await get(service, "/readyz")
            assert status == 200 and body["down"] == []

            await proxy.stop()
            await wait_for(lambda: _ready_status(service, 503), 10, "readiness 503 after losing RabbitMQ")
            status, body = await get(service, "/readyz")
            assert "amqp_connection" in body["down"]
            assert (await get(service, "/healthz"))[0] == 200  # alive, just not ready

            await proxy.start()
            await wait_for(lambda: _ready_status(service, 200), 30, "readiness 200 after reconnect")
            # The restored consumer works: an event published now is forwarded.
            await world.publish(samples.body(samples.v3_device_create()), routing_key="device.create")
            await world.take_sqs(world.command_queue, 1)
    finally:
        await proxy.stop()


async def test_a_stop_while_rabbitmq_is_away_does_not_wait_out_the_grace(world: World) -> None:
    proxy, host_port = amqp_proxy()
    await proxy.start()
    url = AMQP_URL.replace(host_port, f"127.0.0.1:{proxy.port}")
    settings = world.settings(amqp={"url": url, "reconnect_interval_seconds": 1}, shutdown={"grace_seconds": 10})
    service = Service(settings)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.started.wait(), 30)
        await proxy.stop()
        await wait_for(lambda: _ready_status(service, 503), 10, "readiness 503 after losing RabbitMQ")
        stopping = asyncio.get_running_loop().time()
        service.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
        # A robust queue's basic.cancel waits for the broker: the stop used to sit out the 10 s grace.
        assert asyncio.get_running_loop().time() - stopping < 5
    finally:
        await proxy.stop()


async def test_readiness_follows_sqs(world: World) -> None:
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    try:
        settings = world.settings(sqs={"endpoint_url": proxy.url, "wait_time_seconds": 1})
        async with running(settings) as service:
            await wait_for(lambda: _ready_status(service, 200), 10, "ready")
            await proxy.stop()
            await wait_for(lambda: _ready_status(service, 503), 15, "readiness 503 without SQS")
            assert "sqs" in (await get(service, "/readyz"))[1]["down"]
            await proxy.start()
            await wait_for(lambda: _ready_status(service, 200), 30, "readiness 200 with SQS back")
    finally:
        await proxy.stop()


async def _ready_status(service: Service, expected: int) -> bool:
    return (await get(service, "/readyz"))[0] == expected


async def test_metrics_follow_prometheus_conventions_from_the_first_scrape(world: World) -> None:
    async with running(world.settings()) as service:
        _, text = await get(service, "/metrics")
    # Every dead-letter code and skip reason exists at 0 before its first occurrence, so an
    # increase() alert sees the first dead letter after a restart.
    for code in ErrorCode:
        assert f'lamassu_connector_events_dead_lettered_total{{code="{code.value}"}} 0.0' in text, code
        assert f'lamassu_connector_replies_dead_lettered_total{{code="{code.value}"}} 0.0' in text, code
    assert 'lamassu_connector_events_skipped_total{reason="type_not_forwarded"} 0.0' in text
    assert "_created" not in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    # A fresh local start (queues created on the way) counts no error.
    assert "lamassu_connector_sqs_errors_total{" not in text


async def test_metrics_move_with_traffic(world: World) -> None:
    async with running(world.settings()) as service:
        status, before = await get(service, "/metrics")
        assert status == 200
        assert 'lamassu_connector_build_info{version="' in before
        for _ in range(5):
            await world.publish(samples.body(samples.v3_device_create()), routing_key="device.create")
        await world.publish(b"not json", routing_key="device.create")
        await world.take_sqs(world.command_queue, 5)
        await world.take_amqp(world.dlq, 1)
        await wait_for(lambda: metric(service, "events_forwarded") == 5, what="5 forwarded")
        _, after = await get(service, "/metrics")
    forwarded = "lamassu_connector_events_forwarded_total"
    assert (
        scrape(after, forwarded, event_type="device.create") - scrape(before, forwarded, event_type="device.create")
        == 5
    )
    assert scrape(after, "lamassu_connector_events_consumed_total") == 6
    assert scrape(after, "lamassu_connector_events_dead_lettered_total", code="invalid_json") == 1
    calls = "lamassu_connector_sqs_calls_total"
    assert scrape(after, calls, operation="SendMessageBatch") > scrape(before, calls, operation="SendMessageBatch")
    # Entry failures are counted as SendMessageBatchEntry errors: the entries sent are their denominator
    # (the LamassuConnectorSqsErrors alert divides errors by calls per operation).
    entries = scrape(after, calls, operation="SendMessageBatchEntry") - scrape(
        before, calls, operation="SendMessageBatchEntry"
    )
    assert entries == 5
    assert scrape(after, "lamassu_connector_outbound_latency_seconds_count") == 5
    assert scrape(after, "lamassu_connector_amqp_connected") == 1


async def test_sigterm_mid_stream_exits_0_and_loses_nothing(world: World, tmp_path: Path) -> None:
    http_port = free_port()
    settings = world.settings(
        log={"format": "json"}, shutdown={"grace_seconds": 10}, http={"host": "127.0.0.1", "port": http_port}
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    events = [samples.body(samples.v3_device_create()) for _ in range(400)]
    # Logs to a file, not a pipe: 400 JSON lines overflow a pipe nobody reads until the exit, and a
    # daemon blocked on a full stderr never exits.
    log_path = tmp_path / "connector.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lamassu_aws_connector", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        await wait_for(lambda: connector_ready(http_port), 30, "the connector ready (topology declared, consuming)")
        for index, raw in enumerate(events):
            await world.publish(raw, routing_key="device.create")
            if index == 200:
                process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.002)  # a steady stream, not one burst
        code = await asyncio.wait_for(process.wait(), settings.shutdown.grace_seconds + 5)
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0
    assert '"connector.stopped"' in log_path.read_text()
    # Whatever the stopped daemon did not forward is still in RabbitMQ; a new one forwards it.
    async with running(world.settings()):
        received = await world.take_sqs(world.command_queue, len(events), timeout=60)
    bodies = [m["Body"].encode() for m in received]
    assert set(bodies) == set(events)  # nothing lost (a duplicate would be allowed, none expected)


async def test_second_signal_exits_at_once_and_nothing_is_lost(world: World, tmp_path: Path) -> None:
    """With SQS away, a graceful stop would wait its whole grace period; a second SIGTERM cuts it short."""
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    http_port = free_port()
    settings = world.settings(
        sqs={"endpoint_url": proxy.url}, shutdown={"grace_seconds": 60}, http={"host": "127.0.0.1", "port": http_port}
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    events = [samples.body(samples.v3_device_create()) for _ in range(10)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lamassu_aws_connector", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_for(lambda: connector_ready(http_port), 30, "the connector ready (topology declared, consuming)")
        await proxy.stop()
        for raw in events:
            await world.publish(raw, routing_key="device.create")
        await wait_for(lambda: _depth_is_zero(world), 10, "events taken by the connector")
        # Delivered is not yet held: wait until the connector's own count says it has all ten.
        await wait_for(lambda: _in_flight(http_port, 10), 10, "ten events in flight in the connector")
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert process.returncode is None  # still draining: SQS is unreachable
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 5)
    finally:
        if process.returncode is None:
            process.kill()
        await proxy.start()
    assert code == 1
    # Unacked deliveries went back to RabbitMQ with the connection.
    await wait_for(lambda: _depth_is(world, 10), 10, "10 events back in the queue")
    await proxy.stop()


async def _in_flight(port: int, expected: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return False
    return f"lamassu_connector_outbound_in_flight {float(expected)}" in text


async def _depth_is_zero(world: World) -> bool:
    return await world.queue_depth(world.queue) == 0


async def _depth_is(world: World, expected: int) -> bool:
    return await world.queue_depth(world.queue) == expected


async def test_queue_depths_of_both_sides_are_sampled(world: World) -> None:
    async with running(world.settings(health={"depth_seconds": 0.2})) as service:
        for _ in range(2):
            await world.publish(b"not json", routing_key="device.create")
        await world.publish(samples.body(samples.v3_device_create()), routing_key="device.create")
        gauge = service.metrics.registry.get_sample_value
        await wait_for(
            lambda: gauge("lamassu_connector_queue_depth", {"side": "amqp", "queue": world.dlq}) == 2,
            what="the dead-letter queue's depth sampled",
        )
        await wait_for(
            lambda: gauge("lamassu_connector_queue_depth", {"side": "sqs", "queue": world.command_queue}) == 1,
            what="the command queue's depth sampled",
        )
        assert gauge("lamassu_connector_queue_depth", {"side": "amqp", "queue": world.queue}) == 0
        assert gauge("lamassu_connector_queue_in_flight", {"queue": world.response_queue}) == 0


async def test_a_command_queue_deleted_while_idle_turns_readiness_down(world: World) -> None:
    async with running(world.settings(health={"depth_seconds": 0.3})) as service:
        await wait_for(lambda: _ready_status(service, 200), 10, "ready")
        url = await world.sqs_url(world.command_queue)
        await world.sqs.delete_queue(QueueUrl=url)  # no event flows: only the depth sample can notice
        await wait_for(lambda: not service.readiness()["sqs_command_queue"], 10, "the missing queue noticed")
        assert (await get(service, "/readyz"))[1]["down"] == ["sqs_command_queue"]
        await world.sqs.create_queue(QueueName=world.command_queue)
        await wait_for(lambda: _ready_status(service, 200), 10, "ready again once the queue is back")
