"""Sessions, auth, ordering and origins over real connections: the seed's examples as tests."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, open_websocket_url

from layers import InMemoryChannelLayer
from trio_channels import Group, Message, route, run_worker
from trio_channels.sessions import InMemorySessionStore, channel_session, enforce_ordering, use_session_store

from ..redis_server import RedisServer
from . import auth_app
from .conftest import StartServer, ws_url
from .processes import running


async def _expect(ws: Any, *texts: str) -> None:
    with trio.fail_after(5):
        for text in texts:
            assert await ws.get_message() == text


async def _silent(ws: Any, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        heard = await ws.get_message()
        pytest.fail(f"expected silence, heard {heard!r}")


# ----------------------------------------------------------------------------- persisting data


@channel_session
async def seed_ws_connect(message: Message) -> None:
    await message.reply_channel.send({"accept": True})
    room = message.content["path"].strip("/")
    message.channel_session["room"] = room
    await Group(f"chat-{room}").add(message.reply_channel)


@channel_session
async def seed_ws_message(message: Message) -> None:
    await Group(f"chat-{message.channel_session['room']}").send({"text": message["text"]})


@channel_session
async def seed_ws_disconnect(message: Message) -> None:
    await Group(f"chat-{message.channel_session['room']}").discard(message.reply_channel)


async def test_rooms_from_the_path_in_the_channel_session(start_server: StartServer) -> None:
    """The seed's "Persisting Data": the room chosen at connect is remembered per connection."""
    info = await start_server(
        [
            route("websocket.connect", seed_ws_connect),
            route("websocket.receive", seed_ws_message),
            route("websocket.disconnect", seed_ws_disconnect),
        ]
    )
    async with (
        open_websocket_url(ws_url(info.url, "/abc/")) as one,
        open_websocket_url(ws_url(info.url, "/abc/")) as two,
        open_websocket_url(ws_url(info.url, "/xyz/")) as other,
    ):
        await one.send_message("hello abc")
        await _expect(one, "hello abc")
        await _expect(two, "hello abc")
        await _silent(other)
        await other.send_message("hello xyz")
        await _expect(other, "hello xyz")
        await _silent(one, 0.2)


# ----------------------------------------------------------------------------- authentication


async def _login(client: httpx.AsyncClient, url: str) -> str:
    response = await client.post(url)
    assert response.status_code == 200, response.text
    return response.text.rsplit(" ", 1)[1]


def _cookie_header(client: httpx.AsyncClient) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"sessionid={client.cookies['sessionid']}".encode())]


async def test_first_letter_chat_with_the_user_from_the_http_session(start_server: StartServer) -> None:
    """Log in over HTTP; the WebSocket knows the user; alice and albert share the 'a' room."""
    info = await start_server(auth_app.routing, user_loader=auth_app.load_user)
    async with httpx.AsyncClient() as alice, httpx.AsyncClient() as albert, httpx.AsyncClient() as bob:
        for client, name in ((alice, "alice"), (albert, "albert"), (bob, "bob")):
            await _login(client, f"{info.url}/login?user={name}")
        async with (
            open_websocket_url(ws_url(info.url, "/chat/"), extra_headers=_cookie_header(alice)) as a1,
            open_websocket_url(ws_url(info.url, "/chat/"), extra_headers=_cookie_header(albert)) as a2,
            open_websocket_url(ws_url(info.url, "/chat/"), extra_headers=_cookie_header(bob)) as b1,
        ):
            await a1.send_message("hi")
            await _expect(a1, "alice: hi")
            await _expect(a2, "alice: hi")
            await _silent(b1)
            await b1.send_message("anyone?")
            await _expect(b1, "bob: anyone?")


async def test_login_rotates_the_key_and_logout_forgets_it(start_server: StartServer) -> None:
    """A key from before login is not the logged-in key; after logout the old key is anonymous."""
    info = await start_server(auth_app.routing, user_loader=auth_app.load_user)
    async with httpx.AsyncClient() as client:
        first = await _login(client, f"{info.url}/login?user=alice")
        second = await _login(client, f"{info.url}/login?user=alice")
        assert first != second
        cookie = _cookie_header(client)
        await client.post(f"{info.url}/logout")
        assert "sessionid" not in client.cookies
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(ws_url(info.url, "/chat/"), extra_headers=cookie):
            pass
    assert rejected.value.status_code == 403


async def test_login_through_the_asgi_session_middleware(start_server: StartServer) -> None:
    """An ASGI app behind SessionMiddleware logs in; the WebSocket recognises the user."""
    info = await start_server(auth_app.routing, user_loader=auth_app.load_user, http_app=auth_app.asgi_app)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{info.url}/mw-login?user=bob")
        assert response.text == "middleware logged in bob"
        async with open_websocket_url(ws_url(info.url, "/chat/"), extra_headers=_cookie_header(client)) as ws:
            await ws.send_message("via middleware")
            await _expect(ws, "bob: via middleware")


