"""The physical-limit baseline: the benchmark app's protocol as a bare ASGI app on Hypercorn-Trio.

No channel layer, no workers: what Hypercorn's Trio worker alone can do on this machine.

    python -m benchmarks.bare --bind 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import re
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ._instrument import install

ROOM = re.compile(r"^/chat/([a-zA-Z0-9_]+)/$")
rooms: dict[str, set[trio.MemorySendChannel[str]]] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        body = f"Hello world! You asked for {scope['path']}".encode()
        status = 200 if scope["path"] == "/hello" else 404
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    found = ROOM.match(scope["path"])
    if found is None:  # echo
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": event.get("text")})
    members = rooms.setdefault(found.group(1), set())
    outbox, inbox = trio.open_memory_channel[str](1000)
    members.add(outbox)
    try:
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                async for text in inbox:
                    await send({"type": "websocket.send", "text": text})

            nursery.start_soon(forward)
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    break
                for member in list(members):
                    try:
                        member.send_nowait(event.get("text"))
                    except trio.WouldBlock:
                        pass
            nursery.cancel_scope.cancel()
    finally:
        members.discard(outbox)


async def main(config: Config) -> None:
    async with trio.open_nursery() as nursery:
        # serve() reports the bound URLs once it listens (port 0 becomes the real port).
        urls = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
        print(f"bare hypercorn serving at {urls[0]}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    args = parser.parse_args()
    config = Config()
    config.bind = [args.bind]
    config.accesslog = None
    install()
    trio.run(main, config)
