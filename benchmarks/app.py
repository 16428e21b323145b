"""The benchmark app: the protocol every server in the comparison speaks.

* ``GET /hello`` -> 200 ``text/plain`` ``Hello world! You asked for /hello`` (the seed's consumer);
* WebSocket ``/echo/``: every text frame comes back to its sender;
* WebSocket ``/chat/<room>/``: joins group ``chat-<room>``; every text frame goes to the room,
  the sender included.

    python -m trio_channels run benchmarks.app.routing [--layer ...]
"""

from __future__ import annotations

from trio_channels import Group, Message, route
from trio_channels.http import Response, send_response

ROOM = r"^/chat/(?P<room>[a-zA-Z0-9_]+)/$"


async def hello(message: Message) -> None:
    await send_response(
        message, Response(f"Hello world! You asked for {message['path']}", content_type="text/plain")
    )


async def echo(message: Message) -> None:
    await message.reply_channel.send({"text": message["text"]})


async def chat_connect(message: Message, room: str) -> None:
    await Group(f"chat-{room}").add(message.reply_channel)
    await message.reply_channel.send({"accept": True})


async def chat_receive(message: Message, room: str) -> None:
    await Group(f"chat-{room}").send({"text": message["text"]})


async def chat_disconnect(message: Message, room: str) -> None:
    await Group(f"chat-{room}").discard(message.reply_channel)


routing = [
    route("http.request", hello, path=r"^/hello$"),
    route("websocket.receive", echo, path=r"^/echo/$"),
    route("websocket.connect", chat_connect, path=ROOM),
    route("websocket.receive", chat_receive, path=ROOM),
    route("websocket.disconnect", chat_disconnect, path=ROOM),
]
