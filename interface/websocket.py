"""The WebSocket-only listener (``--ws-bind``), on trio-websocket.

It reads each connection's request head (:func:`interface.head.read_head`), and hands a
WebSocket upgrade to trio-websocket with the head replayed; plain HTTP gets 426. It emits the
same messages as the main port (which drives wsproto itself, :mod:`interface.wsproto_connection`),
real close codes included. A handler error closes that one connection with 1011; it never
reaches the server.
"""

from __future__ import annotations

import logging
import socket
import ssl as _ssl
from collections.abc import Sequence
from functools import partial

import attrs
import h11
import trio
import trio_websocket
from wsproto.frame_protocol import FrameProtocol

from .common import WebSocketClosed
from .core import InterfaceServer
from .head import (
    HEAD_TIMEOUT,
    Kind,
    ReplayStream,
    WrappedStream,
    addresses,
    connection_info,
    is_tls,
    read_head,
)
from .listeners import (
    IdleConnections,
    StartedWith,
    bind_sockets,
    close_sockets,
    guarded,
    open_listeners,
    serve_connections,
)

__all__ = ["handle_websocket_stream", "serve_websocket_listener"]

log = logging.getLogger("interface")


#: Close codes that must never appear in a close frame (RFC 6455 §7.4.1).
_LOCAL_ONLY_CODES = frozenset({1005, 1006, 1015})


class _FailGuard(WrappedStream):
    """The stream trio-websocket writes to; sends the close frame it leaves out on a protocol error.

    RFC 6455 §7.1.7: to *fail* a connection (a frame breaking the protocol), send a close frame
    (1002, or 1007 for bad UTF-8) and then close TCP. On a bad frame wsproto 1.3 reports a close
    with that code but stays OPEN, and trio-websocket 0.12 then closes the stream without any
    close frame (``_handle_close_connection_event`` replies only to a peer's own close). So this
    wrapper watches the frames going out, and when the stream is closed after trio-websocket
    recorded a close code but before any close frame went out, it sends one with that code.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.connection: trio_websocket.WebSocketConnection | None = None
        self._close_sent = False
        self._closed: trio.Event | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # trio-websocket writes each frame with one send_all; a close frame's first byte is
        # FIN + opcode 0x8 (control frames are never compressed or fragmented).
        if data[:1] == b"\x88":
            self._close_sent = True
        await self.inner.send_all(data)

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
    nursery: trio.Nursery
    connection: trio_websocket.WebSocketConnection | None = None
    pongs: int = 0

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
        # trio-websocket's ping waits for its pong: in a task of the connection's nursery.
        self.nursery.start_soon(self._ping)

    async def _ping(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.ping()
            except (trio_websocket.ConnectionClosed, ValueError):
                return
            self.pongs += 1


async def handle_websocket_stream(
    server: InterfaceServer, stream: trio.abc.Stream, request: h11.Request, root_path: str = ""
) -> None:
    """Serve one WebSocket whose upgrade request (*request*) was read from *stream* (which
    replays it)."""
    client, local = addresses(stream)
    info = connection_info(
        request, client=client, server=local, secure=is_tls(stream), websocket=True, root_path=root_path
    )
    guard = _FailGuard(stream)
    try:
        async with trio.open_nursery() as nursery:
            ws_request = await trio_websocket.wrap_server_stream(
                nursery,
                guard,
                message_queue_size=16,
                max_message_size=server.config.websocket_max_message_size,
            )
            transport = _TrioWebSocketTransport(ws_request, guard, nursery)
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
        with idle.waiting() as waiting:
            waiting.deadline = trio.current_time() + HEAD_TIMEOUT
            head = await read_head(stream)
        if head is None:  # the peer left, took too long, or shutdown cancelled the wait
            await trio.aclose_forcefully(stream)
            return
        if head.kind is not Kind.WEBSOCKET:
            await _refuse_plain_http(stream)
            await trio.aclose_forcefully(stream)
            return
        assert head.request is not None
        await handle_websocket_stream(server, ReplayStream(head.raw, stream), head.request)

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
