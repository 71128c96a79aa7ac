"""HTTP/1.1 POSTs to one endpoint over kept-alive connections: the transport of the SQS fast path.

Why not aiohttp for these calls: its per-request machinery (request and response objects, header
multidicts, the connector's bookkeeping, timeouts, tracing hooks) cost ≈ 170 to 200 µs of CPU per
``SendMessageBatch`` here, ≈ 15 % of the connector's CPU per forwarded event and ≈ 18 % per relayed
reply (docs/performance.md). The SQS calls need very little of HTTP: one host, POST only, a small
fixed set of headers, a JSON answer with a length. What is a library's here: parsing the answer
(httptools, the llhttp parser uvicorn uses) and TLS (the ``ssl`` module through asyncio). What is
ours: the pool, writing the request, the two timeouts. Anything else — a proxy in the environment
above all — goes through aiohttp as before (``sqs_wire.AiohttpTransport``).

Failures are raised as the exceptions below; ``sqs_wire`` maps them to botocore's, exactly as it
maps aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

# A connection idle longer than this is closed rather than reused (aiohttp's default too): servers and
# load balancers drop idle connections after a while, and a request sent just as they do is lost in
# transit (a retry, and a duplicate if the server had read it).
IDLE_SECONDS = 15.0
# The largest answer accepted: a ReceiveMessage of ten 1 MiB messages with their attributes, JSON-escaped.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class PoolError(Exception):
    """What went wrong with a request, one of the classes below."""


class ConnectTimeout(PoolError):
    """No connection (TCP and TLS) within the connect timeout."""


class ConnectFailed(PoolError):
    """The endpoint could not be reached: refused, unreachable, name not resolved."""


class TlsFailed(PoolError):
    """The TLS handshake failed, e.g. a certificate no trusted CA signed."""


class ConnectionDropped(PoolError):
    """The connection closed before the whole answer arrived (a kept-alive connection the server
    had closed, a reset): the request may not have been seen, so it may be sent again."""


class ReadTimeout(PoolError):
    """No byte of the answer arrived within the read timeout."""


class BadResponse(PoolError):
    """The answer is not HTTP/1.1 as we read it, or it is larger than MAX_RESPONSE_BYTES."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._received = 0  # bytes of the current answer, head and framing included
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            # Bytes nobody asked for: the connection is out of step with its requests.
            self.close()
            return
        self._last_read = self._loop.time()
        self._received += len(data)
        if self._received > MAX_RESPONSE_BYTES:  # counted on the wire: the parser buffers a long header itself
            self._fail(BadResponse(f"the answer exceeds {MAX_RESPONSE_BYTES} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"unreadable HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionDropped(f"the connection closed before the answer was complete ({exc or 'EOF'})"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an informational answer (100 Continue): the real one follows
            self._headers, self._body = {}, []
            return
        answer = self._answer
        if answer is not None and not answer.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            answer.set_result(Response(status, self._headers, body))
        if not self._parser.should_keep_alive():
            self.close()

    # ours

    async def exchange(self, request: bytes, body: bytes) -> Response:
        assert self._transport is not None
        self._answer = self._loop.create_future()
        self._headers, self._body, self._received = {}, [], 0
        self._last_read = self._loop.time()
        self._timer = self._loop.call_at(self._last_read + self._read_timeout, self._check_read_timeout)
        try:
            self._transport.writelines((request, body))
            return await self._answer
        finally:
            self._timer.cancel()
            self._answer = None

    def _check_read_timeout(self) -> None:
        # One timer per request, moved on only when it fires: cheaper than re-arming it at every read.
        deadline = self._last_read + self._read_timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_read_timeout)
            return
        self._fail(ReadTimeout(f"no answer within {self._read_timeout:g} s"))

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()


class HttpPool:
    """Up to ``max_connections`` kept-alive connections to the endpoint of ``url``."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.target = parts.path or "/"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    async def post(self, headers: dict[str, str], body: bytes) -> Response:
        """POST ``body`` to the URL's path with ``headers`` (Content-Length is added)."""
        lines = [f"POST {self.target} HTTP/1.1\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:  # a header split in two would be a request forged
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        request = "".join(lines).encode("latin-1")
        async with self._slots:
            connection = self._take_idle() or await self._connect()
            try:
                response = await connection.exchange(request, body)
            except BaseException:
                # Cancelled or failed half-way: what the server sends next would not belong to
                # the next request, so the connection goes.
                connection.close()
                self._open.discard(connection)
                raise
            if connection.lost or self._closed:
                self._open.discard(connection)
            else:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            return response

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be timed out
            if not connection.lost and time.monotonic() - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ConnectionDropped("the pool is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"no connection to {self._host}:{self._port} within {self._connect_timeout:g} s"
            ) from exc
        except ssl.SSLError as exc:  # before OSError: SSLError is one
            raise TlsFailed(f"TLS with {self._host}:{self._port} failed: {exc}") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        self._open.add(connection)
        return connection

    async def close(self) -> None:
        self._closed = True
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports deliver connection_lost
