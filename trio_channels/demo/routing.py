"""The demo: a chat with rooms, names, who is here and history, on the browser client; and an echo.

* ``GET /``: the page; ``GET /demo/<file>``: its script and style (package data, no build step).
  The page imports the browser client from ``/_trio_channels/client.mjs``.
* WebSocket ``/chat/<room>/?name=<name>``: the room, in the demultiplexer's frames
  (``docs/client.rst``). Each connection joins group ``chat-<room>`` (history, presence events)
  with ``info={"name": ...}``, and group ``rooms`` with ``{"room", "name"}`` (the rooms list).

  - on connect: the room's last :data:`HISTORY_ON_JOIN` messages, or what a reconnecting client
    missed (``?recover=chat:<epoch>:<offset>``), then the ``join`` frame; then
    ``{"stream": "here", "payload": {"group": ..., "members": {channel: info}}}`` for both
    groups, after which presence events keep them current;
  - ``{"stream": "chat", "payload": {"text": ..., "id": ...}}`` says *text* to the room, as
    ``{"stream": "chat", "payload": {"name", "text", "time", "id"}, "offset", "epoch"}`` (a text
    frame that is not JSON is said as it is, for a quick try with any WebSocket client);
  - the request ``{"get": "history"}`` is answered with the room's latest messages.
* WebSocket ``/echo/``: every frame comes back to its sender.

``serve()`` builds the layer of the demo with :data:`LAYER_OPTIONS` (unless it is given a
layer object), so ``python -m trio_channels run`` and ``run --layer redis://...`` keep history.
"""

from __future__ import annotations

import json
import time
import unicodedata
import urllib.parse
from importlib import resources
from typing import Any, Final

from trio_channels import Group, Message, route
from trio_channels.generic import WebsocketMultiplexer, join_stream, reply_to
from trio_channels.http import Response, send_response
from trio_channels.ordering import enforce_ordering
from trio_channels.sessions import channel_session

ROOM = r"^/chat/(?P<room>[a-zA-Z0-9_-]{1,50})/$"
#: Every connection of every room, with ``{"room", "name"}``: the rooms list and its counts.
ROOMS: Final = "rooms"
#: How many of a room's latest messages a newcomer gets.
HISTORY_ON_JOIN: Final = 50
#: The longest name and message the demo takes.
MAX_NAME: Final = 32
MAX_TEXT: Final = 2000

#: The demo's layer options, in one place: a room keeps its last 200 messages for a day and
#: tells its members who comes and goes; so does the rooms list.
LAYER_OPTIONS: Final[dict[str, Any]] = {
    "history": {"chat-*": {"size": 200, "ttl": 24 * 3600}},
    "presence": {"chat-*": {"events": True}, ROOMS: {"events": True}},
}

#: The page's files: ``{name: content type}``.
FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "demo.mjs": "text/javascript; charset=utf-8",
}


def _file(name: str) -> bytes:
    return resources.files("trio_channels.demo").joinpath("static").joinpath(name).read_bytes()


async def index(message: Message) -> None:
    await send_response(message, Response(_file("index.html")))


async def static(message: Message, name: str) -> None:
    headers = {"Cache-Control": "no-cache"}
    await send_response(message, Response(_file(name), headers=headers, content_type=FILES[name]))


def name_of(message: Message) -> str | None:
    """The ``?name=`` of a connect message, tidied; ``"guest"`` if there is none, ``None`` if it
    is too long or holds control characters."""
    query = message.get("query_string", b"")
    text = query.decode("latin-1") if isinstance(query, bytes) else str(query)
    values = urllib.parse.parse_qs(text).get("name") or [""]
    name = " ".join(values[0].split())
    if not name:
        return "guest"
    if len(name) > MAX_NAME or any(unicodedata.category(char) == "Cc" for char in name):
        return None
    return name


@channel_session
async def chat_connect(message: Message, room: str) -> None:
    name = name_of(message)
    if name is None:
        # An application close code: the page shows it and asks for another name.
        await message.reply_channel.send({"accept": True, "close": 4400})
        return
    # Saved before the join: its first replayed frame opens the connection, and the
    # receive consumer may then run before this one returns.
    message.channel_session["name"] = name
    await message.channel_session.save()
    await message.reply_channel.send({"accept": True})
    group = f"chat-{room}"
    await join_stream(message, "chat", group, info={"name": name}, last=HISTORY_ON_JOIN)
    await Group(ROOMS).add(message.reply_channel, info={"room": room, "name": name})
    for members_of in (group, ROOMS):
        members = await Group(members_of).presence()
        snapshot = {"group": members_of, "members": members}
        await message.reply_channel.send(WebsocketMultiplexer.encode("here", snapshot))


def _frame(message: Message) -> dict[str, Any]:
    """The client's frame; a text frame that is not one is said as it is."""
    text = message.get("text") or ""
    try:
        frame = json.loads(text)
    except ValueError:
        frame = None
    if isinstance(frame, dict) and isinstance(frame.get("payload"), dict):
        return frame
    return {"stream": "chat", "payload": {"text": text}}


# A connection's frames run one after the other, in the order they came: a person's messages
# reach the room (and get their offsets) in the order they were typed.
@enforce_ordering
async def chat_message(message: Message, room: str) -> None:
    frame = _frame(message)
    payload = frame["payload"]
    group = f"chat-{room}"
    if frame.get("stream") != "chat":
        await reply_to(message, frame, error=f"unknown stream {frame.get('stream')!r}: use 'chat'")
        return
    if payload.get("get") == "history":
        history = await Group(group).history(limit=HISTORY_ON_JOIN)
        stored = [
            {**json.loads(sent["text"])["payload"], "offset": offset} for offset, sent in history.messages
        ]
        reply = {"messages": stored, "epoch": history.epoch, "offset": history.offset}
        await reply_to(message, frame, reply)
        return
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        await reply_to(message, frame, error="say something: the payload needs a non-empty 'text'")
        return
    said = {
        "name": message.channel_session.get("name", "guest"),
        "text": text[:MAX_TEXT],
        "time": time.time(),
        "id": str(payload.get("id", ""))[:64],
    }
    report = await Group(group).send(WebsocketMultiplexer.encode("chat", said), immediately=True)
    await reply_to(message, frame, {"offset": report.offset if report else None})


@enforce_ordering
async def chat_disconnect(message: Message, room: str) -> None:
    await Group(f"chat-{room}").discard(message.reply_channel)
    await Group(ROOMS).discard(message.reply_channel)
    await message.channel_session.flush()


async def echo(message: Message) -> None:
    frame = (
        {"text": message["text"]}
        if message.get("text") is not None
        else {"bytes": message.get("bytes") or b""}
    )
    await message.reply_channel.send(frame)


routing = [
    route("http.request", index, path=r"^/$", method=r"^(?:GET|HEAD)$"),
    route(
        "http.request",
        static,
        path=r"^/demo/(?P<name>index\.html|demo\.css|demo\.mjs)$",
        method=r"^(?:GET|HEAD)$",
    ),
    route("websocket.connect", chat_connect, path=ROOM),
    route("websocket.receive", chat_message, path=ROOM),
    route("websocket.disconnect", chat_disconnect, path=ROOM),
    route("websocket.receive", echo, path=r"^/echo/$"),
]
