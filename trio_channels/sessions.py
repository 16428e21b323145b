"""Sessions for consumers: ``Session`` and the session decorators.

* ``@channel_session`` keys a session by the reply channel: per-connection state that any
  worker can read (``message.channel_session``).
* ``@http_session`` reads the HTTP session from the ``sessionid`` cookie (name configurable)
  or the ``?session_key=`` query parameter (``message.http_session``, ``None`` when there is
  none). On ``http.request`` consumers a session is always there, and a new or modified one
  sets its cookie on the consumer's buffered response.
* ``@channel_and_http_session`` does both and remembers the HTTP session key in the channel
  session, so later messages of the connection (which carry no cookies) see it too.

Decorators work on functions and methods (the :class:`~trio_channels.Message` is found among
the first two positional arguments). Sessions are saved after the consumer and before its
buffered sends are flushed, so a reply never overtakes the state it depends on.

The rest of the session machinery lives in its own modules and is re-exported here, so
``from trio_channels.sessions import ...`` finds all of it: the stores in
:mod:`trio_channels.stores`, ``@enforce_ordering`` in :mod:`trio_channels.ordering` and the
ASGI ``SessionMiddleware`` in :mod:`trio_channels.middleware`.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import attrs
import trio

from .channel import Message, current_outbox
from .decorators import ConsumerDecorator, around_consumer
from .http import cookie_header, parse_cookies
from .stores import (
    DEFAULT_SESSION_AGE,
    InMemorySessionStore,
    RedisSessionStore,
    SessionStore,
    current_session_store,
    new_session_key,
    use_session_store,
)

if TYPE_CHECKING:
    from .middleware import SessionMiddleware
    from .ordering import enforce_ordering

__all__ = [
    "DEFAULT_SESSION_AGE",
    "SESSION_COOKIE_NAME",
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
    "http_session_key",
    "new_session_key",
    "session_cookie",
    "session_for_reply_channel",
    "use_session_store",
]

log = logging.getLogger("trio_channels.sessions")

P = ParamSpec("P")
R = TypeVar("R")

#: The cookie that carries the HTTP session key.
SESSION_COOKIE_NAME = "sessionid"
#: Where ``channel_and_http_session`` remembers the HTTP session key in the channel session.
HTTP_SESSION_KEY_IN_CHANNEL_SESSION = "__http_session_key"


def __getattr__(name: str) -> object:
    # enforce_ordering and SessionMiddleware build on this module, so they are re-exported
    # lazily: importing them here eagerly would be an import cycle.
    if name == "enforce_ordering":
        from .ordering import enforce_ordering

        return enforce_ordering
    if name == "SessionMiddleware":
        from .middleware import SessionMiddleware

        return SessionMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# ----------------------------------------------------------------------------- keys and cookies


def session_for_reply_channel(reply_channel: str) -> str:
    """The channel session key: ``"chn"`` + 29 hex characters of SHA-1 of the reply channel."""
    return "chn" + hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()[:29]


def http_session_key(message: Message, cookie_name: str = SESSION_COOKIE_NAME) -> str | None:
    """The HTTP session key a message carries: ``?session_key=`` first, then the cookie."""
    query = message.get("query_string") or b""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    from_query = urllib.parse.parse_qs(query).get("session_key")
    if from_query and from_query[0]:
        return from_query[0]
    return parse_cookies(message.get("headers") or []).get(cookie_name) or None


def session_cookie(cookie_name: str, session: Session) -> bytes:
    """The ``Set-Cookie`` value carrying *session*'s key (or deleting the cookie after logout)."""
    key = session.session_key
    return cookie_header(cookie_name, key or "", max_age=int(session.age) if key else 0).encode("latin-1")


def _set_cookie_on_buffered_response(message: Message, session: Session, cookie_name: str) -> None:
    outbox = current_outbox()
    if outbox is None or not message.has_reply_channel:
        return
    header = [b"Set-Cookie", session_cookie(cookie_name, session)]
    if not outbox.append_header(message.reply_channel.name, header):
        log.warning(
            "http_session: could not set the session cookie: no buffered response for %s (was it sent immediately?)",
            message.reply_channel.name,
        )


# ----------------------------------------------------------------------------- decorators


def channel_session(consumer: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Give the consumer ``message.channel_session``, keyed by the reply channel.

    Created on first use; saved after the consumer when modified and not empty (an emptied
    session is deleted). Raises :exc:`ValueError` for a message without a reply channel.
    """

    async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
        if message.channel_session is not None:  # nested decorators share one session
            return await proceed()
        if not message.has_reply_channel:
            raise ValueError(
                f"channel_session needs a message with a reply_channel (channel {message.channel.name!r})"
            )
        key = session_for_reply_channel(message.reply_channel.name)
        session = await Session.load(current_session_store(), key)
        message.channel_session = session
        try:
            return await proceed()
        finally:
            with trio.CancelScope(shield=True):
                await session.save_if_needed()

    return around_consumer(consumer, "channel_session", around)


def _with_http_session(consumer: Callable[P, Awaitable[R]], cookie_name: str) -> Callable[P, Awaitable[R]]:
    async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
        if message.http_session is not None:
            return await proceed()
        key = http_session_key(message, cookie_name)
        is_http = message.channel.name == "http.request"
        if key is None and not is_http:
            message.http_session = None
            return await proceed()
        session = await Session.load(current_session_store(), key)
        if is_http and session.original_key is None:
            session.session_key = None  # an unknown key is not adopted: a new one is made on save
        message.http_session = session
        result = await proceed()
        with trio.CancelScope(shield=True):
            changed = session.modified
            before = session.original_key
            await session.save_if_needed()
            if is_http and (changed or session.session_key != before) and (session.session_key or before):
                _set_cookie_on_buffered_response(message, session, cookie_name)
        return result

    return around_consumer(consumer, "http_session", around)


@overload
def http_session(
    consumer: Callable[P, Awaitable[R]], *, cookie_name: str = SESSION_COOKIE_NAME
) -> Callable[P, Awaitable[R]]: ...
@overload
def http_session(consumer: None = None, *, cookie_name: str = SESSION_COOKIE_NAME) -> ConsumerDecorator: ...
def http_session(
    consumer: Callable[P, Awaitable[R]] | None = None, *, cookie_name: str = SESSION_COOKIE_NAME
) -> Callable[P, Awaitable[R]] | ConsumerDecorator:
    """Give the consumer ``message.http_session`` (see the module docstring).

    Use it bare (``@http_session``) or with another cookie (``@http_session(cookie_name=...)``).
    """
    if consumer is not None:
        return _with_http_session(consumer, cookie_name)
    return _HttpSessionWith(cookie_name)


@attrs.frozen
class _HttpSessionWith:
    cookie_name: str

    def __call__(self, consumer: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]:
        return _with_http_session(consumer, self.cookie_name)


def channel_and_http_session(consumer: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``http_session`` + ``channel_session``; later messages see the HTTP session too."""

    async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
        key = http_session_key(message)
        if key is not None:
            message.channel_session[HTTP_SESSION_KEY_IN_CHANNEL_SESSION] = key
        else:
            key = message.channel_session.get(HTTP_SESSION_KEY_IN_CHANNEL_SESSION)
        if key is None:
            message.http_session = None
            return await proceed()
        session = await Session.load(current_session_store(), key)
        message.http_session = session
        try:
            return await proceed()
        finally:
            with trio.CancelScope(shield=True):
                await session.save_if_needed()

    return channel_session(around_consumer(consumer, "channel_and_http_session", around))
