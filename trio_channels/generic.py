"""Class-based consumers, routed with ``route_class(Cls, **filters)`` or ``Cls.as_route(...)``.

An instance is made for each message with ``(message, **kwargs)`` and its async
:meth:`BaseConsumer.dispatch` runs the method that ``method_mapping`` names for the message's
channel, wrapped in the session/auth/ordering decorators the class flags ask for.

Also here: the server side of the browser client's requests (:func:`reply_to`,
:meth:`WebsocketMultiplexer.reply`) and of its recovery (:func:`join_stream`,
:func:`recover_positions`).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from interface.messages import WebSocketReply
from layers.groups import CannotRecover, GroupHistory, GroupSendReport

from .auth import (
    channel_and_http_session_user_from_http,
    channel_session_user,
    channel_session_user_from_http,
)
from .channel import Channel, Group, Message
from .http import Request, Response
from .ordering import enforce_ordering
from .routing import RouteClass
from .sessions import channel_session

__all__ = [
    "REQUEST_KEY",
    "AsyncHttpConsumer",
    "BaseConsumer",
    "BaseWebsocketConsumer",
    "JsonWebsocketConsumer",
    "SendNotAvailableOnDemultiplexer",
    "WebsocketConsumer",
    "WebsocketDemultiplexer",
    "WebsocketMultiplexer",
    "join_stream",
    "recover_positions",
    "reply_to",
    "request_id",
]

log = logging.getLogger("trio_channels.generic")


class BaseConsumer:
    """The base of class-based consumers.

    ``method_mapping`` maps channel names to method names; ``channel_session`` and
    ``channel_session_user`` wrap every handler in the decorators of those names.
    """

    method_mapping: ClassVar[dict[str, str]] = {}
    channel_session: ClassVar[bool] = False
    channel_session_user: ClassVar[bool] = False

    def __init__(self, message: Message, **kwargs: Any) -> None:
        self.message = message
        self.kwargs = kwargs

    @classmethod
    def channel_names(cls) -> set[str]:
        """The channels this class consumes: the keys of ``method_mapping``."""
        return set(cls.method_mapping)

    @classmethod
    def as_route(cls, attrs: dict[str, Any] | None = None, **filters: Any) -> RouteClass:
        """``route_class(cls, **filters)``; *attrs* makes a subclass with those class attributes."""
        consumer: type[BaseConsumer] = type(cls.__name__, (cls,), dict(attrs)) if attrs else cls
        return RouteClass(consumer, **filters)

    def get_handler(self, message: Message, **kwargs: Any) -> Any:
        """The bound method for the message's channel, wrapped as the class flags say."""
        name = self.method_mapping.get(message.channel.name)
        if name is None:
            raise ValueError(f"{type(self).__name__} has no method for channel {message.channel.name!r}")
        handler = getattr(self, name)
        if self.channel_session_user:
            return channel_session_user(handler)
        if self.channel_session:
            return channel_session(handler)
        return handler

    async def dispatch(self) -> None:
        """Run the handler for this instance's message."""
        await self.get_handler(self.message, **self.kwargs)(self.message, **self.kwargs)


