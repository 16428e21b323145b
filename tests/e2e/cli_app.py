"""The app the command-line option tests serve (``tests.e2e.cli_app:routing``)."""

from __future__ import annotations

import json
from typing import Any

import trio

from trio_channels import Message, route
from trio_channels.http import Response, send_response
from trio_channels.sessions import http_session


async def who(message: Message) -> None:
    """What the interface told the application about this request."""
    keys = ("client", "scheme", "root_path", "path", "http_version")
    await send_response(message, Response(json.dumps({key: message[key] for key in keys})))


async def slow(message: Message, seconds: str, name: str) -> None:
    print(f"slow start {name}", flush=True)
    await trio.sleep(float(seconds))
    print(f"slow end {name}", flush=True)
    await send_response(message, Response("done"))


async def never(message: Message) -> None:
    print("never started", flush=True)
    await trio.sleep_forever()


@http_session
async def visit(message: Message) -> None:
    message.http_session["visits"] = message.http_session.get("visits", 0) + 1
    await send_response(message, Response(str(message.http_session["visits"])))


async def ws_echo(message: Message) -> None:
    frame: dict[str, Any] = (
        {"text": message["text"]} if message.get("text") is not None else {"bytes": message["bytes"]}
    )
    await message.reply_channel.send(frame)


async def ws_never_accept(message: Message) -> None:
    """Neither accepts nor rejects: the interface decides at websocket_connect_timeout."""


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI-3 app for un-routed requests (``--http-app``)."""
    await send({"type": "http.response.start", "status": 200, "headers": [[b"content-type", b"text/plain"]]})
    await send({"type": "http.response.body", "body": b"from the ASGI app " + scope["path"].encode()})


routing = [
    route("http.request", who, path=r"^/who$"),
    route("http.request", slow, path=r"^/slow/(?P<seconds>[0-9.]+)/(?P<name>\w+)$"),
    route("http.request", never, path=r"^/never$"),
    route("http.request", visit, path=r"^/visit$"),
    route("websocket.connect", ws_never_accept, path=r"^/noaccept/$"),
    route("websocket.receive", ws_echo, path=r"^/echo/$"),
]
