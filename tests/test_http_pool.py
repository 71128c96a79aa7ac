"""http_pool: the SQS fast path's transport against a scripted HTTP server on loopback.

Each test asserts what the server saw (connections, requests) and what the caller got back; the
SQS round trips over it against LocalStack are in tests/test_sqs_wire.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from lamassu_aws_connector import http_pool
from lamassu_aws_connector.http_pool import HttpPool

pytestmark = pytest.mark.asyncio

OK = b"HTTP/1.1 200 OK\r\nx-amzn-RequestId: r-1\r\nContent-Length: 2\r\n\r\n{}"
Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """Reads whole requests (head + Content-Length body) and lets ``answer`` reply to each."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.lower().split(b"\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.answer(request, reader, writer)
                if writer.is_closing():
                    return
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/"
    finally:
        for writer in server.writers:
            writer.close()
        listening.close()
        await listening.wait_closed()


def pool(url: str, *, read_timeout: float = 5, max_connections: int = 8) -> HttpPool:
    return HttpPool(
        url, ssl_context=None, connect_timeout=2, read_timeout=read_timeout, max_connections=max_connections
    )


async def answer_ok(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(OK)
    await writer.drain()


async def wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_requests_reuse_one_kept_alive_connection_and_carry_what_was_given() -> None:
    async with serving(answer_ok) as (server, url):
        http = pool(url)
        for n in range(3):
            response = await http.post({"Host": "sqs.test", "X-Amz-Target": f"AmazonSQS.Call{n}"}, b'{"n":%d}' % n)
            assert (response.status, response.body, response.headers["x-amzn-requestid"]) == (200, b"{}", "r-1")
        await http.close()
    assert server.connections == 1
    assert server.requests[2] == (
        b'POST / HTTP/1.1\r\nHost: sqs.test\r\nX-Amz-Target: AmazonSQS.Call2\r\nContent-Length: 7\r\n\r\n{"n":2}'
    )


async def test_chunked_answers_repeated_headers_and_an_informational_answer_are_read() -> None:
    async def chunked(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nVia: a\r\nVia: b\r\n\r\n"
            b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
        )
        await writer.drain()

    async with serving(chunked) as (server, url):
        http = pool(url)
        first = await http.post({}, b"x")
        second = await http.post({}, b"y")
        await http.close()
    assert (first.status, first.body, first.headers["via"]) == (400, b'{"a": 1}', "a, b")
    assert second == first
    assert server.connections == 1


async def test_an_answer_that_closes_the_connection_is_not_reused() -> None:
    async def closing(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with serving(closing) as (server, url):
        http = pool(url)
        assert (await http.post({}, b"1")).body == b"ok"
        assert (await http.post({}, b"2")).body == b"ok"
        await http.close()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async with serving(answer_ok) as (server, url):
        http = pool(url)
        await http.post({}, b"1")
        server.writers[0].close()  # the server's idle timeout
        await wait_for(lambda: all(connection.lost for connection in http._idle))
        assert (await http.post({}, b"2")).status == 200
        await http.close()
    assert server.connections == 2


async def test_a_connection_idle_for_too_long_is_closed_rather_than_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(answer_ok) as (server, url):
        http = pool(url)
        await http.post({}, b"1")
        monkeypatch.setattr(http_pool, "IDLE_SECONDS", 0.0)
        assert (await http.post({}, b"2")).status == 200
        await wait_for(lambda: server.open == 1)  # the first one was closed
        await http.close()
    assert server.connections == 2


async def test_a_connection_dropped_before_the_answer_is_reported_and_not_reused() -> None:
    answers = iter(["drop", "ok"])

    async def drop_once(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if next(answers) == "drop":
            writer.close()
            return
        await answer_ok(request, reader, writer)

    async with serving(drop_once) as (server, url):
        http = pool(url)
        with pytest.raises(http_pool.ConnectionDropped):
            await http.post({}, b"1")
        assert (await http.post({}, b"2")).status == 200
        await http.close()
    assert server.connections == 2


async def test_no_answer_within_the_read_timeout() -> None:
    async def silent(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client closes the connection

    async with serving(silent) as (server, url):
        http = pool(url, read_timeout=0.3)
        began = time.monotonic()
        with pytest.raises(http_pool.ReadTimeout):
            await http.post({}, b"1")
        assert 0.3 <= time.monotonic() - began < 3
        await wait_for(lambda: server.open == 0)  # the connection was closed, not kept
        await http.close()


async def test_a_slow_answer_that_keeps_arriving_is_not_timed_out() -> None:
    async def trickle(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"abcdef":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()

    async with serving(trickle) as (_, url):
        http = pool(url, read_timeout=0.25)  # the whole answer takes 0.6 s; no gap reaches 0.25 s
        assert (await http.post({}, b"1")).body == b"abcdef"
        await http.close()


@pytest.mark.parametrize(
    "answer",
    [b"this is not HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
    ids=["not-http", "bad-length"],
)
async def test_an_unreadable_answer_is_a_bad_response_and_the_connection_goes(answer: bytes) -> None:
    async def garbage(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    async with serving(garbage) as (server, url):
        http = pool(url)
        with pytest.raises(http_pool.BadResponse):
            await http.post({}, b"1")
        await wait_for(lambda: server.open == 0)
        await http.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nX-Endless: " + b"x" * 5000,  # a header that never ends
    ],
    ids=["body", "header"],
)
async def test_an_answer_larger_than_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch, answer: bytes) -> None:
    monkeypatch.setattr(http_pool, "MAX_RESPONSE_BYTES", 1000)

    async def huge(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    async with serving(huge) as (_, url):
        http = pool(url)
        with pytest.raises(http_pool.BadResponse, match="exceeds 1000 bytes"):
            await http.post({}, b"1")
        await http.close()


async def test_a_cancelled_request_closes_its_connection() -> None:
    answered = asyncio.Event()

    async def never_then_ok(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if b"slow" in request:
            answered.set()
            await reader.read()  # answers nothing until the client gives up the connection
            return
        else:
            writer.write(OK)
        await writer.drain()

    async with serving(never_then_ok) as (server, url):
        http = pool(url)
        task = asyncio.create_task(http.post({}, b"slow"))
        await answered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await http.post({}, b"next")).body == b"{}"
        await wait_for(lambda: server.open == 1, seconds=2)  # the cancelled request's connection was closed
        await http.close()
    assert server.connections == 2


async def test_at_most_max_connections_are_open() -> None:
    async def slowly(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        await answer_ok(request, reader, writer)

    async with serving(slowly) as (server, url):
        http = pool(url, max_connections=2)
        answers = await asyncio.gather(*(http.post({}, b"%d" % n) for n in range(6)))
        await http.close()
    assert [answer.status for answer in answers] == [200] * 6
    assert server.connections == 2 and server.most_open == 2


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with serving(answer_ok) as (server, url):
        http = pool(url)
        with pytest.raises(ValueError, match="line break"):
            await http.post({"X-Amz-Security-Token": "token\r\nX-Forged: 1"}, b"1")
        await http.close()
    assert server.connections == 0 and server.requests == []


async def test_a_refused_connection_is_connect_failed() -> None:
    async with serving(answer_ok) as (_, url):
        pass  # the port is closed again
    http = pool(url)
    with pytest.raises(http_pool.ConnectFailed):
        await http.post({}, b"1")
    await http.close()


async def test_close_closes_every_connection() -> None:
    async with serving(answer_ok) as (server, url):
        http = pool(url)
        await asyncio.gather(*(http.post({}, b"%d" % n) for n in range(3)))
        assert server.open >= 1
        await http.close()
        await wait_for(lambda: server.open == 0)
        with pytest.raises(http_pool.ConnectionDropped):
            await http.post({}, b"after close")


async def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        pool("ftp://example.com/")
