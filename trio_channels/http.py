"""HTTP helpers for consumers: ``Request``, ``Response``, the fallback for un-routed HTTP, and
the browser client's files.

``Response(...).encode()`` is the seed's ``AsgiHandler.encode_response``: it yields the
``http.response`` message and its chunks (512 KiB each). Un-routed ``http.request`` messages
go to the fallback: an ASGI-3 app (``--http-app``, run in the worker against the message, so
Starlette or Quart-Trio apps just work), else static files, else a 404.

The browser client (``trio_channels/static/trio-channels.js``) is served at
:data:`CLIENT_PREFIX` by :func:`client_route`, which every :class:`~trio_channels.routing.Router`
puts ahead of the application's routes (see ``docs/client.rst``).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.cookies
import json
import logging
import mimetypes
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import trio

from interface.messages import HttpReply
from layers.base import retry_when_full

from .channel import Message
from .exceptions import RequestAborted
from .routing import Consumer, Route, import_by_path

__all__ = [
    "CHUNK_SIZE",
    "CLIENT_FILES",
    "CLIENT_PREFIX",
    "MODULE_EXPORTS",
    "Headers",
    "Request",
    "Response",
    "asgi_consumer",
    "client_file",
    "client_files",
    "client_route",
    "cookie_header",
    "http_fallback",
    "parse_cookies",
    "send_response",
    "static_files_consumer",
]

CHUNK_SIZE = 512 * 1024

log = logging.getLogger("trio_channels.http")


def parse_cookies(headers: Iterable[Sequence[bytes]]) -> dict[str, str]:
    """The cookies of ``Cookie`` headers in ASGI ``[name, value]`` byte pairs (bad ones skipped)."""
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for name, value in headers:
        if bytes(name).lower() == b"cookie":
            try:
                jar.load(bytes(value).decode("latin-1"))
            except http.cookies.CookieError:
                continue
    return {name: morsel.value for name, morsel in jar.items()}


def cookie_header(
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = True,
    samesite: str | None = "Lax",
) -> str:
    """The value of one ``Set-Cookie`` header (``max_age=0`` deletes the cookie)."""
    morsel: http.cookies.Morsel[str] = http.cookies.Morsel()
    morsel.set(name, value, http.cookies.SimpleCookie().value_encode(value)[1])
    morsel["path"] = path
    if max_age is not None:
        morsel["max-age"] = str(max_age)
        morsel["expires"] = email.utils.formatdate(time.time() + max_age, usegmt=True)
    if domain:
        morsel["domain"] = domain
    if secure:
        morsel["secure"] = True
    if httponly:
        morsel["httponly"] = True
    if samesite:
        morsel["samesite"] = samesite
    return morsel.OutputString()


class Headers:
    """Case-insensitive, multi-valued view of ``[[name, value], ...]`` byte pairs, as text."""

    def __init__(self, raw: list[list[bytes]] | list[tuple[bytes, bytes]]) -> None:
        self.raw = [
            (bytes(name).lower().decode("latin-1"), bytes(value).decode("latin-1")) for name, value in raw
        ]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        values = [value for key, value in self.raw if key == name]
        return ",".join(values) if values else default

    def getlist(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.raw if key == name]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(key == name.lower() for key, _ in self.raw)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key for key, _ in self.raw))

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


@attrs.define(eq=False)
class Request:
    """An ``http.request`` message as a request object.

    Build it with ``await Request.from_message(message)``, which also reads a body sent in
    chunks through ``body_channel``.
    """

    method: str
    path: str
    query_string: bytes
    headers: Headers
    body: bytes
    scheme: str = "http"
    root_path: str = ""
    client: list[Any] | None = None
    server: list[Any] | None = None

    @classmethod
    async def from_message(cls, message: Message, *, body_timeout: float = 60) -> Request:
        """Raises :exc:`trio.TooSlowError` if a chunked body does not arrive within *body_timeout*,
        and :exc:`~trio_channels.exceptions.RequestAborted` if it never will (a chunk with
        ``closed``: the client left, or the body passed ``max_body_size``)."""
        content = message.content
        body = content.get("body", b"")
        body_channel = content.get("body_channel")
        if body_channel:
            parts = [body]
            with trio.fail_after(body_timeout):
                while True:
                    _, chunk = await message.channel_layer.receive([body_channel])
                    if chunk.get("closed"):
                        raise RequestAborted(
                            "the request body was abandoned: the client went away or it was too large"
                        )
                    parts.append(chunk.get("content", b""))
                    if not chunk.get("more_content", False):
                        break
            body = b"".join(parts)
        return cls(
            method=content.get("method", "GET"),
            path=content.get("path", "/"),
            query_string=content.get("query_string", b""),
            headers=Headers(content.get("headers", [])),
            body=body,
            scheme=content.get("scheme", "http"),
            root_path=content.get("root_path", ""),
            client=content.get("client"),
            server=content.get("server"),
        )

    @property
    def GET(self) -> dict[str, list[str]]:
        """Query parameters, each a list of values."""
        return urllib.parse.parse_qs(self.query_string.decode("latin-1"), keep_blank_values=True)

    def query(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter *name*."""
        return self.GET.get(name, [default])[0]

    @property
    def cookies(self) -> dict[str, str]:
        return parse_cookies(
            [name.encode("latin-1"), value.encode("latin-1")] for name, value in self.headers.raw
        )

    def json(self) -> Any:
        """The body parsed as JSON (:exc:`ValueError` if it is not)."""
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        """An ``application/x-www-form-urlencoded`` body."""
        return urllib.parse.parse_qs(self.body.decode("utf-8"), keep_blank_values=True)


