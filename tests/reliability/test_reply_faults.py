"""Scenario 7: faults on the reply flow (SQS -> RabbitMQ), counted on a queue bound to the reply
exchange; afterwards the SQS response queue must be empty (every reply deleted, none stuck)."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

from lamassu_aws_connector.config import Settings

from ..conftest import SQS_ENDPOINT
from ..tcpproxy import TcpProxy
from .driver import SQS_OUTAGE_SECONDS, Env, Run, poll, reply_scenario

# A poller holds at most four received batches of ten (README, "The reply flow"): only those can be
# relayed and then miss their delete when SQS goes away, so only they can come twice.
REPLIES_IN_HAND = Settings().sqs.pollers * 4 * 10

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


async def test_7a_broker_killed_while_replies_wait(env: Env) -> None:
    async def fault(run: Run) -> None:
        await run.kill_broker(down_seconds=3)

    figures, _ = await reply_scenario(
        env, "07a-reply-broker-sigkill", "Replies: RabbitMQ SIGKILLed, back after 3 s", fault
    )
    assert figures.lost == 0
    assert figures.dead_lettered == 0


async def test_7b_connector_killed_between_publish_and_delete(env: Env) -> None:
    async def fault(run: Run) -> None:
        [connector] = run.connectors
        await connector.kill()
        await connector.start()
        run.cleared()

    figures, _ = await reply_scenario(
        env, "07b-reply-connector-sigkill", "Replies: connector SIGKILLed, restarted", fault
    )
    assert figures.lost == 0
    assert figures.dead_lettered == 0


async def test_7d_connector_restarted_gracefully_while_replies_stream(env: Env) -> None:
    """SQS hands messages to a long poll even when its client gave up on it; they then stay invisible
    for the visibility timeout. A graceful stop waits for its polls and relays what they bring, so a
    rolling restart delays no reply by a visibility timeout (the default 60 s here)."""
    visibility = Settings().sqs.visibility_timeout

    async def fault(run: Run) -> None:
        [connector] = run.connectors
        run.notes["stop_exit_code"] = await connector.stop()
        await connector.start()
        await connector.wait_ready()
        run.cleared()

    figures, run = await reply_scenario(
        env,
        "07d-reply-connector-sigterm",
        "Replies: connector SIGTERMed and restarted mid-stream (visibility 60 s)",
        fault,
        visibility_timeout=visibility,
    )
    assert run.notes["stop_exit_code"] == 0
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    # Nothing waited out the visibility timeout: every reply arrived well before it.
    assert figures.drain_seconds is not None and figures.drain_seconds < visibility / 2, figures


async def test_7e_a_full_subscriber_queue_refuses_every_reply_for_a_while(env: Env) -> None:
    """One queue bound to the reply exchange is full with reject-publish: RabbitMQ nacks every reply
    (and still routes it to the other queues). That is the exchange's outage, not a stream of poison:
    the replies wait, /readyz names amqp_reply_exchange, nothing is dead-lettered; once the queue is
    gone every reply is relayed. The counting queue sees each nacked attempt, hence duplicates."""

    async def fault(run: Run) -> None:
        connection = await aio_pika.connect(env.test_url)
        try:
            channel = await connection.channel()
            exchange = await channel.get_exchange(run.names.reply_exchange)
            full = await channel.declare_queue(
                f"{run.names.tag}.full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
            )
            await full.bind(exchange, "#")
            [connector] = run.connectors

            async def exchange_down() -> bool:
                status, body = await connector.readiness()
                return status == 503 and "amqp_reply_exchange" in body.get("down", [])

            began = time.monotonic()
            await poll(exchange_down, 60, "amqp_reply_exchange down in /readyz")
            run.notes["readyz_503_after_s"] = round(time.monotonic() - began, 1)
            await asyncio.sleep(5)  # the fault's length: replies keep coming and must wait, not be dead-lettered
            await full.delete(if_unused=False, if_empty=False)
            run.cleared()
        finally:
            await connection.close()

    figures, run = await reply_scenario(
        env, "07e-reply-subscriber-queue-full", "Replies: a subscriber queue full (reject-publish) for 5 s", fault
    )
    assert figures.lost == 0
    assert figures.dead_lettered == 0, figures
    assert "readyz_503_after_s" in run.notes


async def test_7c_sqs_unreachable_while_replies_stream(env: Env) -> None:
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))  # the connector's way to SQS; the replies are sent around it
    await proxy.start()

    async def fault(run: Run) -> None:
        [connector] = run.connectors
        await proxy.stop()  # connections cut, new ones refused
        started = time.monotonic()

        async def sqs_reported_down() -> bool:
            status, body = await connector.readiness()
            if status == 503 and "sqs" in body.get("down", []):
                run.notes["readyz_down_during_outage"] = body["down"]
                return True
            return False

        # The outage is observable: readiness names SQS while the endpoint is away.
        await poll(sqs_reported_down, SQS_OUTAGE_SECONDS - 5, "/readyz to report sqs down")
        run.notes["sqs_reported_down_after_seconds"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(SQS_OUTAGE_SECONDS - (time.monotonic() - started))  # the rest of the outage
        assert connector.running, f"connector exited during the SQS outage:\n{connector.log_tail()}"
        await proxy.start()
        run.cleared()

    async def before_stop(run: Run) -> None:
        [connector] = run.connectors
        # The daemon rode out the outage: same process, ready again, every poller running.
        assert connector.running and connector.starts == 1, connector.log_tail()
        status, body = await connector.readiness()
        assert status == 200 and body["checks"]["pollers"] and body["checks"]["sqs"], body
        run.notes["poll_failures_logged"] = len(connector.log_events("inbound.poll_failed"))
        run.notes["delete_failures_logged"] = len(connector.log_events("inbound.delete_failed"))
        run.notes["batch_failures_logged"] = len(connector.log_events("inbound.batch_failed"))

    try:
        figures, run = await reply_scenario(
            env,
            "07c-reply-sqs-outage",
            f"Replies: SQS endpoint unreachable for {SQS_OUTAGE_SECONDS} s",
            fault,
            sqs_endpoint=proxy.url,
            before_stop=before_stop,
        )
    finally:
        await proxy.stop()
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    assert figures.duplicated <= REPLIES_IN_HAND
    assert run.notes["poll_failures_logged"] > 0  # the pollers really met the outage ...
    assert run.notes["batch_failures_logged"] == 0  # ... and no batch ended in an unexpected error
    assert run.notes["exit_codes"] == [0]
