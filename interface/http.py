"""One HTTP request against the layer, whatever the listener: ``http.request`` out, the
response back (reference §3.2-3.4).

The listener hands over the request (:class:`~interface.common.ConnectionInfo`), its body (an
async generator of byte strings that raises :exc:`~interface.common.ClientDisconnected` if the
client leaves before its end) and a :class:`~interface.common.HttpResponder`. The request's
task sends ``http.request`` with the first ``BODY_CHUNK`` of the body, then receives the
replies on the request's own reply channel and writes them: one task, unless the body is
larger than one chunk (then a second task streams the rest through a ``body_channel`` while
the response may already be coming back).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio

from layers import ChannelFull, ChannelLayerUnavailable
from layers.base import send_or_wait

from . import protocol
from .common import (
    BODY_CHUNK,
    BODY_DRAIN_TIMEOUT,
    ClientDisconnected,
    ConnectionInfo,
    HttpResponder,
    plain_text_headers,
)
from .logs import log, log_access
from .messages import as_layer_message

if TYPE_CHECKING:
    from .core import InterfaceServer, Replies

__all__ = ["serve_request"]


class _BodyTooLarge(Exception):
    pass


def _declared_length(headers: protocol.Headers) -> int:
    """The request's Content-Length (0 if absent; the listener has checked its syntax)."""
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            return int(value)
    return 0


@attrs.define(eq=False)
class _BodyReader:
    """Reads a request body in ``BODY_CHUNK`` pieces, counting it against *limit* bytes.

    :meth:`next_chunk` raises :exc:`_BodyTooLarge` once more than *limit* bytes arrived, and
    passes on the source's :exc:`ClientDisconnected`.
    """

    source: AsyncGenerator[bytes, None]
    limit: int
    received: int = 0
    complete: bool = False
    _pending: bytearray = attrs.Factory(bytearray)

    async def next_chunk(self) -> tuple[bytes, bool]:
        """The next ``BODY_CHUNK`` bytes (fewer at the end), and whether more follow."""
        # Read one byte past the chunk (or to the end) to know whether more follow.
        pending = self._pending
        while not self.complete and len(pending) <= BODY_CHUNK:
            try:
                piece = await self.source.__anext__()
            except StopAsyncIteration:
                self.complete = True
                break
            self.received += len(piece)
            if self.received > self.limit:
                raise _BodyTooLarge
            pending += piece
        if not pending:
            return b"", False  # the common case: no body
        chunk = bytes(pending[:BODY_CHUNK])
        del pending[:BODY_CHUNK]
        return chunk, bool(pending)

    async def drain(self, timeout: float) -> bool:
        """Read and drop the rest for *timeout* seconds at most; False if the client left."""
        self._pending.clear()
        with trio.move_on_after(timeout):
            try:
                async for _ in self.source:
                    pass
            except ClientDisconnected:
                return False
        return True


async def serve_request(
    server: InterfaceServer, info: ConnectionInfo, body: AsyncGenerator[bytes, None], respond: HttpResponder
) -> None:
    """Serve one HTTP request: send ``http.request``, then relay the response.

    Answers 413 for a body over ``max_body_size`` (declared or counted), 503 when the layer is
    full or down, or when no response comes within ``http_timeout``. A client that leaves
    mid-body gets nothing; a consumer reading the rest of the body is sent a ``closed`` chunk.
    ``http.disconnect`` follows, if anything consumes it (:meth:`InterfaceServer.wants`).
    """
    config = server.config
    request_line = f"{info.method} {info.path} HTTP/{info.http_version}"
    if server.over_limit():
        await respond.simple(503, b"Service unavailable: too many requests in flight.")
        log_access(info.client, request_line, 503, "-")
        return
    reader = _BodyReader(body, config.max_body_size)
    replies = server.open_replies()
    try:
        if _declared_length(info.headers) > config.max_body_size:
            await _refuse_body(reader, respond)
            log_access(info.client, request_line, 413, "-")
            return
        try:
            first, more = await reader.next_chunk()
        except _BodyTooLarge:
            await _refuse_body(reader, respond)
            log_access(info.client, request_line, 413, "-")
            return
        except ClientDisconnected:
            # The client left before its first chunk was complete: no request to speak of.
            log_access(info.client, request_line, "-", "-")
            return
        await _request(server, info, request_line, replies, respond, first, reader if more else None)
    finally:
        replies.close()


