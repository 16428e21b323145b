"""A minimal WebSocket client for the load generator: wsproto driven from the caller's own task.

trio-websocket's client runs a reader task and a memory channel per connection; ten thousand
of those cost the load generator more than the server it measures. This one has no task of its
own: whoever awaits :meth:`Client.receive` (or :meth:`Client.hold`) reads the socket, answers
pings and completes a close handshake the server starts. Text messages only (the benchmark
protocol), no extensions offered, loopback only.
"""

from __future__ import annotations

import os

import trio
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

RECEIVE_SIZE = 65536


class Closed(Exception):
    """The connection is closed; ``code`` is the close code (1006: no Close frame, EOF)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"websocket closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class Rejected(Exception):
    """The server answered the handshake with an HTTP status instead of 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"websocket handshake rejected with HTTP {status}")
        self.status = status


class Client:
    """One client connection. Not safe for concurrent receivers (one task reads)."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.closed: Closed | None = None
        self._parts: list[str] = []
        self._ready: list[str] = []
        self._out: list[bytes] = []  # replies owed to the server (pongs, the close answer)
        # One task may send while another reads (fan-out's sender), and reading answers pings:
        # the lock keeps two send_all calls off the stream at once.
        self._sending = trio.StrictFIFOLock()

    @classmethod
    async def connect(cls, host: str, port: int, path: str) -> Client:
        """Open a TCP connection and complete the opening handshake.

        Raises :class:`Rejected` for a non-101 answer, :class:`Closed` if the server closes
        first, ``OSError`` if the TCP connection fails.
        """
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=path)))
            client = cls(stream, ws)
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        client._handle(list(ws.events()))  # frames that came with the 101
                        await client._flush()
                        return client
                    if isinstance(event, RejectConnection):
                        raise Rejected(event.status_code)
                    if isinstance(event, RejectData):
                        continue
                if not data:
                    raise Closed(1006, "eof during the handshake")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    def _handle(self, events: list[object]) -> None:
        """Apply events; replies (pongs, the close answer) are queued in ``self._out``."""
        for event in events:
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self._ready.append("".join(self._parts))
                    self._parts.clear()
            elif isinstance(event, Ping):
                if self.ws.state is ConnectionState.OPEN:  # not once our Close is on its way
                    self._out.append(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.closed is None:
                    self.closed = Closed(event.code, event.reason or "")
                if self.ws.state is ConnectionState.REMOTE_CLOSING:  # the server started the close
                    self._out.append(self.ws.send(event.response()))

    async def _flush(self) -> None:
        if self._out:
            out, self._out = b"".join(self._out), []
            try:
                async with self._sending:
                    await self.stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _read(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            self.ws.receive_data(None)
            if self.closed is None:
                self.closed = Closed(1006, "eof without a close frame")
        else:
            self.ws.receive_data(data)
            self._handle(list(self.ws.events()))
        await self._flush()

    def encode(self, text: str) -> bytes:
        """The frame :meth:`send` would send for *text* (masked for this connection), for
        :meth:`send_encoded` later: the storm scenario prepares its frames before it fires."""
        return self.ws.send(Message(data=text))

    def send_now(self, frame: bytes) -> bytes:
        """Write as much of *frame* (from :meth:`encode`) as the socket takes, without yielding.

        Returns what is left for :meth:`send_encoded` (``b""``: all written). Only when nothing
        else is sending. Lets one loop put thousands of small frames on the wire within
        milliseconds: the storm scenario's "at the same moment".
        """
        if self.closed is not None or self._sending.locked():
            return frame
        try:
            written = os.write(self.stream.socket.fileno(), frame)  # the socket is non-blocking
        except (BlockingIOError, InterruptedError):
            return frame
        except OSError as exc:
            self.closed = Closed(1006, f"connection lost while sending: {exc}")
            return frame
        return frame[written:]

    async def send(self, text: str) -> None:
        """Send one text message. Raises :class:`Closed` once the connection is closed."""
        await self.send_encoded(self.encode(text))

    async def send_encoded(self, frame: bytes) -> None:
        """Send a frame from :meth:`encode`. Raises :class:`Closed` once the connection is closed."""
        if self.closed is not None:
            raise self.closed
        try:
            async with self._sending:
                await self.stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed = Closed(1006, "connection lost while sending")
            raise self.closed from exc

    async def receive(self) -> str:
        """The next text message; raises :class:`Closed` when the server closed instead."""
        while not self._ready:
            if self.closed is not None:
                raise self.closed
            try:
                await self._read()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = Closed(1006, "connection lost while reading")
                raise self.closed from exc
        return self._ready.pop(0)

    async def hold(self) -> Closed:
        """Read (answering pings, dropping messages) until the server closes; return why."""
        while True:
            try:
                await self.receive()
            except Closed as closed:
                return closed

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close handshake (code 1000) bounded by *timeout*, then close the TCP stream."""
        try:
            with trio.move_on_after(timeout):
                if self.closed is None:
                    try:
                        async with self._sending:
                            await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    while self.closed is None:
                        await self._read()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)
