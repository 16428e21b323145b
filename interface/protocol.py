"""The I/O-free translation between connections and ASGI-1 channel messages.

Every listener (Hypercorn's HTTP path, the WebSocket fast path, the trio-websocket-only
listener) builds its messages and applies its replies through this module, so they emit the
same message stream.

WebSocket state machine (reference §3.7)::

    CONNECTING --accept / data--> OPEN --close / client close--> CLOSED
        |                                            ^
        +--accept False / close, no data (403)-------+

``order`` numbers every message sent for one connection: ``websocket.connect`` is 0, each
``websocket.receive`` is 1, 2, ..., and ``websocket.disconnect`` comes last. A frame the layer
refused gives its number back (:meth:`WebSocketProtocol.receive_refused`), so the numbers the
application sees have no gaps and ``enforce_ordering`` never waits for a message that will not
come.

Closing: the first close decides the code the application is told (``close_code``). Our
side's (:meth:`WebSocketProtocol.local_close`: the application, a shutdown, a slow client, a
ping timeout) or the client's (:meth:`WebSocketProtocol.remote_close`: its close frame, a TCP
drop, a protocol error); once ``closing``, frames from the client are no longer delivered.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final
from urllib.parse import unquote

import attrs

from layers.groups import HISTORY_KEY

from .frames import websocket_frame
from .messages import Headers, HttpRequest, WebSocketConnect, WebSocketDisconnect, WebSocketReceive

__all__ = [
    "Accept",
    "Close",
    "Headers",
    "HttpResponseProtocol",
    "Reject",
    "ResponseAbort",
    "ResponseAction",
    "ResponseBody",
    "ResponseStart",
    "SendBytes",
    "SendText",
    "WebSocketAction",
    "WebSocketProtocol",
    "WebSocketState",
    "clean_headers",
    "decode_path",
    "http_request_message",
]

REPLY_KEYS: Final = frozenset({"bytes", "text", "close", "accept"})


def clean_headers(raw: Iterable[tuple[bytes, bytes]] | Iterable[Sequence[bytes]]) -> Headers:
    """Lower-case names, keep order and duplicates, drop names containing ``_``.

    Dropping underscored names stops ``X_Forwarded_For`` from impersonating
    ``X-Forwarded-For`` once names are normalised (Daphne does the same; CVE-2015-0219).
    """
    headers: Headers = []
    for name, value in raw:
        name = bytes(name).lower()
        if b"_" in name:
            continue
        headers.append([name, bytes(value)])
    return headers


def decode_path(raw_path: bytes | str) -> str:
    """Percent-decode a request path into text (``+`` stays ``+``; bytes that are not UTF-8
    become U+FFFD, as Hypercorn and uvicorn decode them: the message must be valid UTF-8)."""
    if isinstance(raw_path, bytes):
        raw_path = raw_path.decode("latin-1")
    return unquote(raw_path, encoding="utf-8", errors="replace")


def http_request_message(
    *,
    reply_channel: str,
    http_version: str,
    method: str,
    scheme: str,
    path: str,
    query_string: bytes,
    root_path: str,
    headers: Headers,
    body: bytes,
    body_channel: str | None,
    client: list[Any] | None,
    server: list[Any] | None,
) -> HttpRequest:
    """The ``http.request`` message (reference §3.2); every key present."""
    return {
        "reply_channel": reply_channel,
        "http_version": http_version,
        "method": method.upper(),
        "scheme": scheme,
        "path": path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": headers,
        "body": body,
        "body_channel": body_channel,
        "client": client,
        "server": server,
    }


# ----------------------------------------------------------------------------- HTTP replies


@attrs.frozen
class ResponseStart:
    status: int
    headers: Headers


@attrs.frozen
class ResponseBody:
    content: bytes
    more: bool


@attrs.frozen
class ResponseAbort:
    """Abandon the response: the client must see it incomplete (or get a 500 if not started)."""


# h11's rules (RFC 9110 §5.1, §5.5): a name is a token; a value has no NUL, CR, LF or other
# whitespace than single spaces and tabs between visible characters. Outer spaces and tabs are
# not part of the value and are stripped.
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE: Final = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_DIGITS: Final = re.compile(rb"[0-9]+")


def _check_headers(headers: object) -> Headers:
    """Response headers as the listener may send them, or :exc:`ValueError` naming the bad one."""
    if not isinstance(headers, list):
        raise ValueError(f"response headers must be a list of [name, value] byte pairs, not {headers!r:.80}")
    checked: Headers = []
    for pair in headers:
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(part, bytes) for part in pair)
        ):
            raise ValueError(f"response header {pair!r:.80} must be a [name, value] pair of bytes")
        name, value = pair[0].lower(), pair[1].strip(b" \t")
        if not _TOKEN.fullmatch(name):
            raise ValueError(
                f"response header name {pair[0]!r:.80} is invalid: it must be a token "
                "(letters, digits and !#$%&'*+-.^_`|~)"
            )
        if not _FIELD_VALUE.fullmatch(value):
            raise ValueError(
                f"response header {pair[0]!r:.80} has an invalid value {pair[1]!r:.80}: values must not "
                "contain CR, LF, NUL or whitespace other than spaces and tabs"
            )
        if name == b"content-length" and not _DIGITS.fullmatch(value):
            raise ValueError(
                f"response header {pair[0]!r:.80} has an invalid value {pair[1]!r:.80}: content-length "
                "must be a decimal number"
            )
        checked.append([name, value])
    return checked


ResponseAction = ResponseStart | ResponseBody | ResponseAbort


@attrs.define
class HttpResponseProtocol:
    """Applies Response / Response Chunk messages (reference §3.4) for one request."""

    started: bool = False
    finished: bool = False

    def reply(self, message: dict[str, Any]) -> list[ResponseAction]:
        """The actions for one reply message; :exc:`ValueError` if it breaks the format.

        A message with ``closed: True`` (our extension, the twin of a Request Body Chunk's
        ``closed``) abandons the response: :class:`ResponseAbort`, whatever came before.
        """
        if self.finished:
            return []
        if message.get("closed"):
            self.finished = True
            return [ResponseAbort()]
        actions: list[ResponseAction] = []
        if "status" in message:
            if self.started:
                raise ValueError("got a second Response message (with 'status') for one request")
            status = message["status"]
            if type(status) is not int or not 100 <= status <= 599:
                raise ValueError(f"response status {status!r} is invalid: it must be an int from 100 to 599")
            actions.append(ResponseStart(status, _check_headers(message.get("headers", []))))
            self.started = True
        elif not self.started:
            raise ValueError(f"the first response message must have 'status'; got keys {sorted(message)}")
        content = message.get("content", b"")
        if not isinstance(content, bytes):
            raise ValueError(f"response content must be bytes, not {type(content).__name__}")
        more = bool(message.get("more_content", False))
        actions.append(ResponseBody(content, more))
        self.finished = not more
        return actions


# ----------------------------------------------------------------------------- WebSocket


class WebSocketState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class Accept:
    """Accept the handshake (the listener picks the subprotocol: ``choose_subprotocol``)."""


@attrs.frozen
class Reject:
    status: int = 403


@attrs.frozen
class SendText:
    text: str


@attrs.frozen
class SendBytes:
    data: bytes


@attrs.frozen
class Close:
    code: int = 1000


WebSocketAction = Accept | Reject | SendText | SendBytes | Close


def _close_code(value: object) -> int:
    if value is True:
        return 1000
    if type(value) is int and (value == 1000 or 3000 <= value <= 4999 or 1001 <= value <= 1014):
        return value
    raise ValueError(f"close code {value!r} is invalid: use True (1000), 1000-1014 or 3000-4999")


@attrs.define
class WebSocketProtocol:
    """One WebSocket connection: the messages it emits and how replies apply to it."""

    reply_channel: str
    path: str
    query_string: bytes = b""
    headers: Headers = attrs.Factory(list)
    client: list[Any] | None = None
    server: list[Any] | None = None
    scheme: str = "ws"
    root_path: str = ""
    subprotocols: Sequence[str] = ()
    state: WebSocketState = WebSocketState.CONNECTING
    received: int = 0
    #: The code the application is told in ``websocket.disconnect`` (the first close decides).
    close_code: int = 1006
    #: Whether a close has begun (ours or the client's).
    closing: bool = False

    def local_close(self, code: int, reported: int | None = None) -> bool:
        """Our side closes with *code*; the application will be told *reported* instead if
        given (a ping timeout sends 1011 but reports 1006: no close frame came back, RFC 6455
        §7.1.5). True if this is the first close, so a close frame with *code* should go out."""
        if self.closing:
            return False
        self.closing = True
        self.close_code = code if reported is None else reported
        return True

    def remote_close(self, code: int) -> None:
        """The client closed, or the connection ended, with *code* (1005 for a close frame
        without one, 1006 for a TCP drop); it decides the code unless our close came first."""
        if not self.closing:
            self.closing = True
            self.close_code = int(code)

    def connect_message(self) -> WebSocketConnect:
        return {
            "reply_channel": self.reply_channel,
            "scheme": self.scheme,
            "path": self.path,
            "query_string": self.query_string,
            "root_path": self.root_path,
            "headers": self.headers,
            "client": self.client,
            "server": self.server,
            "subprotocols": list(self.subprotocols),
            "order": 0,
        }

    # The builders below put plain str, bytes and int in every message, whatever subclass a
    # transport hands over (wsproto's close codes are its CloseReason IntEnum, for one): the
    # layer accepts only exact builtin types, and the message would otherwise be refused.

    def receive_message(self, data: str | bytes) -> WebSocketReceive:
        """``websocket.receive`` for one frame; an empty frame is a message too."""
        self.received += 1
        message: WebSocketReceive = {
            "reply_channel": self.reply_channel,
            "path": self.path,
            "order": self.received,
        }
        if isinstance(data, str):
            message["text"] = data if type(data) is str else str.__str__(data)
        else:
            message["bytes"] = data if type(data) is bytes else bytes(data)
        return message

    def receive_refused(self) -> None:
        """The last :meth:`receive_message` was not sent (the layer refused it): give its
        ``order`` back, so the next message takes it."""
        self.received -= 1

    def disconnect_message(self, code: int | None = None) -> WebSocketDisconnect:
        """``websocket.disconnect`` with *code* (default: :attr:`close_code`)."""
        self.state = WebSocketState.CLOSED
        return {
            "reply_channel": self.reply_channel,
            "code": int(self.close_code if code is None else code),
            "path": self.path,
            "order": self.received + 1,
        }

    def reply(self, message: dict[str, Any]) -> list[WebSocketAction]:
        """The actions for one Send/Close/Accept message; :exc:`ValueError` if malformed.

        A group message's history position and a presence event become text frames first
        (:func:`interface.frames.websocket_frame`).
        """
        if HISTORY_KEY in message or "presence" in message:
            message = websocket_frame(message)
        unknown = set(message) - REPLY_KEYS
        if unknown:
            raise ValueError(
                f"WebSocket reply has unknown key(s) {sorted(unknown)}; allowed: accept, text, bytes, close"
            )
        text, data = message.get("text"), message.get("bytes")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"WebSocket reply 'text' must be str, not {type(text).__name__}")
        if data is not None and not isinstance(data, bytes):
            raise ValueError(f"WebSocket reply 'bytes' must be bytes, not {type(data).__name__}")
        if text is not None and data is not None:
            raise ValueError("WebSocket reply has both 'text' and 'bytes'; send one per message")
        close = message.get("close", False)
        code = _close_code(close) if close else None
        # An empty frame is a frame (Daphne dropped them; a client may rely on them as signals).
        frame: list[WebSocketAction] = (
            [SendText(text)] if text is not None else [SendBytes(data)] if data is not None else []
        )
        actions: list[WebSocketAction] = []
        if self.state is WebSocketState.CONNECTING:
            accept = message.get("accept")
            if accept is False:
                self.state = WebSocketState.CLOSED
                return [Reject(403)]
            if accept or frame:
                self.state = WebSocketState.OPEN
                actions.append(Accept())
            elif code is not None:
                self.state = WebSocketState.CLOSED
                return [Reject(403)]
            else:
                return []
        elif self.state is WebSocketState.CLOSED:
            return []
        actions.extend(frame)
        if code is not None:
            self.state = WebSocketState.CLOSED
            actions.append(Close(code))
        return actions
