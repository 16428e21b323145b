"""WebSockets on the main port: wsproto's frame parser driven from the connection's own tasks.

After :mod:`interface.head` read an upgrade request with h11, :func:`serve_websocket_upgrade`
checks the handshake (RFC 6455 §4.2.1), and :class:`WsprotoTransport` is what
:mod:`interface.ws` talks to: the session's reader task parses the client's frames with
``wsproto.frame_protocol.FrameProtocol`` (validation, unmasking, UTF-8, fragments, close
codes), and frames going out are built here (a server's frames are never masked: a header and
the payload). No task of its own, no queue: ``receive()`` returns when a whole message is in.

Closing, as RFC 6455 §7 and trio-websocket do it: a client's close frame is answered with the
same code, and the TCP connection closed; our close frame (``close()``) is followed by reading
until the client's; a message over ``websocket_max_message_size`` is answered with 1009, a
frame breaking the protocol with 1002 (1007 for bad UTF-8), then TCP is closed. The code the
application is told is the client's, or ours where we closed (the session decides).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import struct
from typing import TYPE_CHECKING, Any, Final, cast

import trio
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed

from .common import CLOSE_TIMEOUT, ConnectionInfo, WebSocketClosed
from .head import Head, addresses, connection_info, is_tls, raw_socket, receive_raw, receive_some, send_all
from .http11 import error_response
from .logs import log

if TYPE_CHECKING:
    from .core import InterfaceServer

__all__ = ["WsprotoTransport", "prepare_upgrade", "serve_websocket_upgrade"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OPEN, _CLOSING, _CLOSED = 0, 1, 2
_WRITE_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def _frame(opcode: int, payload: bytes) -> bytes:
    # RFC 6455 §5.2, for a server: FIN, no RSV bits, no mask.
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


class WsprotoTransport:
    """One WebSocket on its stream (see the module docstring)."""

    __slots__ = (
        "_idle",
        "_parts",
        "_pending",
        "_proto",
        "_reply_code",
        "_sending",
        "_size",
        "_state",
        "broken",
        "key",
        "max_size",
        "pongs",
        "sock",
        "stream",
        "trailing",
    )

    def __init__(self, stream: trio.abc.Stream, key: bytes, trailing: bytes, max_size: int) -> None:
        self.stream = stream
        self.sock = raw_socket(stream)
        self.key = key
        self.trailing = trailing
        self.max_size = max_size
        self.pongs = 0
        self.broken = False  # a write failed or was cut short: nothing more can be written
        self._proto: FrameProtocol | None = None
        self._state = _OPEN
        self._parts: list[str | bytes] = []
        self._size = 0
        self._sending = False
        self._idle: trio.Event | None = None
        self._pending = b""  # the rest of a frame send_now() got only partly out: written first
        self._reply_code: int | None = None  # our close code, when we close on a bad frame

    # -- handshake -------------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        return self._proto is not None

    async def reject(self, status: int, body: bytes) -> None:
        with contextlib.suppress(*_WRITE_ERRORS):
            await self.stream.send_all(error_response(status, body.decode("utf-8", "replace")))
        self.broken = True

    async def accept(self, subprotocol: str | None) -> None:
        head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        head += b"sec-websocket-accept: " + accept_token(self.key) + b"\r\n"
        if subprotocol:
            head += b"sec-websocket-protocol: " + subprotocol.encode("ascii") + b"\r\n"
        self._proto = FrameProtocol(client=False, extensions=[])
        if self.trailing:  # frames that came right behind the request
            self._proto.receive_bytes(self.trailing)
            self.trailing = b""
        await self._write(head + b"\r\n")

    # -- reading (one task) ----------------------------------------------------------------

    async def receive(self) -> str | bytes:
        proto = self._proto
        assert proto is not None
        # A message whose bytes came with an earlier read is returned after a checkpoint: the
        # consumer task that the previous message woke then starts first (Trio runs the tasks
        # woken together in either order), so a connection's messages reach the consumers in
        # the order sent, as through trio-websocket's channel. A read is a checkpoint already.
        read = False
        while True:
            try:
                for frame in proto.received_frames():
                    opcode = frame.opcode
                    if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                        if self._state != _OPEN:
                            continue  # closing: what the client still sends is not delivered
                        payload: Any = frame.payload
                        if frame.message_finished and not self._parts:
                            if len(payload) > self.max_size:
                                await self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
                                continue
                            if not read:
                                await trio.lowlevel.cancel_shielded_checkpoint()
                            return payload if type(payload) is str else bytes(payload)
                        self._parts.append(payload if type(payload) is str else bytes(payload))
                        self._size += len(payload)
                        if self._size > self.max_size:
                            self._parts, self._size = [], 0
                            await self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
                            continue
                        if frame.message_finished:
                            if not read:
                                await trio.lowlevel.cancel_shielded_checkpoint()
                            parts, self._parts, self._size = self._parts, [], 0
                            if type(parts[0]) is str:
                                return "".join(parts)  # type: ignore[arg-type]
                            return b"".join(parts)  # type: ignore[arg-type]
                    elif opcode is Opcode.PING:
                        if self._state == _OPEN:
                            await self._write(_frame(Opcode.PONG, bytes(frame.payload)))  # type: ignore[arg-type]
                    elif opcode is Opcode.PONG:
                        self.pongs += 1
                    elif opcode is Opcode.CLOSE:
                        code, reason = cast("tuple[int, str]", frame.payload)
                        if self._state == _OPEN:  # the client closes: answer with its code
                            self._state = _CLOSED
                            await self._write(bytes(proto.close(code, reason)))
                            raise WebSocketClosed(int(code))
                        self._state = _CLOSED  # the answer to our close
                        raise WebSocketClosed(self._reply_code or int(code))
            except ParseFailed as exc:
                # RFC 6455 §7.1.7: fail the connection: a close frame with the code, then TCP.
                if self._state == _OPEN:
                    self._state = _CLOSED
                    with contextlib.suppress(TypeError, ValueError):
                        await self._write(bytes(proto.close(exc.code, str(exc))))
                raise WebSocketClosed(int(exc.code)) from None
            if self._reply_code is not None:  # our close on a bad message: its answer may not come
                with trio.move_on_after(CLOSE_TIMEOUT) as waiting:
                    data = await receive_some(self.sock, self.stream)
                if waiting.cancelled_caught:
                    raise WebSocketClosed(self._reply_code)
            elif self.sock is not None:  # the common case, inlined: an idle socket waits here
                data = await receive_raw(self.sock)
            else:
                data = await receive_some(None, self.stream)
            if not data:
                raise WebSocketClosed(self._reply_code or 1006)
            proto.receive_bytes(data)
            read = True

    async def _fail(self, code: int, reason: str) -> None:
        # Too big a message: our close frame, then read on until the client's.
        if self._state == _OPEN:
            self._state = _CLOSING
            self._reply_code = int(code)
            assert self._proto is not None
            await self._write(bytes(self._proto.close(code, reason)))

    # -- writing (any task) ----------------------------------------------------------------

    async def send(self, data: str | bytes) -> None:
        if self._state == _OPEN:
            if type(data) is str:
                await self._write(_frame(Opcode.TEXT, data.encode("utf-8")))
            else:
                await self._write(_frame(Opcode.BINARY, data))  # type: ignore[arg-type]

    async def ping(self) -> None:
        if self._state == _OPEN:
            await self._write(_frame(Opcode.PING, b""))

    async def close(self, code: int) -> None:
        if self._state == _OPEN and self._proto is not None:
            self._state = _CLOSING
            await self._write(bytes(self._proto.close(code)))

    def send_now(self, text: str | None, data: bytes | None) -> bool | None:
        """Write a text (else binary) frame from the calling task without blocking, if no write
        is under way: True if the kernel took it whole (or the client is gone), None if it took
        only part (the rest is written before anything else, by the next write: flush() it),
        False if nothing was written (send it the usual way)."""
        sock = self.sock
        if self._sending or self.broken or self._pending or self._state != _OPEN or sock is None:
            return False
        frame = _frame(Opcode.TEXT, text.encode("utf-8")) if text is not None else _frame(Opcode.BINARY, data)  # type: ignore[arg-type]
        try:
            sent = sock._sock.send(frame)
        except BlockingIOError:
            return False
        except OSError:
            self.broken = True  # the client is gone: receive() reports how
            return True
        if sent < len(frame):
            self._pending = frame[sent:]
            return None
        return True

    async def flush(self) -> None:
        """Write what :meth:`send_now` left over, if anything."""
        if self._pending:
            await self._write(b"")

    async def _write(self, data: bytes) -> None:
        # Writes never interleave: a second writer waits for the first (an Event made only then).
        while self._sending:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
        if self.broken:
            return
        self._sending = True
        if self._pending:  # the rest of a frame send_now() began goes first
            data, self._pending = self._pending + data, b""
        try:
            await send_all(self.sock, self.stream, data)
        except _WRITE_ERRORS:
            self.broken = True  # the client is gone: receive() reports how
        except BaseException:
            self.broken = True  # cut short (cancelled): what is on the wire is half a frame
            raise
        finally:
            self._sending = False
            if self._idle is not None:
                self._idle.set()
                self._idle = None


def prepare_upgrade(
    server: InterfaceServer, stream: trio.abc.Stream, head: Head, root_path: str = ""
) -> tuple[ConnectionInfo, WsprotoTransport] | bytes:
    """Check the handshake *head* asks for (RFC 6455 §4.2.1): what to serve on *stream*, or
    the error response to write (426 for another version, 400 without a key).

    Nothing of *head* is kept (its h11 state would otherwise live as long as the socket).
    """
    request = head.request
    assert request is not None
    key = version = None
    for name, value in request.headers:
        if name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
    if version != b"13":
        body = b"Unsupported WebSocket version: this server speaks version 13.\n"
        return (
            b"HTTP/1.1 426 Upgrade Required\r\nsec-websocket-version: 13\r\nconnection: close\r\n"
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
    if not key or request.http_version != b"1.1":
        return error_response(400, "Bad WebSocket handshake: no Sec-WebSocket-Key.")
    client, local = addresses(stream)
    info = connection_info(
        request, client=client, server=local, secure=is_tls(stream), websocket=True, root_path=root_path
    )
    trailing = head.connection.trailing_data[0]
    return info, WsprotoTransport(stream, key, trailing, server.config.websocket_max_message_size)


async def serve_websocket_upgrade(
    server: InterfaceServer, stream: trio.abc.Stream, upgrade: tuple[ConnectionInfo, WsprotoTransport] | bytes
) -> None:
    """Serve what :func:`prepare_upgrade` made of a WebSocket upgrade on *stream*."""
    if isinstance(upgrade, bytes):
        with trio.move_on_after(5), contextlib.suppress(*_WRITE_ERRORS):
            await stream.send_all(upgrade)
        return
    info, transport = upgrade
    path = info.path
    serving = server.websocket(info, transport)
    del upgrade, info  # (what the connection needs from them, it keeps itself)
    try:
        await serving
    except Exception:  # a bug: this connection's problem only
        log.exception("error serving WebSocket %s; closing it with 1011", path)
        with trio.move_on_after(1, shield=True):
            if transport.accepted:
                await transport.close(1011)
            else:
                await transport.reject(500, b"Internal server error.")
