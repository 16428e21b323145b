"""Reading a request head once, with h11, and telling where the connection goes.

Every listener starts here: :func:`read_head` feeds what arrives to one ``h11.Connection``
until a request head is complete (or the client leaves, takes too long, or breaks HTTP/1.1),
and says what kind of request it is (:class:`Head`). The same h11 connection then serves the
request (:mod:`interface.http11`), or hands over what it holds after the head to the
WebSocket protocol (:mod:`interface.wsproto_connection`), or, for HTTP/2 (prior knowledge or
an ``Upgrade: h2c``), every byte read so far is replayed to Hypercorn
(:class:`ReplayStream`). One parse of the head, whichever way it goes.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import attrs
import h11
import trio

from .common import ConnectionInfo
from .protocol import clean_headers, decode_path

__all__ = [
    "HEAD_TIMEOUT",
    "MAX_HEAD",
    "Head",
    "Kind",
    "ReplayStream",
    "WrappedStream",
    "addresses",
    "connection_info",
    "is_tls",
    "read_head",
    "receive_raw",
]

#: Largest request head accepted, in bytes (larger: 431).
MAX_HEAD: Final = 64 * 1024
#: How long a new connection may take to send its first request head.
HEAD_TIMEOUT: Final = 10.0
#: How much one read takes from a connection.
RECEIVE_SIZE: Final = 65536


class Kind(enum.Enum):
    HTTP = "http"  #: an HTTP/1.x request
    WEBSOCKET = "websocket"  #: a WebSocket upgrade
    HTTP2 = "http2"  #: HTTP/2 prior knowledge, or an upgrade to h2c: Hypercorn's
    BAD = "bad"  #: not HTTP/1.1: answer ``Head.error``'s status and close


@attrs.define(eq=False, slots=True)
class Head:
    """A request head read from a connection (see the module docstring)."""

    kind: Kind
    connection: h11.Connection
    request: h11.Request | None = None
    #: What was read from the connection so far (kept for the first request only, to replay).
    raw: bytes = b""
    error: h11.RemoteProtocolError | None = None


def new_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)


def _kind(request: h11.Request) -> Kind:
    if request.method == b"PRI" and request.http_version == b"2.0":
        return Kind.HTTP2  # the HTTP/2 connection preface, which h11 reads as a request line
    upgrade = b""
    connection = settings = False
    for name, value in request.headers:
        if name == b"upgrade":
            upgrade = value.lower()
        elif name == b"connection":
            connection = connection or b"upgrade" in value.lower()
        elif name == b"http2-settings":
            settings = True
    if connection and request.method == b"GET" and upgrade == b"websocket":
        return Kind.WEBSOCKET
    if connection and settings and upgrade == b"h2c":
        return Kind.HTTP2
    return Kind.HTTP


async def read_head(
    stream: trio.abc.ReceiveStream, connection: h11.Connection | None = None, *, keep_raw: bool = True
) -> Head | None:
    """Read the next request head from *stream* into *connection* (a new one if ``None``).

    Returns ``None`` if the client closed the connection (or sent nothing) before a head. Time
    limits come from the caller's cancel scope. With *keep_raw*, the bytes read are kept in
    :attr:`Head.raw` for a replay.
    """
    if connection is None:
        connection = new_connection()
    raw = bytearray() if keep_raw else None
    sock = raw_socket(stream)  # type: ignore[arg-type]
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await receive_some(sock, stream)  # b"": closed (h11 says so next)
                if raw is not None:
                    raw += data
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return Head(_kind(event), connection, event, bytes(raw) if raw is not None else b"")
            return None  # ConnectionClosed (or PAUSED: nothing more can come)
    except h11.RemoteProtocolError as exc:
        if raw is not None and bytes(raw[:4]) == b"PRI ":
            return Head(Kind.HTTP2, connection, None, bytes(raw))
        return Head(Kind.BAD, connection, None, b"", exc)


class WrappedStream(trio.abc.HalfCloseableStream):
    """A stream that passes every call to *inner*: the base of the wrappers that change one."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
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


