"""Scenario 7: faults on the reply flow (SQS -> RabbitMQ), counted on a queue bound to the reply
exchange; afterwards the SQS response queue must be empty (every reply deleted, none stuck)."""

from __future__ import annotations

import pytest

from .driver import Env, Run, reply_scenario

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
