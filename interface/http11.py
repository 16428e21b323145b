"""HTTP/1.1 on the main port: h11 driven from the connection's own task.

One task per connection, request after request (keep-alive): the head is parsed once (by
:func:`interface.head.read_head`) and the request body read by h11 (Content-Length or
chunked), the request goes to :meth:`InterfaceServer.http`, and the response goes out in as
few writes as it has messages (head, body and end of a one-message response in one). The
response is written here, not by h11: its headers were checked once, with h11's rules, by
``protocol.py``, and h11 would check and reshape them again (that was 9 % of a request); the
framing follows h11's choices (the app's Content-Length, else one for a one-message response,
else chunked, or to the close for HTTP/1.0; none for HEAD, 1xx, 204 and 304), and a body that
breaks its Content-Length closes the connection. Each request gets a fresh h11 state, fed what
the client sent after the previous one: pipelining (a pipelined request waits, unread, until
the response before it is complete). ``Connection: close`` and HTTP/1.0 without keep-alive end
the connection after the response. ``Expect: 100-continue``: the 100 goes out when the body is
first read, so a 413 decided on the declared length sends none.

Limits and timeouts: the first head within ``HEAD_TIMEOUT``, the next one within
``timeout_keep_alive`` (both waits are *idle*: cancelled at once on shutdown, see
:class:`~interface.listeners.IdleConnections`), a head of at most ``MAX_HEAD`` bytes (431),
``KEEP_ALIVE_MAX_REQUESTS`` requests per connection (Hypercorn's default), and everything
:func:`interface.http.serve_request` enforces (``max_body_size`` with its 413 drain,
``http_timeout``). A client that breaks HTTP/1.1 gets the status h11 suggests (400) and the
connection is closed; one that leaves mid-response makes the write fail, which ends the
request (``http.disconnect`` follows) and the connection.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import h11
import trio

from . import protocol
from .common import ClientDisconnected
from .head import (
    Head,
    Kind,
    addresses,
    connection_info,
    is_tls,
    new_connection,
    raw_socket,
    read_head,
    receive_some,
    send_all,
)
from .listeners import IdleConnections
from .logs import log

if TYPE_CHECKING:
    from .core import InterfaceServer

__all__ = ["KEEP_ALIVE_MAX_REQUESTS", "serve_http11"]

#: Requests one connection may make before the server closes it (Hypercorn's default).
KEEP_ALIVE_MAX_REQUESTS: Final = 1000

_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}
_date: list[Any] = [0, b""]


def _http_date() -> bytes:
    """The Date header's value, formatted at most once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, email.utils.formatdate(now, usegmt=True).encode("ascii")
    value: bytes = _date[1]
    return value


def error_response(status: int, text: str) -> bytes:
    """A complete plain-text response that closes the connection (for errors before h11 can answer)."""
    body = f"{text}\n".encode()
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, b'').decode()}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _keeps_alive(request: h11.Request) -> bool:
    """Whether the client lets the connection live past this request (RFC 9112 §9.3)."""
    tokens = b",".join(value for name, value in request.headers if name == b"connection").lower()
    if b"close" in tokens:
        return False
    return request.http_version == b"1.1" or b"keep-alive" in tokens


