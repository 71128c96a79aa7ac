"""Scenarios 1-6 and 11: faults on the outbound flow (RabbitMQ -> SQS), counted.

Each streams 2,000 numbered events at 400/s through the real connector process and injects its
fault a third of the way through; nothing may be lost and nothing may be dead-lettered.
"""

from __future__ import annotations

import pytest

from .driver import Env, Run, outbound_scenario

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


async def test_1_broker_killed_mid_stream(env: Env) -> None:
    async def fault(run: Run) -> None:
        await run.kill_broker(down_seconds=3)

    figures, _ = await outbound_scenario(
        env, "01-broker-sigkill", "RabbitMQ SIGKILLed mid-stream, back after 3 s", fault
    )
    assert figures.lost == 0
    assert figures.dead_lettered == 0