async def test_session_key_in_the_query_on_a_second_listener(start_server: StartServer) -> None:
    """A WebSocket server on another address: ?session_key= carries the HTTP session."""
    info = await start_server(auth_app.routing, user_loader=auth_app.load_user, ws_bind=["127.0.0.1:0"])
    async with httpx.AsyncClient() as client:
        key = await _login(client, f"{info.url}/login?user=albert")
    async with open_websocket_url(f"{info.ws_urls[0]}/chat/?session_key={key}") as ws:
        await ws.send_message("from elsewhere")
        await _expect(ws, "albert: from elsewhere")


@pytest.mark.parametrize("key", ["forged-key-that-was-never-issued", ""])
async def test_forged_session_keys_are_anonymous(start_server: StartServer, key: str) -> None:
    """An unknown session key gets no user: the app denies anonymous users (403)."""
    info = await start_server(auth_app.routing, user_loader=auth_app.load_user)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(ws_url(info.url, f"/chat/?session_key={key}")):
            pass
    assert rejected.value.status_code == 403


async def test_session_store_expiry() -> None:
    """A stored session is gone after its TTL."""
    store = InMemorySessionStore()
    await store.save("k", {"a": 1}, ttl=0.05)
    assert await store.load("k") == {"a": 1}
    await trio.sleep(0.1)
    assert await store.load("k") is None
    key = await store.create({"b": 2}, ttl=60)
    assert len(key) >= 22 and await store.load(key) == {"b": 2}


async def test_redis_session_store(redis_servers: list[RedisServer]) -> None:
    """The Redis store saves, loads, creates unique keys, expires and deletes."""
    from trio_channels.sessions import RedisSessionStore

    async with RedisSessionStore(redis_servers[0].url, prefix="t-sessions") as store:
        key = await store.create({"user": 1, "blob": b"\x00"}, ttl=60)
        assert await store.load(key) == {"user": 1, "blob": b"\x00"}
        await store.save(key, {"user": 2}, ttl=0.05)
        await trio.sleep(0.2)
        assert await store.load(key) is None
        await store.save("k2", {"x": 1}, ttl=60)
        await store.delete("k2")
        assert await store.load("k2") is None


# ----------------------------------------------------------------------------- origins


@pytest.mark.parametrize(
    ("origin", "allowed_hosts", "accepted"),
    [
        (b"http://localhost:8000", None, True),
        (b"http://127.0.0.1", None, True),
        (b"http://evil.example", None, False),
        (None, None, False),
        (b"null", None, False),
        (b"file:///etc/passwd", None, False),
        (b"\xff\xfe", None, False),
        (b"https://chat.example.com", [".example.com"], True),
        (b"https://example.com", [".example.com"], True),
        (b"https://example.com.evil.org", [".example.com"], False),
        (b"http://example.com:8000", ["example.com:8000"], True),
        (b"http://example.com:9000", ["example.com:8000"], False),
        (b"https://anything.test", ["*"], True),
    ],
)
async def test_origin_checks(
    start_server: StartServer, origin: bytes | None, allowed_hosts: Any, accepted: bool
) -> None:
    """allowed_hosts_only: allowed, disallowed, missing, malformed and wildcard origins."""
    info = await start_server(auth_app.routing, allowed_hosts=allowed_hosts or [])
    headers = [(b"origin", origin)] if origin is not None else []
    url = ws_url(info.url, "/origin/")
    if accepted:
        async with open_websocket_url(url, extra_headers=headers) as ws:
            assert ws.closed is None
    else:
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url, extra_headers=headers):
                pass
        assert rejected.value.status_code == 403


async def test_two_servers_in_one_process_keep_their_own_allowed_hosts(start_server: StartServer) -> None:
    """ALLOWED_HOSTS is a context setting of each serve(): a second server does not overwrite the
    first one's (it was a module global)."""
    first = await start_server(auth_app.routing, allowed_hosts=["a.example"])
    second = await start_server(auth_app.routing, allowed_hosts=["b.example"])

    async def status(info: Any, origin: bytes) -> int:
        try:
            async with open_websocket_url(ws_url(info.url, "/origin/"), extra_headers=[(b"origin", origin)]):
                return 101
        except ConnectionRejected as rejected:
            return int(rejected.status_code)

    with trio.fail_after(20):
        assert await status(first, b"http://a.example") == 101
        assert await status(first, b"http://b.example") == 403
        assert await status(second, b"http://b.example") == 101
        assert await status(second, b"http://a.example") == 403