@attrs.define(eq=False, init=False)
class Response:
    """An HTTP response; ``encode()`` gives its channel messages."""

    content: bytes
    status: int
    headers: list[tuple[str, str]]

    def __init__(
        self,
        content: bytes | str = b"",
        status: int = 200,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        content_type: str = "text/html; charset=utf-8",
    ) -> None:
        self.content = content.encode("utf-8") if isinstance(content, str) else content
        if type(status) is not int or not 100 <= status <= 599:
            raise ValueError(f"status {status!r} is invalid: it must be an int from 100 to 599")
        self.status = status
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.insert(0, ("Content-Type", content_type))
        self.headers = pairs

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(json.dumps(data), status, content_type="application/json")

    def set_cookie(
        self,
        name: str,
        value: str,
        *,
        max_age: int | None = None,
        path: str = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = True,
        samesite: str | None = "Lax",
    ) -> None:
        """Add a ``Set-Cookie`` header (one per cookie, never comma-joined)."""
        header = cookie_header(
            name,
            value,
            max_age=max_age,
            path=path,
            domain=domain,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
        )
        self.headers.append(("Set-Cookie", header))

    def encode(self, chunk_size: int = CHUNK_SIZE) -> list[HttpReply]:
        """The response message(s): a :class:`~interface.messages.HttpResponse`, then
        :class:`~interface.messages.HttpResponseChunk` messages, the body split in
        *chunk_size* pieces."""
        headers = [[name.encode("latin-1"), value.encode("latin-1")] for name, value in self.headers]
        if not any(name.lower() == b"content-length" for name, _ in headers):
            headers.append([b"Content-Length", str(len(self.content)).encode()])
        chunks = [self.content[i : i + chunk_size] for i in range(0, len(self.content), chunk_size)] or [b""]
        more = len(chunks) > 1
        messages: list[HttpReply] = [
            {"status": self.status, "headers": headers, "content": chunks[0], "more_content": more}
        ]
        for index, chunk in enumerate(chunks[1:], 2):
            messages.append({"content": chunk, "more_content": index < len(chunks)})
        return messages


