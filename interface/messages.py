"""The ASGI-1 message shapes (reference §3), as TypedDicts for type checkers.

At run time every message is a plain ``dict``: these types cost nothing and check nothing.
They say which keys each message has and what the values are, for the code that builds
messages (:mod:`interface.protocol`) and the code that reads or answers them
(``trio_channels``). The channel layer's boundary stays ``dict[str, Any]`` (a layer carries
any message); :func:`as_layer_message` is the typed hand-over.

Messages sent by the interface server:

* ``http.request``: :class:`HttpRequest`; the rest of a large body on its ``body_channel``
  as :class:`HttpRequestBodyChunk`; then ``http.disconnect``: :class:`HttpDisconnect`.
* ``websocket.connect``: :class:`WebSocketConnect`, ``websocket.receive``:
  :class:`WebSocketReceive`, ``websocket.disconnect``: :class:`WebSocketDisconnect`.

Replies, on the connection's reply channel:

* HTTP: :class:`HttpResponse` (the first, with ``status``), then :class:`HttpResponseChunk`.
* WebSocket: :class:`WebSocketReply` (``accept``, ``text``/``bytes``, ``close``).
"""

from __future__ import annotations

import sys
from typing import Any, TypedDict, cast

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired

__all__ = [
    "Address",
    "ConnectionMessage",
    "Headers",
    "HttpDisconnect",
    "HttpReply",
    "HttpRequest",
    "HttpRequestBodyChunk",
    "HttpResponse",
    "HttpResponseChunk",
    "Reply",
    "WebSocketConnect",
    "WebSocketDisconnect",
    "WebSocketReceive",
    "WebSocketReply",
    "as_layer_message",
]

#: ``[[name, value], ...]``: names lower-cased bytes, in order, duplicates kept.
Headers = list[list[bytes]]
#: ``[host, port]`` of the client or the server, or ``None`` (a Unix socket).
Address = list[Any] | None


class HttpRequest(TypedDict):
    """``http.request``: a request's head and the first part of its body."""

    reply_channel: str
    http_version: str
    method: str
    scheme: str
    path: str
    query_string: bytes
    root_path: str
    headers: Headers
    body: bytes
    #: Where the rest of the body comes, in :class:`HttpRequestBodyChunk` messages (or None).
    body_channel: str | None
    client: Address
    server: Address


class HttpRequestBodyChunk(TypedDict):
    """One more part of a request body, on the request's ``body_channel``."""

    content: bytes
    more_content: bool
    #: The client left, or the body passed the size limit: abandon the request.
    closed: NotRequired[bool]


class HttpDisconnect(TypedDict):
    """``http.disconnect``: sent after every request, answered or not."""

    reply_channel: str
    path: str


class HttpResponse(TypedDict):
    """The first reply to an ``http.request``: its status and headers, maybe all its body."""

    status: int
    headers: NotRequired[Headers]
    content: NotRequired[bytes]
    #: More :class:`HttpResponseChunk` messages follow.
    more_content: NotRequired[bool]


class HttpResponseChunk(TypedDict, total=False):
    """A later part of a response body; ``closed: True`` abandons the response (ours)."""

    content: bytes
    more_content: bool
    closed: bool


#: Any reply to an ``http.request``.
HttpReply = HttpResponse | HttpResponseChunk


class WebSocketConnect(TypedDict):
    """``websocket.connect``: the handshake, waiting for an accept (``order`` 0)."""

    reply_channel: str
    scheme: str
    path: str
    query_string: bytes
    root_path: str
    headers: Headers
    client: Address
    server: Address
    subprotocols: list[str]
    order: int


# The functional form: a key named ``bytes`` would shadow the type in a class body.
class WebSocketReceive(TypedDict):
    reply_channel: str
    path: str
    order: int
    text: NotRequired[str]
    bytes: NotRequired[bytes]


WebSocketReceive.__doc__ = "``websocket.receive``: one frame, ``text`` or ``bytes`` (``order`` 1, 2, ...)."


class WebSocketDisconnect(TypedDict):
    """``websocket.disconnect``: the close code (1000-4999, 1006 for no close frame); last."""

    reply_channel: str
    code: int
    path: str
    order: int


class WebSocketReply(TypedDict, total=False):
    accept: bool
    text: str
    bytes: bytes
    close: bool | int


WebSocketReply.__doc__ = (
    "A reply to a WebSocket: ``accept`` (``False`` rejects), a frame (``text`` or ``bytes``), "
    "``close`` (``True`` for 1000, or a code); an accept may come with a frame and a close."
)

#: Any reply an application sends to a connection's reply channel.
Reply = HttpResponse | HttpResponseChunk | WebSocketReply

#: A message that belongs to a connection (it has a ``reply_channel``).
ConnectionMessage = HttpRequest | HttpDisconnect | WebSocketConnect | WebSocketReceive | WebSocketDisconnect


def as_layer_message(
    message: ConnectionMessage | HttpRequestBodyChunk | HttpReply | WebSocketReply,
) -> dict[str, Any]:
    """*message* as the layer takes it (the same object: a TypedDict is a dict at run time)."""
    return cast("dict[str, Any]", message)
