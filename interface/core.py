"""The interface server's engine: connections <-> channel layer, independent of the listener.

One :class:`InterfaceServer` per process owns the process prefix ``interface.<random>!`` (and
tells the layer so: ``layer.own_prefix``, so that replies from workers in this process never
leave it). Its reply poller (one task) receives every reply for every connection of this
process from the layer and hands each to its connection's bounded memory channel. Messages
the interface builds are given up to the layer (``send_owned``: no copy, no validation walk).
Each connection runs as a task of its listener and talks to the layer through
:meth:`InterfaceServer.http` or :meth:`InterfaceServer.websocket`, under cancel scopes for
every timeout.
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

from layers import BaseChannelLayer, ChannelFull, ChannelLayerUnavailable, MessageTooLarge
from layers.base import send_or_wait

from . import protocol
from .messages import as_layer_message
from .protocol import Close, Reject, SendBytes, SendText, WebSocketProtocol, WebSocketState
from .proxy import TrustedProxies, apply_proxy_headers, parse_trusted_proxies

__all__ = [
    "ClientDisconnected",
    "ConnectionInfo",
    "DropLog",
    "HttpResponder",
    "InterfaceConfig",
    "InterfaceServer",
    "WebSocketClosed",
    "WebSocketTransport",
]

log = logging.getLogger("interface")
access_log = logging.getLogger("interface.access")

#: Bodies larger than this go in chunks through a ``body_channel``.
BODY_CHUNK: int = 512 * 1024
#: After refusing a body as too large, seconds spent reading (and dropping) the rest of it so
#: the client, which may still be sending, gets to read the 413.
BODY_DRAIN_TIMEOUT: float = 5.0


def _check(rule: str, test: Any) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not test(value):
            raise ValueError(f"{attribute.name} must be {rule}, got {value!r}")

    return check


def _number(value: Any) -> bool:
    return type(value) in (int, float)


_SECONDS = _check("a number of seconds > 0", lambda v: _number(v) and v > 0)
_SECONDS_OR_ZERO = _check("a number of seconds >= 0", lambda v: _number(v) and v >= 0)
_BYTES = _check("an int >= 1 (bytes)", lambda v: type(v) is int and v >= 1)
_COUNT = _check("an int >= 1", lambda v: type(v) is int and v >= 1)


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _trusted(value: Any) -> TrustedProxies:
    return value if isinstance(value, TrustedProxies) else parse_trusted_proxies(value)


@attrs.frozen(kw_only=True)
class InterfaceConfig:
    """Interface settings (Daphne's defaults unless noted); seconds unless named otherwise.

    Every field is validated when the config is made: a bad value raises :exc:`ValueError`
    naming the field and the value.
    """

    http_timeout: float = attrs.field(default=120, validator=_SECONDS)
    websocket_connect_timeout: float = attrs.field(default=5, validator=_SECONDS)
    #: Maximum WebSocket lifetime; ``None`` means the layer's group_expiry, a negative number none.
    websocket_timeout: float | None = attrs.field(
        default=None, validator=_check("a number of seconds or None", lambda v: v is None or _number(v))
    )
    #: Ping each WebSocket this often (0: never).
    ping_interval: float = attrs.field(default=20, validator=_SECONDS_OR_ZERO)
    ping_timeout: float = attrs.field(default=30, validator=_SECONDS)
    #: Largest request body accepted, in bytes (larger: 413).
    max_body_size: int = attrs.field(default=100 * 1024 * 1024, validator=_BYTES)
    #: Largest WebSocket message accepted, in bytes (larger: close 1009).
    websocket_max_message_size: int = attrs.field(default=1024 * 1024, validator=_BYTES)
    root_path: str = attrs.field(
        default="",
        validator=_check(
            "'' or a path starting with '/'", lambda v: isinstance(v, str) and v[:1] in ("", "/")
        ),
    )
    #: Honour ``X-Forwarded-For``/``-Proto``/``-Port`` from the proxies in ``forwarded_allow_ips``.
    proxy_headers: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: The proxies trusted with those headers (uvicorn's ``--forwarded-allow-ips``): addresses,
    #: networks or ``*``, as a comma-separated string or a sequence; see :mod:`interface.proxy`.
    forwarded_allow_ips: TrustedProxies = attrs.field(
        default=parse_trusted_proxies("127.0.0.1"), converter=_trusted
    )
    #: Subprotocols the server accepts; the first one the client offers wins.
    ws_protocols: tuple[str, ...] = attrs.field(
        default=(),
        converter=_names,
        validator=_check("a sequence of str", lambda v: all(isinstance(name, str) for name in v)),
    )
    #: Requests in flight plus open WebSockets above which new ones get a 503 (uvicorn's
    #: ``--limit-concurrency``); ``None``: no limit.
    limit_concurrency: int | None = attrs.field(
        default=None,
        validator=_check("an int >= 1 or None", lambda v: v is None or (type(v) is int and v >= 1)),
    )
    #: An idle keep-alive HTTP connection is closed after this long (uvicorn's default).
    timeout_keep_alive: float = attrs.field(default=5, validator=_SECONDS)
    #: How many undelivered replies one connection may hold. A WebSocket whose buffer is full
    #: is closed with 1013 ("try again later"), as Phoenix and Centrifugo close slow clients:
    #: dropping the newest replies would leave the client silently stale, and dropping the
    #: oldest would leave a silent gap; a close tells it to reconnect and catch up. An HTTP
    #: response cannot take a close code, so its overflowing replies are dropped. Either way
    #: the drops are logged as WARNINGs (a count per connection, not a line per reply).
    reply_buffer: int = attrs.field(default=1000, validator=_COUNT)
    #: Seconds a graceful shutdown waits for connections after closing them.
    grace_period: float = attrs.field(default=10, validator=_SECONDS_OR_ZERO)
    #: How long a ``websocket.receive`` waits out a full channel before the socket is closed
    #: with 1013. Meanwhile the connection reads nothing more, so TCP holds the client back:
    #: a burst that workers drain in time loses nothing (a minute, the default expiry).
    receive_full_timeout: float = attrs.field(default=60.0, validator=_SECONDS_OR_ZERO)


#: A connection's first drop of each kind is logged at once; later ones are summed into at
#: most one line per this many seconds, and a final count when the connection ends.
DROP_LOG_INTERVAL: float = 10.0

#: How long closing a WebSocket may wait for the client (a close frame queued behind a send to
#: a client that does not read) before the TCP connection is closed without it.
CLOSE_TIMEOUT: float = 10.0


@attrs.define(eq=False)
class DropLog:
    """Log lines for what one connection dropped: a count, never a line per drop.

    :meth:`dropped` logs the first drop of each kind (*what*, a singular noun) at once, then at
    most one line per :data:`DROP_LOG_INTERVAL` seconds with the count since; :meth:`close`
    logs the total when the connection ends if some were not logged yet. Anything a user's
    code expects (a reply, a frame, a disconnect) that the interface drops goes through one.
    """

    connection: str
    _kinds: dict[str, _DropCount] = attrs.Factory(dict)

    def dropped(self, what: str, reason: str, level: int = logging.WARNING) -> None:
        now = trio.current_time()
        count = self._kinds.get(what)
        if count is None:
            self._kinds[what] = _DropCount(total=1, next_line=now + DROP_LOG_INTERVAL)
            log.log(level, "%s: dropped 1 %s (%s)", self.connection, what, reason)
            return
        count.total += 1
        count.unlogged += 1
        if now >= count.next_line:
            log.log(
                level,
                "%s: dropped %d more %s in %.0f s (%s)",
                self.connection,
                count.unlogged,
                _plural(what),
                now - count.next_line + DROP_LOG_INTERVAL,
                reason,
            )
            count.unlogged = 0
            count.next_line = now + DROP_LOG_INTERVAL
        count.reason, count.level = reason, level

    def close(self) -> None:
        for what, count in self._kinds.items():
            if count.unlogged:
                log.log(
                    count.level,
                    "%s: dropped %d %s in all (%s)",
                    self.connection,
                    count.total,
                    _plural(what),
                    count.reason,
                )
                count.unlogged = 0


@attrs.define
class _DropCount:
    total: int
    next_line: float
    unlogged: int = 0
    reason: str = ""
    level: int = logging.WARNING


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


@attrs.define(eq=False)
class _Connection:
    """What the reply poller knows of one connection."""

    replies: trio.MemorySendChannel[dict[str, Any]]
    drops: DropLog
    #: Set when a reply did not fit in the connection's reply buffer.
    overflowed: trio.Event = attrs.Factory(trio.Event)


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


def _proxied(info: ConnectionInfo, trusted: TrustedProxies) -> ConnectionInfo:
    client, scheme = apply_proxy_headers(trusted, info.client, info.scheme, info.headers)
    return (
        attrs.evolve(info, client=client, scheme=scheme)
        if (client, scheme) != (info.client, info.scheme)
        else info
    )


def _log_access(client: list[Any] | None, request: str, status: int | str, size: int | str) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    # Common Log Format with the client's port, as Daphne logs it: host:port - - [time] "request" status size
    host = f"{client[0]}:{client[1]}" if client and len(client) > 1 else client[0] if client else "-"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
    access_log.info('%s - - [%s] "%s" %s %s', host, stamp, request, status, size)


@attrs.define(eq=False)
class _Restart:
    """One generation of :meth:`InterfaceServer.restart_websockets`: the WebSockets open when
    it fires are closed with ``code``."""

    event: trio.Event = attrs.Factory(trio.Event)
    code: int = 1012


@attrs.define(eq=False)
class InterfaceServer:
    """Connections of this process <-> *layer*; see the module docstring."""

    layer: BaseChannelLayer
    config: InterfaceConfig = attrs.Factory(InterfaceConfig)
    prefix: str = attrs.Factory(lambda: f"interface.{secrets.token_urlsafe(9)}!")
    shutting_down: trio.Event = attrs.Factory(trio.Event)
    _connections: dict[str, _Connection] = attrs.Factory(dict)
    _websockets: dict[str, trio.CancelScope] = attrs.Factory(dict)
    _http_warnings: dict[str, _EveryMinute] = attrs.Factory(dict)
    _restart: _Restart = attrs.Factory(_Restart)

    @property
    def websocket_lifetime(self) -> float:
        timeout = self.config.websocket_timeout
        return self.layer.group_expiry if timeout is None else (math.inf if timeout < 0 else timeout)

    # -- replies ---------------------------------------------------------------------------

    async def run_reply_poller(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive this process's replies and route each to its connection. Runs until cancelled."""
        with self.layer.own_prefix(self.prefix):
            task_status.started()
            await self._poll_replies()

    async def _poll_replies(self) -> None:
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
            connection = self._connections.get(channel)
            if connection is None:
                # The client left: group sends reach departed members until they are discarded.
                log.debug("reply for %s, which is gone; dropped", channel)
                continue
            try:
                connection.replies.send_nowait(message)
            except trio.WouldBlock:
                connection.overflowed.set()
                connection.drops.dropped(
                    "reply",
                    f"its reply_buffer of {self.config.reply_buffer} is full: the client is not reading",
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @contextlib.contextmanager
    def _register(self) -> Any:
        reply_channel = self.prefix + secrets.token_urlsafe(9)
        sender, receiver = trio.open_memory_channel[dict[str, Any]](self.config.reply_buffer)
        connection = self._connections[reply_channel] = _Connection(sender, DropLog(reply_channel))
        try:
            with receiver:
                yield reply_channel, receiver
        finally:
            del self._connections[reply_channel]
            sender.close()
            connection.drops.close()

    def connection_count(self) -> int:
        return len(self._connections)

    def over_limit(self) -> bool:
        """Whether ``limit_concurrency`` requests and WebSockets are in flight already: a new
        request then gets a 503, a new handshake is denied with 503 (uvicorn's rule)."""
        limit = self.config.limit_concurrency
        return limit is not None and len(self._connections) >= limit

    async def close_websockets(self) -> None:
        """Graceful shutdown: close every WebSocket with 1001 ("going away")."""
        self.shutting_down.set()
        await trio.lowlevel.checkpoint()

    def restart_websockets(self, code: int = 1012) -> int:
        """Close every WebSocket open now with *code* (1012, "service restart": clients should
        reconnect); those opened afterwards stay open. Returns how many were open."""
        restart, self._restart = self._restart, _Restart()
        restart.code = code
        count = restart.event.statistics().tasks_waiting
        restart.event.set()
        return count

    async def run_membership_watcher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Whenever the layer reports lost group memberships, close every WebSocket with 1012,
        so clients reconnect and their connect consumers add them again. Runs until cancelled."""
        task_status.started()
        while True:
            await self.layer.membership_lost.wait()
            count = self.restart_websockets(1012)
            log.warning(
                "the channel layer lost its group memberships (%s); closing %d WebSocket(s) with 1012 "
                "(service restart) so that their clients reconnect and join their groups again",
                self.layer.last_membership_lost,
                count,
            )

    # -- HTTP ------------------------------------------------------------------------------

    async def http(
        self, info: ConnectionInfo, body: AsyncGenerator[bytes, None], respond: HttpResponder
    ) -> None:
        """Serve one HTTP request: send ``http.request``, then relay the response.

        *body* yields the request body and raises :exc:`ClientDisconnected` if the client leaves
        before its end; *respond* writes the response. Answers 413 for a body over
        ``max_body_size`` (declared or counted), 503 when the layer is full or down, or when no
        response comes within ``http_timeout``. A client that leaves mid-body gets nothing; a
        consumer reading the rest of the body is sent a ``closed`` chunk.
        """
        if self.config.proxy_headers:
            info = _proxied(info, self.config.forwarded_allow_ips)
        request_line = f"{info.method} {info.path} HTTP/{info.http_version}"
        if self.over_limit():
            await respond.simple(503, b"Service unavailable: too many requests in flight.")
            _log_access(info.client, request_line, 503, "-")
            return
        reader = _BodyReader(body, self.config.max_body_size)
        with self._register() as (reply_channel, replies):
            try:
                if _declared_length(info.headers) > self.config.max_body_size:
                    raise _BodyTooLarge
                first, more = await reader.next_chunk()
            except _BodyTooLarge:
                await self._refuse_body(reader, respond)
                _log_access(info.client, request_line, 413, "-")
                return
            except ClientDisconnected:
                _log_access(info.client, request_line, "-", "-")
                return
            await self._http_request(
                info, request_line, reply_channel, replies, respond, first, reader if more else None
            )

    async def _http_request(
        self,
        info: ConnectionInfo,
        request_line: str,
        reply_channel: str,
        replies: trio.MemoryReceiveChannel[dict[str, Any]],
        respond: HttpResponder,
        first: bytes,
        rest: _BodyReader | None,
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
            await self.layer.send_owned("http.request", as_layer_message(message))
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
            status, size = await self._relay_response(
                request_line, reply_channel, replies, respond, body_channel, rest
            )
        finally:
            with trio.move_on_after(1, shield=True) as scope:
                try:
                    await self.layer.send_owned(
                        "http.disconnect", {"reply_channel": reply_channel, "path": info.path}
                    )
                except (
                    ChannelFull,
                    ChannelLayerUnavailable,
                ) as exc:  # dropped, as the spec says, not silently
                    reason = type(exc).__name__
                    self._http_warning(
                        "http.disconnect", f"dropped the http.disconnect of {request_line!r} ({reason})"
                    )
            if scope.cancelled_caught:
                self._http_warning(
                    "http.disconnect",
                    f"dropped the http.disconnect of {request_line!r} (the layer took over 1 s)",
                )
        _log_access(info.client, request_line, status, size)

    def _http_warning(self, kind: str, text: str) -> None:
        # One line per minute at most for each kind: these can happen on every request.
        warning = self._http_warnings.setdefault(kind, _EveryMinute())
        warning.happened(text)

    async def _relay_response(
        self,
        request_line: str,
        reply_channel: str,
        replies: trio.MemoryReceiveChannel[dict[str, Any]],
        respond: HttpResponder,
        body_channel: str | None,
        rest: _BodyReader | None,
    ) -> tuple[int | str, int | str]:
        state = protocol.HttpResponseProtocol()
        status: int | str = "-"
        size = 0
        relay = trio.CancelScope(deadline=trio.current_time() + self.config.http_timeout)
        body_failure: list[str] = []
        answered = False  # an error answer or an abort was written: nothing more to write

        async def stream_body(body_channel: str, rest: _BodyReader) -> None:
            failure = await self._stream_body(reply_channel, body_channel, rest)
            if failure is not None:
                body_failure.append(failure)
                relay.cancel()

        async with trio.open_nursery() as nursery:
            if body_channel is not None and rest is not None:
                nursery.start_soon(stream_body, body_channel, rest)
            with relay:
                async for reply in replies:
                    try:
                        actions = state.reply(reply)
                    except ValueError as exc:
                        log.error("bad response message for %s: %s", reply_channel, exc)
                        if state.started:
                            await respond.abort()
                        else:
                            await respond.simple(500, b"Internal server error: bad response message.")
                            status, size = 500, 0
                        state.finished = answered = True
                        break
                    for action in actions:
                        if isinstance(action, protocol.ResponseStart):
                            status = action.status
                            await respond.start(action.status, action.headers)
                        elif isinstance(action, protocol.ResponseBody):
                            size += len(action.content)
                            await respond.body(action.content, action.more)
                        elif state.started:  # ResponseAbort: the application gave up mid-response
                            await respond.abort()
                            answered = True
                        else:
                            await respond.simple(500, b"Internal server error: the response was abandoned.")
                            status, size, answered = 500, 0, True
                    if state.finished:
                        break
            nursery.cancel_scope.cancel()
        if answered:
            return status, size
        if body_failure:
            return await self._answer_body_failure(body_failure[0], state, rest, respond, status, size)
        if not state.started:
            self._http_warning(
                "http_timeout", f"no response to {request_line!r} within http_timeout; answered 503"
            )
            await respond.simple(503, b"Worker server failed to respond within time limit.")
            return 503, "-"
        if not state.finished:
            log.warning("response for %s did not finish within http_timeout; aborted it", reply_channel)
            await respond.abort()
        return status, size

    async def _answer_body_failure(
        self,
        failure: str,
        state: protocol.HttpResponseProtocol,
        rest: _BodyReader | None,
        respond: HttpResponder,
        status: int | str,
        size: int,
    ) -> tuple[int | str, int | str]:
        # The body stopped before its end (the consumer was sent a closed chunk, if it could be).
        if failure == "disconnected":
            return status, size  # nobody left to answer
        if state.started:
            await respond.abort()
            return status, size
        if failure == "too large":
            assert rest is not None
            await self._refuse_body(rest, respond)
            return 413, "-"
        await respond.simple(503, b"Service unavailable: the request body could not be delivered.")
        return 503, "-"

    async def _stream_body(self, reply_channel: str, body_channel: str, rest: _BodyReader) -> str | None:
        """Send the rest of the body in chunks; ``None`` once complete, else why it stopped.

        When the client leaves or the body passes ``max_body_size``, the consumer gets a last
        chunk with ``closed: True`` (reference §3.3) so it abandons the request at once.
        """
        try:
            more = True
            while more:
                chunk, more = await rest.next_chunk()
                await self._send_chunk(body_channel, {"content": chunk, "more_content": more})
            return None
        except _BodyTooLarge:
            failure = "too large"
        except ClientDisconnected:
            failure = "disconnected"
        except (trio.TooSlowError, ChannelLayerUnavailable) as exc:  # full for a minute (not read), or down
            log.warning(
                "could not deliver the request body of %s (%s: %s); abandoned the request",
                reply_channel,
                type(exc).__name__,
                exc,
            )
            return "undeliverable"
        try:
            await send_or_wait(
                partial(
                    self.layer.send_owned,
                    body_channel,
                    {"content": b"", "more_content": False, "closed": True},
                ),
                1,
            )
        except (trio.TooSlowError, ChannelLayerUnavailable) as exc:
            log.warning(
                "could not tell the consumer of %s that its request body is %s (%s: %s)",
                reply_channel,
                "over max_body_size" if failure == "too large" else "cut short by the client",
                type(exc).__name__,
                exc,
            )
        return failure

    async def _send_chunk(self, body_channel: str, chunk: dict[str, Any]) -> None:
        # The consumer may read slower than the client sends: wait (a minute at most).
        await send_or_wait(partial(self.layer.send_owned, body_channel, chunk), 60)

    async def _refuse_body(self, reader: _BodyReader, respond: HttpResponder) -> None:
        """Answer 413. The client may still be sending: its body is read (and dropped) for
        ``BODY_DRAIN_TIMEOUT`` seconds before the response ends, because closing a connection
        with unread data resets it and the client would never read the 413."""
        text = b"Request body too large."
        await respond.start(413, _plain_text_headers(text))
        await respond.body(text, True)
        if await reader.drain(BODY_DRAIN_TIMEOUT):
            await respond.body(b"", False)  # a client still sending after that is cut off

    # -- WebSocket -------------------------------------------------------------------------

    def choose_subprotocol(self, offered: Sequence[str]) -> str | None:
        return next((name for name in offered if name in self.config.ws_protocols), None)

    async def websocket(self, info: ConnectionInfo, transport: WebSocketTransport) -> None:
        """Serve one WebSocket from handshake to close, following reference §3.7."""
        if self.config.proxy_headers:
            info = _proxied(info, self.config.forwarded_allow_ips)
        if self.over_limit():
            await transport.reject(503, b"Service unavailable: too many connections.")
            _log_access(info.client, f"WSREJECT {info.path}", 503, "-")
            return
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
                await self.layer.send_owned("websocket.connect", as_layer_message(ws.connect_message()))
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
            self._drops(ws.reply_channel).dropped("bad reply", str(exc), logging.ERROR)
            return []

    def _drops(self, reply_channel: str) -> DropLog:
        return self._connections[reply_channel].drops

    async def _run_open_websocket(
        self,
        ws: WebSocketProtocol,
        transport: WebSocketTransport,
        replies: trio.MemoryReceiveChannel[dict[str, Any]],
        first_actions: list[protocol.WebSocketAction],
    ) -> int:
        result: dict[str, Any] = {"code": 1006, "muted": False, "closing": False}
        connection = self._connections[ws.reply_channel]
        restart = self._restart

        async def close(code: int, reported: int | None = None) -> None:
            # The first close decides the code the application is told about: *code*, or
            # *reported* where the close frame's code is not what happened (a ping timeout).
            if not result["closing"]:
                result["closing"] = True
                result["code"] = code if reported is None else reported
            with trio.move_on_after(CLOSE_TIMEOUT):
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
                    await send_or_wait(
                        partial(
                            self.layer.send_owned,
                            "websocket.receive",
                            as_layer_message(ws.receive_message(data)),
                        ),
                        self.config.receive_full_timeout,
                    )
                except trio.TooSlowError:
                    log.warning(
                        "websocket.receive stayed full; closing %s with 1013 (muted: no websocket.disconnect)",
                        ws.reply_channel,
                    )
                    result["muted"] = True
                    await close(1013)
                    break
                except (ChannelLayerUnavailable, MessageTooLarge) as exc:
                    connection.drops.dropped("frame", f"channel layer error: {type(exc).__name__}: {exc}")
            cancel.cancel()

        async def keepalive(cancel: trio.CancelScope) -> None:
            while True:
                await trio.sleep(self.config.ping_interval)
                with trio.move_on_after(self.config.ping_timeout) as scope:
                    await transport.ping()
                if scope.cancelled_caught:
                    log.info(
                        "no pong from %s within %s s; closing", ws.reply_channel, self.config.ping_timeout
                    )
                    # 1011 to the client, as websockets and uvicorn send; 1006 to the
                    # application, as no close frame came back (RFC 6455 §7.1.5).
                    await close(1011, reported=1006)
                    cancel.cancel()
                    return

        async def close_on(event: trio.Event, code: int, why: str, cancel: trio.CancelScope) -> None:
            await event.wait()
            if why:
                log.info("closing %s with %d: %s", ws.reply_channel, code, why)
            await close(code)
            cancel.cancel()

        async def on_restart(cancel: trio.CancelScope) -> None:
            await restart.event.wait()
            await close(restart.code)
            cancel.cancel()

        with trio.move_on_after(self.websocket_lifetime) as lifetime:
            async with trio.open_nursery() as nursery:
                cancel = nursery.cancel_scope
                nursery.start_soon(from_layer, cancel)
                nursery.start_soon(from_client, cancel)
                nursery.start_soon(close_on, self.shutting_down, 1001, "", cancel)
                nursery.start_soon(
                    close_on, connection.overflowed, 1013, "it is not reading its replies", cancel
                )
                nursery.start_soon(on_restart, cancel)
                if self.config.ping_interval > 0:
                    nursery.start_soon(keepalive, cancel)
        if lifetime.cancelled_caught:
            with trio.move_on_after(1, shield=True):
                await close(1000)
        if not result["muted"]:
            await self._send_disconnect(ws, result["code"])
        return int(result["code"])

    async def _send_disconnect(self, ws: WebSocketProtocol, code: int) -> None:
        # Retried while the channel is full, for a second at most; then dropped, with a WARNING.
        message = ws.disconnect_message(code)
        reason = "the channel stayed full, or the layer did not answer, for 1 s"
        with trio.move_on_after(1, shield=True):
            try:
                await send_or_wait(
                    partial(self.layer.send_owned, "websocket.disconnect", as_layer_message(message)),
                    math.inf,
                )
                return
            except ChannelLayerUnavailable as exc:
                reason = f"channel layer error: {type(exc).__name__}: {exc}"
        self._drops(ws.reply_channel).dropped(
            "websocket.disconnect", f"path {ws.path}, code {message['code']}: {reason}"
        )


class HttpResponder(Protocol):
    """What a listener gives :meth:`InterfaceServer.http` to write the response."""

    async def start(self, status: int, headers: protocol.Headers) -> None: ...

    async def body(self, content: bytes, more: bool) -> None: ...

    async def simple(self, status: int, text: bytes) -> None:
        """A complete small plain-text response (errors)."""
        ...

    async def abort(self) -> None:
        """Abandon a started response so that the client sees it incomplete: close the
        connection (HTTP/1.1) or reset the stream. Nothing is written afterwards."""
        ...


@attrs.define(eq=False)
class _EveryMinute:
    """A WARNING for what can happen on every request: the first at once, then at most one line
    a minute, with the count of occurrences it stands for."""

    count: int = 0
    next_line: float = -math.inf

    def happened(self, text: str) -> None:
        self.count += 1
        now = trio.current_time()
        if now >= self.next_line:
            log.warning("%s (%d time(s) since the last such warning)", text, self.count)
            self.count = 0
            self.next_line = now + 60


class ClientDisconnected(Exception):
    """The client closed the connection before the end of its request body."""


class _BodyTooLarge(Exception):
    pass


def _plain_text_headers(text: bytes) -> protocol.Headers:
    return [[b"content-type", b"text/plain; charset=utf-8"], [b"content-length", str(len(text)).encode()]]


def _declared_length(headers: protocol.Headers) -> int:
    """The request's Content-Length (0 if absent; the listener has checked its syntax)."""
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            return int(value)
    return 0


@attrs.define(eq=False)
class _BodyReader:
    """Reads a request body in ``BODY_CHUNK`` pieces, counting it against *limit* bytes.

    :meth:`next_chunk` raises :exc:`_BodyTooLarge` once more than *limit* bytes arrived, and
    passes on the source's :exc:`ClientDisconnected`.
    """

    source: AsyncGenerator[bytes, None]
    limit: int
    received: int = 0
    complete: bool = False
    _pending: bytearray = attrs.Factory(bytearray)

    async def next_chunk(self) -> tuple[bytes, bool]:
        """The next ``BODY_CHUNK`` bytes (fewer at the end), and whether more follow."""
        # Read one byte past the chunk (or to the end) to know whether more follow.
        while not self.complete and len(self._pending) <= BODY_CHUNK:
            try:
                piece = await self.source.__anext__()
            except StopAsyncIteration:
                self.complete = True
                break
            self.received += len(piece)
            if self.received > self.limit:
                raise _BodyTooLarge
            self._pending += piece
        chunk = bytes(self._pending[:BODY_CHUNK])
        del self._pending[:BODY_CHUNK]
        return chunk, bool(self._pending)

    async def drain(self, timeout: float) -> bool:
        """Read and drop the rest for *timeout* seconds at most; False if the client left."""
        self._pending.clear()
        with trio.move_on_after(timeout):
            try:
                async for _ in self.source:
                    pass
            except ClientDisconnected:
                return False
        return True
