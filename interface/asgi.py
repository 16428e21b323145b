"""The ASGI-3 bridge app, and the listener that serves it with Hypercorn's Trio worker.

:class:`InterfaceApp` is a plain ASGI-3 app (HTTP, WebSocket, lifespan) over an
:class:`~interface.core.InterfaceServer`, so it can also be mounted in any ASGI server.

:func:`serve_interface` is the listener ``serve()`` uses: one port for pages and WebSockets.
It reads each connection's request head; a WebSocket upgrade goes to the trio-websocket fast
path (real close codes), everything else to Hypercorn's HTTP/1.1 and HTTP/2 machinery driving
:class:`InterfaceApp`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import repr_socket_addr

from .core import ClientDisconnected, ConnectionInfo, InterfaceServer, WebSocketClosed
from .protocol import Headers, clean_headers
from .websocket import (
    ReplayStream,
    _guarded,
    handle_websocket_stream,
    is_websocket_upgrade,
    parse_head,
    read_head,
)

__all__ = ["InterfaceApp", "serve_interface"]

log = logging.getLogger("interface")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _info(scope: Scope) -> ConnectionInfo:
    client, server = scope.get("client"), scope.get("server")
    return ConnectionInfo(
        path=scope["path"],
        query_string=scope.get("query_string", b""),
        headers=clean_headers(scope.get("headers", [])),
        client=list(client) if client else None,
        server=list(server) if server and server[1] is not None else None,
        scheme=scope.get("scheme", "http"),
        http_version=scope.get("http_version", "1.1"),
        method=scope.get("method", "GET"),
        root_path=scope.get("root_path", ""),
        subprotocols=tuple(scope.get("subprotocols", ())),
    )


@attrs.define(eq=False)
class _AsgiResponder:
    send: Send
    http_version: str = "1.1"

    async def start(self, status: int, headers: Headers) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, content: bytes, more: bool) -> None:
        await self.send({"type": "http.response.body", "body": content, "more_body": more})

    async def simple(self, status: int, text: bytes) -> None:
        headers = [
            [b"content-type", b"text/plain; charset=utf-8"],
            [b"content-length", str(len(text)).encode()],
        ]
        await self.start(status, headers)
        await self.body(text, False)

    async def abort(self) -> None:
        # An app that returns before its response ended makes Hypercorn close an HTTP/1.1
        # connection, so the client sees the body cut short. HTTP/2 streams cannot be reset
        # from ASGI (Hypercorn would leave them open): end those instead.
        if self.http_version == "2":
            await self.body(b"", False)


async def _asgi_body(receive: Receive) -> AsyncGenerator[bytes, None]:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ClientDisconnected
        yield event.get("body", b"")
        if not event.get("more_body", False):
            return


@attrs.define(eq=False)
class _AsgiWebSocketTransport:
    """Hypercorn's ASGI WebSocket: it reports only 1000/1006 as the client's close code."""

    receive_event: Receive
    send_event: Send

    async def accept(self, subprotocol: str | None) -> None:
        message: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol:
            message["subprotocol"] = subprotocol
        await self.send_event(message)

    async def reject(self, status: int, body: bytes) -> None:
        if status == 403:
            await self.send_event({"type": "websocket.close"})
            return
        await self.send_event(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [[b"content-type", b"text/plain"]],
            }
        )
        await self.send_event({"type": "websocket.http.response.body", "body": body, "more_body": False})

    async def receive(self) -> str | bytes:
        while True:
            event = await self.receive_event()
            if event["type"] == "websocket.disconnect":
                raise WebSocketClosed(int(event.get("code", 1005)))
            if event["type"] == "websocket.receive":
                data = event.get("bytes")
                return data if data is not None else event.get("text", "")

    async def send(self, data: str | bytes) -> None:
        key = "text" if isinstance(data, str) else "bytes"
        await self.send_event({"type": "websocket.send", key: data})

    async def close(self, code: int) -> None:
        await self.send_event({"type": "websocket.close", "code": code})

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()  # Hypercorn pings by itself (websocket_ping_interval)


@attrs.define(eq=False)
class InterfaceApp:
    """ASGI-3 app: each HTTP request and WebSocket becomes channel messages (ASGI-1)."""

    server: InterfaceServer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            async with contextlib.aclosing(_asgi_body(receive)) as body:
                await self.server.http(
                    _info(scope), body, _AsgiResponder(send, scope.get("http_version", "1.1"))
                )
        elif kind == "websocket":
            event = await receive()
            if event["type"] != "websocket.connect":
                return
            await self.server.websocket(_info(scope), _AsgiWebSocketTransport(receive, send))
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")


async def _lifespan(receive: Receive, send: Send) -> None:
    # The channel layer and workers are owned by serve(); the bridge has nothing to set up,
    # but it answers the protocol fully so servers never fall back to "no lifespan".
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def hypercorn_config(
    binds: Sequence[str],
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout: float = 10,
) -> Config:
    config = Config()
    config.bind = list(binds)
    config.certfile = certfile
    config.keyfile = keyfile
    config.accesslog = None  # interface.access logs HTTP and WebSocket alike
    config.errorlog = logging.getLogger("interface.hypercorn")
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    return config


async def serve_interface(
    server: InterfaceServer,
    binds: Sequence[str],
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP and WebSockets on *binds* (``host:port``, ``unix:PATH``, ``fd://N``).

    ``task_status.started()`` hands back the bound URLs (port 0 works) once listening. Runs
    until cancelled, or until *shutdown* is set: then it stops accepting, closes WebSockets
    with 1001, gives requests ``grace_period`` seconds, and returns.
    """
    config = hypercorn_config(
        binds, certfile=certfile, keyfile=keyfile, graceful_timeout=server.config.grace_period
    )
    app = ASGIWrapper(InterfaceApp(server))  # type: ignore[arg-type]
    context = WorkerContext(None)
    sockets = config.create_sockets()
    listeners: list[trio.abc.Listener[Any]] = []
    urls: list[str] = []
    secure = [(sock, True) for sock in sockets.secure_sockets]
    plain = [(sock, False) for sock in sockets.insecure_sockets]
    ssl_context = config.create_ssl_context()
    for sock, is_secure in secure + plain:
        sock.listen(config.backlog)
        listener: trio.abc.Listener[Any] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        if is_secure:
            assert ssl_context is not None
            listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
        listeners.append(listener)
        urls.append(
            f"{'https' if is_secure else 'http'}://{repr_socket_addr(sock.family, sock.getsockname())}"
        )

    async def handle(stream: trio.abc.Stream) -> None:
        head = await read_head(stream)
        if head is None:
            await trio.aclose_forcefully(stream)
            return
        replay = ReplayStream(head, stream)
        request = parse_head(head)
        if is_websocket_upgrade(request):
            assert request is not None
            await handle_websocket_stream(server, replay, request, server.config.root_path)
        else:
            await TCPServer(app, config, context, {}, replay).run()  # type: ignore[arg-type]

    lifespan = Lifespan(app, config, {})
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(
                        trio.serve_listeners,
                        partial(_guarded, handle),
                        listeners,
                        handler_nursery=connections,
                    )
                )
                task_status.started(urls)
                if shutdown is None:
                    await trio.sleep_forever()
                await shutdown.wait()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            await context.terminated.set()
            await server.close_websockets()
            connections.cancel_scope.deadline = trio.current_time() + server.config.grace_period
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
