"""The WebSocket fast path on trio-websocket, and the WebSocket-only listener (``--ws-bind``).

A listener reads the request head, sees an ``Upgrade: websocket`` request, and hands the
stream (with the head replayed) to trio-websocket. Unlike Hypercorn's ASGI path, this path
reports the client's real close code, and it is measurably faster. A handler error closes
that one connection with 1011; it never reaches the server.
"""

from __future__ import annotations

import logging
import socket
import ssl as _ssl
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import h11
import trio
import trio_websocket
from wsproto.frame_protocol import FrameProtocol

from .core import ConnectionInfo, InterfaceServer, WebSocketClosed
from .listeners import (
    IdleConnections,
    StartedWith,
    bind_sockets,
    close_sockets,
    guarded,
    open_listeners,
    serve_connections,
)
from .protocol import clean_headers, decode_path

__all__ = [
    "ReplayStream",
    "handle_websocket_stream",
    "is_websocket_upgrade",
    "parse_head",
    "read_head",
    "serve_websocket_listener",
]

log = logging.getLogger("interface")

#: Largest request head we read before deciding where a connection goes.
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 10.0


class ReplayStream(trio.abc.HalfCloseableStream):
    """A stream that first returns bytes already read from *inner*, then reads *inner*.

    Other attributes (``socket``, TLS details) are those of the inner stream.
    """

    def __init__(self, head: bytes, inner: trio.abc.Stream) -> None:
        self._head = head
        self.inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            if max_bytes is None or max_bytes >= len(self._head):
                data, self._head = self._head, b""
            else:
                data, self._head = self._head[:max_bytes], self._head[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self.inner.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.inner, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def read_head(stream: trio.abc.Stream) -> bytes | None:
    """Read until the end of the request head (or MAX_HEAD bytes); ``None`` if the peer left."""
    buffer = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT):
        while b"\r\n\r\n" not in buffer and len(buffer) < MAX_HEAD:
            data = await stream.receive_some(16384)
            if not data:
                return None if not buffer else bytes(buffer)
            buffer += data
        return bytes(buffer)
    return bytes(buffer) if buffer else None


def parse_head(head: bytes) -> h11.Request | None:
    """The request line and headers of *head*, or ``None`` if they do not parse."""
    connection = h11.Connection(h11.SERVER)
    try:
        connection.receive_data(head)
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def is_websocket_upgrade(request: h11.Request | None) -> bool:
    if request is None or request.method != b"GET":
        return False
    upgrade = connection = False
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            upgrade = True
        elif name == b"connection" and b"upgrade" in value.lower():
            connection = True
    return upgrade and connection


def _address(stream: trio.abc.Stream, local: bool) -> list[Any] | None:
    inner = stream.inner if isinstance(stream, ReplayStream) else stream
    if isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return None
    try:
        address = sock.getsockname() if local else sock.getpeername()
    except OSError:
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return [address[0], address[1]]
    return None  # a unix socket: no host and port


def connection_info(stream: trio.abc.Stream, request: h11.Request, root_path: str = "") -> ConnectionInfo:
    """What the ASGI-1 messages need to know about a request that arrived on *stream*."""
    target = request.target
    raw_path, _, query = target.partition(b"?")
    inner = stream.inner if isinstance(stream, ReplayStream) else stream
    secure = isinstance(inner, trio.SSLStream)
    headers = clean_headers(request.headers)
    subprotocols: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            subprotocols.extend(part.strip() for part in value.decode("latin-1").split(",") if part.strip())
    return ConnectionInfo(
        path=decode_path(raw_path),
        query_string=query,
        headers=headers,
        client=_address(stream, local=False),
        server=_address(stream, local=True),
        scheme="wss" if secure else "ws",
        http_version=request.http_version.decode("ascii"),
        method=request.method.decode("ascii"),
        root_path=root_path,
        subprotocols=tuple(subprotocols),
    )


#: Close codes that must never appear in a close frame (RFC 6455 §7.4.1).
_LOCAL_ONLY_CODES = frozenset({1005, 1006, 1015})


