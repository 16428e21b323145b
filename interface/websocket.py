"""The WebSocket fast path on trio-websocket, and the WebSocket-only listener (``--ws-bind``).

A listener reads the request head, sees an ``Upgrade: websocket`` request, and hands the
stream (with the head replayed) to trio-websocket. Unlike Hypercorn's ASGI path, this path
reports the client's real close code, and it is measurably faster. A handler error closes
that one connection with 1011; it never reaches the server.
"""

from __future__ import annotations

import logging
import ssl as _ssl
from functools import partial
from typing import Any

import attrs
import h11
import trio
import trio_websocket

from .core import ConnectionInfo, InterfaceServer, WebSocketClosed
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


@attrs.define(eq=False)
class _TrioWebSocketTransport:
    request: trio_websocket.WebSocketRequest
    connection: trio_websocket.WebSocketConnection | None = None

    async def accept(self, subprotocol: str | None) -> None:
        self.connection = await self.request.accept(subprotocol=subprotocol)

    async def reject(self, status: int, body: bytes) -> None:
        await self.request.reject(status, body=body)

    async def receive(self) -> str | bytes:
        assert self.connection is not None
        try:
            message: str | bytes = await self.connection.get_message()
        except trio_websocket.ConnectionClosed as closed:
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
    try:
        async with trio.open_nursery() as nursery:
            ws_request = await trio_websocket.wrap_server_stream(
                nursery,
                stream,
                message_queue_size=16,
                max_message_size=server.config.websocket_max_message_size,
            )
            transport = _TrioWebSocketTransport(ws_request)
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
    host: str,
    port: int,
    *,
    ssl_context: _ssl.SSLContext | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A WebSocket-only listener on *host*:*port*; ``started()`` hands back its ``ws://`` URLs."""
    listeners: list[trio.abc.Listener[Any]] = list(await trio.open_tcp_listeners(port, host=host))
    if ssl_context is not None:
        listeners = [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]
    scheme = "wss" if ssl_context is not None else "ws"
    urls = []
    for listener in listeners:
        sock = (listener.transport_listener if isinstance(listener, trio.SSLListener) else listener).socket  # type: ignore[attr-defined]
        address, bound_port = sock.getsockname()[:2]
        urls.append(f"{scheme}://{'[' + address + ']' if ':' in address else address}:{bound_port}")

    async def handle(stream: trio.abc.Stream) -> None:
        head = await read_head(stream)
        if head is None:
            await trio.aclose_forcefully(stream)
            return
        request = parse_head(head)
        if not is_websocket_upgrade(request):
            await _refuse_plain_http(stream)
            await trio.aclose_forcefully(stream)
            return
        assert request is not None
        await handle_websocket_stream(server, ReplayStream(head, stream), request)

    await trio.serve_listeners(
        partial(_guarded, handle),
        listeners,
        handler_nursery=handler_nursery,
        task_status=_Relay(task_status, urls),
    )


async def _guarded(handler: Any, stream: trio.abc.Stream) -> None:
    try:
        await handler(stream)
    except Exception:
        log.exception("connection handler failed; closed that connection")
        await trio.aclose_forcefully(stream)


@attrs.define
class _Relay:
    """Reports *value* instead of what serve_listeners reports."""

    status: trio.TaskStatus[list[str]]
    value: list[str]

    def started(self, _: object = None) -> None:
        self.status.started(self.value)
