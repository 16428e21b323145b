"""The interface server's engine room: one :class:`InterfaceServer` per process.

It owns the process prefix ``interface.<random>!`` and one reply channel per connection under
it. On a layer with own channels (the ``own`` extension, every layer of this project) a
connection's task receives its replies itself (``layer.receive_own``): a reply goes from the
consumer's task straight to the connection's, with no relay task and no second queue; and
since an own channel's prefix is the process's own (``layer.own_prefix``), a reply from a
worker in this process never leaves it, on Redis too. On a layer without own channels, one
reply poller receives on the prefix (declared with ``layer.own_prefix`` for as long as it
runs) and hands each reply to its connection's bounded memory channel. Messages the interface
builds are given up to the layer (``send_owned``: no copy, no validation walk), and a sender
that finds a channel full waits for room in the layer's queue of waiting senders
(:meth:`InterfaceServer.send_waiting`).

Each connection runs as a task of its listener and talks to the layer through
:meth:`InterfaceServer.http` (:mod:`interface.http`) or :meth:`InterfaceServer.websocket`
(:mod:`interface.ws`). :meth:`InterfaceServer.run` runs what the server needs besides: the
heartbeat that pings every WebSocket (one task for all of them) and, on a layer without own
channels, the reply poller.

Reply channel names carry 72 bits of OS randomness each (DESIGN §5 asks for at least 64): the
bytes are drawn from ``os.urandom`` 1,024 names at a time, so a connection costs no system
call, and every name is as unguessable as a ``secrets`` token (a counter or a seeded PRNG
would let one name predict the next).
"""

from __future__ import annotations

import base64
import gc
import math
import os
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from layers import BaseChannelLayer, ChannelLayerUnavailable

from . import http as _http
from . import ws as _ws
from .common import (
    ClientDisconnected,
    ConnectionInfo,
    HttpResponder,
    InterfaceConfig,
    WebSocketClosed,
    WebSocketTransport,
)
from .counters import InterfaceCounters, InterfaceStatistics
from .logs import DROP_LOG_INTERVAL, DropLog, log
from .proxy import TrustedProxies, apply_proxy_headers

if TYPE_CHECKING:
    from .ws import Session

__all__ = [
    "DROP_LOG_INTERVAL",
    "ClientDisconnected",
    "ConnectionInfo",
    "DropLog",
    "HttpResponder",
    "InterfaceConfig",
    "InterfaceServer",
    "InterfaceStatistics",
    "Replies",
    "WebSocketClosed",
    "WebSocketTransport",
]

#: After this many WebSockets closed, and once closes stop for TRIM_QUIET seconds (TRIM_WAIT at
#: most), the server runs one full garbage collection (see InterfaceServer._trim_memory).
TRIM_AFTER_CLOSES: Final = 1000
TRIM_QUIET: Final = 3.0
TRIM_WAIT: Final = 30.0

#: Random bytes per reply channel name (72 bits: 12 URL-safe characters).
NAME_BYTES: Final = 9
_NAMES_PER_DRAW: Final = 1024


class _Names:
    """Reply channel names without a system call each (see the module docstring)."""

    __slots__ = ("_pool", "_used")

    def __init__(self) -> None:
        self._pool = b""
        self._used = 0

    def next(self, prefix: str) -> str:
        used = self._used
        if used + NAME_BYTES > len(self._pool):
            self._pool, used = os.urandom(NAME_BYTES * _NAMES_PER_DRAW), 0
        self._used = used + NAME_BYTES
        return prefix + base64.urlsafe_b64encode(self._pool[used : used + NAME_BYTES]).decode("ascii")

    def forget(self) -> None:
        self._pool, self._used = b"", 0


_names = _Names()
# A forked child must not hand out the names its parent still holds.
os.register_at_fork(after_in_child=_names.forget)


