"""Scenarios 1-6 and 11: faults on the outbound flow (RabbitMQ -> SQS), counted.

Each streams 2,000 numbered events at 400/s through the real connector process and injects its
fault a third of the way through; nothing may be lost and nothing may be dead-lettered.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ..conftest import SQS_ENDPOINT
from ..faultproxy import FaultProxy
from ..tcpproxy import TcpProxy
from .driver import SQS_OUTAGE_SECONDS, Env, Run, in_flight, outbound_scenario

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PREFETCH = 200  # amqp.prefetch default: the most one killed replica can leave unacked


async def test_1_broker_killed_mid_stream(env: Env) -> None:
    async def fault(run: Run) -> None:
        await run.kill_broker(down_seconds=3)

    figures, _ = await outbound_scenario(env, "01-broker-sigkill", "RabbitMQ SIGKILLed, back after 3 s", fault)
    assert figures.lost == 0
    assert figures.dead_lettered == 0


async def test_2_broker_stopped_gracefully(env: Env) -> None:
    async def fault(run: Run) -> None:
        await run.bounce_broker_gracefully(down_seconds=3)

    figures, _ = await outbound_scenario(env, "02-broker-stop", "RabbitMQ stopped gracefully, back after 3 s", fault)
    assert figures.lost == 0
    assert figures.dead_lettered == 0


async def test_3_sqs_unreachable_for_30_seconds(env: Env) -> None:
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()

    async def fault(run: Run) -> None:
        await proxy.stop()  # connections cut, new ones refused
        await asyncio.sleep(SQS_OUTAGE_SECONDS)
        await proxy.start()
        run.cleared()

    try:
        figures, _ = await outbound_scenario(
            env, "03-sqs-outage", f"SQS endpoint unreachable for {SQS_OUTAGE_SECONDS} s", fault, sqs_endpoint=proxy.url
        )
    finally:
        await proxy.stop()
    assert figures.lost == 0
    assert figures.dead_lettered == 0


async def test_4_sqs_throttling_and_5xx(env: Env) -> None:
    proxy = FaultProxy(SQS_ENDPOINT, {"500": 0.05, "503": 0.05, "throttle": 0.05, "lost_response": 0.05})
    await proxy.start()
    try:
        figures, _ = await outbound_scenario(
            env, "04-sqs-throttling", "SQS answers 20 % of requests with 500/503/throttling/lost answer", None,
            sqs_endpoint=proxy.url,
        )  # fmt: skip
    finally:
        await proxy.stop()
    figures.notes["faults_injected"] = dict(proxy.injected)
    figures.save()
    assert all(proxy.injected[fault] > 0 for fault in ("500", "503", "throttle", "lost_response")), proxy.injected
    assert figures.lost == 0
    assert figures.dead_lettered == 0


async def test_5_connector_killed_mid_batch(env: Env) -> None:
    async def fault(run: Run) -> None:
        [connector] = run.connectors
        # Killed while it holds deliveries: at 400 events/s a quick connector is often empty-handed
        # between two events, so the kill waits (bounded) for a scrape that shows some held.
        deadline = time.monotonic() + 10
        while (held := in_flight(await connector.metrics())) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        run.notes["in_flight_at_kill"] = held
        await connector.kill()
        await connector.start()
        run.cleared()

    # Partial batches wait out a 100 ms linger: deliveries are held for most of the stream.
    config = {"forward": {"linger_ms": 100, "linger_when_idle": True}}
    figures, run = await outbound_scenario(
        env, "05-connector-sigkill", "Connector SIGKILLed, restarted", fault, config=config
    )
    assert run.notes["in_flight_at_kill"] > 0  # it really died with deliveries unsettled
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    assert figures.duplicated <= PREFETCH  # only what the dead process held unacked can come twice


async def test_6_connector_sigterm_mid_stream(env: Env) -> None:
    async def fault(run: Run) -> None:
        [connector] = run.connectors
        run.notes["in_flight_at_sigterm"] = in_flight(await connector.metrics())
        t0 = time.monotonic()
        connector.terminate()
        run.notes["sigterm_exit_code"] = await connector.wait_exit(25 + 5)  # shutdown.grace_seconds + margin
        run.notes["sigterm_exit_seconds"] = round(time.monotonic() - t0, 1)
        await connector.start()
        run.cleared()

    figures, run = await outbound_scenario(env, "06-connector-sigterm", "Connector SIGTERMed, restarted", fault)
    assert run.notes["sigterm_exit_code"] == 0
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    assert figures.duplicated == 0  # a graceful stop settles everything it took


async def test_11_two_replicas_one_killed(env: Env) -> None:
    async def fault(run: Run) -> None:
        victim = run.connectors[0]
        # Kill it while it holds deliveries (a replica at 200 events/s is often idle for a moment).
        for _ in range(200):
            run.notes["in_flight_at_kill"] = in_flight(await victim.metrics())
            if run.notes["in_flight_at_kill"] > 0:
                break
        await victim.kill()

    figures, run = await outbound_scenario(
        env,
        "11-two-replicas",
        "Two replicas on the same queues, one SIGKILLed",
        fault,
        replicas=2,
        fault_at=0.5,
        # Partial batches wait out a 100 ms linger, so the victim holds deliveries when it is killed.
        config={"log": {"summary_seconds": 1}, "forward": {"linger_ms": 100, "linger_when_idle": True}},
    )
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    assert figures.duplicated <= PREFETCH
    assert run.notes["in_flight_at_kill"] > 0
    forwarded = [sum(line["forwarded"] for line in c.log_events("connector.summary")) for c in run.connectors]
    run.notes["forwarded_per_replica"] = forwarded
    assert all(count > 0 for count in forwarded)  # both replicas really shared the stream
    figures.save()