class BaseWebsocketConsumer(BaseConsumer):
    """What both WebSocket consumers share: ``connect``, ``disconnect``, ``close``, groups and
    flags. Subclass :class:`WebsocketConsumer` (frames as text/bytes) or
    :class:`JsonWebsocketConsumer` (frames as JSON), which add ``receive``/``send``.

    Class flags: ``http_user`` (``message.user`` from the HTTP session, kept in the channel
    session), ``http_user_and_session`` (also ``message.http_session``), ``channel_session``,
    ``strict_ordering`` (``enforce_ordering``). ``connection_groups(**kwargs)`` (default: the
    ``groups`` attribute) are joined on connect and left on disconnect.
    """

    method_mapping: ClassVar[dict[str, str]] = {
        "websocket.connect": "raw_connect",
        "websocket.receive": "raw_receive",
        "websocket.disconnect": "raw_disconnect",
    }
    http_user: ClassVar[bool] = False
    http_user_and_session: ClassVar[bool] = False
    strict_ordering: ClassVar[bool] = False
    groups: ClassVar[list[str] | None] = None

    def __init__(self, message: Message, **kwargs: Any) -> None:
        if getattr(type(self), "slight_ordering", False):
            raise ValueError("slight_ordering was removed in Channels 1.0; use strict_ordering")
        super().__init__(message, **kwargs)
        self.path = message.get("path", "")
        self.multiplexer: WebsocketMultiplexer | None = kwargs.get("multiplexer")

    def get_handler(self, message: Message, **kwargs: Any) -> Any:
        handler = super().get_handler(message, **kwargs)
        if self.http_user_and_session:
            handler = channel_and_http_session_user_from_http(handler)
        elif self.http_user:
            handler = channel_session_user_from_http(handler)
        if self.strict_ordering:
            handler = enforce_ordering(handler)
        return handler

    def connection_groups(self, **kwargs: Any) -> list[str]:
        """The groups this connection belongs to (override to compute them from kwargs)."""
        return list(self.groups or [])

    async def raw_connect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            await Group(group, layer=message.channel_layer).add(message.reply_channel)
        await self.connect(message, **kwargs)

    async def connect(self, message: Message, **kwargs: Any) -> None:
        """Called on ``websocket.connect``; the default accepts the connection (under a
        demultiplexer, which has accepted it already, it does nothing)."""
        if self.multiplexer is None:
            await message.reply_channel.send({"accept": True})

    async def raw_receive(self, message: Message, **kwargs: Any) -> None:
        """Decode one ``websocket.receive`` and call ``receive`` (each subclass decodes its way)."""
        raise NotImplementedError(
            f"{type(self).__name__}: subclass WebsocketConsumer or JsonWebsocketConsumer, not BaseWebsocketConsumer"
        )

    async def raw_disconnect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            await Group(group, layer=message.channel_layer).discard(message.reply_channel)
        await self.disconnect(message, **kwargs)

    async def disconnect(self, message: Message, **kwargs: Any) -> None:
        """Called on ``websocket.disconnect``; override it."""

    async def close(self, code: bool | int = True) -> None:
        """Close the connection (``True`` for code 1000)."""
        await self.message.reply_channel.send({"close": code})

    @staticmethod
    def _frame(text: str | None, data: bytes | None, close: bool | int) -> WebSocketReply:
        frame: WebSocketReply
        if text is not None:
            frame = {"text": text}
        elif data is not None:
            frame = {"bytes": data}
        else:
            raise ValueError("send() needs text or bytes")
        if close:
            frame["close"] = close
        return frame


class WebsocketConsumer(BaseWebsocketConsumer):
    """A WebSocket connection's three events as ``connect``, ``receive`` and ``disconnect``,
    its frames as ``text`` or ``bytes``; see :class:`BaseWebsocketConsumer` for the flags."""

    async def raw_receive(self, message: Message, **kwargs: Any) -> None:
        if message.get("text") is not None:
            await self.receive(text=message["text"], **kwargs)
        else:
            await self.receive(bytes=message.get("bytes"), **kwargs)

    async def receive(self, text: str | None = None, bytes: bytes | None = None, **kwargs: Any) -> None:
        """Called for each message from the client; override it."""

    async def send(
        self, text: str | None = None, bytes: bytes | None = None, close: bool | int = False
    ) -> None:
        """Send a text or binary frame to this connection (and close it, if *close*)."""
        await self.message.reply_channel.send(self._frame(text, bytes, close))

    @classmethod
    async def group_send(
        cls,
        name: str,
        text: str | None = None,
        bytes: bytes | None = None,
        close: bool | int = False,
        *,
        exclude: Channel | str | None = None,
    ) -> GroupSendReport | None:
        """Send a frame to every connection in group *name* (but *exclude*, e.g. the sender)."""
        return await Group(name).send(cls._frame(text, bytes, close), exclude=exclude)


