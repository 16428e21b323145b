"""WebSocket frames on every listener: fragments, pings, big messages, handshake errors, and
what a slow channel layer does to a socket (issue 12).

Every test taking ``listener`` runs on the main port (its own wsproto path) and on a
``--ws-bind`` listener (trio-websocket): both must behave the same. Real sockets, real time.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto.events import Ping, Pong, TextMessage

from interface import InterfaceConfig
from layers import InMemoryChannelLayer
from trio_channels import Message, route
from trio_channels.server import ServerInfo
from trio_channels.sessions import enforce_ordering

from .conftest import StartServer, ws_url
from .raw_websocket import RawWebSocket, frame


@pytest.fixture(params=["main", "ws-bind"])
def listener(request: pytest.FixtureRequest) -> str:
    """Which listener a test's clients connect to."""
    return str(request.param)


async def start(
    start_server: StartServer, listener: str, routing: Any, **options: Any
) -> tuple[ServerInfo, str]:
    info = await start_server(routing, ws_bind=["127.0.0.1:0"], **options)
    return info, ws_url(info.url, "") if listener == "main" else info.ws_urls[0]


async def echo(message: Message) -> None:
    reply = message.reply_channel
    assert reply is not None
    if "text" in message.content:
        await reply.send({"text": message["text"]})
    else:
        await reply.send({"bytes": message["bytes"]})


async def test_fragmented_messages_are_reassembled(start_server: StartServer, listener: str) -> None:
    """A message sent in fragments (text and binary, with a ping between them) arrives whole."""
    _, base = await start(start_server, listener, [route("websocket.receive", echo)])
    with trio.fail_after(20):
        client = await RawWebSocket.connect(base + "/frag/")
        await client.send_raw(frame(0x1, b"hel", fin=False))
        await client.send_raw(frame(0x9, b"mid"))  # a control frame may come between fragments
        await client.send_raw(frame(0x0, b"lo ", fin=False))
        await client.send_raw(frame(0x0, "wörld".encode()))
        await client.send_raw(frame(0x2, b"\x00\x01", fin=False) + frame(0x0, b"\x02"))
        events = [await client.next_event() for _ in range(3)]
        await client.aclose()
    assert isinstance(events[0], Pong) and events[0].payload == b"mid"
    # (two consumers answer concurrently: the replies may come in either order)
    assert sorted((getattr(event, "data", None) for event in events[1:]), key=str) == [
        b"\x00\x01\x02",
        "hello wörld",
    ]