class ReplayStream(WrappedStream):
    """A stream that first returns bytes already read from *inner*, then reads *inner*.

    Other attributes (``socket``, TLS details) are those of the inner stream.
    """

    def __init__(self, head: bytes, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            if max_bytes is None or max_bytes >= len(self._head):
                data, self._head = self._head, b""
            else:
                data, self._head = self._head[:max_bytes], self._head[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self.inner.receive_some(max_bytes))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def raw_socket(stream: trio.abc.Stream) -> Any:
    """The Trio socket under a plain (not TLS, not replayed) socket stream, else ``None``.

    The main port's connections read and write it directly: ``SocketStream`` adds a conflict
    detector and an error-translating context manager to every call, which cost more than the
    system call on the per-message path, for what a connection with one reader and serialised
    writes does not need.
    """
    return stream.socket if type(stream) is trio.SocketStream else None


async def receive_some(sock: Any, stream: trio.abc.ReceiveStream) -> bytes:
    """Up to ``RECEIVE_SIZE`` bytes from *sock* (see :func:`raw_socket`) or *stream*; ``b""``
    once the client closed or reset the connection."""
    if sock is not None:
        return await receive_raw(sock)
    try:
        return bytes(await stream.receive_some(RECEIVE_SIZE))  # (a no-op for bytes)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def receive_raw(sock: Any) -> bytes:
    """Up to ``RECEIVE_SIZE`` bytes from the Trio socket *sock*; ``b""`` once the client closed
    or reset the connection.

    What Trio's ``sock.recv()`` does, on the stdlib socket under it and without its wrappers
    (they cost about as much as the system call on the per-message path): a cancellation
    point; the bytes there are now, after a scheduler pass; else a wait until some arrive.
    """
    raw = sock._sock
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        data: bytes = raw.recv(RECEIVE_SIZE)
    except BlockingIOError:
        pass
    except OSError:
        return b""
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    try:
        while True:
            await trio.lowlevel.wait_readable(raw)
            try:
                data = raw.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            return data
    except (OSError, trio.ClosedResourceError):
        return b""


async def send_all(sock: Any, stream: trio.abc.SendStream, data: bytes) -> None:
    """Write *data* to *sock* (see :func:`raw_socket`) or *stream*; :exc:`trio.BrokenResourceError`
    if the client is gone. Cancelled half-way, part of *data* may have gone out.

    On *sock*, a write the kernel takes at once is no checkpoint (see below)."""
    if sock is None:
        await stream.send_all(data)
        return
    try:
        # The common case first, on the stdlib socket under Trio's: the kernel takes it all,
        # and the task goes on without the scheduler pass Trio's send() adds after a write that
        # did not block (every caller waits for its next read or reply right after, a
        # checkpoint). What does not fit is written the usual way, waiting until it may.
        try:
            sent = sock._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            with memoryview(data) as view:
                while sent < len(data):
                    sent += await sock.send(view[sent:])
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


def _socket_stream(stream: trio.abc.Stream) -> Any:
    inner = stream.inner if isinstance(stream, ReplayStream) else stream
    if isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    return inner


def is_tls(stream: trio.abc.Stream) -> bool:
    inner = stream.inner if isinstance(stream, ReplayStream) else stream
    return isinstance(inner, trio.SSLStream)


def addresses(stream: trio.abc.Stream) -> tuple[list[Any] | None, list[Any] | None]:
    """The client's and the server's ``[host, port]`` (``None`` for a Unix socket)."""
    sock = getattr(_socket_stream(stream), "socket", None)
    if sock is None:
        return None, None
    found: list[list[Any] | None] = []
    for name in ("getpeername", "getsockname"):
        try:
            address = getattr(sock, name)()
        except OSError:
            found.append(None)
            continue
        found.append([address[0], address[1]] if isinstance(address, tuple) and len(address) >= 2 else None)
    return found[0], found[1]


def connection_info(
    request: h11.Request,
    *,
    client: list[Any] | None,
    server: list[Any] | None,
    secure: bool,
    websocket: bool = False,
    root_path: str = "",
) -> ConnectionInfo:
    """What the ASGI-1 messages need to know about *request* (its headers reshaped once)."""
    raw_path, _, query = request.target.partition(b"?")
    headers = clean_headers(request.headers)
    subprotocols: list[str] = []
    if websocket:
        for name, value in headers:
            if name == b"sec-websocket-protocol":
                subprotocols.extend(
                    part.strip() for part in value.decode("latin-1").split(",") if part.strip()
                )
        scheme = "wss" if secure else "ws"
    else:
        scheme = "https" if secure else "http"
    return ConnectionInfo(
        path=decode_path(raw_path),
        query_string=query,
        headers=headers,
        client=client,
        server=server,
        scheme=scheme,
        http_version=request.http_version.decode("ascii"),
        method=request.method.decode("ascii"),
        root_path=root_path,
        subprotocols=tuple(subprotocols),
    )
