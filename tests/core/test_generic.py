"""Class-based consumers, multiplexing and the testing toolkit, driven by the toolkit itself."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

from layers import InMemoryChannelLayer
from trio_channels import Channel, Group, Message, route_class, use_layer
from trio_channels.generic import (
    AsyncHttpConsumer,
    BaseConsumer,
    JsonWebsocketConsumer,
    SendNotAvailableOnDemultiplexer,
    WebsocketConsumer,
    WebsocketDemultiplexer,
    WebsocketMultiplexer,
    recover_positions,
)
from trio_channels.http import Request, Response
from trio_channels.sessions import InMemorySessionStore, use_session_store
from trio_channels.testing import Client, HttpClient, WebsocketClient


class Echo(WebsocketConsumer):
    groups: ClassVar[list[str]] = ["everyone"]

    async def receive(self, text: str | None = None, bytes: bytes | None = None, **kwargs: Any) -> None:
        if text == "close":
            await self.close(4001)
        elif text is not None:
            await self.send(text=f"{self.path} {kwargs.get('room', '-')}: {text}")
        else:
            await self.send(bytes=bytes)


async def test_websocket_consumer_methods_and_groups() -> None:
    """connect accepts and joins connection_groups; receive gets text or bytes; disconnect leaves."""
    client = WebsocketClient([Echo.as_route(path=r"^/(?P<room>\w+)/$")])
    await client.connect("/lobby/")
    assert await client.layer.group_channels("everyone") == [client.reply_channel]
    await client.send_text("hi")
    assert await client.receive_text() == "/lobby/ lobby: hi"
    await client.send_bytes(b"\x00")
    assert await client.receive() == {"bytes": b"\x00"}
    await client.send_text("close")
    assert await client.receive() == {"close": 4001}
    await client.disconnect()
    assert await client.layer.group_channels("everyone") == []
    await client.assert_nothing_pending()


def test_as_route_with_attrs_and_channel_names() -> None:
    """as_route(attrs) makes a subclass; the class names its channels."""
    route = Echo.as_route(attrs={"groups": ["other"]}, path=r"^/x/$")
    assert route.channel_names() == {"websocket.connect", "websocket.receive", "websocket.disconnect"}
    assert Echo.groups == ["everyone"]
    with pytest.raises(ValueError, match="slight_ordering"):
        type("Old", (WebsocketConsumer,), {"slight_ordering": True})(None)  # type: ignore[arg-type]


class Counter(JsonWebsocketConsumer):
    channel_session = True
    strict_ordering = True

    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        count = self.message.channel_session.get("count", 0) + content["add"]
        self.message.channel_session["count"] = count
        await self.send({"count": count})


async def test_json_consumer_with_channel_session_and_strict_ordering() -> None:
    """JSON in and out; state in the channel session; messages run in order."""
    with use_session_store(InMemorySessionStore()):
        client = WebsocketClient([route_class(Counter)])
        await client.connect()
        for add in (1, 2, 3):
            await client.send_json({"add": add})
        assert [await client.receive_json() for _ in range(3)] == [{"count": 1}, {"count": 3}, {"count": 6}]


async def test_invalid_json_closes_with_1007() -> None:
    """Invalid JSON closes the connection with 1007; a binary frame with 1003."""
    client = WebsocketClient([route_class(Counter)])
    with use_session_store(InMemorySessionStore()):
        await client.connect()
        await client.send_text("{not json")
        assert await client.receive() == {"close": 1007}
        await client.send_bytes(b"\x01")
        assert await client.receive() == {"close": 1003}


class Users(JsonWebsocketConsumer):
    http_user = True

    async def connect(self, message: Any, **kwargs: Any) -> None:
        await message.reply_channel.send({"accept": True})
        await self.send({"user": message.user.username})

    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        await self.send({"still": self.message.user.username})


async def test_http_user_flag() -> None:
    """http_user: the user logged in over HTTP is message.user on connect and after."""
    from trio_channels.auth import use_user_loader

    async def loader(user_id: Any) -> Any:
        return type("User", (), {"id": user_id, "username": f"user{user_id}", "is_authenticated": True})()

    with use_session_store(InMemorySessionStore()), use_user_loader(loader):
        client = WebsocketClient([route_class(Users)])
        await client.login({"id": 5})
        await client.connect()
        assert await client.receive_json() == {"user": "user5"}
        await client.send_json({})
        assert await client.receive_json() == {"still": "user5"}


class ChatStream(JsonWebsocketConsumer):
    async def connect(self, message: Any, **kwargs: Any) -> None:
        await Group("mux-chat").add(message.reply_channel)

    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        await self.send({"said": content["text"]})


class PingStream(JsonWebsocketConsumer):
    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        await self.send({"pong": content.get("n")})


class Mux(WebsocketDemultiplexer):
    consumers: ClassVar[dict[str, type[WebsocketConsumer]]] = {"chat": ChatStream, "ping": PingStream}


async def test_demultiplexer_routes_streams() -> None:
    """Frames go to their stream's consumer; replies come back wrapped in the same stream."""
    client = WebsocketClient([route_class(Mux)])
    reply = await client.connect()
    assert reply == {"accept": True}
    assert await client.layer.group_channels("mux-chat") == [client.reply_channel]  # connect fanned out
    await client.send_json({"stream": "ping", "payload": {"n": 7}})
    assert await client.receive_json() == {"stream": "ping", "payload": {"pong": 7}}
    await client.send_json({"stream": "chat", "payload": {"text": "hi"}})
    assert await client.receive_json() == {"stream": "chat", "payload": {"said": "hi"}}
    with use_layer(client.layer):
        await WebsocketMultiplexer.group_send("mux-chat", "chat", {"news": 1})
    assert await client.receive_json() == {"stream": "chat", "payload": {"news": 1}}
    for bad in ({"stream": "nope", "payload": {}}, {"stream": "ping", "payload": [1]}, {"no": "stream"}):
        await client.send_json(bad)
        assert await client.receive() == {"close": 1007}


