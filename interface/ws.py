"""One WebSocket against the layer, whatever the listener (reference §3.7).

Theory of operation
-------------------
The connection's own task sends ``websocket.connect`` and waits (``websocket_connect_timeout``)
for the accept on the connection's reply channel, then becomes the *reader*: each client frame
becomes a ``websocket.receive`` (a full channel is waited out, reading nothing meanwhile, so
TCP holds the client back). One child task, the *writer*, receives the replies
(``Replies.receive``, straight from the consumers' tasks on a layer with own channels) and
writes them. That is two tasks per open WebSocket, as bare trio-websocket has, and nothing
else per connection: timers and shutdown reach a session through the server. While the writer
waits and nothing is queued for it, the layer offers a reply to :meth:`Session._direct` first,
which writes a plain text/bytes frame from the sender's task if the socket takes it at once.

* Everything that closes a socket from our side (the application's close, shutdown with 1001,
  a membership loss with 1012, a slow client with 1013, a ping timeout with 1011) goes through
  :meth:`Session.request_close`: the code is recorded, the writer is woken if it waits for a
  reply (its wait is the only thing ever cancelled, never a write), it sends the close frame,
  and the reader reads on until the client's answer, within ``CLOSE_TIMEOUT``.
* Pings come from the server's heartbeat (one task for every WebSocket): it asks the writer
  for one the same way, and closes a session whose pong did not come within ``ping_timeout``.
* The lifetime (``websocket_timeout``) is the deadline of the session's nursery.
* ``websocket.disconnect`` follows every close, with the code the first close decided
  (:class:`~interface.protocol.WebSocketProtocol` holds that state).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import trio

from layers import ChannelFull, ChannelLayerUnavailable, MessageTooLarge

from . import protocol
from .common import CLOSE_TIMEOUT, ConnectionInfo, WebSocketClosed, WebSocketTransport
from .logs import log, log_access
from .messages import as_layer_message
from .protocol import Close, Reject, SendBytes, SendText, WebSocketProtocol, WebSocketState
from .wsproto_connection import WsprotoTransport

if TYPE_CHECKING:
    from .core import InterfaceServer, Replies

__all__ = ["PING_TIMEOUT_LINGER", "Session", "serve_websocket"]

#: Seconds a socket closed for a ping timeout waits for the client's close frame.
PING_TIMEOUT_LINGER = 1.0


def _apply(ws: WebSocketProtocol, replies: Replies, reply: dict[str, Any]) -> list[protocol.WebSocketAction]:
    try:
        return ws.reply(reply)
    except ValueError as exc:
        replies.drops.dropped("bad reply", str(exc), logging.ERROR)
        return []


async def serve_websocket(
    server: InterfaceServer, info: ConnectionInfo, transport: WebSocketTransport
) -> None:
    """Serve one WebSocket from handshake to close, following reference §3.7."""
    if server.over_limit():
        await transport.reject(503, b"Service unavailable: too many connections.")
        log_access(info.client, f"WSREJECT {info.path}", 503, "-")
        return
    replies = server.open_replies("websocket")
    try:
        ws = WebSocketProtocol(
            reply_channel=replies.name,
            path=info.path,
            query_string=info.query_string,
            headers=info.headers,
            client=info.client,
            server=info.server,
            scheme=info.scheme,
            root_path=info.root_path or server.config.root_path,
            subprotocols=info.subprotocols,
        )
        log_access(info.client, f"WSCONNECTING {info.path}", "-", "-")
        try:
            await server.layer.send_owned("websocket.connect", as_layer_message(ws.connect_message()))
        except ChannelFull:
            await transport.reject(503, b"Connection queue at capacity.")
            log_access(info.client, f"WSREJECT {info.path}", 503, "-")
            return
        except ChannelLayerUnavailable as exc:
            log.warning("could not send websocket.connect (%s: %s); denied with 503", type(exc).__name__, exc)
            await transport.reject(503, b"Service unavailable: the channel layer is down.")
            log_access(info.client, f"WSREJECT {info.path}", 503, "-")
            return
        # What a session keeps is what its messages need from now on.
        ws.headers, ws.query_string, ws.subprotocols = [], b"", ()
        pending: list[protocol.WebSocketAction] = []
        with trio.move_on_after(server.config.websocket_connect_timeout):
            while True:
                actions = _apply(ws, replies, await replies.receive())
                if ws.state is not WebSocketState.CONNECTING:
                    pending = actions
                    break
        if ws.state is WebSocketState.CONNECTING or (pending and isinstance(pending[0], Reject)):
            await transport.reject(403, b"Access denied.")
            log_access(info.client, f"WSREJECT {info.path}", 403, "-")
            await _send_disconnect(server, ws, replies, 1006)
            return
        await transport.accept(server.choose_subprotocol(info.subprotocols))
        client, path = info.client, info.path
        del info  # (its headers are the connect message's now: not kept for the socket's life)
        log_access(client, f"WSCONNECT {path}", "-", "-")
        session = Session(server, ws, transport, replies)
        await session.run(pending[1:])
        log_access(client, f"WSDISCONNECT {path}", ws.close_code, "-")
    finally:
        replies.close()


async def _send_disconnect(
    server: InterfaceServer, ws: WebSocketProtocol, replies: Replies, code: int
) -> None:
    # Waited for while the channel is full (behind the other connections that wait: a
    # thousand sockets closing at once make one poll), for a second at most, also when this
    # task is being cancelled; then dropped, with a WARNING.
    message = as_layer_message(ws.disconnect_message(code))
    layer = server.layer
    reason = "the channel stayed full, or the layer did not answer, for 1 s"
    if trio.current_effective_deadline() == math.inf:  # the common case: no scope needed
        try:
            await layer.send_owned("websocket.disconnect", message)
            return
        except ChannelFull:
            pass
        except ChannelLayerUnavailable as exc:
            reason = f"channel layer error: {type(exc).__name__}: {exc}"
            replies.drops.dropped("websocket.disconnect", f"path {ws.path}, code {message['code']}: {reason}")
            return
    with trio.move_on_after(1, shield=True):
        try:
            try:
                await layer.send_owned("websocket.disconnect", message)
            except ChannelFull:
                await server.send_waiting("websocket.disconnect", message, math.inf)
            return
        except ChannelLayerUnavailable as exc:
            reason = f"channel layer error: {type(exc).__name__}: {exc}"
    replies.drops.dropped("websocket.disconnect", f"path {ws.path}, code {message['code']}: {reason}")


class Session:
    """One open WebSocket: its reader (the connection's task) and its writer (a child task).

    See the module docstring. :meth:`request_close` and :meth:`request_ping` may be called
    from any task; they never block.
    """

    __slots__ = (
        "_close_request",
        "_direct_transport",
        "_flush_due",
        "_ping_due",
        "_read_done",
        "_scope",
        "_waiting",
        "_wake",
        "alive",
        "name",
        "replies",
        "server",
        "transport",
        "ws",
    )

    def __init__(
        self, server: InterfaceServer, ws: WebSocketProtocol, transport: WebSocketTransport, replies: Replies
    ) -> None:
        self.server = server
        self.ws = ws
        self.transport = transport
        self.replies = replies
        self.name = replies.name
        self.alive = True
        self._scope: trio.CancelScope | None = None
        self._wake: trio.CancelScope | None = None
        self._waiting = False  # the writer waits for a reply: its wait may be cancelled
        self._close_request: int | None = None  # the code of a close frame to send
        self._ping_due = False
        self._flush_due = False  # a reply written directly went out only in part: the writer ends it
        self._read_done = False
        self._direct_transport: WsprotoTransport | None = None

    # -- requests from elsewhere (never blocking) ------------------------------------------

    def request_close(
        self, code: int, reported: int | None = None, why: str = "", linger: float = CLOSE_TIMEOUT
    ) -> None:
        """Close with *code* (reporting *reported* to the application, if given) as soon as
        the writer finishes what it is writing; the close handshake gets *linger* seconds."""
        if not self.alive or not self.ws.local_close(code, reported):
            return  # closed, or closing already: the first close decides
        if why:
            log.info("closing %s with %d: %s", self.name, code, why)
        self._close_request = code
        self._bound(linger)
        self._wake_writer()

    def request_ping(self) -> int:
        """Ask the writer for a ping; return the transport's pong count before it."""
        self._ping_due = True
        self._wake_writer()
        return self.transport.pongs

    def ping_timed_out(self, timeout: float) -> None:
        log.info("no pong from %s within %s s; closing", self.name, timeout)
        # 1011 to the client, as websockets and uvicorn send; 1006 to the application, as no
        # close frame came back (RFC 6455 §7.1.5). A client that answers no ping will not
        # answer the close frame either: a second for it, not CLOSE_TIMEOUT.
        self.request_close(1011, reported=1006, linger=PING_TIMEOUT_LINGER)

    def _direct(self, message: dict[str, Any]) -> bool:
        """A reply offered by the layer while the writer waits and nothing is queued before it
        (:meth:`layers.BaseChannelLayer.deliver_own_directly`): a plain text or bytes
        frame is written from the sender's task if the socket takes it at once, saving the
        writer's wake-up. False (the writer gets it as usual) for anything else, or when the
        writer has something to do first (a close, a ping), or nothing could be written."""
        transport = self._direct_transport
        if (
            transport is None
            or not self._waiting
            or self._close_request is not None
            or self._ping_due
            or self._flush_due
            or len(message) != 1
            or self.ws.state is not WebSocketState.OPEN
        ):
            return False
        # What ws.reply() makes of a one-key text/bytes reply to an open socket: one frame.
        text = message.get("text")
        if type(text) is str:
            written = transport.send_now(text, None)
        else:
            data = message.get("bytes")
            if type(data) is not bytes:
                return False
            written = transport.send_now(None, data)
        if written is None:  # part of the frame went out: the writer writes the rest first
            self._flush_due = True
            self._wake_writer()
            return True
        return written

    def _wake_writer(self) -> None:
        if self._waiting and self._wake is not None:
            self._wake.cancel()

    def _bound(self, linger: float = CLOSE_TIMEOUT) -> None:
        scope = self._scope
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + linger)

    # -- the session -----------------------------------------------------------------------

    async def run(self, first_actions: list[protocol.WebSocketAction]) -> None:
        """Serve the open socket until it is closed; then send ``websocket.disconnect``.

        This task is the reader (the loop below: one frame of its own, an idle socket costs
        memory per frame); the writer is its one child.
        """
        server, ws, transport = self.server, self.ws, self.transport
        self.replies.on_overflow = self._overflowed
        server._session_opened(self)
        layer, timeout = server.layer, server.config.receive_full_timeout
        # Replies written from the senders' tasks while the writer waits (see _direct).
        direct = False
        if server.own_channels and isinstance(transport, WsprotoTransport) and transport.sock is not None:
            direct, self._direct_transport = True, transport
            layer.deliver_own_directly(self.name, self._direct)
        try:
            lifetime = server.websocket_lifetime
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if lifetime < math.inf:
                    self._scope.deadline = trio.current_time() + lifetime
                if self._close_request is not None:  # asked to close before it started (shutdown)
                    self._bound()
                nursery.start_soon(self._write, first_actions)
                while True:
                    try:
                        data = await transport.receive()
                    except WebSocketClosed as closed:
                        ws.remote_close(closed.code)
                        break
                    if ws.closing:
                        continue  # we are closing: the client's last frames are not delivered
                    message = as_layer_message(ws.receive_message(data))
                    try:
                        try:
                            await layer.send_owned("websocket.receive", message)
                        except ChannelFull:
                            await server.send_waiting("websocket.receive", message, timeout)
                    except trio.TooSlowError:
                        ws.receive_refused()
                        log.warning(
                            "websocket.receive stayed full for %g s; closing %s with 1013", timeout, self.name
                        )
                        self.request_close(1013)
                    except (ChannelLayerUnavailable, MessageTooLarge) as exc:
                        ws.receive_refused()
                        self.replies.drops.dropped(
                            "frame", f"channel layer error: {type(exc).__name__}: {exc}"
                        )
                self._read_done = True
                nursery.cancel_scope.cancel()
            if not self._read_done and not ws.closing:  # the lifetime ran out
                with trio.move_on_after(1, shield=True):
                    await self._close(1000)
        finally:
            self.alive = False
            if direct:
                layer.deliver_own_directly(self.name, None)
                self._direct_transport = None
            self.replies.on_overflow = None
            server._session_closed(self)
        await _send_disconnect(server, ws, self.replies, ws.close_code)

    def _overflowed(self) -> None:
        self.request_close(1013, why="it is not reading its replies")

    async def _write(self, actions: list[protocol.WebSocketAction]) -> None:
        if self._close_request is None and not await self._perform(actions):
            return
        ws, replies = self.ws, self.replies
        while True:
            message: dict[str, Any] | None = None
            with trio.CancelScope() as wake:
                self._wake = wake
                while self._close_request is None and not self._ping_due and not self._flush_due:
                    self._waiting = True
                    message = await replies.receive()
                    self._waiting = False
                    if wake.cancel_called:
                        break  # woken just as a reply came: it is written below
                    if not await self._perform(_apply(ws, replies, message)):
                        return
                    message = None
            self._waiting = False
            self._wake = None
            if self._flush_due:
                self._flush_due = False
                assert self._direct_transport is not None
                await self._direct_transport.flush()
            if self._close_request is not None:
                await self.transport.close(self._close_request)
                return
            if self._ping_due:
                self._ping_due = False
                await self.transport.ping()
            if message is not None and not await self._perform(_apply(ws, replies, message)):
                return

    async def _perform(self, actions: list[protocol.WebSocketAction]) -> bool:
        """Carry out *actions*; False once the socket is closing."""
        transport = self.transport
        for action in actions:
            if type(action) is SendText:
                await transport.send(action.text)
            elif type(action) is SendBytes:
                await transport.send(action.data)
            elif isinstance(action, Close):
                await self._close(action.code)
                return False
        return True

    async def _close(self, code: int, reported: int | None = None) -> None:
        if self.ws.local_close(code, reported):
            self._bound()
            await self.transport.close(code)