@attrs.define(eq=False, slots=True)
class Replies:
    """One connection's reply channel: its name, how its replies arrive, what it dropped.

    ``await replies.receive()`` is the next reply, in sending order (cancellation loses
    nothing). A reply that does not fit (``reply_buffer``) is counted in :attr:`drops` and
    reported to :attr:`on_overflow`, if set.
    """

    name: str
    receive: Callable[[], Awaitable[dict[str, Any]]]
    reply_buffer: int
    _server: InterfaceServer | None
    _layer: BaseChannelLayer | None = None  # set for an own channel of the layer
    _polled: trio.MemoryReceiveChannel[dict[str, Any]] | None = None  # else: the poller's
    on_overflow: Callable[[], None] | None = None
    _drops: DropLog | None = None
    _close: Callable[[], object] | None = None
    kind: str = "http"  # which InterfaceCounters kind it counts as

    async def receive_nowait(self) -> dict[str, Any]:
        """The next reply if one is waiting, else :exc:`trio.WouldBlock`."""
        if self._layer is not None:
            return await self._layer.receive_own_nowait(self.name)
        assert self._polled is not None
        return self._polled.receive_nowait()

    @property
    def drops(self) -> DropLog:
        """This connection's :class:`DropLog` (made on first use: most connections drop nothing)."""
        if self._drops is None:
            self._drops = DropLog(
                self.name, counts=None if self._server is None else self._server.counters.dropped
            )
        return self._drops

    def overflowed(self, _: str = "") -> None:
        self.drops.dropped(
            "reply", f"its reply_buffer of {self.reply_buffer} is full: the client is not reading"
        )
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        """Drop what still waits for this connection; later replies to it are dropped too."""
        if self._server is not None:
            self._server._open -= 1
            self._server.counters.closed(self.kind)
            self._server = None
        if self._layer is not None:
            self._layer.close_own(self.name)
            self._layer = None
        if self._close is not None:
            self._close()
            self._close = None
        if self._drops is not None:
            self._drops.close()


@attrs.define(eq=False, slots=True)
class _Polled:
    """A connection's memory channel, fed by the reply poller (layers without own channels)."""

    sender: trio.MemorySendChannel[dict[str, Any]]
    replies: Replies


@attrs.define(eq=False, slots=True)
class _Heartbeat:
    """Pings every open WebSocket every ``interval`` seconds, from one task for all of them,
    and closes those that sent no pong within ``timeout`` seconds of a ping.

    Sessions come in the order they opened and are pinged at a constant interval, so the
    schedules stay sorted by due time with appends alone: dicts in insertion order, no heap,
    no task per connection, and a closed session leaves at once (:meth:`remove`), so nothing
    of it outlives its socket.
    """

    interval: float
    timeout: float
    #: When each session is pinged next.
    _pings: dict[Session, float] = attrs.Factory(dict)
    #: The earliest unanswered ping of each session: (pong deadline, its pong count then).
    _pongs: dict[Session, tuple[float, int]] = attrs.Factory(dict)
    _wakeup: trio.Event = attrs.Factory(trio.Event)

    def add(self, session: Session) -> None:
        if not self._pings:
            self._wakeup.set()
        self._pings[session] = trio.current_time() + self.interval

    def remove(self, session: Session) -> None:
        self._pings.pop(session, None)
        self._pongs.pop(session, None)

    async def run(self) -> None:
        pings, pongs = self._pings, self._pongs
        while True:
            now = trio.current_time()
            due = [session for session, _ in _until(pings.items(), now)]
            for session in due:
                del pings[session]
                pings[session] = now + self.interval
                before = session.request_ping()
                if session not in pongs:
                    pongs[session] = (now + self.timeout, before)
            late = [(session, before) for session, (_, before) in _until(pongs.items(), now)]
            for session, before in late:
                del pongs[session]
                if session.transport.pongs <= before:
                    session.ping_timed_out(self.timeout)
            next_due = min(
                next(iter(pings.values()), math.inf), next((at for at, _ in pongs.values()), math.inf)
            )
            if next_due == math.inf:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            else:
                await trio.sleep_until(next_due)


def _until(items: Any, now: float) -> Iterator[Any]:
    """The (key, value) pairs of a schedule ordered by due time that are due at *now*."""
    for key, value in items:
        if (value if isinstance(value, float) else value[0]) > now:
            return
        yield key, value


def _proxied(info: ConnectionInfo, trusted: TrustedProxies) -> ConnectionInfo:
    client, scheme = apply_proxy_headers(trusted, info.client, info.scheme, info.headers)
    return (
        attrs.evolve(info, client=client, scheme=scheme)
        if (client, scheme) != (info.client, info.scheme)
        else info
    )


