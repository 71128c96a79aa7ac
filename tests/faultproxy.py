"""An HTTP proxy in front of the SQS server that fails a fraction of requests, for fault injection.

Real HTTP on loopback: the connector's botocore client sees what AWS sends when it throttles or
fails, and the request either never reaches SQS or (``lost_response``) did reach it and only the
answer is lost, the ambiguous failure that makes at-least-once deliver twice.

Faults, chosen per request with the configured probabilities:

* ``500``: ``InternalError``, status 500, before the request reaches SQS;
* ``503``: ``ServiceUnavailable``, status 503, before the request reaches SQS;
* ``throttle``: status 400 with the SQS throttling error (``RequestThrottled``) in the body;
* ``lost_response``: the request is forwarded, then its answer replaced by a 500;
* ``access_denied``: status 403 ``AccessDenied`` (a policy or role changed under the connector);
* ``invalid_identity_token``: status 400 ``InvalidIdentityToken`` (IRSA: STS refused the token);
* ``missing_queue``: status 400 ``QueueDoesNotExist`` (query code ``AWS.SimpleQueueService.NonExistentQueue``).

The error body follows the protocol of the request: JSON (``X-Amz-Target`` header) or query/XML.

With ``signing_secret`` the proxy also checks each request's SigV4 signature as AWS would, over the
bytes and headers that arrived, and answers ``SignatureDoesNotMatch`` (403) when it is wrong: the
SQS emulators accept any signature.
"""

from __future__ import annotations

import hmac
import random
import re
import ssl
from collections import Counter

import aiohttp
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "content-encoding", "keep-alive"}

FAULTS = ("500", "503", "throttle", "lost_response", "access_denied", "invalid_identity_token", "missing_queue")
_REFUSALS = ("500", "503", "throttle", "access_denied", "invalid_identity_token", "missing_queue")


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        fault_rates: dict[str, float],
        *,
        seed: int = 5,
        signing_secret: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        unknown = set(fault_rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        self.upstream = upstream.rstrip("/")
        self.fault_rates = fault_rates
        self.enabled = True
        self.injected: Counter[str] = Counter()  # fault -> count, per operation in ``by_operation``
        self.by_operation: Counter[str] = Counter()
        self.forwarded = 0
        self.signing_secret = signing_secret
        self.signatures_checked = 0
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self.tls = tls  # serve https with this server context (certificate for localhost)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _pick(self) -> str | None:
        if not self.enabled:
            return None
        roll = self._random.random()
        for fault, rate in self.fault_rates.items():
            if roll < rate:
                return fault
            roll -= rate
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rsplit(".", 1)[-1] if target else "query"
        if self.signing_secret is not None:
            if not _signature_matches(request, body, self.signing_secret):
                return _error("bad_signature", json_protocol=bool(target))
            self.signatures_checked += 1
        fault = self._pick()
        if fault is not None:
            self.injected[fault] += 1
            self.by_operation[f"{operation}:{fault}"] += 1
        if fault in _REFUSALS:
            return _error(fault, json_protocol=bool(target))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            self.forwarded += 1
            if fault == "lost_response":
                return _error("500", json_protocol=bool(target))
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out_headers)


def _error(fault: str, *, json_protocol: bool) -> web.Response:
    status, code, message = {
        "500": (500, "InternalError", "We encountered an internal error. Please try again."),
        "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
        "throttle": (400, "RequestThrottled", "Rate exceeded"),
        "bad_signature": (403, "SignatureDoesNotMatch", "The request signature we calculated does not match."),
        "access_denied": (403, "AccessDenied", "Access to the resource is denied."),
        "invalid_identity_token": (400, "InvalidIdentityToken", "Incorrect token audience"),
        "missing_queue": (400, "QueueDoesNotExist", "The specified queue does not exist."),
    }[fault]
    query_code = {"missing_queue": "AWS.SimpleQueueService.NonExistentQueue"}.get(fault, code)
    if json_protocol:
        return web.json_response(
            {"__type": f"com.amazonaws.sqs#{code}", "message": message},
            status=status,
            headers={"x-amzn-query-error": f"{query_code};{'Sender' if status < 500 else 'Receiver'}"},
            content_type="application/x-amz-json-1.0",
        )
    xml = (
        '<?xml version="1.0"?><ErrorResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
        f"<Error><Type>{'Sender' if status < 500 else 'Receiver'}</Type><Code>{query_code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=xml, content_type="text/xml")


_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?"
    r"SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})"
)


def _signature_matches(request: web.Request, body: bytes, secret: str) -> bool:
    """Recompute the SigV4 signature of the request as received (botocore's signer) and compare."""
    match = _AUTHORIZATION.fullmatch(request.headers.get("Authorization", ""))
    if match is None or "X-Amz-Date" not in request.headers:
        return False
    access_key, _, region, service, signed_headers, signature = match.groups()
    headers = {name: request.headers.get(name, "") for name in signed_headers.split(";")}
    received = AWSRequest(
        method=request.method, url=f"http://{request.host}{request.path_qs}", data=body, headers=headers
    )
    received.context["timestamp"] = request.headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials(access_key, secret), service, region)
    expected = signer.signature(signer.string_to_sign(received, signer.canonical_request(received)), received)
    return hmac.compare_digest(expected, signature)
