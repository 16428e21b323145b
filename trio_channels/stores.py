"""Session stores: where :class:`~trio_channels.sessions.Session` data lives.

:class:`SessionStore` is the protocol; :class:`InMemorySessionStore` keeps sessions in this
process (the default), :class:`RedisSessionStore` in Redis, shared by every process (needed
with several workers). The current store is an ambient setting, like the current layer:
``serve()`` sets it for everything it runs, ``with use_session_store(store):`` sets it for a
task and its children.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from layers.base import decode_message, encode_message

from .channel import ContextSetter

if TYPE_CHECKING:
    from layers.redis import ClusterClient, ConnectionPool
    from layers.redis.connection import ServerAddress

__all__ = [
    "DEFAULT_SESSION_AGE",
    "InMemorySessionStore",
    "RedisSessionStore",
    "SessionStore",
    "current_session_store",
    "new_session_key",
    "use_session_store",
]

#: Two weeks, Django's SESSION_COOKIE_AGE.
DEFAULT_SESSION_AGE = 14 * 24 * 3600


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
    """Sessions in this process's memory (fine for one process; use Redis for several).

    Expiry follows Trio's clock (``trio.current_time()``), so a ``MockClock`` moves session
    TTLs like every other timeout; a store therefore belongs to one ``trio.run``.
    """

    _data: dict[str, tuple[float, bytes]] = attrs.Factory(dict)

    async def load(self, key: str) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        found = self._data.get(key)
        if found is None:
            return None
        expires, data = found
        if expires <= trio.current_time():
            del self._data[key]
            return None
        return decode_message(data)

    async def save(self, key: str, data: dict[str, Any], ttl: float) -> None:
        await trio.lowlevel.checkpoint()
        self._data[key] = (trio.current_time() + ttl, encode_message(data))

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

    *url* is a ``redis://`` / ``rediss://`` / ``unix://`` URL, a ``redis+sentinel://`` /
    ``rediss+sentinel://`` one (the primary Redis Sentinel manages, followed through
    failovers), a ``redis-cluster://`` / ``rediss-cluster://`` one (each session's key on the
    node serving its slot), or a ``layers.redis.RedisAddress`` / ``SentinelAddress`` /
    ``ClusterAddress``: the layer's forms.
    Uses the Redis layer's Trio-native connection. Values are msgpack; keys expire with the
    session (``SET ... PX``).
    """

    url: str | ServerAddress = "redis://localhost:6379/0"
    prefix: str = "trio_channels:session"
    _pool: ConnectionPool | ClusterClient | None = None
    _stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> RedisSessionStore:
        from layers.redis import ClusterAddress, ClusterClient, ConnectionPool, server_address

        address = server_address(self.url)  # a bad URL fails before anything starts
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        if isinstance(address, ClusterAddress):
            self._pool = ClusterClient(address, nursery)
        else:
            self._pool = ConnectionPool(address, nursery)
        stack.callback(nursery.cancel_scope.cancel)
        stack.push_async_callback(self._pool.aclose)
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(*exc_info)

    async def _execute(self, *args: str | bytes | int) -> Any:
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


# ----------------------------------------------------------------------------- the current store

_current_store: contextvars.ContextVar[SessionStore | None] = contextvars.ContextVar(
    "trio_channels.session_store", default=None
)
# The fallback when nothing set a store: one in-memory store per trio.run (its expiry times are
# that run's clock), shared by every task of the run, so sessions never silently split.
_run_default_store: trio.lowlevel.RunVar[InMemorySessionStore] = trio.lowlevel.RunVar(
    "trio_channels.default_session_store"
)


class use_session_store(ContextSetter[SessionStore]):
    """``with use_session_store(store):`` makes *store* current for this task and its children."""

    variable = _current_store


def current_session_store() -> SessionStore:
    """The store set by ``serve(session_store=...)`` / :func:`use_session_store`.

    Without one, an in-memory store shared by the whole ``trio.run``.
    """
    store = _current_store.get()
    if store is not None:
        return store
    try:
        return _run_default_store.get()
    except LookupError:
        default = InMemorySessionStore()
        _run_default_store.set(default)
        return default
