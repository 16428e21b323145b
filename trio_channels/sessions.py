"""Sessions for consumers: stores, ``Session``, and the session decorators.

* :class:`SessionStore` is the protocol; :class:`InMemorySessionStore` is the default,
  :class:`RedisSessionStore` is shared by every process (needed with several workers).
* ``@channel_session`` keys a session by the reply channel: per-connection state that any
  worker can read (``message.channel_session``).
* ``@http_session`` reads the HTTP session from the ``sessionid`` cookie (name configurable)
  or the ``?session_key=`` query parameter (``message.http_session``, ``None`` when there is
  none). On ``http.request`` consumers a session is always there, and a new or modified one
  sets its cookie on the consumer's buffered response.
* ``@channel_and_http_session`` does both and remembers the HTTP session key in the channel
  session, so later messages of the connection (which carry no cookies) see it too.
* ``@enforce_ordering`` runs a connection's messages strictly in ``order``.

Decorators work on functions and methods (the :class:`~trio_channels.Message` is found among
the first two positional arguments). Sessions are saved after the consumer and before its
buffered sends are flushed, so a reply never overtakes the state it depends on.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Protocol

import attrs
import trio

from layers.base import decode_message, encode_message

from .channel import Channel, ContextSetter, Message, _current_outbox
from .http import cookie_header, parse_cookies

__all__ = [
    "DEFAULT_SESSION_AGE",
    "InMemorySessionStore",
    "RedisSessionStore",
    "Session",
    "SessionMiddleware",
    "SessionStore",
    "channel_and_http_session",
    "channel_session",
    "current_session_store",
    "enforce_ordering",
    "http_session",
    "session_for_reply_channel",
    "use_session_store",
]

log = logging.getLogger("trio_channels.sessions")

#: Two weeks, Django's SESSION_COOKIE_AGE.
DEFAULT_SESSION_AGE = 14 * 24 * 3600
#: The cookie that carries the HTTP session key.
SESSION_COOKIE_NAME = "sessionid"


class SessionStore(Protocol):
    """Where sessions live. Keys are strings; data is a dict of message-safe values."""

    async def load(self, key: str) -> dict[str, Any] | None:
        """The data stored under *key*, or ``None`` if there is none (or it expired)."""

    async def save(self, key: str, data: dict[str, Any], ttl: float) -> None:
        """Store *data* under *key* for *ttl* seconds."""

    async def delete(self, key: str) -> None:
        """Forget *key*; no error if it is unknown."""

    async def create(self, data: dict[str, Any], ttl: float) -> str:
        """Store *data* under a new unguessable key (at least 128 bits) and return the key."""


def new_session_key() -> str:
    """32 characters from a 192-bit random token."""
    return secrets.token_urlsafe(24)[:32]


@attrs.define(eq=False)
class InMemorySessionStore:
    """Sessions in this process's memory (fine for one process; use Redis for several)."""

    _data: dict[str, tuple[float, bytes]] = attrs.Factory(dict)

    async def load(self, key: str) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        found = self._data.get(key)
        if found is None:
            return None
        expires, data = found
        if expires <= time.monotonic():
            del self._data[key]
            return None
        return decode_message(data)

    async def save(self, key: str, data: dict[str, Any], ttl: float) -> None:
        await trio.lowlevel.checkpoint()
        self._data[key] = (time.monotonic() + ttl, encode_message(data))

    async def delete(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._data.pop(key, None)

    async def create(self, data: dict[str, Any], ttl: float) -> str:
        while True:
            key = new_session_key()
            if key not in self._data:
                await self.save(key, data, ttl)
                return key


@attrs.define(eq=False)
class RedisSessionStore:
    """Sessions in Redis, shared by every process: ``async with RedisSessionStore(url) as store``.

    Uses the Redis layer's Trio-native connection. Values are msgpack; keys expire with the
    session (``SET ... PX``).
    """

    url: Any = "redis://localhost:6379/0"  # a URL or a layers.redis.RedisAddress
    prefix: str = "trio_channels:session"
    _pool: Any = None
    _stack: Any = None

    async def __aenter__(self) -> RedisSessionStore:
        import contextlib

        from layers.redis.connection import ConnectionPool, RedisAddress

        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        address = self.url if isinstance(self.url, RedisAddress) else RedisAddress.from_url(self.url)
        self._pool = ConnectionPool(address, nursery)
        stack.callback(nursery.cancel_scope.cancel)
        stack.push_async_callback(self._pool.aclose)
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        await stack.__aexit__(*exc_info)

    async def _execute(self, *args: Any) -> Any:
        if self._pool is None:
            raise RuntimeError(
                "the Redis session store is not open: use 'async with RedisSessionStore(url) as store:'"
            )
        return await self._pool.execute(*args)

    async def load(self, key: str) -> dict[str, Any] | None:
        data = await self._execute("GET", f"{self.prefix}:{key}")
        return None if data is None else decode_message(data)

    async def save(self, key: str, data: dict[str, Any], ttl: float) -> None:
        await self._execute(
            "SET", f"{self.prefix}:{key}", encode_message(data), "PX", max(1, int(ttl * 1000))
        )

    async def delete(self, key: str) -> None:
        await self._execute("DEL", f"{self.prefix}:{key}")

    async def create(self, data: dict[str, Any], ttl: float) -> str:
        while True:
            key = new_session_key()
            ttl_ms = max(1, int(ttl * 1000))
            if await self._execute("SET", f"{self.prefix}:{key}", encode_message(data), "PX", ttl_ms, "NX"):
                return key


_current_store: contextvars.ContextVar[SessionStore | None] = contextvars.ContextVar(
    "trio_channels.session_store", default=None
)
_default_store = InMemorySessionStore()


def current_session_store() -> SessionStore:
    """The store set by ``serve(session_store=...)`` / :func:`use_session_store`, else an in-memory one."""
    return _current_store.get() or _default_store


class use_session_store(ContextSetter[SessionStore]):
    """``with use_session_store(store):`` makes *store* current for this task and its children."""

    variable = _current_store


# ----------------------------------------------------------------------------- Session


@attrs.define(eq=False, repr=False)
class Session(MutableMapping[str, Any]):
    """A dict-like session with ``modified``, ``session_key``, ``save()`` and ``flush()``."""

    store: SessionStore
    session_key: str | None = None
    age: float = DEFAULT_SESSION_AGE
    _data: dict[str, Any] = attrs.Factory(dict)
    modified: bool = False
    #: The key the session had when it was loaded (login rotates it).
    original_key: str | None = None

    @classmethod
    async def load(cls, store: SessionStore, key: str | None, age: float = DEFAULT_SESSION_AGE) -> Session:
        """The session under *key* (empty, keeping the key, if it does not exist)."""
        data = await store.load(key) if key else None
        return cls(store, key, age, dict(data or {}), original_key=key if data is not None else None)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<Session {self.session_key!r} {self._data!r}>"

    @property
    def is_empty(self) -> bool:
        return not self._data

    async def save(self) -> None:
        """Store the data (creating a key if the session has none) and clear ``modified``."""
        if self.session_key is None:
            self.session_key = await self.store.create(dict(self._data), self.age)
        else:
            await self.store.save(self.session_key, dict(self._data), self.age)
        self.modified = False

    async def flush(self) -> None:
        """Delete the stored session and forget the data and the key (logout)."""
        if self.session_key is not None:
            await self.store.delete(self.session_key)
        self._data.clear()
        self.session_key = None
        self.modified = True

    async def cycle_key(self) -> None:
        """Move the data to a new key and delete the old one (done at login)."""
        old = self.session_key
        self.session_key = await self.store.create(dict(self._data), self.age)
        if old is not None:
            await self.store.delete(old)
        self.modified = True

    async def save_if_needed(self) -> None:
        """After a consumer: save a modified session; delete an emptied one (logout)."""
        if not self.modified:
            return
        if self._data:
            await self.save()
        elif self.session_key is not None:
            await self.store.delete(self.session_key)
            self.modified = False


# ----------------------------------------------------------------------------- decorators


def _find_message(args: tuple[Any, ...], decorator: str) -> Message:
    for candidate in args[:2]:
        if isinstance(candidate, Message):
            return candidate
    raise ValueError(f"{decorator} called without a Message among the first two positional arguments")


def session_for_reply_channel(reply_channel: str) -> str:
    """The channel session key: ``"chn"`` + 29 hex characters of SHA-1 of the reply channel."""
    return "chn" + hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()[:29]


def channel_session(consumer: Callable[..., Any]) -> Callable[..., Any]:
    """Give the consumer ``message.channel_session``, keyed by the reply channel.

    Created on first use; saved after the consumer when modified and not empty (an emptied
    session is deleted). Raises :exc:`ValueError` for a message without a reply channel.
    """

    @functools.wraps(consumer)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        message = _find_message(args, "channel_session")
        if message.channel_session is not None:  # nested decorators share one session
            return await consumer(*args, **kwargs)
        if message.reply_channel is None:
            raise ValueError(
                f"channel_session needs a message with a reply_channel (channel {message.channel.name!r})"
            )
        key = session_for_reply_channel(message.reply_channel.name)
        session = await Session.load(current_session_store(), key)
        message.channel_session = session
        try:
            return await consumer(*args, **kwargs)
        finally:
            with trio.CancelScope(shield=True):
                await session.save_if_needed()

    return wrapper


def http_session_key(message: Message, cookie_name: str = SESSION_COOKIE_NAME) -> str | None:
    """The HTTP session key a message carries: ``?session_key=`` first, then the cookie."""
    query = message.get("query_string") or b""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    from_query = urllib.parse.parse_qs(query).get("session_key")
    if from_query and from_query[0]:
        return from_query[0]
    return parse_cookies(message.get("headers") or []).get(cookie_name) or None


def _set_cookie_on_buffered_response(message: Message, session: Session, cookie_name: str) -> None:
    outbox = _current_outbox.get()
    if outbox is None or message.reply_channel is None:
        return
    header = [b"Set-Cookie", _session_cookie(cookie_name, session)]
    if not outbox.amend(message.reply_channel.name, lambda content: _add_header(content, header)):
        log.warning(
            "http_session: could not set the session cookie: no buffered response for %s (was it sent immediately?)",
            message.reply_channel.name,
        )


def _session_cookie(cookie_name: str, session: Session) -> bytes:
    """The ``Set-Cookie`` value carrying *session*'s key (or deleting the cookie after logout)."""
    key = session.session_key
    return cookie_header(cookie_name, key or "", max_age=int(session.age) if key else 0).encode("latin-1")


def _add_header(content: dict[str, Any], header: list[bytes]) -> bool:
    if "status" not in content:
        return False
    content["headers"] = [*content.get("headers", []), header]
    return True


def http_session(
    consumer: Callable[..., Any] | None = None, *, cookie_name: str = SESSION_COOKIE_NAME
) -> Any:
    """Give the consumer ``message.http_session`` (see the module docstring)."""

    def decorate(consumer: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(consumer)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            message = _find_message(args, "http_session")
            if message.http_session is not None:
                return await consumer(*args, **kwargs)
            key = http_session_key(message, cookie_name)
            is_http = message.channel.name == "http.request"
            if key is None and not is_http:
                message.http_session = None
                return await consumer(*args, **kwargs)
            session = await Session.load(current_session_store(), key)
            if is_http and session.original_key is None:
                session.session_key = None  # an unknown key is not adopted: a new one is made on save
            message.http_session = session
            result = await consumer(*args, **kwargs)
            with trio.CancelScope(shield=True):
                changed = session.modified
                before = session.original_key
                await session.save_if_needed()
                if is_http and (changed or session.session_key != before) and (session.session_key or before):
                    _set_cookie_on_buffered_response(message, session, cookie_name)
            return result

        return wrapper

    return decorate(consumer) if consumer is not None else decorate


HTTP_SESSION_KEY_IN_CHANNEL_SESSION = "__http_session_key"


def channel_and_http_session(consumer: Callable[..., Any]) -> Callable[..., Any]:
    """``http_session`` + ``channel_session``; later messages see the HTTP session too."""

    @channel_session
    @functools.wraps(consumer)
    async def with_http(*args: Any, **kwargs: Any) -> Any:
        message = _find_message(args, "channel_and_http_session")
        key = http_session_key(message)
        if key is not None:
            message.channel_session[HTTP_SESSION_KEY_IN_CHANNEL_SESSION] = key
        else:
            key = message.channel_session.get(HTTP_SESSION_KEY_IN_CHANNEL_SESSION)
        if key is None:
            message.http_session = None
            return await consumer(*args, **kwargs)
        session = await Session.load(current_session_store(), key)
        message.http_session = session
        try:
            return await consumer(*args, **kwargs)
        finally:
            with trio.CancelScope(shield=True):
                await session.save_if_needed()

    return with_http


# ----------------------------------------------------------------------------- ordering

NEXT_ORDER_KEY = "__channels_next_order"


def _wake_channel(reply_channel: str, order: int) -> str:
    digest = hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()[:24]
    return f"ordering.{digest}?{order}"


def enforce_ordering(consumer: Callable[..., Any] | None = None, *, slight: bool = False) -> Any:
    """Run a connection's messages strictly by their ``order`` key (implies ``channel_session``).

    A message whose predecessor has not finished waits — without polling — for a wake-up on a
    per-connection, per-order channel of the layer, so it works across any number of worker
    processes (with a shared session store). Unlike Channels 1, a lost message never stalls a
    connection forever: when a waiting message reaches its expiry, the gap is skipped with a
    warning and it runs. A message without ``order`` is a :exc:`ValueError` naming the consumer.

    Waiting messages hold their worker slot; size ``concurrency`` for the connections that
    may be waiting at once.
    """
    if slight:
        raise ValueError("enforce_ordering(slight=True) was removed in Channels 1.0; use enforce_ordering")

    def decorate(consumer: Callable[..., Any]) -> Callable[..., Any]:
        name = getattr(consumer, "__qualname__", repr(consumer))

        @channel_session
        @functools.wraps(consumer)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            message = _find_message(args, "enforce_ordering")
            order = message.get("order")
            if type(order) is not int:
                raise ValueError(
                    f"enforce_ordering on {name}: the message on {message.channel.name!r} has no integer 'order'"
                )
            reply = message.reply_channel
            assert reply is not None  # channel_session checked it
            session: Session = message.channel_session
            layer = message.channel_layer
            # Receives exist only after the connect consumer finished (the interface waits for
            # the accept), so an undecorated connect counts as done: the seed's example.
            expected = session.get(NEXT_ORDER_KEY, 0 if message.channel.name == "websocket.connect" else 1)
            if order < expected:
                log.warning(
                    "enforce_ordering on %s: dropped order %d on %s, already past it (next is %d)",
                    name, order, reply.name, expected,
                )  # fmt: skip
                return None
            if order > expected:
                # Give up waiting a little before the message expires (its consumer is
                # cancelled at the expiry), leaving the consumer time to run. Waiters further
                # from the gap give up later, so the nearest one skips it and wakes the rest
                # in order.
                now = trio.current_time()
                margin = min(1.0, (message.deadline - now) * 0.25) / (order - expected)
                give_up = message.deadline - margin
                with trio.move_on_at(give_up) as waiting:
                    while True:
                        await layer.receive([_wake_channel(reply.name, order)])
                        fresh = await Session.load(session.store, session.session_key)
                        if fresh.get(NEXT_ORDER_KEY, 1) >= order:
                            break
                if waiting.cancelled_caught:
                    fresh = await Session.load(session.store, session.session_key)
                    if fresh.get(NEXT_ORDER_KEY, 1) < order:
                        log.warning(
                            "enforce_ordering on %s: %s waited for order %d until its message was about "
                            "to expire; skipping the gap and running order %d",
                            name, reply.name, fresh.get(NEXT_ORDER_KEY, 1), order,
                        )  # fmt: skip
                # Continue from what the predecessors stored.
                message.channel_session = session = fresh
            try:
                return await consumer(*args, **kwargs)
            finally:
                with trio.CancelScope(shield=True):
                    # Our replies go out before anyone can see it is the successor's turn, so
                    # the client gets replies in order too; the successor reads our session.
                    outbox = _current_outbox.get()
                    if outbox is not None:
                        await outbox.flush()
                    session[NEXT_ORDER_KEY] = order + 1
                    await session.save()
                    try:
                        await Channel(_wake_channel(reply.name, order + 1), layer=layer).send(
                            {}, immediately=True
                        )
                    except (
                        Exception
                    ) as exc:  # a full or unreachable layer: the successor waits out its expiry
                        log.warning(
                            "enforce_ordering: could not wake order %d on %s (%s)", order + 1, reply.name, exc
                        )

        return wrapper

    return decorate(consumer) if consumer is not None else decorate


# ----------------------------------------------------------------------------- ASGI middleware


class SessionMiddleware:
    """ASGI-3 middleware: ``scope["session"]`` is the same :class:`Session` consumers see.

    Any HTTP app (Starlette, Quart-Trio, the ``--http-app`` fallback) can then log a user in
    (``await trio_channels.auth.login(scope["session"], user)``) and the WebSocket that
    follows, decorated with ``channel_session_user_from_http``, knows the user. The session is
    saved, and its cookie set, when the response starts.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        store: SessionStore | None = None,
        cookie_name: str = SESSION_COOKIE_NAME,
    ) -> None:
        self.app = app
        self.store = store
        self.cookie_name = cookie_name

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        store = self.store or current_session_store()
        key = parse_cookies(scope.get("headers", [])).get(self.cookie_name)
        session = await Session.load(store, key)
        if session.original_key is None:
            session.session_key = None
        scope["session"] = session

        async def send_with_cookie(event: dict[str, Any]) -> None:
            if event["type"] == "http.response.start":
                before = session.original_key
                if session.modified or session.session_key != before:
                    await session.save_if_needed()
                    headers = [
                        *event.get("headers", []),
                        (b"set-cookie", _session_cookie(self.cookie_name, session)),
                    ]
                    event = {**event, "headers": headers}
            await send(event)

        await self.app(scope, receive, send_with_cookie)
