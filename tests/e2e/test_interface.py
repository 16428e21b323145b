"""The interface end to end: real sockets, real HTTP and WebSocket clients, the in-memory layer."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from interface import InterfaceConfig
from layers import InMemoryChannelLayer
from trio_channels import Channel, Message, route
from trio_channels.http import Request, Response, send_response

from .conftest import StartServer, ws_url


class Seen(list[tuple[str, dict[str, Any]]]):
    """Recorded (channel, message) pairs, with a way to wait for more."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def add(self, channel: str, message: dict[str, Any]) -> None:
        self.append((channel, message))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, timeout: float = 5) -> None:
        with trio.fail_after(timeout):
            while len(self) < count:
                await self._changed.wait()


def recorder(channels: list[str], replies: dict[str, Any] | None = None) -> tuple[Seen, list[Any]]:
    """Consumers recording every message on *channels*; websocket.connect replies with *replies*."""
    seen = Seen()

    async def record(message: Message) -> None:
        seen.add(message.channel.name, dict(message.content))
        if message.channel.name == "websocket.connect":
            await message.reply_channel.send(replies or {"accept": True})

    return seen, [route(channel, record) for channel in channels]


# ----------------------------------------------------------------------------- HTTP


async def test_http_request_keys(start_server: StartServer) -> None:
    """http.request carries every key, decoded path, raw query, lowercase headers with duplicates."""
    seen: list[dict[str, Any]] = []

    async def consumer(message: Message) -> None:
        seen.append(dict(message.content))
        await send_response(message, Response("ok", content_type="text/plain"))

    info = await start_server([route("http.request", consumer)])
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.post(
                info.url + "/caf%C3%A9/a+b?x=1&y=%20",
                content=b"payload",
                headers=[("X-Dup", "one"), ("X-Dup", "two"), ("X_Sneaky", "dropped")],
            )
    assert response.status_code == 200 and response.text == "ok"
    (message,) = seen
    assert message["reply_channel"].startswith("interface.") and "!" in message["reply_channel"]
    assert message["http_version"] == "1.1"
    assert message["method"] == "POST"
    assert message["scheme"] == "http"
    assert message["path"] == "/café/a+b"
    assert message["query_string"] == b"x=1&y=%20"
    assert message["root_path"] == ""
    assert message["body"] == b"payload" and message["body_channel"] is None
    assert [b"x-dup", b"one"] in message["headers"] and [b"x-dup", b"two"] in message["headers"]
    assert not any(name == b"x_sneaky" for name, _ in message["headers"])
    assert message["client"][0] == "127.0.0.1" and message["server"][0] == "127.0.0.1"


async def test_streaming_response(start_server: StartServer) -> None:
    """Response chunks with more_content stream to the client in order."""

    async def consumer(message: Message) -> None:
        reply = message.reply_channel
        await reply.send(
            {"status": 200, "headers": [[b"content-type", b"text/plain"]], "more_content": True},
            immediately=True,
        )
        for index in range(5):
            await reply.send({"content": f"part{index};".encode(), "more_content": True}, immediately=True)
            await trio.sleep(0.01)
        await reply.send({"content": b"end", "more_content": False}, immediately=True)

    info = await start_server([route("http.request", consumer)])
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.get(info.url + "/stream")
    assert response.text == "part0;part1;part2;part3;part4;end"
    assert response.headers["transfer-encoding"] == "chunked"


async def test_large_request_body_streams_through_a_body_channel(start_server: StartServer) -> None:
    """A 3 MiB body arrives in 512 KiB chunks through body_channel; Request reassembles it."""
    seen: list[dict[str, Any]] = []

    async def consumer(message: Message) -> None:
        seen.append({"body_channel": message["body_channel"], "first": len(message["body"])})
        request = await Request.from_message(message)
        await send_response(message, Response(f"{len(request.body)} {request.body[-4:].decode()}"))

    info = await start_server([route("http.request", consumer)])
    body = b"x" * (3 * 1024 * 1024 - 4) + b"tail"
    async with httpx.AsyncClient() as client:
        with trio.fail_after(20):
            response = await client.post(info.url + "/upload", content=body)
    assert response.text == f"{len(body)} tail"
    assert seen[0]["body_channel"].startswith("http.request.body?")
    assert seen[0]["first"] == 512 * 1024


