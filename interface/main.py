"""The main port: pages, HTTP/2 and WebSockets on one listener (what ``serve()`` runs).

Each connection is one task from the first byte: it reads the request head once
(:func:`interface.head.read_head`) and then

* serves HTTP/1.1 itself, request after request, with h11 (:mod:`interface.http11`);
* serves a WebSocket upgrade itself, with wsproto (:mod:`interface.wsproto_connection`):
  the browser's ``new WebSocket("ws://" + location.host + "/chat/")`` gets the fast path;
* hands HTTP/2 (ALPN ``h2`` on a TLS bind, prior knowledge, ``Upgrade: h2c``) to Hypercorn
  driving :class:`~interface.InterfaceApp` (:mod:`interface._hypercorn`).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from functools import partial

import trio

from ._hypercorn import Hypercorn, hypercorn_config, tls_context
from .asgi import InterfaceApp
from .core import InterfaceServer
from .head import HEAD_TIMEOUT, Head, Kind, ReplayStream, read_head
from .http11 import serve_http11
from .listeners import (
    IdleConnections,
    StartedWith,
    bind_sockets,
    close_sockets,
    open_listeners,
    serve_connections,
)
from .logs import log
from .wsproto_connection import prepare_upgrade, serve_websocket_upgrade

__all__ = ["serve_interface"]


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
    hypercorn = Hypercorn(InterfaceApp(server), config)
    idle = IdleConnections()
    root_path = server.config.root_path

    async def websocket(stream: trio.abc.Stream, head: Head) -> None:
        await serve_websocket_upgrade(server, stream, prepare_upgrade(server, stream, head, root_path))

    async def handle(stream: trio.abc.Stream) -> None:
        # (the error guard of websocket._guarded, inlined: a frame fewer per idle socket)
        try:
            await serve(stream)
        except Exception:
            log.exception("connection handler failed; closed that connection")
            await trio.aclose_forcefully(stream)

    async def serve(stream: trio.abc.Stream) -> None:
        head = None
        http2 = False
        with idle.waiting() as waiting:
            waiting.deadline = trio.current_time() + HEAD_TIMEOUT
            if isinstance(stream, trio.SSLStream):
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError:
                    return
                http2 = stream.selected_alpn_protocol() == "h2"
            if not http2:
                head = await read_head(stream)
        if http2:
            await hypercorn.serve(stream)
        elif head is None:  # the peer left, took too long, or shutdown cancelled the wait
            return
        elif head.kind is Kind.HTTP2:
            await hypercorn.serve(ReplayStream(head.raw, stream))
        elif head.kind is Kind.WEBSOCKET:
            serving = serve_websocket_upgrade(
                server, stream, prepare_upgrade(server, stream, head, root_path)
            )
            del head  # its h11 state is not kept for the socket's life
            await serving
        else:
            head.raw = b""
            await serve_http11(server, stream, head, idle, websocket=partial(websocket, stream))

    async def on_shutdown() -> None:
        await hypercorn.terminate()  # Hypercorn closes its idle connections
        await server.close_websockets()

    try:
        async with hypercorn.running():
            await serve_connections(
                handle,
                listeners,
                idle=idle,
                shutdown=shutdown,
                grace_period=server.config.grace_period,
                on_shutdown=on_shutdown,
                name=", ".join(urls),
                task_status=StartedWith(task_status, urls),
            )
    finally:
        close_sockets(sockets)
