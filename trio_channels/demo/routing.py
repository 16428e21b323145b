"""The demo: a chat site with rooms (groups), plus an echo endpoint.

* ``GET /``: the page (rooms, chat, echo test);
* WebSocket ``/chat/<room>/``: joins group ``chat-<room>``, every text frame goes to the room;
* WebSocket ``/echo/``: every frame comes back to its sender.
"""

from __future__ import annotations

from importlib import resources

from trio_channels import Group, Message, route
from trio_channels.http import Response, send_response

ROOM = r"^/chat/(?P<room>[a-zA-Z0-9_-]{1,50})/$"


async def index(message: Message) -> None:
    page = resources.files("trio_channels.demo").joinpath("static/index.html").read_bytes()
    await send_response(message, Response(page))


async def chat_connect(message: Message, room: str) -> None:
    await Group(f"chat-{room}").add(message.reply_channel)
    await message.reply_channel.send({"accept": True})


async def chat_message(message: Message, room: str) -> None:
    text = message.get("text")
    if text:
        await Group(f"chat-{room}").send({"text": text[:2000]})


async def chat_disconnect(message: Message, room: str) -> None:
    await Group(f"chat-{room}").discard(message.reply_channel)


async def echo(message: Message) -> None:
    frame = (
        {"text": message["text"]}
        if message.get("text") is not None
        else {"bytes": message.get("bytes") or b""}
    )
    await message.reply_channel.send(frame)


routing = [
    route("http.request", index, path=r"^/$", method=r"^(?:GET|HEAD)$"),
    route("websocket.connect", chat_connect, path=ROOM),
    route("websocket.receive", chat_message, path=ROOM),
    route("websocket.disconnect", chat_disconnect, path=ROOM),
    route("websocket.receive", echo, path=r"^/echo/$"),
]
