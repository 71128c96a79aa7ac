"""The events consumer's Delivery reads a frame exactly as aio-pika's IncomingMessage does (no services)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from aio_pika import IncomingMessage
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands as spec
from pamqp.header import ContentHeader

from lamassu_aws_connector.amqp import Delivery, persistent_copy

FIELDS = [
    "body",
    "headers",
    "content_type",
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
    "routing_key",
    "exchange",
    "redelivered",
    "delivery_tag",
]


class RecordingChannel:
    def __init__(self) -> None:
        self.is_closed = False
        self.acks: list[tuple[int, bool, bool]] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.acks.append((delivery_tag, multiple, wait))


def frame(channel: RecordingChannel, **properties: Any) -> DeliveredMessage:
    body = b'{"specversion":"1.0","id":"1","source":"s","type":"ca.create"}'
    return DeliveredMessage(
        delivery=spec.Basic.Deliver(
            consumer_tag="ctag", delivery_tag=42, redelivered=True, exchange="lamassu-events", routing_key="ca.create"
        ),
        header=ContentHeader(body_size=len(body), properties=spec.Basic.Properties(**properties)),
        body=body,
        channel=channel,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {
            "content_type": "text/json",
            "content_encoding": "utf-8",
            "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "n": 3},
            "delivery_mode": 2,
            "priority": 5,
            "correlation_id": "c-1",
            "reply_to": "replies",
            "message_id": "m-1",
            "timestamp": dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC),
            "message_type": "t",
            "app_id": "lamassu-ca",
        },
    ],
    ids=["bare", "every-property"],
)
async def test_delivery_reads_what_incoming_message_reads(properties: dict[str, Any]) -> None:
    channel = RecordingChannel()
    message = frame(channel, **properties)
    ours, theirs = Delivery(message), IncomingMessage(message)
    assert {name: getattr(ours, name) for name in FIELDS} == {name: getattr(theirs, name) for name in FIELDS}
    # The dead-letter copy is the same message whichever object it was made from.
    assert persistent_copy(ours, {"x": "1"}).properties == persistent_copy(theirs, {"x": "1"}).properties


async def test_delivery_acks_on_its_channel_and_refuses_once_the_channel_closed() -> None:
    channel = RecordingChannel()
    delivery = Delivery(frame(channel))
    await delivery.ack(multiple=True)
    assert channel.acks == [(42, True, False)]  # queued for the writer, not waited for
    channel.is_closed = True
    with pytest.raises(ChannelInvalidStateError):
        _ = delivery.channel
    with pytest.raises(ChannelInvalidStateError):
        await delivery.ack()