async def send_response(
    message: Message,
    response: Response | Sequence[HttpReply | dict[str, Any]],
    *,
    immediately: bool = False,
    timeout: float = 30,
) -> None:
    """Send a response to *message*'s reply channel.

    Inside a consumer it is buffered like any send (so ``http_session`` can still add its
    cookie) unless ``immediately=True``, which streaming responses want; an immediate send
    waits out ``ChannelFull`` for up to *timeout* seconds.
    """
    if not message.has_reply_channel:
        raise ValueError("this message has no reply_channel to respond to")
    encoded = response.encode() if isinstance(response, Response) else response
    deadline = trio.current_time() + timeout
    for part in encoded:
        send = partial(message.reply_channel.send, part, immediately=immediately)
        try:
            await retry_when_full(send, deadline - trio.current_time())
        except trio.TooSlowError:
            log.warning("gave up a response on %s: the reply channel stayed full", message.reply_channel.name)
            return


# ----------------------------------------------------------------------------- fallbacks

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]


def asgi_consumer(app: ASGIApp | str) -> Consumer:
    """An ``http.request`` consumer that runs an ASGI-3 *app* (or its path, ``"module:app"``)."""
    if isinstance(app, str):
        app = import_by_path(app, "ASGI app")
    if not callable(app):
        raise TypeError(f"ASGI app {app!r} is not callable")
    asgi_app = app

    async def consume(message: Message) -> None:
        request = await Request.from_message(message)
        content = message.content
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": content.get("http_version", "1.1"),
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.path.encode("utf-8", "surrogateescape"),
            "query_string": request.query_string,
            "root_path": request.root_path,
            "headers": [(bytes(name), bytes(value)) for name, value in content.get("headers", [])],
            "client": tuple(request.client) if request.client else None,
            "server": tuple(request.server) if request.server else None,
            "state": {},
        }
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        pending: dict[str, Any] = {}
        streamed: list[bool] = []  # once a response streams, every later part goes out at once

        async def send(event: dict[str, Any]) -> None:
            if event["type"] == "http.response.start":
                pending.update(
                    status=event["status"],
                    headers=[[bytes(n), bytes(v)] for n, v in event.get("headers", [])],
                )
            elif event["type"] == "http.response.body":
                more = bool(event.get("more_body", False))
                part = {**pending, "content": bytes(event.get("body", b"")), "more_content": more}
                pending.clear()
                await send_response(message, [part], immediately=more or bool(streamed))
                if more:
                    streamed.append(True)

        await asgi_app(scope, receive, send)

    consume.__qualname__ = f"asgi_consumer({getattr(asgi_app, '__qualname__', repr(asgi_app))})"
    return consume


def static_files_consumer(
    root: str | os.PathLike[str], url: str = "/static/", fallback: Consumer | None = None
) -> Consumer:
    """Serve files under *root* at *url*; other paths go to *fallback* (or 404)."""
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise ValueError(f"static root {str(root)!r} is not a directory")
    if not url.startswith("/") or not url.endswith("/"):
        raise ValueError(f"static URL {url!r} must start and end with '/'")

    async def consume(message: Message) -> None:
        path = message.get("path", "")
        if path.startswith(url) and message.get("method", "GET") in ("GET", "HEAD"):
            target = _static_file(root_path, path[len(url) :])
            data = None
            if target is not None:
                try:
                    data = await trio.Path(target).read_bytes()
                except OSError as exc:
                    log.warning("static file %s could not be read (%s); answered 404", target, exc)
            if target is not None and data is not None:
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
                    kind += "; charset=utf-8"
                body = b"" if message.get("method") == "HEAD" else data
                await send_response(message, Response(body, 200, content_type=kind))
                return
        if fallback is not None:
            await fallback(message)
        else:
            await send_response(message, Response(not_found_text(path), 404, content_type="text/plain"))

    return consume


def _static_file(root: Path, relative: str) -> Path | None:
    """The file *relative* names under *root*, or None: any path that cannot name a file there
    (a NUL byte, text that is not UTF-8, ``..`` out of the root, a name too long, a directory)
    is simply not found."""
    if "\x00" in relative or relative.endswith("/"):
        return None
    try:
        relative.encode("utf-8")
        target = (root / relative).resolve()
        if root in target.parents and target.is_file():
            return target
    except (OSError, ValueError):  # UnicodeEncodeError is a ValueError
        pass
    return None


def not_found_text(path: str) -> bytes:
    """The body of a plain 404 naming *path* (which may hold undecodable bytes as surrogates)."""
    return f"404 Not Found: {path}\n".encode("utf-8", "backslashreplace")


