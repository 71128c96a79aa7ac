"""SQS's JSON protocol for the connector's calls: botocore's credentials, an own SigV4 signer, kept-alive connections.

Why not the full botocore client for these: it costs ≈ 2.5 to 3.4 ms of CPU per ``SendMessageBatch``
of ten 1 KB entries here — every attribute of every entry walked through the service model, the
user-agent string rebuilt, a dozen event hooks, the answer parsed back through the model. The same
request written with orjson and signed by botocore's ``SigV4Auth`` costs less than half of that.
What stays botocore's: the credential chain (and its refreshes), the CA bundle, and the exceptions.
The SigV4 signature is computed here (:class:`SigV4Signer`): botocore's ``SigV4Auth`` re-parsed the
URL, re-derived the signing key through four HMACs and walked every header for each call, ≈ 140 µs
per ``SendMessageBatch`` (≈ 7 % of the connector's CPU per event); the signing key is derived once
per day here. tests/test_sqs_wire.py checks it against botocore's signer and against a proxy that
verifies every request as AWS would. Failures are raised as the botocore exceptions the full client raises, with the
same error codes, so outcomes.py classifies them exactly alike on both paths.

Only operations whose input and output are plain JSON (strings, numbers, lists, maps; no blobs or
timestamps to convert) go this way: see ``WIRE_OPERATIONS``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httptools
import orjson
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from . import __version__, http_pool
from .outcomes import SQS_QUICK, failed_and, is_unavailable

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

WIRE_OPERATIONS = frozenset(
    {
        "SendMessageBatch",
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "GetQueueUrl",
        "CreateQueue",
        "GetQueueAttributes",
    }
)
_CONTENT_TYPE = "application/x-amz-json-1.0"


class SigV4Signer:
    """AWS Signature Version 4 for POST requests with a body and no query string, to one endpoint.

    Signs every header it is given (names lower-cased) plus ``host`` and ``x-amz-date`` (and
    ``x-amz-security-token`` for temporary credentials), as botocore does for these requests.
    """

    def __init__(self, url: str, region: str, service: str) -> None:
        parts = urlsplit(url)
        default_port = {"https": 443, "http": 80}.get(parts.scheme)
        self.host = parts.hostname or ""
        if ":" in self.host:  # an IPv6 literal
            self.host = f"[{self.host}]"
        if parts.port is not None and parts.port != default_port:
            self.host = f"{self.host}:{parts.port}"
        self._path = quote(parts.path or "/", safe="/~")
        self._region = region
        self._service = service
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, day) -> signing key

    def headers(
        self, body: bytes, headers: dict[str, str], credentials: Any, now: dt.datetime | None = None
    ) -> dict[str, str]:
        """``headers`` with ``X-Amz-Date``, the session token if any, and ``Authorization`` added."""
        moment = now or dt.datetime.now(dt.UTC)
        stamp = moment.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
        signed["host"] = self.host
        signed["x-amz-date"] = stamp
        result = {**headers, "X-Amz-Date": stamp}
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
            result["X-Amz-Security-Token"] = credentials.token
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join(
            (
                "POST",
                self._path,
                "",
                "".join(f"{name}:{signed[name]}\n" for name in names),
                signed_names,
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        result["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        return result

    def _key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = f"AWS4{secret}".encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # only the current one: credentials rotate, days pass
        return key


@dataclass(frozen=True, slots=True)
class FrozenCredentials:
    access_key: str
    secret_key: str
    token: str | None


class EnvironmentCredentials:
    """Keys read from the environment once, with the interface of botocore's credentials."""

    def __init__(self, frozen: FrozenCredentials) -> None:
        self._frozen = frozen

    async def get_frozen_credentials(self) -> FrozenCredentials:
        return self._frozen