async def test_request_body_limit(start_server: StartServer) -> None:
    """A body over max_body_size is refused with 413 before reaching the layer."""
    seen, routing = recorder(["http.request"])
    info = await start_server(routing, interface_config=InterfaceConfig(max_body_size=1000))
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.post(info.url + "/", content=b"x" * 5000)
    assert response.status_code == 413
    assert seen == []


async def test_http_timeout_is_503(start_server: StartServer) -> None:
    """No response within http_timeout: 503 with Daphne's text."""

    async def silent(message: Message) -> None:
        pass

    info = await start_server(
        [route("http.request", silent)], interface_config=InterfaceConfig(http_timeout=0.3)
    )
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            response = await client.get(info.url + "/")
    assert response.status_code == 503
    assert "failed to respond within time limit" in response.text


async def test_full_request_queue_is_503(start_server: StartServer) -> None:
    """ChannelFull on http.request answers 503 at once."""
    release = trio.Event()

    async def slow(message: Message) -> None:
        await release.wait()
        await send_response(message, Response("late"))

    layer = InMemoryChannelLayer(channel_capacity={"http.request": 1})
    info = await start_server([route("http.request", slow)], layer=layer, concurrency=1)
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        statuses: list[int] = []

        async def get() -> None:
            statuses.append((await client.get(info.url + "/")).status_code)

        nursery.start_soon(get)  # taken by the only worker slot
        await trio.sleep(0.2)
        nursery.start_soon(get)  # waits in the queue (capacity 1)
        await trio.sleep(0.2)
        with trio.fail_after(10):
            refused = await client.get(info.url + "/")
        assert refused.status_code == 503 and "Request queue full" in refused.text
        release.set()
    assert statuses == [200, 200]


@pytest.mark.parametrize(
    ("allow", "client", "scheme"),
    [
        # The default trusts 127.0.0.1 (the test's own address): the rightmost untrusted entry wins.
        ("127.0.0.1", ["10.0.0.1", 4433], "https"),
        ("127.0.0.1, 10.0.0.0/8", ["203.0.113.9", 4433], "https"),
        ("*", ["203.0.113.9", 4433], "https"),
        # The peer is not a trusted proxy: the headers are the client's own claims, ignored.
        ("10.0.0.1", None, "http"),
    ],
)
async def test_proxy_headers(
    start_server: StartServer, allow: str, client: list[Any] | None, scheme: str
) -> None:
    """With proxy_headers, X-Forwarded-For/-Port/-Proto set client and scheme, but only when
    the peer is in forwarded_allow_ips; the client is the rightmost untrusted X-Forwarded-For
    entry (the leftmost is whatever the client wrote)."""
    seen: list[dict[str, Any]] = []

    async def consumer(message: Message) -> None:
        seen.append(dict(message.content))
        await send_response(message, Response(""))

    config = InterfaceConfig(proxy_headers=True, forwarded_allow_ips=allow)
    info = await start_server([route("http.request", consumer)], interface_config=config)
    async with httpx.AsyncClient() as http:
        await http.get(
            info.url + "/",
            headers={
                "X-Forwarded-For": "203.0.113.9, 10.0.0.1",
                "X-Forwarded-Port": "4433",
                "X-Forwarded-Proto": "https",
            },
        )
    assert seen[0]["client"] == client or (client is None and seen[0]["client"][0] == "127.0.0.1")
    assert seen[0]["scheme"] == scheme