class _FailGuard(trio.abc.HalfCloseableStream):
    """The stream trio-websocket writes to; sends the close frame it leaves out on a protocol error.

    RFC 6455 §7.1.7: to *fail* a connection (a frame breaking the protocol), send a close frame
    (1002, or 1007 for bad UTF-8) and then close TCP. On a bad frame wsproto 1.3 reports a close
    with that code but stays OPEN, and trio-websocket 0.12 then closes the stream without any
    close frame (``_handle_close_connection_event`` replies only to a peer's own close). So this
    wrapper watches the frames going out, and when the stream is closed after trio-websocket
    recorded a close code but before any close frame went out, it sends one with that code.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.connection: trio_websocket.WebSocketConnection | None = None
        self._close_sent = False
        self._closed: trio.Event | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # trio-websocket writes each frame with one send_all; a close frame's first byte is
        # FIN + opcode 0x8 (control frames are never compressed or fragmented).
        if data[:1] == b"\x88":
            self._close_sent = True
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.inner, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        if self._closed is not None:  # closed, or being closed by another task: wait for it
            await self._closed.wait()
            return
        self._closed = trio.Event()
        reason = self.connection.closed if self.connection is not None else None
        try:
            if reason is not None and not self._close_sent and int(reason.code) not in _LOCAL_ONLY_CODES:
                self._close_sent = True
                # wsproto builds the frame (and cuts the reason to fit a control frame).
                frame = FrameProtocol(client=False, extensions=[]).close(int(reason.code), reason.reason)
                with trio.move_on_after(1):
                    await self.inner.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # the client is gone (or a send is stuck): there is no one to tell
        finally:
            try:
                await self.inner.aclose()
            finally:
                self._closed.set()


@attrs.define(eq=False)
class _TrioWebSocketTransport:
    request: trio_websocket.WebSocketRequest
    stream: _FailGuard
    connection: trio_websocket.WebSocketConnection | None = None

    async def accept(self, subprotocol: str | None) -> None:
        self.connection = self.stream.connection = await self.request.accept(subprotocol=subprotocol)

    async def reject(self, status: int, body: bytes) -> None:
        await self.request.reject(status, body=body)

    async def receive(self) -> str | bytes:
        assert self.connection is not None
        try:
            message: str | bytes = await self.connection.get_message()
        except trio_websocket.ConnectionClosed as closed:
            # int(): the code is wsproto's CloseReason IntEnum for every code it knows.
            raise WebSocketClosed(int(closed.reason.code) if closed.reason else 1006) from None
        return message

    async def send(self, data: str | bytes) -> None:
        assert self.connection is not None
        try:
            await self.connection.send_message(data)
        except trio_websocket.ConnectionClosed:
            pass  # the client is gone; receive() reports how it closed

    async def close(self, code: int) -> None:
        if self.connection is not None:
            await self.connection.aclose(code)

    async def ping(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.ping()
            except trio_websocket.ConnectionClosed:
                pass


async def handle_websocket_stream(
    server: InterfaceServer, stream: trio.abc.Stream, request: h11.Request, root_path: str = ""
) -> None:
    """Serve one WebSocket whose upgrade request (*request*) was read from *stream*."""
    info = connection_info(stream, request, root_path)
    guard = _FailGuard(stream)
    try:
        async with trio.open_nursery() as nursery:
            ws_request = await trio_websocket.wrap_server_stream(
                nursery,
                guard,
                message_queue_size=16,
                max_message_size=server.config.websocket_max_message_size,
            )
            transport = _TrioWebSocketTransport(ws_request, guard)
            try:
                await server.websocket(info, transport)
            except Exception:
                log.exception("error serving WebSocket %s; closing it with 1011", info.path)
                with trio.move_on_after(1, shield=True):
                    if transport.connection is not None:
                        await transport.connection.aclose(1011)
                    else:
                        await ws_request.reject(500)
            if transport.connection is not None:
                with trio.move_on_after(5):
                    await transport.connection.aclose()
                    # trio-websocket's reader may not have closed the stream yet (it wakes us
                    # first): close it here, so the close frame of a failed connection goes out
                    # before the reader is cancelled.
                    await guard.aclose()
            nursery.cancel_scope.cancel()
    except Exception:  # a broken stream while closing: this connection's problem only
        log.debug("WebSocket %s ended with an error", info.path, exc_info=True)
    finally:
        await trio.aclose_forcefully(stream)


async def _refuse_plain_http(stream: trio.abc.Stream) -> None:
    body = b"This endpoint serves WebSockets only.\n"
    response = (
        b"HTTP/1.1 426 Upgrade Required\r\nupgrade: websocket\r\nconnection: close\r\n"
        b"content-type: text/plain\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with trio.move_on_after(5):
        await stream.send_all(response)


async def serve_websocket_listener(
    server: InterfaceServer,
    binds: Sequence[str | socket.socket],
    *,
    ssl_context: _ssl.SSLContext | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A WebSocket-only listener on *binds* (as :func:`~interface.serve_interface` takes them).

    ``task_status.started()`` hands back its ``ws://`` URLs once listening. Plain HTTP requests
    get 426. Runs until cancelled, or until *shutdown* is set: then it stops accepting, cancels
    connections still sending their request head, closes WebSockets with 1001, gives the rest
    ``grace_period`` seconds, and returns. Raises :exc:`ValueError` or
    :exc:`~interface.listeners.BindError` if an address cannot be bound.
    """
    sockets = await bind_sockets(binds)
    listeners, urls = open_listeners(sockets, "wss" if ssl_context else "ws", ssl_context)
    idle = IdleConnections()

    async def handle(stream: trio.abc.Stream) -> None:
        head = None
        with idle.waiting():
            head = await read_head(stream)
        if head is None:  # the peer left, or shutdown cancelled the wait
            await trio.aclose_forcefully(stream)
            return
        request = parse_head(head)
        if not is_websocket_upgrade(request):
            await _refuse_plain_http(stream)
            await trio.aclose_forcefully(stream)
            return
        assert request is not None
        await handle_websocket_stream(server, ReplayStream(head, stream), request)

    try:
        await serve_connections(
            partial(guarded, handle),
            listeners,
            idle=idle,
            shutdown=shutdown,
            grace_period=server.config.grace_period,
            on_shutdown=server.close_websockets,
            name=", ".join(urls),
            task_status=StartedWith(task_status, urls),
        )
    finally:
        close_sockets(sockets)