async def test_client_pings_are_answered(start_server: StartServer, listener: str) -> None:
    """A client's ping gets a pong with its payload, and the socket stays open."""
    _, base = await start(start_server, listener, [route("websocket.receive", echo)])
    with trio.fail_after(20):
        client = await RawWebSocket.connect(base + "/ping/")
        await client.send(Ping(b"are you there"))
        pong = await client.next_event()
        await client.send(TextMessage("still open"))
        message = await client.next_event()
        await client.aclose()
    assert isinstance(pong, Pong) and pong.payload == b"are you there"
    assert isinstance(message, TextMessage) and message.data == "still open"


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 1024 * 1024])
async def test_big_messages_both_ways(start_server: StartServer, listener: str, size: int) -> None:
    """Messages at every frame-length boundary, up to the size limit, go both ways intact."""
    config = InterfaceConfig(websocket_max_message_size=1024 * 1024)
    layer = InMemoryChannelLayer(max_message_size=4 * 1024 * 1024)
    _, base = await start(
        start_server, listener, [route("websocket.receive", echo)], interface_config=config, layer=layer
    )
    text = "x" * (size - 1) + "é"[:1]
    data = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    with trio.fail_after(20):
        async with open_websocket_url(base + "/big/", max_message_size=2 * size + 1000) as ws:
            await ws.send_message(text)
            assert await ws.get_message() == text
            await ws.send_message(data)
            assert await ws.get_message() == data


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"Sec-WebSocket-Version", b"8"), (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")], 426),
        ([(b"Sec-WebSocket-Version", b"13")], 400),
    ],
    ids=["old version", "no key"],
)
async def test_bad_handshakes_on_the_main_port(
    start_server: StartServer, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    """An upgrade with another WebSocket version gets 426 naming version 13; one without a key 400."""
    connects: list[str] = []

    async def connect(message: Message) -> None:
        connects.append(message["path"])

    info = await start_server([route("websocket.connect", connect)])
    host, port = info.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    with trio.fail_after(10):
        await stream.send_all(head)
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 426:
        assert b"sec-websocket-version: 13" in response.lower()
    assert connects == []


async def test_full_receive_channel_closes_1013_and_still_disconnects_in_order(
    start_server: StartServer, listener: str
) -> None:
    """Issue 12: a socket closed with 1013 because websocket.receive stayed full still gets its
    websocket.disconnect, numbered right after the last frame that was sent, so an ordered
    disconnect consumer runs at once (it used to be dropped, and its order left a gap that
    enforce_ordering would wait out until the message expired)."""
    release = trio.Event()
    received: list[int] = []
    disconnects: list[dict[str, Any]] = []
    done = trio.Event()

    @enforce_ordering
    async def receive(message: Message) -> None:
        await release.wait()
        received.append(message["order"])

    @enforce_ordering
    async def disconnect(message: Message) -> None:
        disconnects.append(dict(message.content))
        done.set()

    routing = [route("websocket.receive", receive), route("websocket.disconnect", disconnect)]
    layer = InMemoryChannelLayer(channel_capacity={"websocket.receive": 1})
    config = InterfaceConfig(receive_full_timeout=0.2)
    _, base = await start(
        start_server, listener, routing, layer=layer, concurrency=2, interface_config=config
    )
    with trio.fail_after(20):
        async with open_websocket_url(base + "/slow/") as ws:
            # order 1 is taken by a consumer (waiting on release), order 2 by the second
            # worker slot (waiting for order 1), order 3 fills the channel, order 4 is refused.
            for index in range(4):
                await ws.send_message(f"m{index}")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        release.set()
        await done.wait()
    assert closed.value.reason.code == 1013
    assert received == [1, 2, 3]
    assert [(message["code"], message["order"]) for message in disconnects] == [(1013, 4)]


async def test_a_burst_of_closes_is_followed_by_a_full_collection(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 (RSS after sockets close): once many WebSockets closed and closes stopped for
    a moment, the server runs one full garbage collection, which clears the interpreter's free
    lists that otherwise pin the allocator's arenas (thresholds shortened here)."""
    import gc

    import interface.core

    monkeypatch.setattr(interface.core, "TRIM_AFTER_CLOSES", 3)
    monkeypatch.setattr(interface.core, "TRIM_QUIET", 0.2)
    full: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(info["collected"])

    gc.callbacks.append(watch)
    enabled = gc.isenabled()
    gc.disable()  # so that every full collection seen is an explicit one
    try:
        _, base = await start(start_server, "main", [route("websocket.receive", echo)])
        with trio.fail_after(20):
            for _ in range(3):
                async with open_websocket_url(base + "/burst/") as ws:
                    await ws.send_message("x")
                    await ws.get_message()
            assert full == []  # not while sockets are still closing
            while not full:  # noqa: ASYNC110  (the gc callback cannot wake a task)
                await trio.sleep(0.05)
    finally:
        gc.callbacks.remove(watch)
        if enabled:
            gc.enable()


async def test_many_sockets_waiting_for_a_full_channel_all_get_through(
    start_server: StartServer, listener: str
) -> None:
    """Issue 12 (the storm): sockets whose frames find websocket.receive full wait their turn
    (TCP holds their clients back) and every frame is answered; none is closed."""

    async def slow_echo(message: Message) -> None:
        await trio.sleep(0.01)
        await echo(message)

    layer = InMemoryChannelLayer(channel_capacity={"websocket.receive": 2})
    _, base = await start(
        start_server, listener, [route("websocket.receive", slow_echo)], layer=layer, concurrency=2
    )
    answers: list[str] = []

    async def one_frame(ws: Any, text: str) -> None:
        await ws.send_message(text)
        answers.append(await ws.get_message())

    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(open_websocket_url(base + "/storm/")) for _ in range(40)
            ]
            async with trio.open_nursery() as nursery:
                for index, ws in enumerate(sockets):
                    nursery.start_soon(one_frame, ws, f"m{index}")
            assert all(ws.closed is None for ws in sockets)
    assert sorted(answers) == sorted(f"m{index}" for index in range(40))
