"""Testing your consumers: in-process clients, and helpers for the real thing.

In-process (no sockets, works under ``trio.testing.MockClock``)::

    from trio_channels.testing import WebsocketClient

    async def test_chat():
        client = WebsocketClient(routing)
        await client.connect("/chat/lobby/")
        await client.send_text("hi")
        assert await client.receive_text() == "hi"

Each ``send_*``/``connect``/``request`` sends the message the interface server would send and
consumes it — routes it and runs the consumer, flushing its buffered sends afterwards, like a
worker — so a consumer's exception fails your test. Replies are read from the client's reply
channel. Clients sharing a ``layer`` see each other's group messages.

With real sockets, the pytest plugin installed with trio_channels
(``trio_channels.pytest_plugin``) gives ``channels_live_server`` and ``channel_layer`` fixtures, and
:func:`open_websocket` connects to a server by URL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from interface.frames import websocket_frame
from layers import BaseChannelLayer, InMemoryChannelLayer

from .channel import Channel, Message, use_layer
from .exceptions import ConsumeLater
from .routing import Router
from .sessions import SESSION_COOKIE_NAME, Session, current_session_store
from .worker import run_consumer

__all__ = ["Client", "HttpClient", "TestResponse", "WebsocketClient", "open_websocket"]


class Client:
    """Sends messages for a routing and consumes them in this task.

    *layer* defaults to a fresh in-memory layer (share one between clients to test groups).
    """

    def __init__(
        self, routing: Any, layer: BaseChannelLayer | None = None, *, reply_channel: str | None = None
    ) -> None:
        self.router = routing if isinstance(routing, Router) else Router(routing)
        self.layer = layer or InMemoryChannelLayer(capacity=1000)
        # A prefix of its own, so clients sharing a layer never take each other's replies.
        self.reply_channel = reply_channel or f"test.client.{secrets.token_urlsafe(9)}!c"

    async def send(self, channel: str, content: dict[str, Any] | None = None) -> None:
        """Put a message on *channel* (with this client's reply channel unless it has one)."""
        message = {"reply_channel": self.reply_channel, **(content or {})}
        await self.layer.send(channel, message)

    async def consume(self, channel: str, *, fail_on_none: bool = True) -> bool:
        """Take the next message on *channel*, route it and run its consumer.

        Returns False (or fails, with *fail_on_none*) if nothing was waiting or nothing matched.
        """
        try:
            _, content = await self.layer.receive_nowait([channel])
        except trio.WouldBlock:
            if fail_on_none:
                raise AssertionError(f"no message was waiting on {channel!r}") from None
            return False
        return await self._run(channel, content, fail_on_none)

    async def _run(self, channel: str, content: dict[str, Any], fail_on_none: bool) -> bool:
        message = Message(content, Channel(channel, layer=self.layer), self.layer)
        found = self.router.match(message)
        if found is None:
            if fail_on_none:
                raise AssertionError(f"no route matches the message on {channel!r}: {content!r}")
            return False
        consumer, kwargs = found
        with use_layer(self.layer):
            try:
                await run_consumer(consumer, message, kwargs)
            except ConsumeLater:
                content["__retries__"] = content.get("__retries__", 0) + 1
                await self.layer.send(channel, content)
        return True

    async def send_and_consume(self, channel: str, content: dict[str, Any] | None = None) -> None:
        await self.send(channel, content)
        await self.consume(channel)

    async def receive(self) -> dict[str, Any] | None:
        """The next message sent to this client's reply channel, or ``None`` if none is waiting.

        Consumers run to the end (buffered sends flushed) before a client call returns, so
        what is not waiting now was not sent.
        """
        try:
            _, message = await self.layer.receive_nowait([self.reply_channel.split("!")[0] + "!"])
        except trio.WouldBlock:
            return None
        return message

    async def assert_nothing_pending(self) -> None:
        """Fail if a reply is waiting for this client."""
        message = await self.receive()
        if message is not None:
            raise AssertionError(f"expected no reply, got {message!r}")

    async def join_group(self, name: str) -> None:
        await self.layer.group_add(name, self.reply_channel)


@attrs.frozen
class TestResponse:
    """What :class:`HttpClient` got back."""

    __test__ = False  # not a pytest test class

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class _Cookies:
    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def set_cookie(self, name: str, value: str) -> None:
        self.cookies[name] = value

    def _cookie_headers(self) -> list[list[bytes]]:
        if not self.cookies:
            return []
        header = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return [[b"cookie", header.encode("latin-1")]]

    async def login(self, user: Any) -> Session:
        """Log *user* in on a new HTTP session in the current store; the cookie is set here."""
        from .auth import login

        session = Session(current_session_store())
        await login(session, user)
        self.set_cookie(SESSION_COOKIE_NAME, session.session_key or "")
        return session


class HttpClient(Client, _Cookies):
    """HTTP requests through the routing: ``await client.get("/path")``."""

    def __init__(self, routing: Any, layer: BaseChannelLayer | None = None) -> None:
        Client.__init__(self, routing, layer)
        _Cookies.__init__(self)

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
    ) -> TestResponse:
        raw_path, _, query = path.partition("?")
        header_list = [[name.lower().encode("latin-1"), value.encode("latin-1")] for name, value in headers]
        await self.send_and_consume(
            "http.request",
            {
                "http_version": "1.1",
                "method": method.upper(),
                "scheme": "http",
                "path": raw_path,
                "query_string": query.encode("latin-1"),
                "root_path": "",
                "headers": [*header_list, *self._cookie_headers()],
                "body": body,
                "body_channel": None,
                "client": ["127.0.0.1", 12345],
                "server": ["127.0.0.1", 80],
            },
        )
        first = await self.receive()
        if first is None:
            raise AssertionError(f"no response to {method} {path}")
        parts, status, response_headers = (
            [first.get("content", b"")],
            first["status"],
            first.get("headers", []),
        )
        more = first.get("more_content", False)
        while more:
            part = await self.receive()
            if part is None:
                raise AssertionError(f"the response to {method} {path} stopped before its end")
            parts.append(part.get("content", b""))
            more = part.get("more_content", False)
        pairs = [(bytes(name), bytes(value)) for name, value in response_headers]
        for name, value in pairs:
            if name.lower() == b"set-cookie":
                cookie = value.decode("latin-1").split(";")[0]
                key, _, val = cookie.partition("=")
                if val:
                    self.cookies[key.strip()] = val.strip()
                else:
                    self.cookies.pop(key.strip(), None)
        return TestResponse(status, pairs, b"".join(parts))

    async def get(self, path: str, **options: Any) -> TestResponse:
        return await self.request("GET", path, **options)

    async def post(self, path: str, body: bytes = b"", **options: Any) -> TestResponse:
        return await self.request("POST", path, body=body, **options)


