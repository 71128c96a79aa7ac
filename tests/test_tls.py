"""Mutual TLS to RabbitMQ, against a private broker with a TLS listener and certificates made here."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from lamassu_aws_connector.config import APP_ID, Settings
from lamassu_aws_connector.service import Service, StartupError

from . import samples
from .conftest import World, running, wait_for
from .test_ops import get
from .tls_broker import TlsBroker, tls_broker_fixture  # noqa: F401

pytestmark = pytest.mark.integration


def tls_settings(world: World, broker: TlsBroker, **tls: object) -> Settings:
    pki = broker.pki
    values = {
        "ca_file": str(pki.ca_cert),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        **tls,
    }
    base = world.settings().model_dump(mode="json")
    base["amqp"].update({"url": broker.url, "tls": values, "reconnect_interval_seconds": 1})
    return Settings(**base)


async def test_mutual_tls_connection_forwards_events(world: World, tls_broker: TlsBroker) -> None:
    settings = tls_settings(world, tls_broker)
    async with running(settings):
        connection = await aio_pika.connect_robust(tls_broker.url, ssl_context=tls_broker.pki.client_context())
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(world.exchange)
            event = samples.body(samples.v3_device_create())
            await exchange.publish(aio_pika.Message(event), routing_key="device.create")
            [message] = await world.take_sqs(world.command_queue, 1)
        finally:
            await connection.close()
        # The broker authenticated the connector's own connection by its client certificate.
        rows = await asyncio.to_thread(tls_broker.list_connections, "client_properties", "ssl", "peer_cert_subject")
    ours = [row for row in rows if APP_ID in str(row.get("client_properties"))]
    assert ours and ours[0]["ssl"] is True
    assert tls_broker.pki.client_cn in str(ours[0]["peer_cert_subject"])
    assert message["Body"].encode() == event


async def test_untrusted_broker_certificate_stops_startup_clearly(world: World, tls_broker: TlsBroker) -> None:
    settings = tls_settings(world, tls_broker, ca_file=str(tls_broker.pki.other_ca_cert))
    service = Service(settings)
    with pytest.raises(StartupError, match="certificate verify failed"):
        await asyncio.wait_for(service.run(), 20)


async def test_verification_off_only_when_asked(world: World, tls_broker: TlsBroker) -> None:
    settings = tls_settings(world, tls_broker, ca_file=str(tls_broker.pki.other_ca_cert), verify=False)
    async with running(settings) as service:
        assert service.readiness()["amqp_connection"]


async def test_readiness_and_delivery_across_a_broker_restart(world: World, tls_broker: TlsBroker) -> None:
    """A real RabbitMQ application restart (stop_app/start_app): 503 while it is down, 200 and working after."""
    settings = tls_settings(world, tls_broker)
    async with running(settings) as service:
        assert (await get(service, "/readyz"))[0] == 200
        await asyncio.to_thread(tls_broker.rabbitmqctl, "stop_app")
        try:
            await wait_for(lambda: _status_is(service, 503), 15, "readiness 503 while the broker is down")
            assert "amqp_connection" in (await get(service, "/readyz"))[1]["down"]
        finally:
            await asyncio.to_thread(tls_broker.rabbitmqctl, "start_app")
        await wait_for(lambda: _status_is(service, 200), 30, "readiness 200 after the restart")
        # The durable queue and its binding survived; the restored consumer forwards new events.
        connection = await aio_pika.connect_robust(tls_broker.url, ssl_context=tls_broker.pki.client_context())
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(world.exchange)
            event = samples.body(samples.v3_device_create())
            await exchange.publish(aio_pika.Message(event), routing_key="device.create")
            [message] = await world.take_sqs(world.command_queue, 1)
        finally:
            await connection.close()
    assert message["Body"].encode() == event


async def _status_is(service: Service, expected: int) -> bool:
    return (await get(service, "/readyz"))[0] == expected