async def test_demultiplexer_has_no_send_of_its_own() -> None:
    with pytest.raises(SendNotAvailableOnDemultiplexer):
        await Mux.group_send("x", {})


class Stream(AsyncHttpConsumer):
    async def handle(self, request: Request, **kwargs: Any) -> None:
        if request.path == "/stream":
            await self.send_headers(200, [("Content-Type", "text/plain")])
            for part in (b"a", b"b"):
                await self.send_body(part, more_body=True)
            await self.send_body(b"c")
        elif request.path == "/poll":
            await Group("waiting").add(self.message.reply_channel)  # answered later, by someone else
        else:
            await self.send_response(Response(f"{request.method} {request.path}", content_type="text/plain"))


async def test_async_http_consumer_streams_and_long_polls() -> None:
    """Whole responses, streamed ones, and a long-poll answered later through a group."""
    client = HttpClient([route_class(Stream)])
    assert (await client.get("/plain")).text == "GET /plain"
    streamed = await client.get("/stream")
    assert streamed.body == b"abc" and streamed.header("content-type") == "text/plain"
    await client.send_and_consume(
        "http.request", {"method": "GET", "path": "/poll", "headers": [], "body": b""}
    )
    assert await client.receive() is None
    await client.layer.send_group("waiting", Response("done").encode()[0])
    assert (await client.receive())["content"] == b"done"  # type: ignore[index]


async def test_default_handle_is_405() -> None:
    client = HttpClient([route_class(AsyncHttpConsumer)])
    assert (await client.post("/anything")).status == 405


class Handler(BaseConsumer):
    method_mapping: ClassVar[dict[str, str]] = {"custom": "handle"}
    seen: ClassVar[list[Any]] = []

    async def handle(self, message: Any, **kwargs: Any) -> None:
        self.seen.append(message["value"])


async def test_base_consumer_and_client_errors() -> None:
    """A BaseConsumer on a custom channel; the client fails clearly when nothing was there."""
    client = Client([route_class(Handler)])
    await client.send_and_consume("custom", {"value": 3})
    assert Handler.seen == [3]
    with pytest.raises(AssertionError, match="no message was waiting on 'custom'"):
        await client.consume("custom")
    assert await client.consume("custom", fail_on_none=False) is False


async def test_toolkit_under_a_mock_clock(autojump: trio.testing.MockClock) -> None:
    """The in-process clients work with MockClock: a message expires without waiting."""
    client = Client([route_class(Handler)])
    async with client.layer:
        await client.send("custom", {"value": 4})
        await trio.sleep(client.layer.expiry + 1)
        assert await client.consume("custom", fail_on_none=False) is False


class WithHttpSession(WebsocketConsumer):
    http_user_and_session = True

    async def receive(self, text: str | None = None, bytes: bytes | None = None, **kwargs: Any) -> None:
        session = self.message.http_session
        await self.send(text=f"{self.message.user.username} {session.get('theme') if session else None}")
        await self.group_send("broadcast", text="to the group")


async def test_http_user_and_session_flag_and_group_send() -> None:
    """http_user_and_session: later messages still see the HTTP session; group_send reaches groups."""
    from trio_channels.auth import use_user_loader

    async def loader(user_id: Any) -> Any:
        return type("User", (), {"id": user_id, "username": "ada", "is_authenticated": True})()

    with use_session_store(InMemorySessionStore()), use_user_loader(loader):
        client = WebsocketClient([route_class(WithHttpSession)])
        session = await client.login({"id": 1})
        session["theme"] = "dark"
        await session.save()
        await client.connect()
        await client.join_group("broadcast")
        await client.send_text("who am i")
        assert await client.receive_text() == "ada dark"
        assert await client.receive_text() == "to the group"