def environment_credentials(environ: Mapping[str, str] = os.environ) -> EnvironmentCredentials | None:
    """The credentials botocore's chain returns when the environment holds a plain key pair, found
    without it: the chain's first provider reads ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    a token (``AWS_SECURITY_TOKEN`` before ``AWS_SESSION_TOKEN``) exactly so. Importing and building
    botocore's session and chain costs ≈ 0.1 s of CPU at every start (its client module tree,
    ``dateutil``, ``urllib3``). None whenever the chain could decide otherwise or differently (keys
    that expire and refresh, half a pair, a profile named in the environment, no keys): the chain
    resolves those as before. tests/test_sqs_wire.py compares both on each case."""
    access_key = environ.get("AWS_ACCESS_KEY_ID", "")
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not (access_key and secret_key) or any(
        environ.get(name) for name in ("AWS_CREDENTIAL_EXPIRATION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
    ):
        return None
    token = environ.get("AWS_SECURITY_TOKEN", "") or environ.get("AWS_SESSION_TOKEN", "") or None
    return EnvironmentCredentials(FrozenCredentials(access_key, secret_key, token))


def environ_proxy(url: str) -> str | None:
    """The proxy botocore would use for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``, …); botocore's
    reading of them is imported only when some ``*_proxy`` variable is set at all."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None
    from botocore.utils import get_environ_proxies  # noqa: PLC0415 - see above

    proxy: str | None = get_environ_proxies(url).get(url.split(":", 1)[0])
    return proxy


# (exception classes of a transport, the botocore exception the full client raises for them), first match wins
ErrorTable = tuple[tuple[tuple[type[BaseException], ...], type[BotoCoreError]], ...]


def botocore_error(exc: BaseException, url: str, table: ErrorTable) -> BotoCoreError:
    """The botocore exception the full client raises for this transport failure, so outcomes.py
    classifies both paths alike."""
    for classes, botocore_class in table:
        if isinstance(exc, classes):
            return botocore_class(endpoint_url=url, error=exc)
    return HTTPClientError(endpoint_url=url, error=exc)


class LeanTransport:
    """POSTs through :class:`http_pool.HttpPool`, failures raised as botocore's exceptions."""

    def __init__(self, pool: http_pool.HttpPool, url: str) -> None:
        self._pool = pool
        self._url = url
        self.user_agent = f"lamassu-aws-connector/{__version__} httptools/{httptools.__version__}"

    _ERRORS: ErrorTable = (
        ((http_pool.TlsFailed,), SSLError),
        ((http_pool.ConnectTimeout,), ConnectTimeoutError),
        ((http_pool.ConnectFailed,), EndpointConnectionError),
        ((http_pool.ReadTimeout,), ReadTimeoutError),
        ((http_pool.ConnectionDropped,), ConnectionClosedError),
        ((http_pool.BadResponse,), HTTPClientError),
    )

    async def post(self, headers: dict[str, str], body: bytes) -> http_pool.Response:
        try:
            return await self._pool.post(headers, body)
        except http_pool.PoolError as exc:
            raise botocore_error(exc, self._url, self._ERRORS) from exc

    async def close(self) -> None:
        await self._pool.close()


class AiohttpTransport:
    """POSTs through an aiohttp session: the way through a proxy (CONNECT tunnels, proxy
    authentication), which the lean transport does not speak."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None, proxy: str, timeouts: tuple[float, float],
                 max_connections: int) -> None:  # fmt: skip
        import aiohttp  # noqa: PLC0415 - only with a proxy

        self._aiohttp = aiohttp
        self._url = url
        self._errors: ErrorTable = (  # in this order: aiohttp's exception classes overlap
            ((aiohttp.ClientSSLError, ssl.SSLError), SSLError),
            ((aiohttp.ConnectionTimeoutError,), ConnectTimeoutError),
            ((aiohttp.ClientConnectorError,), EndpointConnectionError),
            ((TimeoutError, aiohttp.ServerTimeoutError), ReadTimeoutError),
            (
                (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError),
                ConnectionClosedError,
            ),
            ((aiohttp.ClientError,), HTTPClientError),
        )
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=ssl_context or True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts[0], sock_read=timeouts[1]),
            cookie_jar=aiohttp.DummyCookieJar(),
            proxy=proxy,
        )
        self.user_agent = f"lamassu-aws-connector/{__version__} aiohttp/{aiohttp.__version__}"

    async def post(self, headers: dict[str, str], body: bytes) -> http_pool.Response:
        try:
            async with self._http.post(self._url, data=body, headers=headers) as response:
                payload = await response.read()
                wanted = ("x-amzn-RequestId", "x-amzn-query-error")
                found = {name.lower(): response.headers[name] for name in wanted if name in response.headers}
                return http_pool.Response(response.status, found, payload)
        except (self._aiohttp.ClientError, ssl.SSLError, TimeoutError) as exc:
            raise botocore_error(exc, self._url, self._errors) from exc

    async def close(self) -> None:
        await self._http.close()


class SqsJsonWire:
    def __init__(
        self,
        session: Callable[[], AioSession],
        *,
        region: str,
        endpoint_url: str,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        attempts: int,
    ) -> None:
        self._session = session
        self._region = region
        self._url = endpoint_url.rstrip("/") + "/"
        self._timeouts = (connect_timeout, read_timeout)
        self._max_connections = max_connections
        # Per call, for a dropped keep-alive connection, 5xx or throttling, as the botocore client
        # is configured; longer trouble is the pipelines' business (they retry without dropping).
        self._attempts = attempts
        self._credentials: Any = None
        self._transport: LeanTransport | AiohttpTransport | None = None
        self._signer = SigV4Signer(self._url, region, "sqs")

    async def start(self) -> None:
        # The CA bundle botocore would use (AWS_CA_BUNDLE / ca_bundle, else its own), never unverified.
        # Loading it costs ~20-60 ms of CPU: only for https (a plain-http endpoint is a local emulator).
        context: ssl.SSLContext | None = None
        if self._url.startswith("https:"):
            from botocore.httpsession import get_cert_path  # noqa: PLC0415 - imports urllib3: https only

            ca_bundle = self._session().get_config_variable("ca_bundle") or get_cert_path(True)
            context = ssl.create_default_context(cafile=ca_bundle)
        # HTTPS_PROXY / NO_PROXY as botocore reads them, once: aiohttp's trust_env would look them
        # (and ~/.netrc) up again in a worker thread for every request.
        proxy = environ_proxy(self._url)
        if proxy:
            self._transport = AiohttpTransport(
                self._url, ssl_context=context, proxy=proxy, timeouts=self._timeouts,
                max_connections=self._max_connections,
            )  # fmt: skip
        else:
            pool = http_pool.HttpPool(
                self._url, ssl_context=context, connect_timeout=self._timeouts[0], read_timeout=self._timeouts[1],
                max_connections=self._max_connections,
            )  # fmt: skip
            self._transport = LeanTransport(pool, self._url)
        self._credentials = environment_credentials() or await self._session().get_credentials()

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._attempt(operation, params)
        except Exception as exc:
            if not _worth_repeating(exc):
                raise
        # The retry loop is built only after a failure: it costs more than the call's own work.
        async for attempt in SQS_QUICK.with_limits(max_attempts=self._attempts - 1).retrying(
            failed_and(_worth_repeating)
        ):
            with attempt:
                return await self._attempt(operation, params)
        raise AssertionError("unreachable: the retry loop re-raises the last failure")

    async def _attempt(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        transport = self._transport
        assert transport is not None, "start() first"
        if self._credentials is None:
            raise NoCredentialsError()
        credentials = await self._credentials.get_frozen_credentials()
        body = orjson.dumps(params)
        headers = self._signer.headers(
            body,
            {
                "Content-Type": _CONTENT_TYPE,
                "X-Amz-Target": f"AmazonSQS.{operation}",
                # SQS answers with the query protocol's error codes (QueueDoesNotExist ->
                # AWS.SimpleQueueService.NonExistentQueue), as it does for botocore.
                "x-amzn-query-mode": "true",
            },
            credentials,
        )
        headers["Host"] = self._signer.host  # exactly the value signed
        headers["User-Agent"] = transport.user_agent
        response = await transport.post(headers, body)
        metadata = {"HTTPStatusCode": response.status, "RequestId": response.headers.get("x-amzn-requestid", "")}
        if response.status >= 300:
            query_error = response.headers.get("x-amzn-query-error")
            raise ClientError(_error_response(response.status, response.body, query_error, metadata), operation)
        result: dict[str, Any] = orjson.loads(response.body) if response.body else {}
        result["ResponseMetadata"] = metadata
        return result


def _error_response(status: int, payload: bytes, query_error: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
    """The error dict botocore builds for a JSON-protocol failure: same Code, Message and status."""
    try:
        body = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        body = {"message": payload[:500].decode("utf-8", "replace")}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("__type") or status).split(":", 1)[0].rsplit("#", 1)[-1]
    if query_error:
        query_code, _, fault = query_error.partition(";")
        if query_code and fault:
            code = query_code
    message = body.get("message", body.get("Message", ""))
    return {"Error": {"Code": code, "Message": str(message)}, "ResponseMetadata": metadata}


def _worth_repeating(exc: BaseException) -> bool:
    """A dropped keep-alive connection, a 5xx or throttling: the same request may well pass now."""
    return isinstance(exc, ConnectionClosedError) or (isinstance(exc, ClientError) and is_unavailable(exc))
