"""The ASGI-3 bridge app: :class:`InterfaceApp`.

A plain ASGI-3 app (HTTP, WebSocket, lifespan) over an :class:`~interface.core.InterfaceServer`:
the main port hands HTTP/2 to Hypercorn driving it (:mod:`interface._hypercorn`), and it can be
mounted in any ASGI server. Through ASGI a server reports only 1000 or 1006 as a client's close
code (Hypercorn's, uvicorn's limit); the main port's own HTTP/1.1 and WebSocket paths report
the real one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import attrs
import trio

from ._hypercorn import hypercorn_config, tls_context
from .common import ClientDisconnected, ConnectionInfo, WebSocketClosed
from .core import InterfaceServer
from .protocol import Headers, clean_headers

__all__ = ["InterfaceApp", "hypercorn_config", "tls_context"]


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
    pongs: int = 0

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
        self.pongs += 1  # the ASGI server keeps its connection alive itself (or not): never a timeout
        await trio.lowlevel.checkpoint()


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
