"""HTTP/1.1 on the main port: h11 driven from the connection's own task.

One task per connection, request after request (keep-alive): the head is parsed once (by
:func:`interface.head.read_head`), the request goes to :meth:`InterfaceServer.http` with a body
reader and a responder over the same ``h11.Connection``, and the response goes out in as few
writes as it has messages (head, body and end of a one-message response in one). h11 keeps
the rules: framing (Content-Length or chunked, both ways), ``Connection: close`` and HTTP/1.0,
pipelining (a pipelined request waits in the socket, unread, until the response before it is
complete), ``Expect: 100-continue`` (the 100 goes out when the body is first read, so a 413
decided on the declared length sends none).

Limits and timeouts: the first head within ``HEAD_TIMEOUT``, the next one within
``keep_alive_timeout`` (both waits are *idle*: cancelled at once on shutdown, see
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


class _Responder:
    """Writes one response through the connection's h11 state (see the module docstring)."""

    __slots__ = ("aborted", "close", "conn", "expect_continue", "head_only", "pending", "sock", "stream")

    def __init__(
        self, stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, close: bool
    ) -> None:
        self.stream = stream
        self.sock = raw_socket(stream)
        self.conn = conn
        self.head_only = request.method == b"HEAD"
        self.expect_continue = conn.they_are_waiting_for_100_continue
        self.close = close  # say "connection: close" (last request, or shutting down)
        self.pending: tuple[int, protocol.Headers] | None = None
        self.aborted = False

    @property
    def started(self) -> bool:
        return self.pending is not None or self.conn.our_state is not h11.SEND_RESPONSE

    async def start(self, status: int, headers: protocol.Headers) -> None:
        # Held until the first body part, so a one-message response is one write and gets a
        # Content-Length.
        self.pending = (status, headers)

    async def body(self, content: bytes, more: bool) -> None:
        if self.aborted:
            return
        conn = self.conn
        data = b""
        try:
            if self.pending is not None:
                status, headers = self.pending
                self.pending = None
                headers = list(headers)
                no_body = self.head_only or status in (204, 304) or status < 200
                if (
                    not more
                    and not no_body
                    and not any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)
                ):
                    headers.append([b"content-length", str(len(content)).encode()])
                headers.append([b"date", _http_date()])
                if self.close:
                    headers.append([b"connection", b"close"])
                data = conn.send(
                    h11.Response(
                        status_code=status,
                        headers=headers,  # type: ignore[arg-type]  # pairs as lists: h11 takes any sequence
                        reason=_REASONS.get(status, b""),
                    )
                )
            if content and not self.head_only and conn.our_state is h11.SEND_BODY:
                data += conn.send(h11.Data(data=content))
            if not more:
                data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            log.error("the response breaks HTTP/1.1 (%s); closed the connection", exc)
            self.aborted = True
            if data:
                await send_all(self.sock, self.stream, data)
            return
        if data:
            await send_all(self.sock, self.stream, data)

    async def simple(self, status: int, text: bytes) -> None:
        if self.started:
            await self.abort()
            return
        await self.start(status, [[b"content-type", b"text/plain; charset=utf-8"]])
        await self.body(text, False)

    async def abort(self) -> None:
        self.aborted = True  # the connection closes once the request is done

    async def continue_(self) -> None:
        if self.conn.they_are_waiting_for_100_continue:
            informational = h11.InformationalResponse(status_code=100, headers=[])
            await send_all(self.sock, self.stream, self.conn.send(informational))


async def _body(stream: trio.abc.Stream, responder: _Responder) -> AsyncGenerator[bytes, None]:
    conn = responder.conn
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
            stream, conn, request, close=requests >= KEEP_ALIVE_MAX_REQUESTS or idle.closed
        )
        try:
            async with contextlib.aclosing(_body(stream, responder)) as body:
                await server.http(info, body, responder)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client left mid-response
        if responder.aborted or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return  # cut short, or closing: h11 said MUST_CLOSE, or the body was left unread
        conn.start_next_cycle()
        next_head = None
        with idle.waiting() as waiting:
            waiting.deadline = trio.current_time() + server.config.keep_alive_timeout
            next_head = await read_head(stream, conn, keep_raw=False)
        if next_head is None:
            return
        head = next_head
