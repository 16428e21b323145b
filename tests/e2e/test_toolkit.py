"""The testing toolkit on the tutorial's examples, and the channels_live_server fixture for real sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from examples.authentication.users import load_user
from layers import InMemoryChannelLayer
from trio_channels import Message, route, route_class
from trio_channels.auth import use_user_loader
from trio_channels.security import set_allowed_hosts
from trio_channels.server import ServerInfo
from trio_channels.sessions import InMemorySessionStore, use_session_store
from trio_channels.testing import HttpClient, WebsocketClient, open_websocket

from ..core.test_generic import Mux

pytestmark = pytest.mark.usefixtures("in_examples")


@pytest.fixture
def channels_routing() -> Any:
    """channels_live_server serves the demultiplexer here (the plugin's documented override)."""
    return [route_class(Mux)]


async def test_demultiplexer_over_a_real_connection(channels_live_server: ServerInfo) -> None:
    """channels_live_server + open_websocket: stream frames over a real WebSocket."""
    async with open_websocket(channels_live_server.url, "/mux/") as ws:
        await ws.send_message(json.dumps({"stream": "ping", "payload": {"n": 1}}))
        assert json.loads(await ws.get_message()) == {"stream": "ping", "payload": {"pong": 1}}
        await ws.send_message(json.dumps({"stream": "chat", "payload": {"text": "over the wire"}}))
        assert json.loads(await ws.get_message()) == {"stream": "chat", "payload": {"said": "over the wire"}}


async def test_first_consumers_in_process() -> None:
    client = HttpClient("examples.first_consumers.routing.channel_routing")
    response = await client.get("/hello/there")
    assert (response.status, response.text) == (200, "Hello world! You asked for /hello/there")


async def test_rooms_in_process() -> None:
    """Two clients on one layer: the room is per connection, kept in the channel session."""
    layer = InMemoryChannelLayer()
    with use_session_store(InMemorySessionStore()):
        one = WebsocketClient("examples.rooms.routing.channel_routing", layer)
        two = WebsocketClient("examples.rooms.routing.channel_routing", layer)
        other = WebsocketClient("examples.rooms.routing.channel_routing", layer)
        await one.connect("/abc/")
        await two.connect("/abc/")
        await other.connect("/xyz/")
        await one.send_text("hello abc")
        assert await two.receive_text() == "hello abc"
        assert await one.receive_text() == "hello abc"
        await other.assert_nothing_pending()


async def test_clients_sharing_a_layer_keep_their_replies() -> None:
    """Regression: a test client receives only its own replies (all clients shared one process
    prefix, so one client's receive could take another's reply)."""

    async def echo_path(message: Message) -> None:
        await message.reply_channel.send({"text": message["path"]})

    routing = [route("websocket.connect", echo_path)]
    layer = InMemoryChannelLayer()
    one, two = WebsocketClient(routing, layer), WebsocketClient(routing, layer)
    await one.send_and_consume("websocket.connect", {"path": "/one/"})
    await two.send_and_consume("websocket.connect", {"path": "/two/"})
    assert await two.receive_text() == "/two/"
    assert await one.receive_text() == "/one/"


async def test_client_receive_does_not_wait(autojump: trio.testing.MockClock) -> None:
    """A client knows at once that no reply is waiting: no timeout, the clock stands still."""
    client = WebsocketClient([route_class(Mux)])
    before = trio.current_time()
    assert await client.receive() is None
    assert not await client.consume("websocket.receive", fail_on_none=False)
    assert trio.current_time() == before


async def test_routing_include_in_process() -> None:
    ws = WebsocketClient("examples.routing_include.routing.routing")
    await ws.connect("/chat/lobby/")
    await ws.send_text("hi")
    assert await ws.receive_text() == "lobby: hi"
    http = HttpClient("examples.routing_include.routing.routing")
    assert (await http.post("/poll/")).text == "polled POST\n"


async def test_ordering_in_process() -> None:
    with use_session_store(InMemorySessionStore()):
        ws = WebsocketClient("examples.ordering.routing.channel_routing")
        await ws.connect("/chat/")
        for text in ("a", "b"):
            await ws.send_text(text)
        assert [await ws.receive_text() for _ in range(2)] == ["1: a", "2: b"]


async def test_authentication_in_process() -> None:
    """Log in through the form with HttpClient; the cookie carries over to WebsocketClient."""
    layer = InMemoryChannelLayer()
    set_allowed_hosts(["localhost"])
    try:
        with use_session_store(InMemorySessionStore()), use_user_loader(load_user):
            http = HttpClient("examples.authentication.routing.channel_routing", layer)
            page = await http.post(
                "/login", b"username=alice", headers=[("content-type", "application/x-www-form-urlencoded")]
            )
            assert page.status == 200 and 'Logged in as <span id="me">alice</span>' in page.text
            ws = WebsocketClient("examples.authentication.routing.channel_routing", layer)
            ws.cookies.update(http.cookies)
            await ws.connect("/chat/", headers=[("origin", "http://localhost:8000")])
            await ws.send_text("hi")
            assert await ws.receive_text() == "alice: hi"
            rejected = WebsocketClient("examples.authentication.routing.channel_routing", layer)
            assert await rejected.connect("/chat/", check_accept=False) == {"close": True}  # no origin
    finally:
        set_allowed_hosts([])
