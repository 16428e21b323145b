"""What every part of the interface shares: its settings, what a listener knows of a
connection, and what a listener gives the engines (:mod:`interface.http`, :mod:`interface.ws`)
to talk to its client."""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs

from . import protocol
from .proxy import TrustedProxies, parse_trusted_proxies

__all__ = [
    "BODY_CHUNK",
    "BODY_DRAIN_TIMEOUT",
    "CLOSE_TIMEOUT",
    "ClientDisconnected",
    "ConnectionInfo",
    "HttpResponder",
    "InterfaceConfig",
    "WebSocketClosed",
    "WebSocketTransport",
]

#: Bodies larger than this go in chunks through a ``body_channel``.
BODY_CHUNK: Final = 512 * 1024
#: After refusing a body as too large, seconds spent reading (and dropping) the rest of it so
#: the client, which may still be sending, gets to read the 413.
BODY_DRAIN_TIMEOUT: Final = 5.0
#: How long closing a WebSocket may wait for the client (a close frame queued behind a send to
#: a client that does not read) before the TCP connection is closed without it.
CLOSE_TIMEOUT: Final = 10.0


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
    #: How many undelivered replies one connection may hold (they wait in the layer, in its
    #: reply channel's own FIFO). A WebSocket whose replies overflow it is closed with 1013
    #: ("try again later"), as Phoenix and Centrifugo close slow clients: dropping the newest
    #: replies would leave the client silently stale, and dropping the oldest would leave a
    #: silent gap; a close tells it to reconnect and catch up. An HTTP response cannot take a
    #: close code: a plain send to it beyond this raises ChannelFull in the consumer (which
    #: retries), a group send misses it. Drops are logged as WARNINGs (a count per connection,
    #: not a line per reply).
    reply_buffer: int = attrs.field(default=1000, validator=_COUNT)
    #: Seconds a graceful shutdown waits for connections after closing them.
    grace_period: float = attrs.field(default=10, validator=_SECONDS_OR_ZERO)
    #: How long a ``websocket.receive`` waits out a full channel before the socket is closed
    #: with 1013. Meanwhile the connection reads nothing more, so TCP holds the client back:
    #: a burst that workers drain in time loses nothing (a minute, the default expiry).
    receive_full_timeout: float = attrs.field(default=60.0, validator=_SECONDS_OR_ZERO)


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


class WebSocketClosed(Exception):
    """The client closed the WebSocket (``code`` is its close code)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ClientDisconnected(Exception):
    """The client closed the connection before the end of its request body."""


class WebSocketTransport(Protocol):
    """What a listener gives :meth:`~interface.InterfaceServer.websocket` for one connection.

    :meth:`receive` is called by one task, everything else by another (or the same); a
    transport serialises its own writes.
    """

    async def accept(self, subprotocol: str | None) -> None: ...

    async def reject(self, status: int, body: bytes) -> None: ...

    async def receive(self) -> str | bytes:
        """The next message; raises :exc:`WebSocketClosed` with the client's code at the end
        (the transport answers a client's close frame itself)."""
        ...

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int) -> None:
        """Send a close frame with *code* (the caller bounds how long this may take)."""
        ...

    async def ping(self) -> None:
        """Send a ping; return without waiting for the pong (:attr:`pongs` counts them)."""
        ...

    @property
    def pongs(self) -> int:
        """How many pongs the client sent so far (a transport that pings by itself: any
        number that grows with each :meth:`ping`)."""
        ...


class HttpResponder(Protocol):
    """What a listener gives :meth:`~interface.InterfaceServer.http` to write the response."""

    async def start(self, status: int, headers: protocol.Headers) -> None: ...

    async def body(self, content: bytes, more: bool) -> None: ...

    async def simple(self, status: int, text: bytes) -> None:
        """A complete small plain-text response (errors)."""
        ...

    async def abort(self) -> None:
        """Abandon a started response so that the client sees it incomplete: close the
        connection (HTTP/1.1) or reset the stream. Nothing is written afterwards."""
        ...


def plain_text_headers(text: bytes) -> protocol.Headers:
    return [[b"content-type", b"text/plain; charset=utf-8"], [b"content-length", str(len(text)).encode()]]