class JsonWebsocketConsumer(BaseWebsocketConsumer):
    """A WebSocket consumer speaking JSON: ``receive(content)`` and ``send(content)``.

    A frame that is not valid JSON text closes the connection with 1007 (binary frames: 1003)
    and is logged; override ``decode_json``/``encode_json`` to change the codec.
    """

    async def raw_receive(self, message: Message, **kwargs: Any) -> None:
        text = message.get("text")
        if text is None:
            log.warning("%s: got a binary frame on %s; closing with 1003", type(self).__name__, self.path)
            await self.close(1003)
            return
        try:
            content = self.decode_json(text)
        except ValueError as exc:
            log.warning("%s: invalid JSON on %s (%s); closing with 1007", type(self).__name__, self.path, exc)
            await self.close(1007)
            return
        await self.receive(content, **kwargs)

    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        """Called with each decoded message; override it."""

    async def send(self, content: Any = None, close: bool | int = False) -> None:
        """Send *content* as JSON (through the multiplexer when demultiplexed)."""
        if self.multiplexer is not None:
            await self.multiplexer.send(content)
            if close:
                await self.close(close)
            return
        await self.message.reply_channel.send(self._frame(self.encode_json(content), None, close))

    @classmethod
    async def group_send(
        cls,
        name: str,
        content: Any = None,
        close: bool | int = False,
        *,
        exclude: Channel | str | None = None,
    ) -> GroupSendReport | None:
        """Send *content* as JSON to every connection in group *name* (but *exclude*, e.g. the sender)."""
        return await Group(name).send(cls._frame(cls.encode_json(content), None, close), exclude=exclude)

    @classmethod
    def decode_json(cls, text: str) -> Any:
        return json.loads(text)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        return json.dumps(content)


class SendNotAvailableOnDemultiplexer(Exception):
    """A demultiplexer has no stream of its own: send through ``multiplexer.send()``."""


class WebsocketMultiplexer:
    """Sends ``{"stream": ..., "payload": ...}`` frames for one stream of one connection.

    *message* is the connection's ``websocket.connect`` message when the demultiplexer has it
    (:meth:`join` reads the client's recovery position from it).
    """

    def __init__(self, stream: str, reply_channel: Channel, message: Message | None = None) -> None:
        self.stream = stream
        self.reply_channel = reply_channel
        self.message = message

    async def send(self, payload: Any) -> None:
        await self.reply_channel.send(self.encode(self.stream, payload))

    async def join(
        self, group: str, *, info: dict[str, Any] | None = None, last: int = 0
    ) -> GroupHistory | None:
        """Add this connection to *group* for this stream, recovering what the client missed
        (see :func:`join_stream`)."""
        if self.message is None:
            raise ValueError(f"the multiplexer of stream {self.stream!r} has no connect message to read")
        return await join_stream(self.message, self.stream, group, info=info, last=last)

    async def reply(self, request: Any, payload: Any = None, *, error: Any = None) -> bool:
        """Answer *request* (a payload this stream's consumer received) with *payload*, or fail it
        with *error*; see :func:`reply_to`. False (nothing sent) if it is not a request."""
        ident = request_id(request, path=self.message.get("path") if self.message else None)
        if ident is None:
            return False
        await self.reply_channel.send(self.encode_reply(self.stream, ident, payload, error=error))
        return True

    @classmethod
    def encode(cls, stream: str, payload: Any) -> WebSocketReply:
        return {"text": json.dumps({"stream": stream, "payload": payload})}

    @classmethod
    def encode_reply(
        cls, stream: str, ident: int | str, payload: Any = None, *, error: Any = None
    ) -> WebSocketReply:
        """The reply frame ``{"stream": ..., "reply": <id>, "payload": ...}`` (with *error*:
        ``"error": {"message": ...}`` instead of the payload)."""
        frame: dict[str, Any] = {"stream": stream, "reply": ident}
        if error is not None:
            frame["error"] = error if isinstance(error, Mapping) else {"message": str(error)}
        else:
            frame["payload"] = payload
        return {"text": json.dumps(frame)}

    @classmethod
    async def group_send(
        cls,
        name: str,
        stream: str,
        payload: Any,
        close: bool | int = False,
        *,
        exclude: Channel | str | None = None,
    ) -> GroupSendReport | None:
        """Send *payload* on *stream* to every connection in group *name* (but *exclude*).

        In a group with history, each connection's frame gains ``"offset"`` and ``"epoch"``
        on its way out of the interface server (``docs/presence-history.rst``).
        """
        frame = cls.encode(stream, payload)
        if close:
            frame["close"] = close
        return await Group(name).send(frame, exclude=exclude)


#: The key of a request's correlation id in its payload: ``trio-channels.js`` sends
#: ``client.request("chat", {"get": "history"})`` as ``{"stream": "chat", "payload": {"get":
#: "history", "__request__": 7}}`` and waits for the frame ``{"stream": "chat", "reply": 7,
#: "payload": ...}``.
REQUEST_KEY: Final = "__request__"


