"""The mutual-TLS broker fixture works, with plain aio-pika (no daemon code).

Also pins down how aio-pika 10 / aiormq 7 report TLS failures, which the daemon must classify:

* the client does not trust the server's CA: ``aiormq.exceptions.AMQPConnectionError`` raised while
  creating the transport, ``__cause__`` ``ssl.SSLCertVerificationError`` (deterministic);
* the broker rejects the client (no certificate, or one from an unknown CA): with TLS 1.3 the client
  finishes its side of the handshake before the server's verdict arrives, so it surfaces on the first
  read as ``AMQPConnectionError`` with ``__cause__`` either ``ssl.SSLError`` (alert
  ``TLSV13_ALERT_CERTIFICATE_REQUIRED`` / ``TLSV1_ALERT_UNKNOWN_CA``) or ``ConnectionResetError``,
  about half and half (a race between the alert and the TCP reset).

All of them fail within milliseconds, and ``connect_robust`` (default ``fail_fast=1``) raises on the
first failed attempt; with ``fail_fast=0``, or once a connection has been established, it retries
forever.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid

import aio_pika
import aiormq
import pytest
from yarl import URL

from .tls_broker import TlsBroker, tls_broker_fixture  # noqa: F401

pytestmark = pytest.mark.integration

FAST = 5.0  # seconds: a certificate failure must not take anywhere near a retry interval


async def _roundtrip(connection: aio_pika.abc.AbstractConnection) -> tuple[bytes, bytes]:
    """Publishes a random body to a fresh queue and gets it back: (received, sent)."""
    channel = await connection.channel()
    queue = await channel.declare_queue(f"tls-smoke-{uuid.uuid4().hex}", exclusive=True)
    body = uuid.uuid4().bytes
    await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
    message = await queue.get(timeout=5, fail=True)
    assert message is not None
    await message.ack()
    await channel.close()
    return message.body, body


async def _expect_connect_failure(url: str, ctx: ssl.SSLContext | None) -> tuple[BaseException, float]:
    """What ``connect_robust(url, ssl_context=ctx)`` does, keeping the connection object so it can be
    closed (a failed connect_robust leaks it, and its ``__del__`` schedules an un-awaited close)."""
    connection = aio_pika.RobustConnection(URL(url), ssl_context=ctx)
    t0 = time.monotonic()
    try:
        with pytest.raises(aiormq.exceptions.AMQPConnectionError) as info:
            # wait_for only guards the test: the failure is expected long before.
            await asyncio.wait_for(connection.connect(), 30)
        return info.value, time.monotonic() - t0
    finally:
        await connection.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_mutual_tls_roundtrip_with_ssl_context(tls_broker: TlsBroker, host: str) -> None:
    ctx = tls_broker.pki.client_context()
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    connection = await aio_pika.connect_robust(tls_broker.url_for(host), ssl_context=ctx)
    try:
        received, sent = await _roundtrip(connection)
        assert received == sent
        # The broker saw our client certificate on a TLS connection.
        seen = await asyncio.to_thread(tls_broker.list_connections)
        assert len(seen) == 1
        assert seen[0]["ssl"] is True
        assert seen[0]["peer_cert_subject"] == f"CN={tls_broker.pki.client_cn},O=lamassu-aws-connector tests"
        assert seen[0]["user"] == "guest"
    finally:
        await connection.close()


async def test_url_query_parameters_configure_tls(tls_broker: TlsBroker) -> None:
    pki = tls_broker.pki
    url = tls_broker.url_for(query=f"cafile={pki.ca_cert}&certfile={pki.client_cert}&keyfile={pki.client_key}")
    connection = await aio_pika.connect_robust(url)  # no ssl_context: aiormq builds one from the query
    try:
        received, sent = await _roundtrip(connection)
        assert received == sent
    finally:
        await connection.close()


async def test_plain_amqp_is_not_offered(tls_broker: TlsBroker) -> None:
    # Only the TLS listener exists: an amqp:// client speaking plaintext to it gets no AMQP answer.
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):
        await asyncio.wait_for(aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{tls_broker.port}/"), 30)


async def test_missing_client_certificate_is_rejected(tls_broker: TlsBroker) -> None:
    ctx = tls_broker.pki.client_context(with_client_cert=False)
    error, elapsed = await _expect_connect_failure(tls_broker.url, ctx)
    assert elapsed < FAST
    assert not isinstance(error, aiormq.exceptions.ProbableAuthenticationError)
    # TLS 1.3: the broker's "certificate required" alert races with its TCP reset.
    assert isinstance(error.__cause__, ssl.SSLError | ConnectionResetError), repr(error.__cause__)
    if isinstance(error.__cause__, ssl.SSLError):
        assert "CERTIFICATE_REQUIRED" in str(error.__cause__)


async def test_client_certificate_from_unknown_ca_is_rejected(tls_broker: TlsBroker) -> None:
    pki = tls_broker.pki
    ctx = pki.client_context(certfile=pki.other_client_cert, keyfile=pki.other_client_key)
    error, elapsed = await _expect_connect_failure(tls_broker.url, ctx)
    assert elapsed < FAST
    assert isinstance(error.__cause__, ssl.SSLError | ConnectionResetError), repr(error.__cause__)
    if isinstance(error.__cause__, ssl.SSLError):
        assert "UNKNOWN_CA" in str(error.__cause__)


async def test_untrusted_server_certificate_fails_verification(tls_broker: TlsBroker) -> None:
    ctx = tls_broker.pki.client_context(cafile=tls_broker.pki.other_ca_cert)
    error, elapsed = await _expect_connect_failure(tls_broker.url, ctx)
    assert elapsed < FAST
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError), repr(error.__cause__)
    assert error.__cause__.verify_code == 19  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    # aiormq re-raises OSError args, so the SSL error number/message are on the wrapper too.
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)


async def test_hostname_verification_is_on(tls_broker: TlsBroker) -> None:
    # The good CA, but a name the server certificate does not carry (its SANs: localhost, 127.0.0.1, ::1).
    ctx = tls_broker.pki.client_context()
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", tls_broker.port, ssl=ctx, server_hostname="not-localhost"), 10
        )
    assert "Hostname mismatch" in str(info.value)


async def test_fail_fast_off_retries_certificate_errors_forever(
    tls_broker: TlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # What the daemon must avoid: with fail_fast=0 (and on every reconnect after a first success) a
    # certificate error is just another retry, logged as a warning by aio_pika.robust_connection.
    ctx = tls_broker.pki.client_context(cafile=tls_broker.pki.other_ca_cert)
    connection = aio_pika.RobustConnection(
        URL(tls_broker.url_for(query="fail_fast=0&reconnect_interval=0.2")), ssl_context=ctx
    )
    try:
        with caplog.at_level(logging.WARNING, logger="aio_pika.robust_connection"), pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.connect(), 1.5)
    finally:
        # Required: aio-pika 10.2 swallows a cancellation that lands during a connection attempt
        # (its factory task retries instead), so only close() stops the retry loop.
        await connection.close()
    retries = [r for r in caplog.records if "CERTIFICATE_VERIFY_FAILED" in r.getMessage()]
    assert len(retries) >= 3


@pytest.mark.parametrize("how", ["ssl_context", "url_query"])
async def test_robust_reconnect_keeps_tls_settings(tls_broker: TlsBroker, how: str) -> None:
    pki = tls_broker.pki
    ctx: ssl.SSLContext | None = None
    if how == "ssl_context":
        ctx = pki.client_context()
        url = tls_broker.url_for(query="reconnect_interval=0.2")
    else:
        url = tls_broker.url_for(
            query=f"cafile={pki.ca_cert}&certfile={pki.client_cert}&keyfile={pki.client_key}&reconnect_interval=0.2"
        )
    connection = await aio_pika.connect_robust(url, ssl_context=ctx)
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    try:
        before = {c["name"] for c in await asyncio.to_thread(tls_broker.list_connections)}
        await asyncio.to_thread(tls_broker.close_all_connections, "tls smoke test")
        await asyncio.wait_for(reconnected.wait(), 15)
        received, sent = await _roundtrip(connection)
        assert received == sent
        after = await asyncio.to_thread(tls_broker.list_connections)
        assert len(after) == 1 and after[0]["name"] not in before  # a new TCP connection...
        assert after[0]["peer_cert_subject"] == f"CN={pki.client_cn},O=lamassu-aws-connector tests"  # ...with mTLS
        if ctx is not None:
            assert connection.transport is not None
            assert connection.kwargs["context"] is ctx  # the very same context object is reused
    finally:
        await connection.close()