class WebsocketClient(Client, _Cookies):
    """A WebSocket through the routing: ``connect``, ``send_text``/``send_json``, ``receive_*``."""

    def __init__(self, routing: Any, layer: BaseChannelLayer | None = None) -> None:
        Client.__init__(self, routing, layer)
        _Cookies.__init__(self)
        self.order = 0
        self.path = "/"

    async def connect(
        self, path: str = "/", *, headers: Iterable[tuple[str, str]] = (), check_accept: bool = True
    ) -> dict[str, Any] | None:
        """Send ``websocket.connect`` and consume it; with *check_accept*, fail unless accepted.

        Returns the first reply (``{"accept": True}``, ``{"close": True}``, a frame...).
        """
        raw_path, _, query = path.partition("?")
        self.path = raw_path
        self.order = 0
        header_list = [[name.lower().encode("latin-1"), value.encode("latin-1")] for name, value in headers]
        await self.send_and_consume(
            "websocket.connect",
            {
                "scheme": "ws",
                "path": raw_path,
                "query_string": query.encode("latin-1"),
                "root_path": "",
                "headers": [*header_list, *self._cookie_headers()],
                "client": ["127.0.0.1", 12345],
                "server": ["127.0.0.1", 80],
                "subprotocols": [],
                "order": 0,
            },
        )
        reply = await self.receive()
        if check_accept and (
            reply is None
            or not (reply.get("accept") or reply.get("text") is not None or reply.get("bytes") is not None)
        ):
            raise AssertionError(f"the connection to {path} was not accepted: {reply!r}")
        return reply

    async def _frame(self, key: str, value: Any) -> None:
        self.order += 1
        await self.send_and_consume("websocket.receive", {"path": self.path, "order": self.order, key: value})

    async def receive(self) -> dict[str, Any] | None:
        """The next reply, as the interface server would put it on the wire: a group message's
        history position is in its demultiplexer frame, a presence event is a JSON text frame
        (``interface.frames.websocket_frame``)."""
        message = await super().receive()
        return None if message is None else websocket_frame(message)

    async def send_text(self, text: str) -> None:
        await self._frame("text", text)

    async def send_bytes(self, data: bytes) -> None:
        await self._frame("bytes", data)

    async def send_json(self, content: Any) -> None:
        await self._frame("text", json.dumps(content))

    async def receive_text(self) -> str:
        reply = await self.receive()
        if reply is None or reply.get("text") is None:
            raise AssertionError(f"expected a text frame, got {reply!r}")
        return str(reply["text"])

    async def receive_json(self) -> Any:
        return json.loads(await self.receive_text())

    async def disconnect(self, code: int = 1000) -> None:
        await self.send_and_consume(
            "websocket.disconnect", {"path": self.path, "code": code, "order": self.order + 1}
        )


@asynccontextmanager
async def open_websocket(
    url: str, path: str = "", *, headers: Iterable[tuple[bytes, bytes]] = (), **options: Any
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A real WebSocket client to *url* (``http://`` or ``ws://``; e.g. ``channels_live_server.url``) + *path*."""
    target = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/") + path
    async with trio_websocket.open_websocket_url(
        target, extra_headers=list(headers), **options
    ) as connection:
        yield connection