@attrs.define(eq=False)
class InterfaceServer:
    """Connections of this process <-> *layer*; see the module docstring.

    ``consumed_channels`` is what the application consumes, when the server knows it (all
    workers run in this process on an unshared layer: ``serve()`` says so); ``None`` means it
    cannot know, and every optional message (``http.disconnect``) is sent.
    """

    layer: BaseChannelLayer
    config: InterfaceConfig = attrs.Factory(InterfaceConfig)
    prefix: str = attrs.Factory(lambda: f"interface.{secrets.token_urlsafe(9)}!")
    shutting_down: trio.Event = attrs.Factory(trio.Event)
    consumed_channels: frozenset[str] | None = None
    _sessions: dict[str, Session] = attrs.Factory(dict)
    _polled: dict[str, _Polled] = attrs.Factory(dict)
    #: Connections and drops, for :meth:`statistics` (the metrics).
    counters: InterfaceCounters = attrs.field(factory=InterfaceCounters, init=False)
    _warnings: DropLog = attrs.field(
        default=attrs.Factory(
            lambda self: DropLog("interface", interval=60, counts=self.counters.dropped), takes_self=True
        ),
        init=False,
    )
    #: Requests in flight plus WebSockets open (reply channels open), for limit_concurrency.
    _open: int = 0
    _closed_since_trim: int = 0
    _trim_due: trio.Event = attrs.Factory(trio.Event)
    _quiet: trio.CancelScope | None = None
    _quiet_until: float = 0.0
    _heartbeat: _Heartbeat = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._heartbeat = _Heartbeat(self.config.ping_interval, self.config.ping_timeout)

    @property
    def websocket_lifetime(self) -> float:
        timeout = self.config.websocket_timeout
        return self.layer.group_expiry if timeout is None else (math.inf if timeout < 0 else timeout)

    @property
    def own_channels(self) -> bool:
        """Whether connections receive their replies themselves (the layer has own channels)."""
        return "own" in self.layer.extensions

    def wants(self, channel: str) -> bool:
        """Whether anything may consume *channel* (so an optional message to it is worth sending)."""
        consumed = self.consumed_channels
        return consumed is None or channel in consumed

    # -- replies ---------------------------------------------------------------------------

    def statistics(self) -> InterfaceStatistics:
        """Connections open and taken on, by kind, and what was dropped (see ``interface.counters``)."""
        return self.counters.snapshot()

    def open_replies(self, kind: str = "http") -> Replies:
        """A new reply channel for one connection of *kind* (``"http"``, ``"websocket"``);
        :meth:`Replies.close` it when the connection ends."""
        name = _names.next(self.prefix)
        buffer = self.config.reply_buffer
        layer = self.layer
        self._open += 1
        self.counters.opened(kind)
        if self.own_channels:
            replies = Replies(name, partial(layer.receive_own, name), buffer, self, layer, kind=kind)
            layer.open_own(name, capacity=buffer, on_overflow=replies.overflowed)
            return replies
        sender, receiver = trio.open_memory_channel[dict[str, Any]](buffer)
        replies = Replies(name, receiver.receive, buffer, self, polled=receiver, kind=kind)
        self._polled[name] = _Polled(sender, replies)

        def close() -> None:
            del self._polled[name]
            sender.close()
            receiver.close()

        replies._close = close
        return replies

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """What the server runs besides its connections, until cancelled: the WebSocket
        heartbeat, the memory trim after a burst of closes, and the reply poller on a layer
        without own channels."""
        async with trio.open_nursery() as nursery:
            if self.config.ping_interval > 0:
                nursery.start_soon(self._heartbeat.run)
            if not self.own_channels:
                nursery.start_soon(self._poll_replies)
            nursery.start_soon(self._trim_memory)
            task_status.started()

    #: The name ``run`` had when all it did was poll replies.
    run_reply_poller = run

    async def _poll_replies(self) -> None:
        with self.layer.own_prefix(self.prefix):
            await self._poll_reply_loop()

    async def _poll_reply_loop(self) -> None:
        failures = 0
        while True:
            try:
                channel, message = await self.layer.receive([self.prefix])
            except ChannelLayerUnavailable as exc:
                failures += 1
                pause = min(5.0, 0.05 * 2**failures)
                log.warning(
                    "reply poller: channel layer error (%s: %s); retrying in %.2f s",
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await trio.sleep(pause)
                continue
            if failures:
                log.info("reply poller: channel layer is back")
                failures = 0
            polled = self._polled.get(channel)
            if polled is None:
                # The client left: group sends reach departed members until they are discarded.
                log.debug("reply for %s, which is gone; dropped", channel)
                continue
            try:
                polled.sender.send_nowait(message)
            except trio.WouldBlock:
                polled.replies.overflowed()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- WebSockets open -------------------------------------------------------------------

    def _session_opened(self, session: Session) -> None:
        self._sessions[session.name] = session
        if self.config.ping_interval > 0:
            self._heartbeat.add(session)
        if self.shutting_down.is_set():
            session.request_close(1001)

    def _session_closed(self, session: Session) -> None:
        self._sessions.pop(session.name, None)
        self._heartbeat.remove(session)
        self._closed_since_trim += 1
        if self._closed_since_trim >= TRIM_AFTER_CLOSES:
            self._trim_due.set()
        if self._quiet is not None:  # still closing: the trim waits for quiet
            self._quiet.deadline = min(trio.current_time() + TRIM_QUIET, self._quiet_until)

    async def _trim_memory(self) -> None:
        # After a burst of closes (a deploy, a network blip), once no socket closed for
        # TRIM_QUIET seconds (at most TRIM_WAIT after the burst), one full garbage collection:
        # it clears the interpreter's free lists, whose few objects otherwise pin the
        # allocator's arenas and keep the process at its peak RSS (measured: 10,000 sockets
        # closed, RSS 161 -> 105 MiB).
        while True:
            await self._trim_due.wait()
            self._quiet_until = trio.current_time() + TRIM_WAIT
            with trio.CancelScope(deadline=trio.current_time() + TRIM_QUIET) as self._quiet:
                await trio.sleep_forever()
            self._quiet = None
            self._trim_due = trio.Event()
            self._closed_since_trim = 0
            gc.collect()

    async def close_websockets(self) -> None:
        """Graceful shutdown: close every WebSocket with 1001 ("going away"), and those that
        open from now on."""
        self.shutting_down.set()
        for session in list(self._sessions.values()):
            session.request_close(1001)
        await trio.lowlevel.checkpoint()

    def restart_websockets(self, code: int = 1012) -> int:
        """Close every WebSocket open now with *code* (1012, "service restart": clients should
        reconnect); those opened afterwards stay open. Returns how many were open."""
        sessions = list(self._sessions.values())
        for session in sessions:
            session.request_close(code)
        return len(sessions)

    async def run_membership_watcher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Whenever the layer reports lost group memberships, close every WebSocket with 1012,
        so clients reconnect and their connect consumers add them again. Runs until cancelled."""
        task_status.started()
        while True:
            await self.layer.membership_lost.wait()
            count = self.restart_websockets(1012)
            log.warning(
                "the channel layer lost its group memberships (%s); closing %d WebSocket(s) with 1012 "
                "(service restart) so that their clients reconnect and join their groups again",
                self.layer.last_membership_lost,
                count,
            )

    # -- the two kinds of connection -------------------------------------------------------

    async def http(
        self, info: ConnectionInfo, body: AsyncGenerator[bytes, None], respond: HttpResponder
    ) -> None:
        """Serve one HTTP request: send ``http.request``, then relay the response.

        *body* yields the request body and raises :exc:`ClientDisconnected` if the client leaves
        before its end; *respond* writes the response. See ``interface.http.serve_request``.
        """
        if self.config.proxy_headers:
            info = _proxied(info, self.config.forwarded_allow_ips)
        await _http.serve_request(self, info, body, respond)

    def choose_subprotocol(self, offered: Sequence[str]) -> str | None:
        return next((name for name in offered if name in self.config.ws_protocols), None)

    async def websocket(self, info: ConnectionInfo, transport: WebSocketTransport) -> None:
        """Serve one WebSocket from handshake to close (see ``interface.ws.serve_websocket``)."""
        if self.config.proxy_headers:
            info = _proxied(info, self.config.forwarded_allow_ips)
        serving = _ws.serve_websocket(self, info, transport)
        del info  # the connection holds it only as long as it needs it
        await serving

    async def send_waiting(self, channel: str, message: dict[str, Any], timeout: float) -> None:
        """Send *message*, which the interface built and gives up (``send_owned``), to
        *channel*, waiting while it is full; :exc:`trio.TooSlowError` after *timeout* seconds
        (the message was not sent).

        The waiting is the layer's (``wait=True``): senders that find a channel full queue
        behind one another, first come, first served, and only the first tries again, when
        a receive in this process makes room (or, where the channel drains elsewhere, after a
        short backoff): ten thousand sockets waiting for room cost one retry, not ten
        thousand, and the workers get the CPU to make the room.
        """
        with trio.fail_after(timeout):
            await self.layer.send_owned(channel, message, wait=True)

    def over_limit(self) -> bool:
        """Whether ``limit_concurrency`` requests and WebSockets are in flight already: a new
        request then gets a 503, a new handshake is denied with 503 (uvicorn's rule)."""
        limit = self.config.limit_concurrency
        return limit is not None and self._open >= limit

    def warn(self, kind: str, text: str) -> None:
        """A WARNING for what can happen on every request: the first at once, then at most one
        line a minute per *kind*, with the count."""
        self._warnings.happened(kind, text)