def request_id(payload: Any, *, path: str | None = None) -> int | str | None:
    """The correlation id in a request's *payload*, or ``None`` if it is not a request (the
    client sent it with ``send()``, not ``request()``). An id that is not an int or a str is
    logged and taken as no request: the client's promise times out, nothing else breaks."""
    if not isinstance(payload, Mapping) or REQUEST_KEY not in payload:
        return None
    ident = payload[REQUEST_KEY]
    if isinstance(ident, bool) or not isinstance(ident, (int, str)):
        log.warning("ignored a request id that is not an int or a str on %s: %r", path, ident)
        return None
    return ident


async def reply_to(message: Message, frame: Any, payload: Any = None, *, error: Any = None) -> bool:
    """Answer the client's request *frame* (the frame it sent, decoded: ``{"stream": ...,
    "payload": {..., "__request__": id}}``) with *payload*, on its stream, through *message*'s
    reply channel (buffered like any send of the consumer).

    With *error* (a str, or a JSON object with a ``"message"``) the client's promise rejects
    with a ``RequestError`` carrying it instead. Returns whether a reply was sent: ``False`` if
    *frame* is not a request (one consumer can serve sends and requests alike). In a
    demultiplexed stream consumer, use :meth:`WebsocketMultiplexer.reply` with the payload.
    """
    if not isinstance(frame, Mapping) or not isinstance(frame.get("stream"), str):
        return False
    ident = request_id(frame.get("payload"), path=message.get("path"))
    if ident is None:
        return False
    await message.reply_channel.send(
        WebsocketMultiplexer.encode_reply(frame["stream"], ident, payload, error=error)
    )
    return True


def recover_positions(message: Message) -> dict[str, tuple[str, int]]:
    """The positions a reconnecting client sent in its URL: ``?recover=<stream>:<epoch>:<offset>``
    (one per stream, repeated), as ``{stream: (epoch, offset)}``.

    A malformed value is logged and ignored (that stream is joined without recovery), so a
    confused client costs itself a reload, nothing more.
    """
    query = message.get("query_string", b"")
    text = query.decode("latin-1") if isinstance(query, bytes) else str(query)
    positions: dict[str, tuple[str, int]] = {}
    for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        if key != "recover":
            continue
        stream, _, rest = value.rpartition(":")
        stream, _, epoch = stream.rpartition(":")
        if not stream or not epoch or not rest.isdigit():
            log.warning("ignored recover=%r on %s: use <stream>:<epoch>:<offset>", value, message.get("path"))
            continue
        positions[stream] = (epoch, int(rest))
    return positions


async def join_stream(
    message: Message, stream: str, group: str, *, info: dict[str, Any] | None = None, last: int = 0
) -> GroupHistory | None:
    """Add the connection of *message* (its ``websocket.connect``) to *group*, carried on
    *stream*, and tell the client where it stands.

    If the client's URL holds a position for *stream* (:func:`recover_positions`), the
    messages it missed are queued for it at once; else the latest *last* messages are. Then
    the client gets the frame ``{"stream": ..., "join": {"group", "epoch", "offset",
    "recovered", "replayed"}}`` (buffered like any send of the consumer): ``recovered`` false
    means its position could not be recovered (a ``reason`` says why) and it should reload its
    state. Returns what was replayed (``None`` if the group keeps no history).

    A replayed frame reaches the client before the consumer's buffered sends, so in a connect
    consumer it opens the connection before the consumer returns: a later consumer of the
    connection must not rely on state the connect consumer saves after the join (save first,
    or use ``enforce_ordering``).
    """
    reply = message.reply_channel
    if reply is None:
        raise ValueError(f"join_stream: the message on {message.channel.name!r} has no reply_channel")
    position = recover_positions(message).get(stream)
    since: tuple[str, int] | int = position if position is not None else last
    joined: dict[str, Any] = {"group": group}
    replayed: GroupHistory | None = None
    try:
        replayed = await Group(group, layer=message.channel_layer).add(reply, info=info, recover=since)
        joined.update(
            epoch=replayed.epoch, offset=replayed.offset, recovered=True, replayed=len(replayed.messages)
        )
    except CannotRecover as exc:
        joined.update(epoch=exc.epoch, offset=exc.offset, recovered=exc.reason == "no history")
        if exc.reason != "no history":
            joined["reason"] = exc.reason
        joined["replayed"] = 0
    await reply.send({"text": json.dumps({"stream": stream, "join": joined})})
    return replayed


