"""The interface server's engine: connections <-> channel layer, independent of the listener.

One :class:`InterfaceServer` per process owns the process prefix ``interface.<random>!``. Its
reply poller (one task) receives every reply for every connection of this process from the
layer and hands each to its connection's bounded memory channel. Each connection runs as a
task of its listener and talks to the layer through :meth:`InterfaceServer.http` or
:meth:`InterfaceServer.websocket`, under cancel scopes for every timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from functools import partial
from typing import Any, Protocol

import attrs
import trio

from layers import BaseChannelLayer, ChannelFull, ChannelLayerUnavailable
from layers.base import retry_when_full

from . import protocol
from .protocol import Close, Reject, SendBytes, SendText, WebSocketProtocol, WebSocketState

__all__ = ["InterfaceConfig", "InterfaceServer", "WebSocketClosed", "WebSocketTransport"]

log = logging.getLogger("interface")
access_log = logging.getLogger("interface.access")

#: Bodies larger than this go in chunks through a ``body_channel``.
BODY_CHUNK: int = 512 * 1024


@attrs.frozen(kw_only=True)
class InterfaceConfig:
    """Interface settings (Daphne's defaults unless noted); seconds unless named otherwise."""

    http_timeout: float = 120
    websocket_connect_timeout: float = 5
    #: Maximum WebSocket lifetime; ``None`` means the layer's group_expiry.
    websocket_timeout: float | None = None
    ping_interval: float = 20
    ping_timeout: float = 30
    #: Largest request body accepted, in bytes (larger: 413).
    max_body_size: int = 100 * 1024 * 1024
    #: Largest WebSocket message accepted, in bytes (larger: close 1009).
    websocket_max_message_size: int = 1024 * 1024
    root_path: str = ""
    proxy_headers: bool = False
    #: Subprotocols the server accepts; the first one the client offers wins.
    ws_protocols: tuple[str, ...] = ()
    #: How many undelivered replies one connection may hold before the oldest are dropped.
    reply_buffer: int = 1000
    #: Seconds a graceful shutdown waits for connections after closing them.
    grace_period: float = 10
    #: How long a ``websocket.receive`` waits out a full channel (the client is held back by
    #: TCP meanwhile) before the socket is closed with 1013.
    receive_full_timeout: float = 2.0


class WebSocketClosed(Exception):
    """The client closed the WebSocket (``code`` is its close code)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class WebSocketTransport(Protocol):
    """What a listener gives :meth:`InterfaceServer.websocket` for one connection."""

    async def accept(self, subprotocol: str | None) -> None: ...

    async def reject(self, status: int, body: bytes) -> None: ...

    async def receive(self) -> str | bytes:
        """The next message; raises :exc:`WebSocketClosed` with the client's code at the end."""
        ...

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int) -> None: ...

    async def ping(self) -> None:
        """Ping and wait for the pong (returns at once where the transport pings by itself)."""
        ...


@attrs.frozen(kw_only=True)
class ConnectionInfo:
    """What a listener knows about a connection before it is handed over."""

    path: str
    query_string: bytes
    headers: protocol.Headers
    client: list[Any] | None
    server: list[Any] | None
    scheme: str
    http_version: str = "1.1"
    method: str = "GET"
    root_path: str = ""
    subprotocols: tuple[str, ...] = ()


def _proxied(info: ConnectionInfo) -> ConnectionInfo:
    headers = {name: value for name, value in info.headers}
    changes: dict[str, Any] = {}
    forwarded_for = headers.get(b"x-forwarded-for")
    if forwarded_for:
        host = forwarded_for.split(b",")[0].strip().decode("latin-1")
        port = headers.get(b"x-forwarded-port", b"0").strip()
        changes["client"] = [host, int(port) if port.isdigit() else 0]
    proto = headers.get(b"x-forwarded-proto")
    if proto:
        value = proto.split(b",")[0].strip().decode("latin-1").lower()
        if info.scheme in ("ws", "wss"):
            value = {"https": "wss", "http": "ws"}.get(value, value)
        changes["scheme"] = value
    return attrs.evolve(info, **changes) if changes else info


def _log_access(client: list[Any] | None, request: str, status: int | str, size: int | str) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    host = client[0] if client else "-"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime())
    access_log.info('%s - - [%s] "%s" %s %s', host, stamp, request, status, size)


