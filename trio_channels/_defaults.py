"""The routes every Router adds: last, so WebSocket traffic is always consumed; first, the
browser client's files."""

from __future__ import annotations

from .channel import Message
from .http import client_files, client_route, not_found_text
from .routing import Consumer, Include, Route


async def accept_connection(message: Message) -> None:
    """Default ``websocket.connect`` consumer: accept every connection."""
    if message.has_reply_channel:
        await message.reply_channel.send({"accept": True})


async def ignore(message: Message) -> None:
    """Default consumer for ``websocket.receive``, ``websocket.disconnect``, ``http.disconnect``."""


async def not_found(message: Message) -> None:
    """Default ``http.request`` consumer when no fallback app is configured: a plain 404."""
    if message.has_reply_channel:
        body = not_found_text(message.get("path", ""))
        await message.reply_channel.send(
            {
                "status": 404,
                "headers": [
                    [b"content-type", b"text/plain; charset=utf-8"],
                    [b"content-length", str(len(body)).encode()],
                ],
                "content": body,
            },
            immediately=True,
        )


def default_routes(http_fallback: Consumer | None) -> list[Route]:
    return [
        Route("websocket.connect", accept_connection),
        Route(["websocket.receive", "websocket.disconnect", "http.disconnect"], ignore),
        Route("http.request", http_fallback or not_found),
    ]


def _places_client(entry: object) -> bool:
    if isinstance(entry, Route):
        return entry.consumer is client_files
    if isinstance(entry, Include) and not isinstance(entry.routing, str):
        return any(_places_client(inner) for inner in entry.routing)
    return False


def first_routes(routing: Include) -> list[Route]:
    """The client's route, unless the (resolved) *routing* places it itself."""
    return [] if _places_client(routing) else [client_route()]