async def test_http_disconnect_after_every_request(start_server: StartServer) -> None:
    """http.disconnect with reply_channel and path follows each request (Daphne's behaviour)."""
    seen, routing = recorder(["http.disconnect"])

    async def consumer(message: Message) -> None:
        await send_response(message, Response("x"))

    info = await start_server([route("http.request", consumer), *routing])
    async with httpx.AsyncClient() as client:
        await client.get(info.url + "/first")
    await seen.wait_for(1)
    channel, message = seen[0]
    assert channel == "http.disconnect" and message["path"] == "/first"
    assert message["reply_channel"].startswith("interface.")


# ----------------------------------------------------------------------------- WebSocket


ACCEPT_TABLE = [
    ({"accept": True}, "open", None),
    ({"accept": False}, 403, None),
    ({"accept": False, "text": "ignored"}, 403, None),
    ({"text": "implicit"}, "open", "implicit"),
    ({"bytes": b"\x00implicit"}, "open", b"\x00implicit"),
    ({"close": True}, 403, None),
    ({"close": 4001}, 403, None),
    ({"text": "bye", "close": 4001}, 4001, "bye"),
    ({"accept": True, "text": "hello"}, "open", "hello"),
]


@pytest.mark.parametrize(("reply", "outcome", "first"), ACCEPT_TABLE)
async def test_handshake_accept_table(
    start_server: StartServer, reply: dict[str, Any], outcome: Any, first: Any
) -> None:
    """Each handshaking row of reference §3.7: accept, reject (403), implicit accept, close."""
    _, routing = recorder(["websocket.connect"], replies=reply)
    info = await start_server(routing)
    with trio.fail_after(10):
        if outcome == 403:
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(ws_url(info.url, "/ws/")):
                    pass
            assert rejected.value.status_code == 403
            return
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            if first is not None:
                assert await ws.get_message() == first
            if outcome == "open":
                await ws.send_message("still open")
                assert ws.closed is None
            else:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == outcome


async def test_open_socket_replies(start_server: StartServer) -> None:
    """Open: text and bytes frames go out; close with a code closes with that code; bad replies are dropped."""

    async def receive(message: Message) -> None:
        reply = message.reply_channel
        command = message.get("text")
        if command == "text":
            await reply.send({"text": "t"})
        elif command == "bytes":
            await reply.send({"bytes": b"b"})
        elif command == "bad":
            await reply.send({"text": "x", "bytes": b"y"})  # both: ignored, logged
            await reply.send({"text": "after bad"})
        elif command == "close":
            await reply.send({"text": "last", "close": 4005, "accept": False})

    info = await start_server([route("websocket.receive", receive)])
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            for command, expected in (("text", "t"), ("bytes", b"b"), ("bad", "after bad")):
                await ws.send_message(command)
                assert await ws.get_message() == expected
            await ws.send_message("close")
            assert await ws.get_message() == "last"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 4005


async def test_connect_timeout_is_403(start_server: StartServer) -> None:
    """A connect consumer that never answers: 403 after websocket_connect_timeout."""

    async def silent(message: Message) -> None:
        pass

    info = await start_server(
        [route("websocket.connect", silent)], interface_config=InterfaceConfig(websocket_connect_timeout=0.3)
    )
    with trio.fail_after(10), pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(ws_url(info.url, "/ws/")):
            pass
    assert rejected.value.status_code == 403


async def test_full_connect_queue_is_503(start_server: StartServer) -> None:
    """ChannelFull on websocket.connect denies the handshake with 503."""
    release = trio.Event()

    async def slow(message: Message) -> None:
        await release.wait()
        await message.reply_channel.send({"accept": True})

    layer = InMemoryChannelLayer(channel_capacity={"websocket.connect": 1})
    info = await start_server([route("websocket.connect", slow)], layer=layer, concurrency=1)
    async with trio.open_nursery() as nursery:

        async def connect() -> None:
            async with open_websocket_url(ws_url(info.url, "/ws/")):
                pass

        nursery.start_soon(connect)
        await trio.sleep(0.2)
        nursery.start_soon(connect)
        await trio.sleep(0.2)
        with trio.fail_after(10), pytest.raises(ConnectionRejected) as rejected:
            await connect()
        assert rejected.value.status_code == 503
        release.set()