def http_fallback(
    http_app: ASGIApp | str | None = None, static_root: str | None = None, static_url: str = "/static/"
) -> Consumer | None:
    """The consumer for un-routed HTTP: the ASGI app, else static files, else ``None`` (404)."""
    if http_app is not None:
        return asgi_consumer(http_app)
    if static_root is not None:
        return static_files_consumer(static_root, static_url)
    return None


# ----------------------------------------------------------------------------- the browser client

#: The URL prefix of the browser client's files; ``/_trio_channels/`` is reserved for them.
CLIENT_PREFIX = "/_trio_channels/"

#: The files served under :data:`CLIENT_PREFIX`: ``{name: (package file, content type)}``.
#: ``client.js`` and ``client.mjs`` are the same file, ``trio-channels.js``: the ES module is
#: that classic script plus the ``export`` lines of :data:`MODULE_EXPORTS`.
CLIENT_FILES: dict[str, tuple[str, str]] = {
    "client.js": ("trio-channels.js", "text/javascript; charset=utf-8"),
    "client.mjs": ("trio-channels.js", "text/javascript; charset=utf-8"),
    "client.d.ts": ("trio-channels.d.ts", "application/typescript; charset=utf-8"),
}

#: What turns ``trio-channels.js`` into ``client.mjs``: its global, as named and default exports
#: (the names are the keys of the object the script builds; a browser test checks they agree).
MODULE_EXPORTS = (
    "\n// client.mjs: the classic script above, as an ES module\n"
    "export const { Client, Stream, TrioChannelsError, TimeoutError, RequestError, backoffDelay, EVENTS, "
    "REQUEST_KEY, VERSION } = TrioChannels;\n"
    "export default TrioChannels;\n"
)

_CLIENT_PATH = r"^/_trio_channels/(?P<name>client\.(?:js|mjs|d\.ts))$"


@functools.cache
def client_file(name: str) -> tuple[bytes, str, str]:
    """``(body, content type, ETag)`` of the client file *name* (a key of :data:`CLIENT_FILES`),
    read from the package data once; :exc:`KeyError` for any other name."""
    source, kind = CLIENT_FILES[name]
    body = resources.files("trio_channels").joinpath("static").joinpath(source).read_bytes()
    if name.endswith(".mjs"):
        body += MODULE_EXPORTS.encode()
    return body, kind, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


async def client_files(message: Message, name: str) -> None:
    """Answer ``GET``/``HEAD`` ``/_trio_channels/<name>`` with a client file.

    ``Cache-Control: no-cache`` with an ``ETag`` (a browser revalidates and gets ``304 Not
    Modified`` until the server's copy changes, so an upgrade reaches it at once), and
    ``Access-Control-Allow-Origin: *``: the file is public code, and a page served from another
    origin (a Django site beside a trio_channels server) may import the module.
    """
    body, kind, etag = client_file(name)
    headers = [
        ("Cache-Control", "no-cache"),
        ("ETag", etag),
        ("Access-Control-Allow-Origin", "*"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    asked = Headers(message.get("headers", [])).get("if-none-match")
    if asked is not None and etag in [tag.strip().removeprefix("W/") for tag in asked.split(",")]:
        await send_response(message, Response(b"", 304, [*headers, ("Content-Length", "0")], kind))
        return
    length = ("Content-Length", str(len(body)))
    content = b"" if message.get("method") == "HEAD" else body
    await send_response(message, Response(content, 200, [*headers, length], content_type=kind))


def client_route() -> Route:
    """The route of the client's files (:data:`CLIENT_FILES` under :data:`CLIENT_PREFIX`).

    A :class:`~trio_channels.routing.Router` puts it first, ahead of every route of the
    application, so no route takes those URLs by accident (a catch-all ``http.request`` route
    included). To take them deliberately (to serve a copy of your own), place
    ``client_route()`` in your routing yourself: the routes before it come first.
    """
    return Route("http.request", client_files, path=_CLIENT_PATH, method=r"^(?:GET|HEAD)$")
