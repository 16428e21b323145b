"""How WebSockets end, on every listener: each close reaches its disconnect consumer.

Every test taking ``listener`` runs on the main port (pages and WebSockets) and on a
``--ws-bind`` listener, so it guards whichever WebSocket implementation each listener uses.
Real sockets, real time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto.events import CloseConnection, Ping, TextMessage

from interface import InterfaceConfig
from layers import InMemoryChannelLayer
from trio_channels import Group, Message, route, route_class
from trio_channels.generic import WebsocketConsumer
from trio_channels.server import ServerInfo

from .conftest import StartServer, ws_url
from .demo_helpers import next_chat
from .raw_websocket import RawWebSocket, frame


@pytest.fixture(params=["main", "ws-bind"])
def listener(request: pytest.FixtureRequest) -> str:
    """Which listener a test's clients connect to."""
    return str(request.param)


class Events:
    """Messages recorded by consumers, with a way to wait for more."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._changed = trio.Event()

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while len(self.messages) < count:
                await self._changed.wait()
        return self.messages


class LogLines(logging.Handler):
    """The ``interface`` logger's lines as they are logged, with a way to wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()
        self._changed = trio.Event()

    def matching(self, text: str, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level and text in r.getMessage()]

    async def wait_for(self, text: str, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not self.matching(text):
                await self._changed.wait()


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    handler = LogLines()
    logger = logging.getLogger("interface")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def room(disconnects: Events) -> list[Any]:
    """A tutorial-style consumer: joins group "room" on connect, leaves it on disconnect."""

    class Room(WebsocketConsumer):
        groups = ["room"]

        async def receive(self, text: str | None = None, bytes: bytes | None = None, **kwargs: Any) -> None:
            await self.send(text=text, bytes=bytes)  # echo, empty frames included

        async def disconnect(self, message: Message, **kwargs: Any) -> None:
            disconnects.add(dict(message.content))

    return [route_class(Room, path=r"^/room/$")]


async def start(
    start_server: StartServer, listener: str, routing: Any, **options: Any
) -> tuple[ServerInfo, str]:
    """A server with both listeners; returns it and the ws:// base URL of *listener*."""
    info = await start_server(routing, ws_bind=["127.0.0.1:0"], **options)
    return info, ws_url(info.url, "") if listener == "main" else info.ws_urls[0]


async def members(info: ServerInfo, group: str = "room") -> list[str]:
    return await info.layer.group_channels(group)


# ----------------------------------------------------------------------------- item 1


async def _close_with(code: int, url: str) -> None:
    async with open_websocket_url(url) as ws:
        await ws.aclose(code)


async def _drop_tcp(url: str) -> None:
    client = await RawWebSocket.connect(url)
    await client.aclose()  # no close frame


async def _break_protocol(url: str) -> None:
    client = await RawWebSocket.connect(url)
    await client.send_raw(frame(0x3, b"reserved opcode"))
    assert await client.close_frame() == 1002
    await client.aclose()


async def _close_without_code(url: str) -> None:
    client = await RawWebSocket.connect(url)
    await client.send_raw(frame(0x8, b""))  # an empty close frame: "no status received"
    assert await client.close_frame() == 1005  # the server's reply is empty too
    await client.aclose()


def _coded(code: int) -> Callable[[str], Awaitable[None]]:
    return lambda url: _close_with(code, url)


CLOSES: list[tuple[str, Callable[[str], Awaitable[None]], int]] = [
    *((f"close {code}", _coded(code), code) for code in (1000, 1001, 1008, 4000, 4002, 4567, 4999)),
    ("close without a code", _close_without_code, 1005),
    ("tcp drop", _drop_tcp, 1006),
    ("protocol error", _break_protocol, 1002),
]


@pytest.mark.parametrize(("how", "close", "code"), CLOSES, ids=[how for how, _, _ in CLOSES])
async def test_every_close_reaches_the_disconnect_consumer(
    start_server: StartServer, listener: str, how: str, close: Callable[[str], Awaitable[None]], code: int
) -> None:
    """Regression (issue 11.1): every close runs the disconnect consumer with its code; the group forgets the socket."""
    disconnects = Events()
    info, base = await start(start_server, listener, room(disconnects))
    with trio.fail_after(20):
        await close(base + "/room/")
        (message,) = await disconnects.wait_for(1)
    assert message["code"] == code and type(message["code"]) is int
    assert message["path"] == "/room/" and message["order"] == 1
    assert await members(info) == []


async def test_the_demo_lobby_empties_when_its_visitors_leave(
    start_server: StartServer, listener: str
) -> None:
    """Regression (issue 11.1): the built-in demo's lobby group loses each visitor who closes a tab."""
    info, base = await start(start_server, listener, None)  # None: the built-in demo
    with trio.fail_after(20):
        async with open_websocket_url(base + "/chat/lobby/") as first:
            async with open_websocket_url(base + "/chat/lobby/") as second:
                await second.send_message("hello")  # plain text: said as it is
                assert (await next_chat(first))["text"] == "hello"  # both are members
                assert len(await members(info, "chat-lobby")) == 2
                await second.aclose(1001)  # a tab closing says "going away"
            await first.aclose(1001)
        # The demo's consumers are not ours to instrument, and nothing else can wake us.
        while await members(info, "chat-lobby"):  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_a_message_too_big_reports_1009(start_server: StartServer, listener: str) -> None:
    """A message over websocket_max_message_size closes with 1009, and the disconnect says so."""
    disconnects = Events()
    config = InterfaceConfig(websocket_max_message_size=1000)
    info, base = await start(start_server, listener, room(disconnects), interface_config=config)
    with trio.fail_after(20):
        async with open_websocket_url(base + "/room/") as ws:
            await ws.send_message("x" * 2000)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        (message,) = await disconnects.wait_for(1)
    assert closed.value.reason.code == message["code"] == 1009
    assert await members(info) == []


# ----------------------------------------------------------------------------- item 8


async def test_empty_frames_are_delivered_both_ways(start_server: StartServer, listener: str) -> None:
    """Regression (issue 11.8): empty text and binary frames reach the consumer, and its empty replies the client."""
    disconnects = Events()
    _, base = await start(start_server, listener, room(disconnects))
    with trio.fail_after(20):
        async with open_websocket_url(base + "/room/") as ws:
            for data in ("", b"", "end"):
                await ws.send_message(data)
            assert [await ws.get_message() for _ in range(3)] == ["", b"", "end"]


async def test_ping_timeout_reports_1006(start_server: StartServer, listener: str) -> None:
    """Regression (issue 11.8): a client that never answers pings is closed and its disconnect says 1006."""
    disconnects = Events()
    config = InterfaceConfig(ping_interval=0.2, ping_timeout=0.3)
    info, base = await start(start_server, listener, room(disconnects), interface_config=config)
    with trio.fail_after(20):
        client = await RawWebSocket.connect(base + "/room/")
        event = await client.next_event()
        assert isinstance(event, Ping)  # and no pong goes back
        assert await client.close_frame() == 1011  # what websockets and uvicorn send on a ping timeout
        (message,) = await disconnects.wait_for(1)
        await client.aclose()
    assert message["code"] == 1006
    assert await members(info) == []


async def test_answered_pings_keep_a_socket_open(start_server: StartServer, listener: str) -> None:
    """A client that answers pings stays open past several ping timeouts."""
    disconnects = Events()
    config = InterfaceConfig(ping_interval=0.1, ping_timeout=0.2)
    _, base = await start(start_server, listener, room(disconnects), interface_config=config)
    with trio.fail_after(20):
        client = await RawWebSocket.connect(base + "/room/")
        pings = 0
        while pings < 5:
            event = await client.next_event()
            assert isinstance(event, Ping), event
            await client.send(event.response())
            pings += 1
        await client.send(TextMessage("still here"))
        while not isinstance(event := await client.next_event(), TextMessage):
            assert isinstance(event, Ping), event
        assert event.data == "still here"
        await client.send(CloseConnection(4001))
        assert await client.close_frame() == 4001
    assert (await disconnects.wait_for(1))[0]["code"] == 4001


# ----------------------------------------------------------------------------- item 9


VIOLATIONS = [
    ("bad utf-8", frame(0x1, b"\xff\xfe not utf-8"), 1007),
    ("reserved opcode", frame(0x3, b"x"), 1002),
    ("reserved control opcode", frame(0xB, b"x"), 1002),
    ("unmasked client frame", frame(0x1, b"hello", mask=False), 1002),
    ("oversized control frame", frame(0x9, b"p" * 126), 1002),
    ("fragmented control frame", frame(0x9, b"p", fin=False), 1002),
    ("reserved bit", frame(0x1, b"x", rsv=0b100), 1002),
    ("continuation out of nowhere", frame(0x0, b"x"), 1002),
    ("close with an invalid code", frame(0x8, (999).to_bytes(2, "big")), 1002),
]


@pytest.mark.parametrize(("bad", "data", "code"), VIOLATIONS, ids=[bad for bad, _, _ in VIOLATIONS])
async def test_protocol_violations_get_a_close_frame(
    start_server: StartServer, listener: str, bad: str, data: bytes, code: int
) -> None:
    """Regression (issue 11.9): a frame breaking RFC 6455 gets a close frame with 1002/1007 before the TCP close."""
    disconnects = Events()
    info, base = await start(start_server, listener, room(disconnects))
    with trio.fail_after(20):
        client = await RawWebSocket.connect(base + "/room/")
        await client.send_raw(data)
        assert await client.close_frame() == code
        await client.aclose()
        (message,) = await disconnects.wait_for(1)
    assert message["code"] == code
    assert await members(info) == []


# ----------------------------------------------------------------------------- item 6


async def test_a_client_that_does_not_read_is_closed_with_1013_and_logged_once(
    start_server: StartServer, listener: str, log_lines: LogLines
) -> None:
    """Regression (issue 11.6/11.8): a full reply buffer closes the socket with 1013 and logs a few lines with counts."""
    connects = Events()
    disconnects = Events()

    async def connect(message: Message) -> None:
        connects.add(dict(message.content))
        await Group("slow").add(message.reply_channel)
        await message.reply_channel.send({"accept": True})

    async def disconnect(message: Message) -> None:
        disconnects.add(dict(message.content))

    routing = [route("websocket.connect", connect), route("websocket.disconnect", disconnect)]
    config = InterfaceConfig(reply_buffer=16)
    info, base = await start(start_server, listener, routing, interface_config=config)
    chunk = "x" * 16384
    sent = 2000  # 32 MiB: far more than the socket buffers and the reply buffer hold
    with trio.fail_after(60):
        async with open_websocket_url(base + "/slow/", message_queue_size=1) as ws:
            (connected,) = await connects.wait_for(1)
            reply_channel = connected["reply_channel"]
            for index in range(sent):
                await info.layer.send_group("slow", {"text": f"{index} {chunk}"})
                await trio.lowlevel.checkpoint()  # the reply poller keeps up; the connection cannot
            received = 0
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
                    received += 1
        (message,) = await disconnects.wait_for(1)
        await log_lines.wait_for("in all")  # the final count: as the connection ends
    assert closed.value.reason.code == 1013
    assert message["code"] == 1013
    assert received < sent
    warnings = log_lines.matching(reply_channel)
    assert 2 <= len(warnings) <= 3, warnings  # the first drop, perhaps one summary, the total
    assert re.search(r"dropped 1 reply\b", warnings[0]), warnings
    total = re.search(r"dropped (\d+) replies in all", warnings[-1])
    assert total and 1 < int(total.group(1)) <= sent - received, warnings
    assert log_lines.matching(f"closing {reply_channel} with 1013", logging.INFO)


async def test_replies_keep_their_order_and_arrive_whole_while_the_socket_fills(
    start_server: StartServer, listener: str
) -> None:
    """Replies written straight from the sender's task (the main port's writer idle, the socket
    taking the frame at once) never overtake replies queued for the writer, and a frame the
    socket takes only in part is finished before anything else: a client that reads slowly at
    first receives every reply, whole, in sending order. Single sends (each may be written
    directly) alternate with bursts sent without a checkpoint, and every fifth reply is one the
    writer must handle (not a plain one-key reply): the replies behind it queue for the writer
    until it ran. Pings of the heartbeat come in between."""
    connects = Events()

    async def connect(message: Message) -> None:
        connects.add(dict(message.content))
        await message.reply_channel.send({"accept": True})

    routing = [route("websocket.connect", connect)]
    config = InterfaceConfig(reply_buffer=4000, ping_interval=0.05)
    info, base = await start(start_server, listener, routing, interface_config=config)
    sent = 1200
    texts = [f"{index} " + "x" * (index * 977 % 40000) for index in range(sent)]
    with trio.fail_after(60):
        async with open_websocket_url(base + "/direct/", message_queue_size=1) as ws:
            (connected,) = await connects.wait_for(1)
            reply_channel = connected["reply_channel"]
            received: list[str] = []

            async def read() -> None:
                for index in range(sent):
                    if index < 50:
                        await trio.sleep(0.01)  # slow at first: the socket buffers fill
                    received.append(str(await ws.get_message()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                index = 0
                while index < sent:
                    burst = 1 if index % 3 else 7
                    for number in range(index, min(index + burst, sent)):
                        # Every fifth is not a plain one-key reply: never written directly.
                        reply = (
                            {"text": texts[number], "close": False}
                            if number % 5 == 0
                            else {"text": texts[number]}
                        )
                        await info.layer.send_nowait(reply_channel, reply)
                    index += burst
                    await trio.lowlevel.checkpoint()
    assert [text.split(" ", 1)[0] for text in received] == [str(index) for index in range(sent)]
    assert received == texts


async def test_dropped_disconnect_is_a_warning(
    start_server: StartServer, listener: str, log_lines: LogLines
) -> None:
    """Regression (issue 11, cross-cutting rule): a websocket.disconnect the layer refuses is a WARNING."""
    layer = InMemoryChannelLayer(channel_capacity={"websocket.disconnect": 1})
    # No worker reads websocket.disconnect: the first one fills the channel, the second is dropped.
    _, base = await start(start_server, listener, [], layer=layer, exclude_channels=["websocket.disconnect"])
    with trio.fail_after(20):
        await _close_with(4001, base + "/kept/")
        await _close_with(4002, base + "/dropped/")
        await log_lines.wait_for("websocket.disconnect")  # the interface gives up after 1 s
    (line,) = log_lines.matching("websocket.disconnect")
    assert "dropped 1 websocket.disconnect (path /dropped/, code 4002" in line


async def test_frames_the_layer_refuses_are_counted_not_flooded(
    start_server: StartServer, listener: str, log_lines: LogLines
) -> None:
    """Issue 11.6: frames the layer refuses (here: too large for it) are a WARNING with a count, not one each."""
    received = Events()

    async def receive(message: Message) -> None:
        received.add(dict(message.content))

    layer = InMemoryChannelLayer(max_message_size=4096)
    _, base = await start(start_server, listener, [route("websocket.receive", receive)], layer=layer)
    with trio.fail_after(20):
        async with open_websocket_url(base + "/big/") as ws:
            for _ in range(50):
                await ws.send_message("x" * 10000)
            await ws.send_message("small")
            (message,) = await received.wait_for(1)
        await log_lines.wait_for("in all")  # the final count: as the connection ends
    assert message["text"] == "small"
    lines = log_lines.matching("frame")
    assert len(lines) == 2, lines
    assert re.search(r"dropped 1 frame \(channel layer error: MessageTooLarge", lines[0]), lines
    assert re.search(r"dropped 50 frames in all", lines[1]), lines
