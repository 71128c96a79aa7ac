"""Fixtures of the reliability suite: one private RabbitMQ node per module, an SQS client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from ..conftest import SQS_ENDPOINT
from ..private_broker import PrivateBroker
from .driver import AMQP_PASSWORD, AMQP_USER, LONG, LONG_ENV, Env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("long") and not LONG:
            item.add_marker(pytest.mark.skip(reason=f"long scenario: set {LONG_ENV}=1 (scripts/reliability-report.sh)"))


@pytest.fixture(scope="module")
def broker(services: None) -> Iterator[PrivateBroker]:
    """A private node (never the shared one) the scenarios may kill; the connector's user has a
    distinctive password the suite searches the logs for."""
    node = PrivateBroker()
    try:
        node.start()
        node.add_user(AMQP_USER, AMQP_PASSWORD)
        yield node
    finally:
        node.close()


@pytest.fixture
async def env(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[Env]:
    if not broker.running:
        # A scenario that failed half-way may have left the node down: the next one needs it up.
        broker.start()
    async with get_session().create_client("sqs", region_name="us-east-1", endpoint_url=SQS_ENDPOINT) as sqs:
        yield Env(broker=broker, sqs=sqs, sqs_endpoint=SQS_ENDPOINT, workdir=tmp_path)
