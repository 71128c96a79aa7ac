"""The SQS adapter's two paths (signed JSON requests, full botocore client) behave alike on a real server.

Every test runs on both paths and asserts the observable outcome: what lands in SQS, what comes
back, and how each failure is classified by the pipelines' helpers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)

from lamassu_aws_connector import http_pool
from lamassu_aws_connector.config import SqsConfig
from lamassu_aws_connector.metrics import Metrics
from lamassu_aws_connector.outcomes import Outcome, classify_sqs_error, is_unavailable
from lamassu_aws_connector.outcomes import aws_error_code as error_code
from lamassu_aws_connector.sqs import _NOT_FOUND_CODES, QueueInfo, QueueNotFound, SqsGateway
from lamassu_aws_connector.sqs_wire import SigV4Signer, botocore_error

from .conftest import SQS_ENDPOINT, World
from .faultproxy import FaultProxy
from .tls_broker import make_pki

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=[True, False], ids=["fast_path", "botocore"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@asynccontextmanager
async def gateway(fast_path: bool, endpoint: str = SQS_ENDPOINT) -> AsyncIterator[SqsGateway]:
    config = SqsConfig(endpoint_url=endpoint, fast_path=fast_path, connect_timeout_seconds=2, wait_time_seconds=1)
    async with SqsGateway(config, Metrics()) as sqs:
        yield sqs


@asynccontextmanager
async def proxy(fault_rates: dict[str, float], signing_secret: str | None = None) -> AsyncIterator[FaultProxy]:
    fault_proxy = FaultProxy(SQS_ENDPOINT, fault_rates, signing_secret=signing_secret)
    await fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.stop()


def entry(number: int) -> dict[str, object]:
    return {
        "Id": str(number),
        "MessageBody": f'{{"specversion":"1.0","id":"e{number}","data":"ünïcödé {number}"}}',
        "MessageAttributes": {
            "ce-id": {"DataType": "String", "StringValue": f"e{number}"},
            "ce-type": {"DataType": "String", "StringValue": "certificate.status.update"},
        },
    }


async def receive_all(sqs: SqsGateway, queue: QueueInfo, count: int) -> list[dict[str, object]]:
    received: list[dict[str, object]] = []
    for _ in range(20):
        received += await sqs.receive(queue, wait_seconds=1, visibility_timeout=30)
        if len(received) >= count:
            break
    return received


async def test_send_receive_delete_round_trip(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as sqs:
        queue = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        sent = await sqs.send_batch(queue, [entry(n) for n in range(10)])
        assert sorted(int(s["Id"]) for s in sent["Successful"]) == list(range(10))
        assert not sent.get("Failed")
        assert sent["ResponseMetadata"]["HTTPStatusCode"] == 200

        received = await receive_all(sqs, queue, 10)
        by_id = {m["MessageAttributes"]["ce-id"]["StringValue"]: m for m in received}  # type: ignore[index]
        assert sorted(by_id) == sorted(f"e{n}" for n in range(10))
        for number in range(10):
            message = by_id[f"e{number}"]
            assert message["Body"] == entry(number)["MessageBody"]
            assert message["MessageAttributes"]["ce-type"] == {  # type: ignore[index]
                "DataType": "String",
                "StringValue": "certificate.status.update",
            }
            assert message["Attributes"]["ApproximateReceiveCount"] == "1"  # type: ignore[index]

        receipts = {str(i): str(m["ReceiptHandle"]) for i, m in enumerate(received)}
        deleted = await sqs.delete_batch(queue, receipts)
        assert len(deleted["Successful"]) == 10 and not deleted.get("Failed")
        assert await world.sqs_count(world.command_queue) == 0


async def test_queues_resolved_and_created_alike_on_both_paths(world: World, fast_path: bool) -> None:
    fifo_name = f"{world.command_queue}.fifo"
    async with gateway(fast_path) as sqs:
        with pytest.raises(QueueNotFound, match="does not exist"):
            await sqs.resolve(world.command_queue, create=False)
        created = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        fifo = await sqs.resolve(fifo_name, create=True)
        world.sqs_queues.append(fifo_name)
        again = await sqs.resolve(world.command_queue, create=False)
        # Only the full client's path builds it: the fast path with a known endpoint needs none.
        assert (sqs._client is None) is fast_path
    assert created == again
    assert created.url.endswith(f"/{world.command_queue}") and not created.fifo
    assert created.max_message_bytes == 1_048_576  # read from the queue, not assumed
    assert fifo.fifo and fifo.url.endswith(f"/{fifo_name}")


async def test_https_endpoint_verified_against_the_ca_bundle(
    world: World, fast_path: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    tls_proxy = FaultProxy(SQS_ENDPOINT, {}, tls=server)
    await tls_proxy.start()
    try:
        # A certificate no trusted CA signed: refused (TLS verification is on by default), nothing sent.
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        async with gateway(fast_path, tls_proxy.url) as sqs:
            with pytest.raises(SSLError):
                await sqs.resolve(world.command_queue, create=True)
        assert tls_proxy.forwarded == 0
        # The operator's CA bundle (AWS_CA_BUNDLE, as botocore reads it) makes the same endpoint good.
        monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca_cert))
        async with gateway(fast_path, tls_proxy.url) as sqs:
            queue = await sqs.resolve(world.command_queue, create=True)
            world.sqs_queues.append(world.command_queue)
            sent = await sqs.send_batch(queue, [entry(n) for n in range(3)])
        assert len(sent["Successful"]) == 3
        assert await world.sqs_count(world.command_queue) == 3
        assert tls_proxy.forwarded >= 3
    finally:
        await tls_proxy.stop()


async def test_partial_batch_failure_comes_back_per_entry(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as sqs:
        queue = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        entries = [entry(n) for n in range(4)]
        entries[2]["MessageBody"] = "control character \x01 is not allowed in SQS"
        answer = await sqs.send_batch(queue, entries)
        assert sorted(s["Id"] for s in answer["Successful"]) == ["0", "1", "3"]
        assert [f["Id"] for f in answer["Failed"]] == ["2"]
        assert answer["Failed"][0]["Code"]  # the reason, for the dead-letter message
        assert await world.sqs_count(world.command_queue) == 3


async def test_missing_queue_and_closed_port_classified_alike(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as sqs:
        queue = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        missing = QueueInfo(
            "never-created", queue.url.replace(world.command_queue, f"t{world.tag}-never"), 262_144, False
        )
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(missing, [entry(0)])
        assert error_code(raised.value) in _NOT_FOUND_CODES
        # A missing queue is the dependency's trouble, not the events': held, never dead-lettered.
        assert not is_unavailable(raised.value) and classify_sqs_error(raised.value) is Outcome.DEPENDENCY
        assert sqs.available  # the server answered

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    async with gateway(fast_path, closed) as sqs:
        with pytest.raises(Exception) as failed:
            await sqs.send_batch(QueueInfo("q", f"{closed}/000000000000/q", 262_144, False), [entry(0)])
        assert is_unavailable(failed.value), repr(failed.value)
        assert not sqs.available


@pytest.mark.parametrize("fault", ["503", "500", "throttle"])
async def test_server_faults_retried_then_raised_as_unavailable(world: World, fast_path: bool, fault: str) -> None:
    async with gateway(fast_path) as direct:
        queue = await direct.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
    async with proxy({fault: 1.0}) as faulty, gateway(fast_path, faulty.url) as sqs:
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(queue, [entry(0)])
        assert is_unavailable(raised.value) and classify_sqs_error(raised.value) is Outcome.DEPENDENCY
        assert error_code(raised.value) == {"503": "ServiceUnavailable", "500": "InternalError"}.get(
            fault, "RequestThrottled"
        )
        assert faulty.injected[fault] == 4  # the request and three quick retries, on either path
        faulty.enabled = False
        assert (await sqs.send_batch(queue, [entry(1)]))["Successful"]
    assert await world.sqs_count(world.command_queue) == 1


async def test_requests_carry_a_signature_aws_would_accept(world: World, fast_path: bool) -> None:
    async with gateway(fast_path) as direct:
        queue = await direct.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
    async with proxy({}, signing_secret="test") as checking, gateway(fast_path, checking.url) as sqs:
        assert (await sqs.send_batch(queue, [entry(n) for n in range(3)]))["Successful"]
        received = await receive_all(sqs, queue, 3)
        deleted = await sqs.delete_batch(queue, {str(i): str(m["ReceiptHandle"]) for i, m in enumerate(received)})
        assert len(deleted["Successful"]) == 3
        assert checking.signatures_checked >= 3

    async with proxy({}, signing_secret="not-the-secret") as strict, gateway(fast_path, strict.url) as sqs:
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(queue, [entry(9)])
        assert error_code(raised.value) == "SignatureDoesNotMatch"
        assert not is_unavailable(raised.value) and classify_sqs_error(raised.value) is Outcome.DEPENDENCY
    assert await world.sqs_count(world.command_queue) == 0


# Error answers as AWS sends them, in both protocol shapes: (code in the JSON protocol's __type,
# query-compatible code (x-amzn-query-error header, and the XML <Code>), HTTP status, expected outcome).
RECORDED_ERRORS = [
    ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", 400, Outcome.DEPENDENCY),
    ("AccessDenied", "AccessDenied", 403, Outcome.DEPENDENCY),
    ("InvalidClientTokenId", "InvalidClientTokenId", 403, Outcome.DEPENDENCY),
    ("IncompleteSignature", "IncompleteSignature", 400, Outcome.DEPENDENCY),
    ("OptInRequired", "OptInRequired", 403, Outcome.DEPENDENCY),
    ("InvalidIdentityToken", "InvalidIdentityToken", 400, Outcome.DEPENDENCY),
    ("IDPCommunicationError", "IDPCommunicationError", 400, Outcome.DEPENDENCY),
    ("KmsAccessDenied", "KMS.AccessDeniedException", 400, Outcome.DEPENDENCY),
    ("KmsDisabled", "KMS.DisabledException", 400, Outcome.DEPENDENCY),
    ("RequestThrottled", "RequestThrottled", 400, Outcome.DEPENDENCY),
    ("SomethingNobodyHasSeen", "SomethingNobodyHasSeen", 400, Outcome.DEPENDENCY),
    ("InvalidMessageContents", "InvalidMessageContents", 400, Outcome.PERMANENT),
    ("InvalidParameterValue", "InvalidParameterValue", 400, Outcome.PERMANENT),
    ("BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong", 400, Outcome.PERMANENT),
    ("MissingParameter", "MissingParameter", 400, Outcome.PERMANENT),
]


@asynccontextmanager
async def recorded_errors(answer: tuple[str, str, int, Outcome]) -> AsyncIterator[str]:
    """An endpoint that answers every request with one recorded AWS error, in the request's protocol."""
    json_code, query_code, status, _ = answer

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        fault = "Sender" if status < 500 else "Receiver"
        if request.headers.get("X-Amz-Target"):
            return web.json_response(
                {"__type": f"com.amazonaws.sqs#{json_code}", "message": f"recorded {json_code}"},
                status=status,
                headers={"x-amzn-query-error": f"{query_code};{fault}"},
                content_type="application/x-amz-json-1.0",
            )
        xml = (
            '<?xml version="1.0"?><ErrorResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
            f"<Error><Type>{fault}</Type><Code>{query_code}</Code><Message>recorded {json_code}</Message></Error>"
            "<RequestId>recorded</RequestId></ErrorResponse>"
        )
        return web.Response(status=status, text=xml, content_type="text/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("answer", RECORDED_ERRORS, ids=[a[0] for a in RECORDED_ERRORS])
async def test_recorded_aws_errors_classified_alike_on_both_paths(
    fast_path: bool, answer: tuple[str, str, int, Outcome]
) -> None:
    async with recorded_errors(answer) as endpoint, gateway(fast_path, endpoint) as sqs:
        queue = QueueInfo("q", f"{endpoint}/000000000000/q", 262_144, False)
        with pytest.raises(ClientError) as raised:
            await sqs.send_batch(queue, [entry(0)])
    code = error_code(raised.value)
    assert classify_sqs_error(raised.value) is answer[3], code
    # Both paths report the query-compatible code (what SQS's own documentation and logs show).
    assert code == answer[1]


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("http://127.0.0.1:4566/", None),
        ("https://sqs.eu-west-1.amazonaws.com/", "FwoGZXIvYXdzEJr//////////token+with/odd=chars"),
        ("https://sqs.eu-west-1.amazonaws.com:443/", None),
        ("http://[::1]:9324/", None),
    ],
)
async def test_signer_signs_as_botocore_does(url: str, token: str | None) -> None:
    """The fast path's own SigV4 gives the Authorization botocore's SigV4Auth gives, byte for byte."""
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"QueueUrl":"u","Entries":[{"Id":"0","MessageBody":"\xc3\xbc  two  spaces"}]}'
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "AmazonSQS.SendMessageBatch",
        "x-amzn-query-mode": "true",
    }
    reference = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, "sqs", "eu-west-1").add_auth(reference)
    moment = dt.datetime.strptime(reference.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    signer = SigV4Signer(url, "eu-west-1", "sqs")
    ours = signer.headers(body, headers, credentials.get_frozen_credentials(), now=moment)
    assert ours["Authorization"] == reference.headers["Authorization"]
    assert ours.get("X-Amz-Security-Token") == reference.headers.get("X-Amz-Security-Token")
    assert signer.host == urlsplit(url).netloc.removesuffix(":443")
    # A second call reuses the day's signing key and still signs the new body.
    again = signer.headers(body + b" ", headers, credentials.get_frozen_credentials(), now=moment)
    assert again["Authorization"] != ours["Authorization"]


KEYS = {"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "secret/env+key"}


@pytest.mark.parametrize(
    ("environment", "read_directly"),
    [
        (KEYS, True),
        ({**KEYS, "AWS_SESSION_TOKEN": "session-token"}, True),
        ({**KEYS, "AWS_SECURITY_TOKEN": "security-token", "AWS_SESSION_TOKEN": "session-token"}, True),
        ({**KEYS, "AWS_SECURITY_TOKEN": "", "AWS_SESSION_TOKEN": "session-token"}, True),
        ({**KEYS, "AWS_SESSION_TOKEN": ""}, True),
        ({**KEYS, "AWS_CREDENTIAL_EXPIRATION": "2099-01-01T00:00:00Z"}, False),  # refreshable: botocore's
        ({**KEYS, "AWS_PROFILE": "other"}, False),
        ({"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": ""}, False),  # half a pair: botocore's error
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "secret"}, False),
    ],
    ids=["keys", "session-token", "security-token-first", "empty-security-token", "empty-token", "expiring",
         "profile", "no-secret", "no-key"],
)  # fmt: skip
async def test_environment_credentials_are_those_botocores_chain_finds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: dict[str, str], read_directly: bool
) -> None:
    """The fast path reads a plain key pair from the environment itself (no botocore session at
    start); wherever it does, botocore's chain would have returned exactly those credentials."""
    from aiobotocore.session import AioSession  # noqa: PLC0415

    from lamassu_aws_connector.sqs_wire import environment_credentials  # noqa: PLC0415

    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    (tmp_path / "config").write_text("[profile other]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    ours = environment_credentials()
    assert (ours is not None) is read_directly
    if ours is None:
        return
    chain = await AioSession().get_credentials()
    assert chain is not None
    theirs = await chain.get_frozen_credentials()
    mine = await ours.get_frozen_credentials()
    assert (mine.access_key, mine.secret_key, mine.token) == (theirs.access_key, theirs.secret_key, theirs.token)


async def test_fast_path_starts_without_botocores_session(world: World) -> None:
    """With keys in the environment (as here) and an endpoint set, nothing builds botocore's session:
    the ≈ 0.1 s of CPU it costs at every start is not paid."""
    async with gateway(fast_path=True) as sqs:
        assert sqs._session is None
        info = await sqs.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
        await sqs.send_batch(info, [{"Id": "0", **entry(0)}])
        assert sqs._session is None
    assert await world.sqs_count(world.command_queue) == 1


async def test_the_daemon_imports_no_botocore_client() -> None:
    code = "import sys, lamassu_aws_connector.cli, lamassu_aws_connector.service; print(sorted(sys.modules))"
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout
    for module in ("'aiobotocore.session'", "'botocore.client'", "'dateutil'", "'urllib3'"):
        assert module not in loaded
    assert "'lamassu_aws_connector.amqp'" in loaded


PROXY = "http://proxy.example:3128"
SQS_AWS, SQS_LOCAL = "https://sqs.eu-west-1.amazonaws.com/", "http://127.0.0.1:4566/"


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({}, SQS_AWS, None),
        ({"HTTPS_PROXY": PROXY}, SQS_AWS, PROXY),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": ".amazonaws.com"}, SQS_AWS, None),
        ({"http_proxy": PROXY}, SQS_LOCAL, PROXY),
        ({"no_proxy": "localhost"}, SQS_LOCAL, None),
    ],
    ids=["none", "https-proxy", "no-proxy-matches", "http-proxy", "no-proxy-only"],
)
async def test_the_proxy_is_the_one_botocore_finds(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str, expected: str | None
) -> None:
    """The fast path imports botocore's proxy reading only when a *_proxy variable is set, and then
    uses exactly its answer."""
    from botocore.utils import get_environ_proxies  # noqa: PLC0415

    from lamassu_aws_connector.sqs_wire import environ_proxy  # noqa: PLC0415

    for name in [name for name in os.environ if name.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert environ_proxy(url) == get_environ_proxies(url).get(url.split(":", 1)[0]) == expected


async def test_with_a_proxy_in_the_environment_the_calls_go_through_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean transport speaks no proxy protocol: with a proxy set, the calls go through aiohttp."""
    from lamassu_aws_connector.sqs_wire import AiohttpTransport, LeanTransport  # noqa: PLC0415

    for name in [name for name in os.environ if name.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    async with gateway(fast_path=True) as direct:
        assert isinstance(direct._wire._transport, LeanTransport)  # type: ignore[union-attr]
        queue = await direct.resolve(world.command_queue, create=True)
        world.sqs_queues.append(world.command_queue)
    async with proxy({}) as forwarding:
        monkeypatch.setenv("HTTP_PROXY", forwarding.url)
        async with gateway(fast_path=True) as sqs:
            assert isinstance(sqs._wire._transport, AiohttpTransport)  # type: ignore[union-attr]
            assert len((await sqs.send_batch(queue, [entry(n) for n in range(2)]))["Successful"]) == 2
        assert forwarding.forwarded >= 1
    assert await world.sqs_count(world.command_queue) == 2


def _aiohttp_errors() -> list[tuple[BaseException, type[Exception]]]:
    import aiohttp  # noqa: PLC0415
    from aiohttp.client_reqrep import ConnectionKey  # noqa: PLC0415

    key = ConnectionKey(
        host="sqs.test", port=443, is_ssl=True, ssl=True, proxy=None, proxy_auth=None, proxy_headers_hash=None
    )
    return [
        # subclasses before their bases: a certificate error is a connector error is an OS error
        (aiohttp.ClientConnectorCertificateError(key, ValueError("unknown CA")), SSLError),
        (aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")), EndpointConnectionError),
        (aiohttp.ConnectionTimeoutError(), ConnectTimeoutError),
        (aiohttp.ServerTimeoutError(), ReadTimeoutError),
        (TimeoutError(), ReadTimeoutError),
        (aiohttp.ServerDisconnectedError(), ConnectionClosedError),
        (aiohttp.ClientPayloadError(), ConnectionClosedError),
        (aiohttp.ClientOSError(104, "reset"), ConnectionClosedError),
        (ssl.SSLError(1, "bad"), SSLError),
        (aiohttp.ClientError("other"), HTTPClientError),
    ]


POOL_ERRORS = [
    (http_pool.TlsFailed("x"), SSLError),
    (http_pool.ConnectTimeout("x"), ConnectTimeoutError),
    (http_pool.ConnectFailed("x"), EndpointConnectionError),
    (http_pool.ReadTimeout("x"), ReadTimeoutError),
    (http_pool.ConnectionDropped("x"), ConnectionClosedError),
    (http_pool.BadResponse("x"), HTTPClientError),
]


@pytest.mark.parametrize("transport", ["pool", "aiohttp"])
async def test_transport_failures_are_raised_as_the_full_clients_exceptions(transport: str) -> None:
    """Both transports report a failure as the botocore exception the full client raises, so the
    failure model classifies all three paths alike."""
    from lamassu_aws_connector.sqs_wire import AiohttpTransport, LeanTransport  # noqa: PLC0415

    if transport == "pool":
        table, cases = LeanTransport._ERRORS, POOL_ERRORS
    else:
        wire = AiohttpTransport("http://127.0.0.1:9/", ssl_context=None, proxy="http://127.0.0.1:9",
                                timeouts=(1, 1), max_connections=1)  # fmt: skip
        table, cases = wire._errors, _aiohttp_errors()
        await wire.close()
    for failure, expected in cases:
        raised = botocore_error(failure, "http://sqs.test/", table)
        assert type(raised) is expected, (failure, raised)
        assert raised.kwargs["error"] is failure
    # Connection trouble is the dependency's, to be retried; an unreadable answer too.
    for failure, _ in POOL_ERRORS:
        assert classify_sqs_error(botocore_error(failure, "u", LeanTransport._ERRORS)) is Outcome.DEPENDENCY