async def _request(
    server: InterfaceServer,
    info: ConnectionInfo,
    request_line: str,
    replies: Replies,
    respond: HttpResponder,
    first: bytes,
    rest: _BodyReader | None,
) -> None:
    layer = server.layer
    body_channel = await layer.new_channel("http.request.body?") if rest is not None else None
    message = protocol.http_request_message(
        reply_channel=replies.name,
        http_version=info.http_version,
        method=info.method,
        scheme=info.scheme,
        path=info.path,
        query_string=info.query_string,
        root_path=info.root_path or server.config.root_path,
        headers=info.headers,
        body=first,
        body_channel=body_channel,
        client=info.client,
        server=info.server,
    )
    try:
        await layer.send_owned("http.request", as_layer_message(message))
    except ChannelFull:
        await respond.simple(503, b"Request queue full.")
        log_access(info.client, request_line, 503, "-")
        return
    except ChannelLayerUnavailable as exc:
        log.warning("could not send http.request (%s: %s); answered 503", type(exc).__name__, exc)
        await respond.simple(503, b"Service unavailable: the channel layer is down.")
        log_access(info.client, request_line, 503, "-")
        return
    try:
        status, size = await _relay_response(server, request_line, replies, respond, body_channel, rest)
    finally:
        if server.wants("http.disconnect"):
            await _send_disconnect(server, replies.name, info.path, request_line)
    log_access(info.client, request_line, status, size)


async def _send_disconnect(server: InterfaceServer, reply_channel: str, path: str, request_line: str) -> None:
    with trio.move_on_after(1, shield=True) as scope:
        try:
            await server.layer.send_owned("http.disconnect", {"reply_channel": reply_channel, "path": path})
        except (ChannelFull, ChannelLayerUnavailable) as exc:  # dropped, as the spec says, not silently
            server.warn(
                "http.disconnect", f"dropped the http.disconnect of {request_line!r} ({type(exc).__name__})"
            )
    if scope.cancelled_caught:
        server.warn(
            "http.disconnect", f"dropped the http.disconnect of {request_line!r} (the layer took over 1 s)"
        )


async def _relay_response(
    server: InterfaceServer,
    request_line: str,
    replies: Replies,
    respond: HttpResponder,
    body_channel: str | None,
    rest: _BodyReader | None,
) -> tuple[int | str, int | str]:
    state = protocol.HttpResponseProtocol()
    status: int | str = "-"
    size = 0
    relay = trio.CancelScope(deadline=trio.current_time() + server.config.http_timeout)
    body_failure: list[str] = []
    answered = False  # an error answer or an abort was written: nothing more to write

    async def relay_replies() -> None:
        nonlocal status, size, answered
        with relay:
            while True:
                reply = await replies.receive()
                try:
                    actions = state.reply(reply)
                except ValueError as exc:
                    log.error("bad response message for %s: %s", replies.name, exc)
                    if state.started:
                        await respond.abort()
                    else:
                        await respond.simple(500, b"Internal server error: bad response message.")
                        status, size = 500, 0
                    state.finished = answered = True
                    return
                for action in actions:
                    if isinstance(action, protocol.ResponseStart):
                        status = action.status
                        await respond.start(action.status, action.headers)
                    elif isinstance(action, protocol.ResponseBody):
                        size += len(action.content)
                        await respond.body(action.content, action.more)
                    elif state.started:  # ResponseAbort: the application gave up mid-response
                        await respond.abort()
                        answered = True
                    else:
                        await respond.simple(500, b"Internal server error: the response was abandoned.")
                        status, size, answered = 500, 0, True
                if state.finished:
                    return

    if body_channel is None or rest is None:
        await relay_replies()  # the common case: this task alone
    else:

        async def stream_body(body_channel: str, rest: _BodyReader) -> None:
            failure = await _stream_body(server, replies.name, body_channel, rest)
            if failure is not None:
                body_failure.append(failure)
                relay.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_body, body_channel, rest)
            await relay_replies()
            nursery.cancel_scope.cancel()
    if answered:
        return status, size
    if body_failure:
        return await _answer_body_failure(body_failure[0], state, rest, respond, status, size)
    if not state.started:
        server.warn("http_timeout", f"no response to {request_line!r} within http_timeout; answered 503")
        await respond.simple(503, b"Worker server failed to respond within time limit.")
        return 503, "-"
    if not state.finished:
        log.warning("response for %s did not finish within http_timeout; aborted it", replies.name)
        await respond.abort()
    return status, size


