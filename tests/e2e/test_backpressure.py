"""Everyone sends at once (issue 12, target 5): backpressure by not reading, not by closing."""

from __future__ import annotations

import uuid

import pytest
import trio
from trio_websocket import open_websocket_url

from layers import BaseChannelLayer, InMemoryChannelLayer
from layers.redis import RedisChannelLayer
from trio_channels.server import DEFAULT_CHANNEL_CAPACITY

from ..redis_server import RedisServer
from .conftest import StartServer, ws_url

ROUTING = "benchmarks.app.routing"
SOCKETS = 300


def _layer(kind: str, redis_servers: list[RedisServer]) -> BaseChannelLayer:
    # websocket.receive holds 20: fifteen times fewer than the frames that arrive at once.
    capacity = {**DEFAULT_CHANNEL_CAPACITY, "websocket.receive": 20}
    if kind == "memory":
        return InMemoryChannelLayer(channel_capacity=capacity)
    return RedisChannelLayer(
        hosts=[redis_servers[0].url], prefix=f"t{uuid.uuid4().hex[:12]}", channel_capacity=capacity
    )


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_every_socket_sends_one_frame_at_once(
    start_server: StartServer, redis_servers: list[RedisServer], kind: str
) -> None:
    """300 WebSockets each send one frame at the same moment into a websocket.receive of 20,
    drained by 5 consumer tasks: none is closed, every frame is answered to its own socket.
    (The sends wait for room; meanwhile each connection reads nothing more, so TCP holds its
    client back.)"""
    info = await start_server(ROUTING, layer=_layer(kind, redis_servers), concurrency=5)
    go = trio.Event()
    answered: list[int] = []
    closed: list[object] = []

    async def client(number: int, ready: trio.Semaphore) -> None:
        async with open_websocket_url(ws_url(info.url, "/echo/")) as ws:
            ready.release()
            await go.wait()
            await ws.send_message(f"frame {number}")
            if await ws.get_message() == f"frame {number}":
                answered.append(number)
            if ws.closed is not None:
                closed.append(ws.closed)

    ready = trio.Semaphore(0)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for number in range(SOCKETS):
                nursery.start_soon(client, number, ready)
            for _ in range(SOCKETS):
                await ready.acquire()
            go.set()
    assert sorted(answered) == list(range(SOCKETS))
    assert closed == []
