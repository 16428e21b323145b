"""The app the ``--processes`` tests serve (``tests.e2e.processes_app:routing``).

* ``GET /who``: JSON ``{"prefix": ..., "pid": ...}``: the process prefix of the reply channel
  (the interface process holding the connection) and the pid of the worker that answered;
* ``GET /slow/SECONDS``: answers ``done`` after that long (prints ``slow request started``);
* WebSocket ``/chat/<room>/``: joins group ``room-<room>`` and says its prefix in its first
  frame (``{"prefix": ...}``); every text frame goes to the room.

With ``PROCESSES_APP_IMPORTS=FILE`` in the environment, each import appends a line to FILE and
every import after the first raises: the supervisor's own check passes, its children fail.
"""

from __future__ import annotations

import json
import os

import trio

from trio_channels import Group, Message, route
from trio_channels.http import Response, send_response

_imports = os.environ.get("PROCESSES_APP_IMPORTS")
if _imports:
    with open(_imports, "a+") as _file:
        _file.seek(0)
        _earlier = _file.read().count("\n")
        _file.write(f"{os.getpid()}\n")
    if _earlier:
        raise RuntimeError(f"import number {_earlier + 1} of processes_app fails, as the test asked")


def prefix(message: Message) -> str:
    """The process prefix (``interface.<random>!``) of the message's reply channel."""
    return message.reply_channel.name.split("!", 1)[0] + "!"


async def who(message: Message) -> None:
    await send_response(message, Response(json.dumps({"prefix": prefix(message), "pid": os.getpid()})))


async def slow(message: Message, seconds: str) -> None:
    print("slow request started", flush=True)
    await trio.sleep(float(seconds))
    await send_response(message, Response("done"))


async def chat_connect(message: Message, room: str) -> None:
    await Group(f"room-{room}").add(message.reply_channel)
    await message.reply_channel.send({"accept": True})
    await message.reply_channel.send({"text": json.dumps({"prefix": prefix(message)})})


async def chat_receive(message: Message, room: str) -> None:
    await Group(f"room-{room}").send({"text": message["text"]})


async def chat_disconnect(message: Message, room: str) -> None:
    await Group(f"room-{room}").discard(message.reply_channel)


ROOM = r"^/chat/(?P<room>\w+)/$"
routing = [
    route("http.request", who, path=r"^/who$"),
    route("http.request", slow, path=r"^/slow/(?P<seconds>[0-9.]+)$"),
    route("websocket.connect", chat_connect, path=ROOM),
    route("websocket.receive", chat_receive, path=ROOM),
    route("websocket.disconnect", chat_disconnect, path=ROOM),
]
