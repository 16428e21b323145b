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
import socket
import ssl
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

from .core import ClientDisconnected, ConnectionInfo, InterfaceServer, WebSocketClosed
from .listeners import (
    IdleConnections,
    StartedWith,
    bind_sockets,
    close_sockets,
    guarded,
    open_listeners,
    serve_connections,
)
from .protocol import Headers, clean_headers
from .websocket import (
    ReplayStream,
    handle_websocket_stream,
    is_websocket_upgrade,
    parse_head,
    read_head,
)

__all__ = ["InterfaceApp", "hypercorn_config", "serve_interface", "tls_context"]

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
    keep_alive_timeout: float = 5,
) -> Config:
    config = Config()
    config.keep_alive_timeout = keep_alive_timeout
    config.bind = list(binds)
    config.certfile = certfile
    config.keyfile = keyfile
    config.accesslog = None  # interface.access logs HTTP and WebSocket alike
    config.errorlog = logging.getLogger("interface.hypercorn")
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    return config


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """Hypercorn's server TLS context (HTTP/2 by ALPN) for *certfile* and *keyfile*, if given.

    Raises :exc:`ValueError` naming the files if they cannot be loaded.
    """
    try:
        return hypercorn_config([], certfile=certfile, keyfile=keyfile).create_ssl_context()
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"TLS certificate {certfile!r} with key {keyfile!r} could not be loaded: {exc}"
        ) from exc


async def serve_interface(
    server: InterfaceServer,
    binds: Sequence[str | socket.socket],
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP and WebSockets on *binds*: ``host:port``, ``unix:PATH``, ``fd://N``, or sockets.

    Sockets are used as they are (bound and listening, as :func:`~interface.listeners.bind_sockets`
    makes them) and closed on the way out.

    ``task_status.started()`` hands back the bound URLs (port 0 works) once listening. Runs
    until cancelled, or until *shutdown* is set: then it stops accepting, cancels connections
    waiting for a request, closes WebSockets with 1001, gives requests in flight
    ``grace_period`` seconds, and returns. Raises :exc:`ValueError` for an address that cannot
    work or a TLS certificate that cannot be loaded, :exc:`~interface.listeners.BindError` (an
    :exc:`OSError`) if binding fails.
    """
    config = hypercorn_config(
        [bind for bind in binds if isinstance(bind, str)],
        certfile=certfile,
        keyfile=keyfile,
        graceful_timeout=server.config.grace_period,
        keep_alive_timeout=server.config.timeout_keep_alive,
    )
    ssl_context = tls_context(certfile, keyfile)
    sockets = await bind_sockets(binds, backlog=config.backlog)
    listeners, urls = open_listeners(sockets, "https" if ssl_context else "http", ssl_context)
    app = ASGIWrapper(InterfaceApp(server))  # type: ignore[arg-type]
    context = WorkerContext(None)
    idle = IdleConnections()

    async def handle(stream: trio.abc.Stream) -> None:
        head = None
        with idle.waiting():
            head = await read_head(stream)
        if head is None:  # the peer left, or shutdown cancelled the wait
            await trio.aclose_forcefully(stream)
            return
        replay = ReplayStream(head, stream)
        request = parse_head(head)
        if is_websocket_upgrade(request):
            assert request is not None
            await handle_websocket_stream(server, replay, request, server.config.root_path)
        else:
            # Hypercorn closes its idle keep-alive connections itself once context.terminated is set.
            await TCPServer(app, config, context, {}, replay).run()  # type: ignore[arg-type]

    async def on_shutdown() -> None:
        await context.terminated.set()
        await server.close_websockets()

    lifespan = Lifespan(app, config, {})
    try:
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            await serve_connections(
                partial(guarded, handle),
                listeners,
                idle=idle,
                shutdown=shutdown,
                grace_period=server.config.grace_period,
                on_shutdown=on_shutdown,
                name=", ".join(urls),
                task_status=StartedWith(task_status, urls),
            )
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()
    finally:
        close_sockets(sockets)