# ------------------------------------------------------------------ presence and recovery on streams


class RoomStream(JsonWebsocketConsumer):
    async def connect(self, message: Any, **kwargs: Any) -> None:
        assert self.multiplexer is not None
        await self.multiplexer.join("room-lobby", info={"name": "guest"}, last=2)

    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        await WebsocketMultiplexer.group_send(
            "room-lobby", "room", content, exclude=self.message.reply_channel
        )


class RoomMux(WebsocketDemultiplexer):
    consumers: ClassVar[dict[str, type[WebsocketConsumer]]] = {"room": RoomStream}


def _room_layer() -> InMemoryChannelLayer:
    return InMemoryChannelLayer(
        capacity=100, history={"room-*": {"size": 3, "ttl": 60}}, presence={"room-*": {"events": True}}
    )


async def test_streams_join_with_recovery() -> None:
    """A stream consumer joins its group through the multiplexer: the client gets the latest
    messages, a join frame with its position, offsets on every message, presence events; it
    reconnects with ?recover=<stream>:<epoch>:<offset> and gets exactly what it missed."""
    layer = _room_layer()
    alice, bob = (
        WebsocketClient([route_class(RoomMux)], layer),
        WebsocketClient([route_class(RoomMux)], layer),
    )
    await alice.connect()
    joined = await alice.receive_json()
    assert joined == {
        "stream": "room",
        "join": {
            "group": "room-lobby",
            "epoch": joined["join"]["epoch"],
            "offset": 0,
            "recovered": True,
            "replayed": 0,
        },
    }
    epoch = joined["join"]["epoch"]
    await bob.connect()
    assert await alice.receive_json() == {
        "presence": "join",
        "group": "room-lobby",
        "channel": bob.reply_channel,
        "info": {"name": "guest"},
    }
    await bob.receive_json()  # bob's join frame
    for n in range(1, 5):
        await bob.send_json({"stream": "room", "payload": {"n": n}})
    assert [await alice.receive_json() for _ in range(4)] == [
        {"stream": "room", "payload": {"n": n}, "offset": n, "epoch": epoch} for n in range(1, 5)
    ]
    await bob.assert_nothing_pending()  # excluded from its own messages
    await alice.disconnect()  # alice saw up to offset 4; two more while she is away
    await bob.send_json({"stream": "room", "payload": {"n": 5}})
    await bob.send_json({"stream": "room", "payload": {"n": 6}})
    back = WebsocketClient([route_class(RoomMux)], layer)
    first = await back.connect(f"/?recover=room:{epoch}:4")  # the replay comes first, and accepts
    assert first is not None and json.loads(first["text"]) == {
        "stream": "room",
        "payload": {"n": 5},
        "offset": 5,
        "epoch": epoch,
    }
    assert await back.receive_json() == {"stream": "room", "payload": {"n": 6}, "offset": 6, "epoch": epoch}
    assert await back.receive() == {"accept": True}
    assert await back.receive_json() == {
        "stream": "room",
        "join": {"group": "room-lobby", "epoch": epoch, "offset": 6, "recovered": True, "replayed": 2},
    }
    late = WebsocketClient([route_class(RoomMux)], layer)
    await late.connect(f"/?recover=room:{epoch}:1")  # 2 was trimmed: only 4..6 are kept
    assert await late.receive_json() == {
        "stream": "room",
        "join": {
            "group": "room-lobby",
            "epoch": epoch,
            "offset": 6,
            "recovered": False,
            "reason": "trimmed",
            "replayed": 0,
        },
    }
    new = WebsocketClient([route_class(RoomMux)], layer)
    first = await new.connect("/")  # no position: the latest 2
    assert first is not None and json.loads(first["text"])["offset"] == 5
    assert (await new.receive_json())["offset"] == 6
    assert await new.receive() == {"accept": True}
    assert (await new.receive_json())["join"]["replayed"] == 2


def test_recover_positions(caplog: pytest.LogCaptureFixture) -> None:
    """?recover=<stream>:<epoch>:<offset>, one per stream; a malformed one is logged and ignored."""
    layer = _room_layer()
    query = b"recover=room:9f2c:17&recover=a:b:news:e1:0&recover=bad&recover=x:e:-1&other=1"
    message = Message({"query_string": query, "path": "/"}, Channel("websocket.connect"), layer)
    assert recover_positions(message) == {"room": ("9f2c", 17), "a:b:news": ("e1", 0)}
    assert "ignored recover='bad'" in caplog.text and "ignored recover='x:e:-1'" in caplog.text