async def test_full_receive_queue_closes_1013(start_server: StartServer) -> None:
    """A websocket.receive that stays full past receive_full_timeout closes the socket with 1013."""
    release = trio.Event()

    async def slow(message: Message) -> None:
        await release.wait()

    layer = InMemoryChannelLayer(channel_capacity={"websocket.receive": 1})
    config = InterfaceConfig(receive_full_timeout=0.2)
    info = await start_server(
        [route("websocket.receive", slow)], layer=layer, concurrency=1, interface_config=config
    )
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            for index in range(3):
                await ws.send_message(f"m{index}")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1013
    release.set()


async def test_message_too_big_closes_1009(start_server: StartServer) -> None:
    """A WebSocket message over the size limit closes the connection with 1009."""
    _, routing = recorder([])
    info = await start_server(routing, interface_config=InterfaceConfig(websocket_max_message_size=1000))
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            await ws.send_message("x" * 2000)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1009


async def _client_script(url: str) -> None:
    async with open_websocket_url(url + "/room/?q=1", extra_headers=[(b"x-test", b"1")]) as ws:
        await ws.send_message("one")
        await ws.send_message(b"\x00two")
        await ws.get_message()  # the reply to "one" makes the order deterministic
        await ws.aclose(code=4002, reason="done")


def _normalise(stream: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    result = []
    for channel, message in stream:
        message = {
            key: value for key, value in message.items() if key not in ("reply_channel", "client", "server")
        }
        if "headers" in message:
            message["headers"] = sorted(
                [name, value]
                for name, value in message["headers"]
                if name not in (b"host", b"sec-websocket-key")
            )
        result.append((channel, message))
    return result


async def test_both_listeners_emit_identical_streams(start_server: StartServer) -> None:
    """The main port and a --ws-bind listener produce the same messages, real close code included."""
    seen: list[tuple[str, dict[str, Any]]] = []
    done = trio.Event()

    async def record(message: Message) -> None:
        seen.append((message.channel.name, dict(message.content)))
        if message.channel.name == "websocket.connect":
            await message.reply_channel.send({"accept": True})
        elif message.get("text") == "one":
            await message.reply_channel.send({"text": "ack"})
        elif message.channel.name == "websocket.disconnect":
            done.set()

    routing = [route(["websocket.connect", "websocket.receive", "websocket.disconnect"], record)]
    info = await start_server(routing, ws_bind=["127.0.0.1:0"])
    streams = []
    for base in (ws_url(info.url, ""), info.ws_urls[0]):
        seen.clear()
        done = trio.Event()
        with trio.fail_after(10):
            await _client_script(base)
            await done.wait()
        streams.append(_normalise(sorted(seen, key=lambda item: item[1]["order"])))
    main, ws_only = streams
    assert main == ws_only
    assert [channel for channel, _ in main] == [
        "websocket.connect",
        "websocket.receive",
        "websocket.receive",
        "websocket.disconnect",
    ]
    assert (
        main[0][1]["path"] == "/room/" and main[0][1]["query_string"] == b"q=1" and main[0][1]["order"] == 0
    )
    assert [b"x-test", b"1"] in main[0][1]["headers"]
    assert main[1][1] == {"path": "/room/", "order": 1, "text": "one"}
    assert main[2][1] == {"path": "/room/", "order": 2, "bytes": b"\x00two"}
    assert main[3][1] == {"path": "/room/", "order": 3, "code": 4002}


async def test_a_standard_close_code_reaches_the_application(start_server: StartServer) -> None:
    """Regression: a client closing with a standard code (1000, which trio-websocket reports
    as an enum) gets its websocket.disconnect, with the code as a plain int, on both listeners
    (the enum failed message validation and the disconnect was dropped, logged at DEBUG)."""
    seen, routing = recorder(["websocket.disconnect"], replies={"accept": True})
    info = await start_server(routing, ws_bind=["127.0.0.1:0"])
    for url in (ws_url(info.url, "/a/"), info.ws_urls[0] + "/b/"):
        async with open_websocket_url(url) as ws:
            await ws.aclose(1000)
    await seen.wait_for(2)
    codes = [message["code"] for _, message in seen]
    assert codes == [1000, 1000] and all(type(code) is int for code in codes)


async def test_ws_only_listener_refuses_plain_http(start_server: StartServer) -> None:
    """A WebSocket-only listener answers plain HTTP with 426."""
    _, routing = recorder([])
    info = await start_server(routing, ws_bind=["127.0.0.1:0"])
    async with httpx.AsyncClient() as client:
        response = await client.get(info.ws_urls[0].replace("ws://", "http://") + "/")
    assert response.status_code == 426


async def test_graceful_shutdown_closes_websockets_with_1001(start_server: StartServer) -> None:
    """On shutdown, open WebSockets on both listeners are closed with 1001 (going away)."""
    seen, routing = recorder(["websocket.disconnect"])
    info = await start_server(routing, ws_bind=["127.0.0.1:0"])
    codes: list[int] = []

    async def client(url: str, connected: trio.Event) -> None:
        async with open_websocket_url(url) as ws:
            connected.set()
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                codes.append(closed.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for url in (ws_url(info.url, "/a/"), info.ws_urls[0] + "/b/"):
                connected = trio.Event()
                nursery.start_soon(client, url, connected)
                await connected.wait()
            info.shutdown.set()
        await seen.wait_for(2)
    assert codes == [1001, 1001]
    assert sorted(message["code"] for _, message in seen) == [1001, 1001]


async def test_websocket_lifetime(start_server: StartServer) -> None:
    """A WebSocket older than websocket_timeout is closed with 1000."""
    _, routing = recorder([])
    info = await start_server(routing, interface_config=InterfaceConfig(websocket_timeout=0.3))
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert closed.value.reason.code == 1000


async def test_subprotocol_negotiation(start_server: StartServer) -> None:
    """The first client-offered subprotocol the server accepts is chosen."""
    _, routing = recorder([])
    info = await start_server(routing, interface_config=InterfaceConfig(ws_protocols=("chat.v2", "chat.v1")))
    with trio.fail_after(10):
        async with open_websocket_url(
            ws_url(info.url, "/ws/"), subprotocols=["x", "chat.v1", "chat.v2"]
        ) as ws:
            assert ws.subprotocol == "chat.v1"


async def test_disconnect_is_sent_when_rejected(start_server: StartServer) -> None:
    """A rejected handshake still produces websocket.disconnect (Daphne's behaviour)."""
    seen, routing = recorder(["websocket.connect", "websocket.disconnect"], replies={"accept": False})
    info = await start_server(routing)
    with trio.fail_after(10), pytest.raises(ConnectionRejected):
        async with open_websocket_url(ws_url(info.url, "/ws/")):
            pass
    await seen.wait_for(2)
    disconnects = [message for channel, message in seen if channel == "websocket.disconnect"]
    assert disconnects[0]["order"] == 1


async def test_hypercorn_upgrade_with_trailing_data_does_not_crash(start_server: StartServer) -> None:
    """Regression (hypercorn#225): bytes after an upgrade request do not take the server down."""
    _, routing = recorder([])
    info = await start_server(routing)
    host, port = info.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\ngarbage\x00\x01"
    )
    await stream.aclose()
    await trio.sleep(0.2)
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            await ws.send_message("alive")


async def test_asgi_app_lifespan() -> None:
    """The ASGI bridge answers lifespan startup and shutdown completely."""
    from interface import InterfaceApp, InterfaceServer

    app = InterfaceApp(InterfaceServer(InMemoryChannelLayer()))
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


async def test_unix_socket_bind(start_server: StartServer, tmp_path: Any) -> None:
    """bind='unix:PATH' serves HTTP over a Unix socket."""

    async def consumer(message: Message) -> None:
        await send_response(message, Response("over unix"))

    path = tmp_path / "s.sock"
    info = await start_server([route("http.request", consumer)], bind=[f"unix:{path}"])
    assert info.urls == [f"http://unix:{path}"]
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport) as client:
        with trio.fail_after(10):
            response = await client.get("http://localhost/")
    assert response.text == "over unix"


