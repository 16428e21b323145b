"""A WebSocket client driven by hand over a raw TCP stream, for what real clients never do.

wsproto does the opening handshake and reads the server's frames; the test writes whatever
bytes it likes (broken frames, no pongs, a TCP drop without a close frame).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One frame as RFC 6455 §5.2 lays it out (a client's frames are masked unless *mask* is false)."""
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if len(payload) < 126:
        head.append(mask_bit | len(payload))
    elif len(payload) < 1 << 16:
        head += bytes([mask_bit | 126]) + len(payload).to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + len(payload).to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes(head) + payload


@attrs.define(eq=False)
class RawWebSocket:
    stream: trio.SocketStream
    connection: WSConnection

    @classmethod
    async def connect(cls, url: str) -> RawWebSocket:
        """Open *url* (``ws://host:port/path``) and complete the handshake."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        connection = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(connection.send(Request(host=parts.netloc, target=parts.path or "/")))
        client = cls(stream, connection)
        event = await client.next_event()
        if not isinstance(event, AcceptConnection):
            await stream.aclose()
            raise AssertionError(f"the handshake was not accepted: {event!r}")
        return client

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.connection.send(event))

    async def next_event(self) -> Event | None:
        """The next event from the server; ``None`` once it closed the TCP connection."""
        while True:
            for event in self.connection.events():
                return event
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset: the server is gone
                return None
            if not data:
                return None
            self.connection.receive_data(data)

    async def close_frame(self) -> int | None:
        """The code of the server's close frame, skipping other frames; ``None`` if TCP closed first.

        Also checks that the server then closes the TCP connection.
        """
        while True:
            event = await self.next_event()
            if event is None:
                return None
            if isinstance(event, CloseConnection):
                code = int(event.code)
                assert await self.eof(), "the server sent more after its close frame"
                return code

    async def eof(self) -> bool:
        """Whether the server closes the TCP connection next (nothing else arrives)."""
        try:
            return await self.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()
