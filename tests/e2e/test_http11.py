"""HTTP/1.1 on the main port, served by the connection's own task with h11 (issue 12).

Raw TCP clients (parsed with h11's client side) where a real client would hide what is
tested: keep-alive, pipelining, 100-continue, chunked uploads, slow and broken clients,
every limit and timeout. Real server (``serve()``), real sockets, real time.
"""

from __future__ import annotations

import logging

import attrs
import h11
import httpx
import pytest
import trio
import trio.lowlevel

import interface.http11
import interface.main
from interface import InterfaceConfig
from trio_channels import Message, route
from trio_channels.http import Request, Response, send_response

from .conftest import StartServer

CONFIG = InterfaceConfig(http_timeout=30)


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


@attrs.define
class Client:
    """A raw HTTP/1.1 client: writes whatever bytes it is given, reads responses with h11
    (a fresh client-side h11 state per response, so pipelined responses parse too)."""

    stream: trio.SocketStream
    buffer: bytes = b""

    @classmethod
    async def open(cls, url: str) -> Client:
        return cls(await trio.open_tcp_stream(*host_port(url)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return b""

    async def informational(self) -> int:
        """The status of an informational response (``HTTP/1.1 1xx``) that must come next."""
        while b"\r\n\r\n" not in self.buffer:
            data = await self._receive()
            assert data, f"closed before a head; got {self.buffer!r}"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 1"), head
        return int(head.split(b" ")[1])

    async def response(self, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
        """The next complete response, to a request made with *method*."""
        connection = h11.Connection(h11.CLIENT)
        connection.send(h11.Request(method=method, target="/", headers=[("host", "test")]))
        connection.send(h11.EndOfMessage())
        if self.buffer:  # (empty bytes would mean "closed" to h11)
            connection.receive_data(self.buffer)
        self.buffer = b""
        head: h11.Response | None = None
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await self._receive())
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                self.buffer = connection.trailing_data[0]
                return head, body
            elif not isinstance(event, h11.InformationalResponse):
                raise AssertionError(f"unexpected {event!r}")

    async def closed(self) -> bool:
        """Whether the server closes the connection next (nothing else arrives)."""
        return not self.buffer and await self._receive() == b""


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((value for key, value in response.headers if key == name), None)


async def echo_path(message: Message) -> None:
    body = f"{message['method']} {message['path']} {len(message['body'])}"
    await send_response(message, Response(body, content_type="text/plain"))


async def test_keep_alive_serves_requests_on_one_connection(start_server: StartServer) -> None:
    """Several requests on one connection, each answered in full, with Date and Content-Length."""
    info = await start_server([route("http.request", echo_path)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        for index in range(3):
            await client.send(get(f"/{index}"))
            response, body = await client.response()
            assert (response.status_code, body) == (200, f"GET /{index} 0".encode())
            assert header(response, b"content-length") == str(len(body)).encode()
            assert header(response, b"date") is not None
            assert header(response, b"connection") is None


async def test_pipelined_requests_are_answered_in_order(start_server: StartServer) -> None:
    """Requests sent back to back, before any answer, are answered in order even when the
    first takes longest (the next is read only after the response before it)."""

    async def slow_first(message: Message) -> None:
        if message["path"] == "/0":
            await trio.sleep(0.3)
        await echo_path(message)

    info = await start_server([route("http.request", slow_first)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(b"".join(get(f"/{index}") for index in range(4)))
        bodies = [(await client.response())[1] for _ in range(4)]
    assert bodies == [f"GET /{index} 0".encode() for index in range(4)]


async def test_expect_100_continue(start_server: StartServer) -> None:
    """A client that waits for 100 Continue gets it, sends its body, and gets the response."""
    info = await start_server([route("http.request", echo_path)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(
            b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await client.informational() == 100
        await client.send(b"hello")
        response, body = await client.response()
    assert (response.status_code, body) == (200, b"POST /up 5")


async def test_expect_100_continue_over_the_limit_is_413_without_100(start_server: StartServer) -> None:
    """A declared body over max_body_size is refused at once: a 413, no 100, and the
    connection closes (the client will not send the body)."""
    info = await start_server(
        [route("http.request", echo_path)], interface_config=InterfaceConfig(max_body_size=1000)
    )
    client = await Client.open(info.url)
    with trio.fail_after(4):  # under BODY_DRAIN_TIMEOUT: no waiting for a body that will not come
        await client.send(
            b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        response, body = await client.response(b"POST")
        assert (response.status_code, body) == (413, b"Request body too large.")
        assert await client.closed()


async def test_chunked_upload(start_server: StartServer) -> None:
    """A chunked request body arrives whole (also past the first 512 KiB body chunk)."""

    async def upload(message: Message) -> None:
        request = await Request.from_message(message)
        await send_response(message, Response(f"{len(request.body)} {request.body[:5].decode()}"))

    info = await start_server([route("http.request", upload)], interface_config=CONFIG)
    client = await Client.open(info.url)
    pieces = [b"first"] + [b"x" * 65536] * 12
    with trio.fail_after(10):
        await client.send(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            await client.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await trio.lowlevel.checkpoint()
        await client.send(b"0\r\n\r\n")
        response, body = await client.response()
    assert (response.status_code, body) == (200, f"{sum(map(len, pieces))} first".encode())


async def test_head_and_bodiless_statuses(start_server: StartServer) -> None:
    """A HEAD response keeps its headers and sends no body; 204 and 304 carry none either."""

    async def consumer(message: Message) -> None:
        status = {"/204": 204, "/304": 304}.get(message["path"], 200)
        await send_response(message, Response(b"" if status != 200 else b"12345", status=status))

    info = await start_server([route("http.request", consumer)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n")
        head, body = await client.response(b"HEAD")
        assert (head.status_code, header(head, b"content-length"), body) == (200, b"5", b"")
        for path, status in (("/204", 204), ("/304", 304), ("/", 200)):
            await client.send(get(path))
            response, body = await client.response()
            assert (response.status_code, body) == (status, b"12345" if status == 200 else b"")


async def test_http10_and_connection_close(start_server: StartServer) -> None:
    """HTTP/1.0 without keep-alive, and Connection: close, get one response and a close."""
    info = await start_server([route("http.request", echo_path)], interface_config=CONFIG)
    for request in (b"GET /old HTTP/1.0\r\n\r\n", get("/close", "Connection: close")):
        stream = await trio.open_tcp_stream(*host_port(info.url))
        with trio.fail_after(10):
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert (
            data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) and b"\r\nconnection: close" in data.lower()
        )


async def test_timeout_keep_alive_closes_an_idle_connection(start_server: StartServer) -> None:
    """A connection that sends nothing after a response is closed after timeout_keep_alive,
    also one that sent half of its next head."""
    info = await start_server(
        [route("http.request", echo_path)], interface_config=InterfaceConfig(timeout_keep_alive=0.3)
    )
    for rest in (b"", b"GET /half HTTP/1.1\r\nHost"):
        client = await Client.open(info.url)
        with trio.fail_after(5):
            await client.send(get("/"))
            await client.response()
            await client.send(rest)
            assert await client.closed()


async def test_first_head_timeout(start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never finishes its first head is closed after HEAD_TIMEOUT (shortened here)."""
    monkeypatch.setattr(interface.main, "HEAD_TIMEOUT", 0.3)
    info = await start_server([route("http.request", echo_path)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(5):
        await client.send(b"GET / HTTP/1.1\r\nHo")
        assert await client.closed()


async def test_requests_per_connection_are_limited(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After KEEP_ALIVE_MAX_REQUESTS (shortened here) the response says close, and it closes."""
    monkeypatch.setattr(interface.http11, "KEEP_ALIVE_MAX_REQUESTS", 3)
    info = await start_server([route("http.request", echo_path)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        for index in range(3):
            await client.send(get(f"/{index}"))
            response, _ = await client.response()
            assert (header(response, b"connection") == b"close") == (index == 2)
        assert await client.closed()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: test\r\n" + b"X-Big: " + b"x" * 70_000, 431),
        (b"\x16\x03\x01 not http at all\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
    ],
    ids=["head too large", "garbage", "no host", "bad content-length"],
)
async def test_broken_requests_get_an_error_and_a_close(
    start_server: StartServer, request_bytes: bytes, status: int
) -> None:
    """A head over 64 KiB gets 431, one that is not HTTP/1.1 gets 400; then the connection closes."""
    seen: list[str] = []

    async def consumer(message: Message) -> None:
        seen.append(message["path"])
        await echo_path(message)

    info = await start_server([route("http.request", consumer)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(request_bytes)
        response, _ = await client.response()
        assert response.status_code == status
        assert await client.closed()
    assert seen == []


async def test_client_leaving_mid_response_ends_the_request(start_server: StartServer) -> None:
    """A client that closes while its response streams: the next write fails, the request
    ends (its http.disconnect is sent), and the server goes on serving others."""
    disconnected = trio.Event()
    parts_sent: list[int] = []

    async def stream(message: Message) -> None:
        reply = message.reply_channel
        assert reply is not None
        start = {"status": 200, "headers": [[b"content-type", b"text/plain"]], "more_content": True}
        await reply.send(start, immediately=True)
        for index in range(200):
            await reply.send({"content": b"x" * 1000, "more_content": True}, immediately=True)
            parts_sent.append(index)
            await trio.sleep(0.01)

    async def disconnect(message: Message) -> None:
        disconnected.set()

    info = await start_server(
        [
            route("http.request", stream, path=r"^/stream$"),
            route("http.request", echo_path),
            route("http.disconnect", disconnect, path=r"^/stream$"),
        ],
        interface_config=CONFIG,
    )
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(get("/stream"))
        while b"\r\n\r\n" not in client.buffer:
            client.buffer += await client.stream.receive_some(65536)
        assert client.buffer.startswith(b"HTTP/1.1 200")
        await client.stream.aclose()
        await disconnected.wait()
    assert len(parts_sent) < 200
    async with httpx.AsyncClient() as http:
        with trio.fail_after(10):
            assert (await http.get(info.url + "/other")).status_code == 200


async def test_a_response_breaking_its_content_length_is_cut_off(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A response shorter than its declared Content-Length: one error line, the connection
    closed, so the client sees the response incomplete rather than waiting for the rest."""
    caplog.set_level(logging.ERROR, logger="interface")

    async def short(message: Message) -> None:
        assert message.reply_channel is not None
        await message.reply_channel.send(
            {"status": 200, "headers": [[b"content-length", b"10"]], "content": b"abc"}
        )

    info = await start_server([route("http.request", short)], interface_config=CONFIG)
    async with httpx.AsyncClient() as http:
        with trio.fail_after(10), pytest.raises(httpx.RemoteProtocolError):
            await http.get(info.url + "/")
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "breaks HTTP/1.1" in errors[0], errors


async def _streamed(message: Message) -> None:
    reply = message.reply_channel
    assert reply is not None
    start = {"status": 200, "headers": [[b"transfer-encoding", b"gzip"]], "more_content": True}
    await reply.send(start, immediately=True)
    for part in (b"one ", b"two ", b"three"):
        await reply.send({"content": part, "more_content": True}, immediately=True)
    await reply.send({"content": b"", "more_content": False}, immediately=True)


async def test_streamed_responses_are_chunked_or_read_to_the_close(start_server: StartServer) -> None:
    """A streamed response goes chunked to an HTTP/1.1 client (whatever Transfer-Encoding the
    app named) and, to an HTTP/1.0 client, unframed until the connection closes."""
    info = await start_server([route("http.request", _streamed)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(get("/"))
        response, body = await client.response()
        assert header(response, b"transfer-encoding") == b"chunked" and body == b"one two three"
        stream = await trio.open_tcp_stream(*host_port(info.url))
        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert b"connection: close" in head.lower() and body == b"one two three"


async def test_a_response_longer_than_its_content_length_is_cut_off(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A body longer than its declared Content-Length: the declared bytes, one error line and
    the connection closed (nothing more is read as a next response)."""
    caplog.set_level(logging.ERROR, logger="interface")

    async def long(message: Message) -> None:
        assert message.reply_channel is not None
        await message.reply_channel.send(
            {"status": 200, "headers": [[b"content-length", b"3"]], "content": b"abcdef"}
        )

    info = await start_server([route("http.request", long)], interface_config=CONFIG)
    client = await Client.open(info.url)
    with trio.fail_after(10):
        await client.send(get("/"))
        response, body = await client.response()
        assert (response.status_code, body) == (200, b"abc")
        assert await client.closed()
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "longer than its Content-Length" in errors[0], errors