_ = (Channel, trio_websocket)


async def test_http_app_fallback_end_to_end(start_server: StartServer) -> None:
    """Un-routed HTTP goes to the ASGI-3 app given as http_app, through the whole stack."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        text = f"{scope['method']} {scope['path']} {scope['query_string'].decode()} {body.decode()}".encode()
        await send(
            {"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": text})

    async def routed(message: Message) -> None:
        await send_response(message, Response("routed"))

    info = await start_server([route("http.request", routed, path=r"^/mine$")], http_app=app)
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            fallback = await client.post(info.url + "/other?x=1", content=b"data")
            mine = await client.get(info.url + "/mine")
    assert (fallback.status_code, fallback.text) == (202, "POST /other x=1 data")
    assert mine.text == "routed"


async def test_access_log_lines(start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    """The access log has Common Log Format lines for HTTP and WebSocket events."""
    import logging

    caplog.set_level(logging.INFO, logger="interface.access")

    async def consumer(message: Message) -> None:
        await send_response(message, Response("12345"))

    info = await start_server([route("http.request", consumer)])
    async with httpx.AsyncClient() as client:
        await client.get(info.url + "/logged")
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")) as ws:
            await ws.send_message("x")
    await trio.sleep(0.1)
    lines = [record.getMessage() for record in caplog.records if record.name == "interface.access"]
    assert any(
        re.match(r"127\.0\.0\.1:\d+ - - \[", line) and line.endswith('"GET /logged HTTP/1.1" 200 5')
        for line in lines
    ), lines
    for event in ("WSCONNECTING /ws/", "WSCONNECT /ws/", "WSDISCONNECT /ws/"):
        assert any(f'"{event}"' in line for line in lines), (event, lines)


async def test_root_path(start_server: StartServer) -> None:
    """The configured root_path reaches http.request and websocket.connect messages."""
    seen, routing = recorder(["http.request", "websocket.connect"])
    info = await start_server(routing, interface_config=InterfaceConfig(root_path="/app", http_timeout=0.2))
    async with httpx.AsyncClient() as client:
        await client.get(info.url + "/x")
    with trio.fail_after(10):
        async with open_websocket_url(ws_url(info.url, "/ws/")):
            pass
    await seen.wait_for(2)
    assert {channel: message["root_path"] for channel, message in seen} == {
        "http.request": "/app",
        "websocket.connect": "/app",
    }


async def test_handler_error_closes_only_that_connection_with_1011(nursery: trio.Nursery) -> None:
    """A bug while serving one WebSocket closes it with 1011; the listener serves the next one."""
    from functools import partial

    from interface import InterfaceServer, serve_websocket_listener
    from interface.core import ConnectionInfo, WebSocketTransport

    class FaultyServer(InterfaceServer):
        """Fault injection: fails after accepting connections to /boom/."""

        async def websocket(self, info: ConnectionInfo, transport: WebSocketTransport) -> None:
            if info.path == "/boom/":
                await transport.accept(None)
                raise RuntimeError("a bug in the interface")
            await super().websocket(info, transport)

    layer = InMemoryChannelLayer()
    server = FaultyServer(layer)
    nursery.start_soon(server.run_reply_poller)
    urls = await nursery.start(partial(serve_websocket_listener, server, ["127.0.0.1:0"]))

    async def accept_all() -> None:
        while True:
            _, message = await layer.receive(["websocket.connect"])
            await layer.send(message["reply_channel"], {"accept": True})

    nursery.start_soon(accept_all)
    with trio.fail_after(10):
        async with open_websocket_url(urls[0] + "/boom/") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1011
        async with open_websocket_url(urls[0] + "/fine/") as ws:
            assert ws.closed is None
