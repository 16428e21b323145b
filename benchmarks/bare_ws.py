"""Baseline: the benchmark app's WebSocket protocol on bare trio-websocket (no layer, no workers).

* ``/chat/<room>/``: every text frame goes to every member of the room, the sender included;
  each member has a 1,000-message outbox and a forwarding task (a full outbox drops, as
  ``benchmarks/bare.py`` does);
* any other path echoes every frame (``/echo/``).

It is the physical limit of trio-websocket's server on this machine: what
``trio_websocket.serve_websocket`` with its defaults does with nothing behind it.

    python -m benchmarks.bare_ws --bind 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import re
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from ._instrument import install

ROOM = re.compile(r"^/chat/([a-zA-Z0-9_]+)/$")
rooms: dict[str, set[trio.MemorySendChannel[str | bytes]]] = {}


async def echo(ws: WebSocketConnection) -> None:
    while True:
        await ws.send_message(await ws.get_message())


async def chat(ws: WebSocketConnection, room: str) -> None:
    members = rooms.setdefault(room, set())
    outbox, inbox = trio.open_memory_channel[str | bytes](1000)
    members.add(outbox)

    async def forward() -> None:
        try:
            async for text in inbox:
                await ws.send_message(text)
        except ConnectionClosed:
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                while True:
                    text = await ws.get_message()
                    for member in list(members):
                        try:
                            member.send_nowait(text)
                        except (trio.WouldBlock, trio.BrokenResourceError):
                            pass
            except ConnectionClosed:
                nursery.cancel_scope.cancel()
    finally:
        members.discard(outbox)


async def handler(request: WebSocketRequest) -> None:
    found = ROOM.match(request.path)
    try:
        ws = await request.accept()
        if found is None:
            await echo(ws)
        else:
            await chat(ws, found.group(1))
    except ConnectionClosed:
        pass  # the client went away: nothing to do (an exception here would crash the server)


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, handler, host, port, ssl_context=None))
        print(f"bare trio-websocket serving at http://{host}:{server.port}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    args = parser.parse_args()
    bind_host, _, bind_port = args.bind.rpartition(":")
    install()
    try:
        trio.run(main, bind_host, int(bind_port))
    except KeyboardInterrupt:
        pass