class WebsocketDemultiplexer(JsonWebsocketConsumer):
    """Routes ``{"stream": name, "payload": {...}}`` frames to per-stream consumers.

    ``consumers = {stream: ConsumerClass}``. Connect and disconnect go to every stream's
    consumer; each consumer gets ``multiplexer=`` (its stream's :class:`WebsocketMultiplexer`)
    and its ``send()`` sends on that stream. A frame without a known stream or a dict payload
    is logged and the connection closed with 1007.
    """

    consumers: ClassVar[dict[str, type[BaseWebsocketConsumer]]] = {}
    multiplexer_class: ClassVar[type[WebsocketMultiplexer]] = WebsocketMultiplexer

    def _sub(self, stream: str, message: Message) -> BaseWebsocketConsumer:
        multiplexer = self.multiplexer_class(stream, message.reply_channel, message)
        return self.consumers[stream](message, **{**self.kwargs, "multiplexer": multiplexer})

    async def connect(self, message: Message, **kwargs: Any) -> None:
        await message.reply_channel.send({"accept": True})
        for stream in self.consumers:
            await self._sub(stream, message).dispatch()

    async def disconnect(self, message: Message, **kwargs: Any) -> None:
        for stream in self.consumers:
            await self._sub(stream, message).dispatch()

    async def receive(self, content: Any = None, **kwargs: Any) -> None:
        problem = None
        if not isinstance(content, dict) or "stream" not in content or "payload" not in content:
            problem = 'frames must be {"stream": ..., "payload": ...}'
        elif content["stream"] not in self.consumers:
            problem = f"unknown stream {content['stream']!r}"
        elif not isinstance(content["payload"], dict):
            problem = "the payload must be a JSON object"
        if problem is not None:
            log.warning("%s on %s: %s; closing with 1007", type(self).__name__, self.path, problem)
            await self.close(1007)
            return
        self.message.content["text"] = self.encode_json(content["payload"])
        await self._sub(content["stream"], self.message).dispatch()

    async def send(self, content: Any = None, close: bool | int = False) -> None:
        raise SendNotAvailableOnDemultiplexer(
            "a demultiplexer has no stream of its own: send through the stream consumer's multiplexer"
        )

    @classmethod
    async def group_send(
        cls,
        name: str,
        content: Any = None,
        close: bool | int = False,
        *,
        exclude: Channel | str | None = None,
    ) -> GroupSendReport | None:
        raise SendNotAvailableOnDemultiplexer("use WebsocketMultiplexer.group_send(group, stream, payload)")


class AsyncHttpConsumer(BaseConsumer):
    """An HTTP consumer: ``handle(request)`` answers with ``send_response`` or streams with
    ``send_headers``/``send_body``; ``disconnect()`` runs when the client goes away.

    Streaming parts go out at once. For long-polling, ``handle`` may add
    ``self.message.reply_channel`` to a group and return without answering: whoever sends a
    response message to that group later completes the request (within the server's
    ``http_timeout``).
    """

    method_mapping: ClassVar[dict[str, str]] = {
        "http.request": "raw_request",
        "http.disconnect": "raw_disconnect",
    }

    async def raw_request(self, message: Message, **kwargs: Any) -> None:
        self.request = await Request.from_message(message)
        await self.handle(self.request, **kwargs)

    async def handle(self, request: Request, **kwargs: Any) -> None:
        """Answer the request; the default is 405 Method Not Allowed."""
        await self.send_response(Response("405 Method Not Allowed\n", 405, content_type="text/plain"))

    async def raw_disconnect(self, message: Message, **kwargs: Any) -> None:
        await self.disconnect(**kwargs)

    async def disconnect(self, **kwargs: Any) -> None:
        """Called on ``http.disconnect`` (for every request, answered or not)."""

    async def send_headers(self, status: int = 200, headers: list[tuple[str, str]] | None = None) -> None:
        """Start a streamed response."""
        encoded = [[name.encode("latin-1"), value.encode("latin-1")] for name, value in headers or []]
        await self.message.reply_channel.send(
            {"status": status, "headers": encoded, "more_content": True}, immediately=True
        )

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        """Send a chunk of a streamed response (``more_body=False`` ends it)."""
        await self.message.reply_channel.send({"content": body, "more_content": more_body}, immediately=True)

    async def send_response(self, response: Response) -> None:
        """Send a whole response (buffered until the consumer returns, like any send)."""
        for part in response.encode():
            await self.message.reply_channel.send(part)
