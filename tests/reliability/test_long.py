"""Scenarios 9 (100,000-event backlog) and 10 (10-minute soak with two broker bounces).

Skipped unless ``LAMASSU_LONG_TESTS=1``; ``scripts/reliability-report.sh --long`` runs them and puts
their figures in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import time

import aio_pika
import pytest
from aio_pika.abc import DeliveryMode

from ..conftest import SQS_ENDPOINT, wait_for
from .driver import (
    Connector,
    Env,
    Figures,
    Names,
    Run,
    SqsCounter,
    assert_no_secrets,
    connector_config,
    event,
    outbound_scenario,
    poll,
    queue_depth,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.long, pytest.mark.timeout(3600)]

BACKLOG = int(os.environ.get("LAMASSU_BACKLOG_EVENTS", "100000"))
SOAK_SECONDS = float(os.environ.get("LAMASSU_SOAK_SECONDS", "600"))
SOAK_RATE = 50.0


async def _queue_backlog(env: Env, names: Names, count: int) -> float:
    """Declare the events queue as the connector would and fill it, confirmed, before it starts."""
    t0 = time.monotonic()
    connection = await aio_pika.connect(env.test_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(names.queue, durable=True)
        exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await queue.bind(exchange, "#")
        window = 500
        for start in range(0, count, window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(event(names.tag, seq), delivery_mode=DeliveryMode.PERSISTENT),
                        "io.lamassuiot.certificate.update",
                    )
                    for seq in range(start, min(start + window, count))
                )
            )
    finally:
        await connection.close()
    return time.monotonic() - t0


async def test_9_backlog_of_100k_events(env: Env) -> None:
    names = Names()
    fill_seconds = await _queue_backlog(env, names, BACKLOG)
    assert await queue_depth(env.test_url, names.queue) == BACKLOG
    connector = Connector(connector_config(names, env.amqp_url, env.sqs_endpoint), env.workdir, "connector")
    counter: SqsCounter | None = None
    try:
        t0 = time.monotonic()
        await connector.start()
        await connector.wait_ready()
        counter = SqsCounter(env.sqs, await env.sqs_url(names.command_queue), loops=8).start()
        progress: list[tuple[int, float]] = []  # (events arrived, connector RSS MB)

        def arrived_all() -> bool:
            if counter.unique // (BACKLOG // 10) > len(progress) - 1 and connector.rss_samples:
                progress.append((counter.unique, connector.rss_samples[-1][1] / 1024))
            return counter.unique >= BACKLOG

        await wait_for(arrived_all, 3000, f"{BACKLOG} events in SQS")
        drain = time.monotonic() - t0
        await poll(lambda: _empty(counter), 120, "SQS read to the end")
        assert await queue_depth(env.test_url, names.queue) == 0
        dead = await queue_depth(env.test_url, names.dlq)
        assert await connector.stop() == 0
        rss = [mb for _, mb in progress]
        figures = Figures(
            scenario="09-backlog",
            title=f"Backlog of {BACKLOG:,} events queued before the connector starts",
            sent=BACKLOG,
            arrived=counter.unique,
            lost=BACKLOG - counter.unique,
            duplicated=counter.duplicated,
            dead_lettered=dead,
            recovery_seconds=None,
            drain_seconds=round(drain, 1),
            peak_rss_mb=round(connector.peak_rss_kb / 1024, 1),
            notes={
                "fill_seconds": round(fill_seconds, 1),
                "events_per_second": round(BACKLOG / drain),
                "rss_mb_every_10_percent": [round(mb, 1) for mb in rss],
            },
        )
        figures.save()
        assert figures.lost == 0
        assert dead == 0
        # Prefetch keeps memory flat: the second half of the drain uses no more than the first.
        half = len(rss) // 2
        assert max(rss[half:]) <= 1.25 * max(rss[: half or 1]) + 10, rss
        assert_no_secrets(connector.log_text())
    finally:
        if counter is not None:
            await counter.stop()
        if connector.running:
            await connector.kill()
        await env.delete_sqs_queues(names)


async def _empty(counter: SqsCounter) -> bool:
    return await counter.depth() == 0


async def test_10_soak_with_two_broker_bounces(env: Env) -> None:
    count = int(SOAK_SECONDS * SOAK_RATE)
    baseline: dict[str, float] = {}

    async def warm_up_then_bounce_twice(run: Run) -> None:
        [connector] = run.connectors
        baseline.update(_resources(run, connector))
        await run.kill_broker(down_seconds=5)
        assert run.publisher is not None
        await wait_for(lambda: len(run.publisher.sent) >= int(count * 0.66), SOAK_SECONDS, "two thirds sent")  # type: ignore[union-attr]
        await run.bounce_broker_gracefully(down_seconds=5)

    async def measure_at_the_end(run: Run) -> None:
        [connector] = run.connectors
        end = _resources(run, connector)
        run.notes["start"] = baseline
        run.notes["end"] = end

    figures, run = await outbound_scenario(
        env,
        "10-soak",
        f"Soak: {SOAK_SECONDS / 60:.0f} min at {SOAK_RATE:.0f}/s, RabbitMQ SIGKILLed and later stopped",
        warm_up_then_bounce_twice,
        count=count,
        rate=SOAK_RATE,
        fault_at=0.33,
        before_stop=measure_at_the_end,
    )
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    start, end = run.notes["start"], run.notes["end"]
    # One AMQP connection, not one per reconnect; the HTTP pool to SQS stays within its limit (64).
    assert end["amqp_connections"] == 1
    assert end["broker_connections"] == 1
    assert end["sqs_connections"] <= 64
    assert end["sockets"] <= start["sockets"] - start["sqs_connections"] + 64
    assert end["rss_mb"] <= 1.5 * start["rss_mb"]


def _resources(run: Run, connector: Connector) -> dict[str, float]:
    status = connector.sample()
    names = run.broker.connection_names()
    return {
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        **connector.open_fds(run.broker.port, int(SQS_ENDPOINT.rsplit(":", 1)[1].rstrip("/"))),
        "broker_connections": sum("lamassu-aws-connector" in line for line in names),
    }