@attrs.define(eq=False)
class InterfaceServer:
    """Connections of this process <-> *layer*; see the module docstring."""

    layer: BaseChannelLayer
    config: InterfaceConfig = attrs.Factory(InterfaceConfig)
    prefix: str = attrs.Factory(lambda: f"interface.{secrets.token_urlsafe(9)}!")
    shutting_down: trio.Event = attrs.Factory(trio.Event)
    _connections: dict[str, trio.MemorySendChannel[dict[str, Any]]] = attrs.Factory(dict)
    _websockets: dict[str, trio.CancelScope] = attrs.Factory(dict)

    @property
    def websocket_lifetime(self) -> float:
        timeout = self.config.websocket_timeout
        return self.layer.group_expiry if timeout is None else (math.inf if timeout < 0 else timeout)

    # -- replies ---------------------------------------------------------------------------

    async def run_reply_poller(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive this process's replies and route each to its connection. Runs until cancelled."""
        task_status.started()
        failures = 0
        while True:
            try:
                channel, message = await self.layer.receive([self.prefix])
            except ChannelLayerUnavailable as exc:
                failures += 1
                pause = min(5.0, 0.05 * 2**failures)
                log.warning(
                    "reply poller: channel layer error (%s: %s); retrying in %.2f s",
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await trio.sleep(pause)
                continue
            if failures:
                log.info("reply poller: channel layer is back")
                failures = 0
            sender = self._connections.get(channel)
            if sender is None:
                log.debug("reply for %s, which is gone; dropped", channel)
                continue
            try:
                sender.send_nowait(message)
            except trio.WouldBlock:
                log.warning("connection %s is not reading its replies; dropped one", channel)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @contextlib.contextmanager
    def _register(self) -> Any:
        reply_channel = self.prefix + secrets.token_urlsafe(9)
        sender, receiver = trio.open_memory_channel[dict[str, Any]](self.config.reply_buffer)
        self._connections[reply_channel] = sender
        try:
            with receiver:
                yield reply_channel, receiver
        finally:
            del self._connections[reply_channel]
            sender.close()

    def connection_count(self) -> int:
        return len(self._connections)

    async def close_websockets(self) -> None:
        """Graceful shutdown: close every WebSocket with 1001 ("going away")."""
        self.shutting_down.set()
        await trio.lowlevel.checkpoint()

    # -- HTTP ------------------------------------------------------------------------------

    async def http(
        self, info: ConnectionInfo, body: AsyncGenerator[bytes, None], respond: HttpResponder
    ) -> None:
        """Serve one HTTP request: send ``http.request``, then relay the response.

        *body* yields the request body; *respond* writes the response. Answers 503 when the
        layer is full or down, or when no response comes within ``http_timeout``.
        """
        if self.config.proxy_headers:
            info = _proxied(info)
        request_line = f"{info.method} {info.path}"
        with self._register() as (reply_channel, replies):
            try:
                first, rest = await _first_chunk(body, self.config.max_body_size)
            except _BodyTooLarge:
                await respond.simple(413, b"Request body too large.")
                _log_access(info.client, request_line, 413, "-")
                return
            async with contextlib.aclosing(rest) if rest is not None else contextlib.nullcontext():
                await self._http_request(info, request_line, reply_channel, replies, respond, first, rest)

    async def _http_request(
        self,
        info: ConnectionInfo,
        request_line: str,
        reply_channel: str,
        replies: trio.MemoryReceiveChannel[dict[str, Any]],
        respond: HttpResponder,
        first: bytes,
        rest: AsyncGenerator[bytes, None] | None,
    ) -> None:
        body_channel = await self.layer.new_channel("http.request.body?") if rest is not None else None
        message = protocol.http_request_message(
            reply_channel=reply_channel,
            http_version=info.http_version,
            method=info.method,
            scheme=info.scheme,
            path=info.path,
            query_string=info.query_string,
            root_path=info.root_path or self.config.root_path,
            headers=info.headers,
            body=first,
            body_channel=body_channel,
            client=info.client,
            server=info.server,
        )
        try:
            await self.layer.send("http.request", message)
        except ChannelFull:
            await respond.simple(503, b"Request queue full.")
            _log_access(info.client, request_line, 503, "-")
            return
        except ChannelLayerUnavailable as exc:
            log.warning("could not send http.request (%s: %s); answered 503", type(exc).__name__, exc)
            await respond.simple(503, b"Service unavailable: the channel layer is down.")
            _log_access(info.client, request_line, 503, "-")
            return
        try:
            status, size = await self._relay_response(reply_channel, replies, respond, body_channel, rest)
        finally:
            with trio.move_on_after(1, shield=True):
                with contextlib.suppress(ChannelFull, ChannelLayerUnavailable):
                    await self.layer.send(
                        "http.disconnect", {"reply_channel": reply_channel, "path": info.path}
                    )
        _log_access(info.client, request_line, status, size)

    async def _relay_response(
        self,
        reply_channel: str,
        replies: trio.MemoryReceiveChannel[dict[str, Any]],
        respond: HttpResponder,
        body_channel: str | None,
        rest: AsyncGenerator[bytes, None] | None,
    ) -> tuple[int | str, int | str]:
        state = protocol.HttpResponseProtocol()
        status: int | str = "-"
        size = 0
        async with trio.open_nursery() as nursery:
            if body_channel is not None and rest is not None:
                nursery.start_soon(self._stream_body, body_channel, rest)
            with trio.move_on_after(self.config.http_timeout):
                async for reply in replies:
                    try:
                        actions = state.reply(reply)
                    except ValueError as exc:
                        log.error("bad response message for %s: %s", reply_channel, exc)
                        if not state.started:
                            await respond.simple(500, b"Internal server error: bad response message.")
                            status = 500
                        state.finished = True
                        break
                    for action in actions:
                        if isinstance(action, protocol.ResponseStart):
                            status = action.status
                            await respond.start(action.status, action.headers)
                        else:
                            size += len(action.content)
                            await respond.body(action.content, action.more)
                    if state.finished:
                        break
            nursery.cancel_scope.cancel()
        if not state.started:
            await respond.simple(503, b"Worker server failed to respond within time limit.")
            return 503, "-"
        if not state.finished:
            log.warning("response for %s did not finish within http_timeout; ended it", reply_channel)
            await respond.body(b"", False)
        return status, size

    async def _stream_body(self, body_channel: str, rest: AsyncGenerator[bytes, None]) -> None:
        chunk = b""
        async for piece in rest:
            if chunk:
                await self._send_chunk(body_channel, {"content": chunk, "more_content": True})
            chunk = piece
        await self._send_chunk(body_channel, {"content": chunk, "more_content": False})

    async def _send_chunk(self, body_channel: str, chunk: dict[str, Any]) -> None:
        # The consumer may read slower than the client sends: wait (a minute at most).
        await retry_when_full(partial(self.layer.send, body_channel, chunk), 60)

    # -- WebSocket -------------------------------------------------------------------------

    def choose_subprotocol(self, offered: Sequence[str]) -> str | None:
        return next((name for name in offered if name in self.config.ws_protocols), None)

    async def websocket(self, info: ConnectionInfo, transport: WebSocketTransport) -> None:
        """Serve one WebSocket from handshake to close, following reference §3.7."""
        if self.config.proxy_headers:
            info = _proxied(info)
        with self._register() as (reply_channel, replies):
            ws = WebSocketProtocol(
                reply_channel=reply_channel,
                path=info.path,
                query_string=info.query_string,
                headers=info.headers,
                client=info.client,
                server=info.server,
                scheme=info.scheme,
                root_path=info.root_path or self.config.root_path,
                subprotocols=info.subprotocols,
            )
            _log_access(info.client, f"WSCONNECTING {info.path}", "-", "-")
            try:
                await self.layer.send("websocket.connect", ws.connect_message())
            except ChannelFull:
                await transport.reject(503, b"Connection queue at capacity.")
                _log_access(info.client, f"WSREJECT {info.path}", 503, "-")
                return
            except ChannelLayerUnavailable as exc:
                log.warning(
                    "could not send websocket.connect (%s: %s); denied with 503", type(exc).__name__, exc
                )
                await transport.reject(503, b"Service unavailable: the channel layer is down.")
                _log_access(info.client, f"WSREJECT {info.path}", 503, "-")
                return
            pending: list[protocol.WebSocketAction] = []
            with trio.move_on_after(self.config.websocket_connect_timeout):
                async for reply in replies:
                    actions = self._apply_safely(ws, reply)
                    if ws.state is not WebSocketState.CONNECTING:
                        pending = actions
                        break
            if ws.state is WebSocketState.CONNECTING or (pending and isinstance(pending[0], Reject)):
                await transport.reject(403, b"Access denied.")
                _log_access(info.client, f"WSREJECT {info.path}", 403, "-")
                await self._send_disconnect(ws, 1006)
                return
            await transport.accept(self.choose_subprotocol(info.subprotocols))
            _log_access(info.client, f"WSCONNECT {info.path}", "-", "-")
            code = await self._run_open_websocket(ws, transport, replies, pending[1:])
            _log_access(info.client, f"WSDISCONNECT {info.path}", code, "-")

    def _apply_safely(self, ws: WebSocketProtocol, reply: dict[str, Any]) -> list[protocol.WebSocketAction]:
        try:
            return ws.reply(reply)
        except ValueError as exc:
            log.error("bad WebSocket reply for %s: %s; dropped it", ws.reply_channel, exc)
            return []

    async def _run_open_websocket(
        self,
        ws: WebSocketProtocol,
        transport: WebSocketTransport,
        replies: trio.MemoryReceiveChannel[dict[str, Any]],
        first_actions: list[protocol.WebSocketAction],
    ) -> int:
        result: dict[str, Any] = {"code": 1006, "muted": False, "closing": False}

        async def close(code: int) -> None:
            # The first close decides the code the application is told about.
            if not result["closing"]:
                result["closing"] = True
                result["code"] = code
            await transport.close(code)

        async def perform(actions: list[protocol.WebSocketAction]) -> bool:
            for action in actions:
                if isinstance(action, (SendText, SendBytes)):
                    await transport.send(action.text if isinstance(action, SendText) else action.data)
                elif isinstance(action, Close):
                    await close(action.code)
                    return False
            return True

        async def from_layer(cancel: trio.CancelScope) -> None:
            if await perform(first_actions):
                async for reply in replies:
                    if not await perform(self._apply_safely(ws, reply)):
                        break
            cancel.cancel()

        async def from_client(cancel: trio.CancelScope) -> None:
            while True:
                try:
                    data = await transport.receive()
                except WebSocketClosed as closed:
                    if not result["closing"]:
                        result["closing"] = True
                        result["code"] = closed.code
                    break
                try:
                    await retry_when_full(
                        partial(self.layer.send, "websocket.receive", ws.receive_message(data)),
                        self.config.receive_full_timeout,
                    )
                except trio.TooSlowError:
                    log.warning("websocket.receive stayed full; closing %s with 1013", ws.reply_channel)
                    result["muted"] = True
                    await close(1013)
                    break
                except ChannelLayerUnavailable as exc:
                    log.warning(
                        "dropped a WebSocket frame: channel layer error (%s: %s)", type(exc).__name__, exc
                    )
            cancel.cancel()

        async def keepalive() -> None:
            while True:
                await trio.sleep(self.config.ping_interval)
                with trio.move_on_after(self.config.ping_timeout) as scope:
                    await transport.ping()
                if scope.cancelled_caught:
                    log.info(
                        "no pong from %s within %s s; closing", ws.reply_channel, self.config.ping_timeout
                    )
                    result["code"] = 1006
                    await transport.close(1011)
                    return

        async def on_shutdown(cancel: trio.CancelScope) -> None:
            await self.shutting_down.wait()
            await close(1001)
            cancel.cancel()

        with trio.move_on_after(self.websocket_lifetime) as lifetime:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(from_layer, nursery.cancel_scope)
                nursery.start_soon(from_client, nursery.cancel_scope)
                nursery.start_soon(on_shutdown, nursery.cancel_scope)
                if self.config.ping_interval > 0:
                    nursery.start_soon(keepalive)
        if lifetime.cancelled_caught:
            with trio.move_on_after(1, shield=True):
                await close(1000)
        if not result["muted"]:
            await self._send_disconnect(ws, result["code"])
        return int(result["code"])

    async def _send_disconnect(self, ws: WebSocketProtocol, code: int) -> None:
        with trio.move_on_after(1, shield=True):
            try:
                await self.layer.send("websocket.disconnect", ws.disconnect_message(code))
            except (ChannelFull, ChannelLayerUnavailable) as exc:  # dropped, as the spec says
                log.debug("dropped websocket.disconnect for %s (%s)", ws.reply_channel, exc)


class HttpResponder(Protocol):
    """What a listener gives :meth:`InterfaceServer.http` to write the response."""

    async def start(self, status: int, headers: protocol.Headers) -> None: ...

    async def body(self, content: bytes, more: bool) -> None: ...

    async def simple(self, status: int, text: bytes) -> None:
        """A complete small plain-text response (errors)."""
        ...


class _BodyTooLarge(Exception):
    pass


async def _first_chunk(
    body: AsyncGenerator[bytes, None], limit: int
) -> tuple[bytes, AsyncGenerator[bytes, None] | None]:
    """Read up to BODY_CHUNK bytes; return them and an iterator over the rest (or None)."""
    buffer = bytearray()
    total = 0
    async for piece in body:
        total += len(piece)
        if total > limit:
            raise _BodyTooLarge
        buffer += piece
        if len(buffer) > BODY_CHUNK:
            head, tail = bytes(buffer[:BODY_CHUNK]), bytes(buffer[BODY_CHUNK:])
            return head, _rest(tail, body, limit - total)
    return bytes(buffer), None


async def _rest(
    first: bytes, iterator: AsyncGenerator[bytes, None], remaining: int
) -> AsyncGenerator[bytes, None]:
    pending = bytearray(first)
    async for piece in iterator:
        remaining -= len(piece)
        if remaining < 0:
            raise _BodyTooLarge
        pending += piece
        while len(pending) >= BODY_CHUNK:
            yield bytes(pending[:BODY_CHUNK])
            del pending[:BODY_CHUNK]
    yield bytes(pending)