async def test_a_redis_layer_subclass_keeps_sessions_in_redis(
    start_server: StartServer, redis_servers: list[RedisServer]
) -> None:
    """serve() asks the layer where shared sessions go (not its class name): a subclass of the
    Redis layer keeps sessions in Redis under the layer's prefix."""
    from layers.redis import RedisChannelLayer
    from trio_channels.sessions import RedisSessionStore, current_session_store, session_for_reply_channel

    class AppLayer(RedisChannelLayer):
        pass

    seen: list[tuple[Any, str]] = []

    @channel_session
    async def connect(message: Message) -> None:
        message.channel_session["seen"] = True
        seen.append((current_session_store(), message.reply_channel.name))
        await message.reply_channel.send({"accept": True})

    layer = AppLayer(hosts=[redis_servers[0].url], prefix="t-subclass")
    assert InMemoryChannelLayer().shared_store_address() is None
    assert layer.shared_store_address() == (layer.hosts[0], "t-subclass")
    info = await start_server([route("websocket.connect", connect)], layer=layer)
    with trio.fail_after(20):
        async with open_websocket_url(ws_url(info.url, "/")):
            pass
        (store, reply), *_ = seen
        assert isinstance(store, RedisSessionStore)
        async with RedisSessionStore(redis_servers[0].url, prefix="t-subclass:session") as direct:
            assert await direct.load(session_for_reply_channel(reply)) == {"seen": True}


# ----------------------------------------------------------------------------- ordering


async def test_ordering_waits_for_predecessors_and_skips_lost_ones(
    autojump: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Out-of-order messages wait for their predecessor; a lost one delays its connection
    only until the waiting message's expiry, then the gap is skipped with a warning."""
    ran: list[int] = []

    @enforce_ordering
    async def consumer(message: Message) -> None:
        ran.append(message["order"])

    async with InMemoryChannelLayer(expiry=10) as layer, trio.open_nursery() as nursery:
        with use_session_store(InMemorySessionStore()):
            await nursery.start(partial(run_worker, layer, [route("websocket.receive", consumer)]))
        reply = "interface.t!c1"
        for order in (2, 1, 3):  # 2 arrives first and waits for 1
            await layer.send("websocket.receive", {"reply_channel": reply, "order": order, "text": ""})
        await trio.sleep(1)
        assert ran == [1, 2, 3]
        started = trio.current_time()
        for order in (5, 6):  # 4 is lost
            await layer.send("websocket.receive", {"reply_channel": reply, "order": order, "text": ""})
        await trio.sleep(5)
        assert ran == [1, 2, 3]
        await trio.sleep(10)
        assert ran == [1, 2, 3, 5, 6]
        assert trio.current_time() - started >= 9  # it waited (almost) until message 5's expiry
        await layer.send("websocket.receive", {"reply_channel": reply, "order": 4, "text": "late"})
        await trio.sleep(1)
        assert ran == [1, 2, 3, 5, 6]  # too late: it was skipped
        nursery.cancel_scope.cancel()
    assert "skipping the gap and running order 5" in caplog.text


async def test_ordering_needs_an_order_key() -> None:
    """A message without 'order' is a ValueError naming the consumer."""

    @enforce_ordering
    async def needs_order(message: Message) -> None: ...

    layer = InMemoryChannelLayer()
    from trio_channels import Channel

    message = Message({"reply_channel": "interface.t!c"}, Channel("websocket.receive"), layer)
    with pytest.raises(ValueError, match=r"needs_order.*no integer 'order'"):
        await needs_order(message)
    with pytest.raises(ValueError, match="slight"):
        enforce_ordering(slight=True)


@pytest.mark.parametrize("local_worker", [False, True], ids=["interface-alone", "interface-with-workers"])
async def test_ordering_under_stress_with_two_worker_processes(
    redis_server: RedisServer, local_worker: bool
) -> None:
    """50 connections x 200 messages through 2 worker processes on Redis, consumers sleeping
    random short times: every connection's replies come back 1..200, strictly in order. Also
    with workers in the interface's process, which take its messages in process whenever they
    are free (issue 12, locality) while the others take the rest through Redis."""
    layer = ["--layer", redis_server.url]
    routing = "tests.e2e.ordering_app.routing"
    interface = ["run", routing, "--bind", "127.0.0.1:0", *layer, *([] if local_worker else ["--noworker"])]
    async with (
        running(*interface) as (_, url),
        running("worker", routing, *layer, marker="worker listening on"),
        running("worker", routing, *layer, marker="worker listening on"),
    ):
        results: dict[int, list[str]] = {}

        async def client(index: int) -> None:
            async with open_websocket_url(ws_url(url, f"/o/{index}/"), message_queue_size=256) as ws:
                for number in range(200):
                    await ws.send_message(str(number))
                replies = results.setdefault(index, [])
                while len(replies) < 200:
                    replies.append(await ws.get_message())

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(client, index)
        for index, replies in results.items():
            expected = [f"{order}:{order}" for order in range(1, 201)]
            wrong = next(
                (
                    position
                    for position, (got, want) in enumerate(zip(replies, expected, strict=True))
                    if got != want
                ),
                None,
            )
            assert wrong is None, f"client {index}: at {wrong}: {replies[max(0, wrong - 3) : wrong + 3]}"
        assert len(results) == 50


def test_origin_validator_without_validate_origin_fails_at_decoration() -> None:
    """A BaseOriginValidator subclass must implement validate_origin: TypeError when decorating."""
    from trio_channels.security import BaseOriginValidator

    class Incomplete(BaseOriginValidator):
        pass

    async def consumer(message: Message) -> None: ...

    with pytest.raises(TypeError, match="validate_origin"):
        Incomplete(consumer)  # type: ignore[abstract]