async def _answer_body_failure(
    failure: str,
    state: protocol.HttpResponseProtocol,
    rest: _BodyReader | None,
    respond: HttpResponder,
    status: int | str,
    size: int,
) -> tuple[int | str, int | str]:
    # The body stopped before its end (the consumer was sent a closed chunk, if it could be).
    if failure == "disconnected":
        return status, size  # nobody left to answer
    if state.started:
        await respond.abort()
        return status, size
    if failure == "too large":
        assert rest is not None
        await _refuse_body(rest, respond)
        return 413, "-"
    await respond.simple(503, b"Service unavailable: the request body could not be delivered.")
    return 503, "-"


async def _stream_body(
    server: InterfaceServer, reply_channel: str, body_channel: str, rest: _BodyReader
) -> str | None:
    """Send the rest of the body in chunks; ``None`` once complete, else why it stopped.

    When the client leaves or the body passes ``max_body_size``, the consumer gets a last
    chunk with ``closed: True`` (reference §3.3) so it abandons the request at once.
    """
    layer = server.layer
    try:
        more = True
        while more:
            chunk, more = await rest.next_chunk()
            # The consumer may read slower than the client sends: wait (a minute at most).
            await send_or_wait(
                partial(layer.send_owned, body_channel, {"content": chunk, "more_content": more}), 60
            )
        return None
    except _BodyTooLarge:
        failure = "too large"
    except ClientDisconnected:
        failure = "disconnected"
    except (trio.TooSlowError, ChannelLayerUnavailable) as exc:  # full for a minute (not read), or down
        log.warning(
            "could not deliver the request body of %s (%s: %s); abandoned the request",
            reply_channel,
            type(exc).__name__,
            exc,
        )
        return "undeliverable"
    try:
        await send_or_wait(
            partial(layer.send_owned, body_channel, {"content": b"", "more_content": False, "closed": True}),
            1,
        )
    except (trio.TooSlowError, ChannelLayerUnavailable) as exc:
        log.warning(
            "could not tell the consumer of %s that its request body is %s (%s: %s)",
            reply_channel,
            "over max_body_size" if failure == "too large" else "cut short by the client",
            type(exc).__name__,
            exc,
        )
    return failure


async def _refuse_body(reader: _BodyReader, respond: HttpResponder) -> None:
    """Answer 413. The client may still be sending: its body is read (and dropped) for
    ``BODY_DRAIN_TIMEOUT`` seconds before the response ends, because closing a connection
    with unread data resets it and the client would never read the 413."""
    text = b"Request body too large."
    await respond.start(413, plain_text_headers(text))
    await respond.body(text, True)
    if await reader.drain(BODY_DRAIN_TIMEOUT):
        await respond.body(b"", False)  # a client still sending after that is cut off
