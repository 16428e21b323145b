"""The ASGI-3 bridge's WebSocket path, driven the way an ASGI server drives it."""

from __future__ import annotations

from typing import Any

import trio
from wsproto.frame_protocol import CloseReason

from interface import InterfaceApp, InterfaceServer
from layers import InMemoryChannelLayer

from ..helpers import receive_now


async def test_asgi_websocket_messages_hold_plain_types(nursery: trio.Nursery) -> None:
    """Issue 11.1 on the ASGI path: a server's IntEnum close code (uvicorn's wsproto) and empty frames arrive as plain values."""
    layer = InMemoryChannelLayer()
    server = InterfaceServer(layer)
    await nursery.start(server.run_reply_poller)
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](10)
    sent: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    scope = {"type": "websocket", "path": "/ws/", "headers": [], "client": ("127.0.0.1", 1)}
    nursery.start_soon(InterfaceApp(server), scope, from_server.receive, send)
    await to_app.send({"type": "websocket.connect"})
    _, connect = await receive_now(layer, ["websocket.connect"])
    await layer.send(connect["reply_channel"], {"accept": True})
    for event in (
        {"type": "websocket.receive", "text": "", "bytes": None},
        {"type": "websocket.receive", "text": None, "bytes": b""},
        {"type": "websocket.disconnect", "code": CloseReason.GOING_AWAY},
    ):
        await to_app.send(event)
    received = [(await receive_now(layer, ["websocket.receive"]))[1] for _ in range(2)]
    assert [message.get("text", message.get("bytes")) for message in received] == ["", b""]
    _, disconnect = await receive_now(layer, ["websocket.disconnect"])
    assert disconnect["code"] == 1001 and type(disconnect["code"]) is int
    assert sent[0] == {"type": "websocket.accept"}