class _Responder:
    """Writes one response (see the module docstring): the head as the validated headers are
    (``protocol.py`` checked them with h11's rules), the body framed by its Content-Length, or
    chunked, or (HTTP/1.0) to the close of the connection."""

    __slots__ = (
        "aborted",
        "chunked",
        "done",
        "expect_continue",
        "head_only",
        "http10",
        "keep_alive",
        "pending",
        "remaining",
        "sock",
        "started",
        "stream",
    )

    def __init__(
        self, stream: trio.abc.Stream, sock: Any, request: h11.Request, expect_continue: bool, close: bool
    ) -> None:
        self.stream = stream
        self.sock = sock
        self.head_only = request.method == b"HEAD"
        self.http10 = request.http_version == b"1.0"
        self.expect_continue = expect_continue
        self.keep_alive = not close and _keeps_alive(request)
        self.pending: tuple[int, protocol.Headers] | None = None
        self.started = False  # start() was called (what it holds may not be written yet)
        self.done = False  # the response is complete
        self.aborted = False
        self.chunked = False
        self.remaining = -1  # bytes the Content-Length still promises (-1: not framed by it)

    async def start(self, status: int, headers: protocol.Headers) -> None:
        # Held until the first body part, so a one-message response is one write and gets a
        # Content-Length.
        self.pending = (status, headers)
        self.started = True

    def _head(self, status: int, headers: protocol.Headers, content: bytes, more: bool) -> bytearray:
        no_body = self.head_only or status in (204, 304) or status < 200
        length = None
        lines = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")))
        for name, value in headers:
            if name == b"content-length":
                if length is not None and int(value) != length:
                    raise ValueError(
                        f"the response has two different Content-Lengths: {length} and {value!r}"
                    )
                length = int(value)
                continue  # written once, below
            if name == b"transfer-encoding":
                continue  # the framing is ours to choose (as h11 does)
            if name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
            lines += name + b": " + value + b"\r\n"
        if length is not None:
            lines += b"content-length: %d\r\n" % length
            self.remaining = 0 if no_body else length
        elif no_body:
            self.remaining = 0
            if self.head_only and not more:
                lines += b"content-length: %d\r\n" % len(content)
        elif not more:
            lines += b"content-length: %d\r\n" % len(content)
            self.remaining = len(content)
        elif self.http10:
            self.keep_alive = False  # an HTTP/1.0 client reads to the close
        else:
            lines += b"transfer-encoding: chunked\r\n"
            self.chunked = True
        lines += b"date: " + _http_date() + b"\r\n"
        if not self.keep_alive:
            lines += b"connection: close\r\n"
        lines += b"\r\n"
        return lines

    async def body(self, content: bytes, more: bool) -> None:
        if self.aborted or self.done:
            return
        data = bytearray()
        if self.pending is not None:
            status, headers = self.pending
            self.pending = None
            try:
                data = self._head(status, headers, content, more)
            except ValueError as exc:
                log.error("%s; closed the connection", exc)
                self.aborted = True
                return
        if self.head_only or (self.remaining == 0 and not self.chunked):
            content = b""  # a response that has no body: whatever was given is not sent
        if self.chunked:
            if content:
                data += b"%x\r\n" % len(content) + content + b"\r\n"
            if not more:
                data += b"0\r\n\r\n"
        elif self.remaining >= 0:
            if len(content) > self.remaining or (not more and len(content) < self.remaining):
                log.error(
                    "the response breaks HTTP/1.1 (its body is %s than its Content-Length); closed the connection",
                    "longer" if len(content) > self.remaining else "shorter",
                )
                self.aborted = True
                content = content[: self.remaining]
            self.remaining -= len(content)
            data += content
        else:
            data += content  # HTTP/1.0, read to the close
        if not more:
            self.done = True
        if data:
            await send_all(self.sock, self.stream, bytes(data))

    async def simple(self, status: int, text: bytes) -> None:
        if self.started:
            await self.abort()
            return
        await self.start(status, [[b"content-type", b"text/plain; charset=utf-8"]])
        await self.body(text, False)

    async def abort(self) -> None:
        self.aborted = True  # the connection closes once the request is done

    async def continue_(self) -> None:
        if self.expect_continue and not self.started:
            self.expect_continue = False
            await send_all(self.sock, self.stream, b"HTTP/1.1 100 Continue\r\n\r\n")


async def _body(
    stream: trio.abc.Stream, conn: h11.Connection, responder: _Responder
) -> AsyncGenerator[bytes, None]:
    if responder.expect_continue:
        if responder.started:
            return  # answered before the body was asked for: a client waiting for 100 sends none
        await responder.continue_()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            raise ClientDisconnected from None  # a broken body: as good as gone
        if event is h11.NEED_DATA:
            data = await receive_some(responder.sock, stream)
            if not data:
                raise ClientDisconnected
            conn.receive_data(data)
        elif type(event) is h11.Data:
            yield bytes(event.data)
        elif type(event) is h11.EndOfMessage:
            return
        else:
            raise ClientDisconnected  # ConnectionClosed


async def serve_http11(
    server: InterfaceServer,
    stream: trio.abc.Stream,
    head: Head,
    idle: IdleConnections,
    *,
    websocket: Callable[[Head], Awaitable[None]],
) -> None:
    """Serve requests on *stream* from the first *head* until the connection ends.

    A later request asking for a WebSocket goes to *websocket* (with its head).
    """
    conn = head.connection
    client, local = addresses(stream)
    secure = is_tls(stream)
    sock = raw_socket(stream)
    requests = 0
    while True:
        if head.kind is Kind.BAD:
            assert head.error is not None
            status = head.error.error_status_hint
            with (
                trio.move_on_after(5),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.send_all(error_response(status, f"Bad request: {head.error}"))
            return
        if head.kind is Kind.WEBSOCKET:
            await websocket(head)
            return
        request = head.request
        assert request is not None
        requests += 1
        info = connection_info(request, client=client, server=local, secure=secure)
        responder = _Responder(
            stream,
            sock,
            request,
            conn.they_are_waiting_for_100_continue,
            close=requests >= KEEP_ALIVE_MAX_REQUESTS or idle.closed,
        )
        try:
            async with contextlib.aclosing(_body(stream, conn, responder)) as body:
                await server.http(info, body, responder)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client left mid-response
        if responder.aborted or not responder.done or not responder.keep_alive:
            return  # cut short, or closing
        if conn.their_state is not h11.DONE:
            return  # the body was left unread: the next request cannot be found
        # h11 read this request; the response was ours: the next request starts a new h11
        # state, from what the client already sent after this one (pipelining).
        leftover = conn.trailing_data[0]
        conn = new_connection()
        if leftover:
            conn.receive_data(leftover)
        next_head = None
        with idle.waiting() as waiting:
            waiting.deadline = trio.current_time() + server.config.timeout_keep_alive
            next_head = await read_head(stream, conn, keep_raw=False)
        if next_head is None:
            return
        head = next_head
