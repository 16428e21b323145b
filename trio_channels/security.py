"""Origin checks for ``websocket.connect`` consumers.

Browsers send the page's origin in the ``Origin`` header of a WebSocket handshake, but they
do not stop a third-party page from connecting: the server must check. Decorate the connect
consumer with :data:`allowed_hosts_only` to reject (HTTP 403) connections whose origin is not
in ``ALLOWED_HOSTS``; a missing or malformed ``Origin`` is rejected too.

Host patterns follow Django's ``ALLOWED_HOSTS`` rules: ``"example.com"`` matches exactly,
``".example.com"`` matches it and every subdomain, ``"*"`` matches anything; a pattern with a
port (``"example.com:8000"``) matches only that port; matching ignores case. With no allowed
hosts configured, only ``localhost``, ``127.0.0.1`` and ``[::1]`` are allowed (Django's DEBUG
behaviour), so the check is never silently open.
"""

from __future__ import annotations

import abc
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar
from urllib.parse import urlsplit

from .channel import ContextSetter, Message
from .decorators import around_consumer
from .exceptions import DenyConnection

__all__ = [
    "AllowedHostsOnlyOriginValidator",
    "BaseOriginValidator",
    "allowed_hosts_only",
    "current_allowed_hosts",
    "is_host_allowed",
    "set_allowed_hosts",
    "use_allowed_hosts",
]

P = ParamSpec("P")
R = TypeVar("R")

DEVELOPMENT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_allowed_hosts: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "trio_channels.allowed_hosts", default=()
)


def _host_patterns(hosts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(hosts, str):
        raise TypeError(f"ALLOWED_HOSTS must be a list of host patterns, not the str {hosts!r}")
    return tuple(host.lower() for host in hosts)


class use_allowed_hosts(ContextSetter[tuple[str, ...]]):
    """``with use_allowed_hosts(hosts):`` sets ``ALLOWED_HOSTS`` for this task and its children.

    ``serve(allowed_hosts=...)`` (and so the CLI's settings) uses it. Raises :exc:`TypeError`
    for a single string.
    """

    variable = _allowed_hosts

    def __init__(self, hosts: Sequence[str]) -> None:
        super().__init__(_host_patterns(hosts))


def set_allowed_hosts(hosts: Sequence[str]) -> None:
    """Set ``ALLOWED_HOSTS`` for :data:`allowed_hosts_only` in the current context.

    A context variable like every ambient setting: set it before ``trio.run()`` or in the task
    that then starts ``serve()`` or the test clients. Prefer ``serve(allowed_hosts=...)``.
    """
    _allowed_hosts.set(_host_patterns(hosts))


def current_allowed_hosts() -> tuple[str, ...]:
    """The ``ALLOWED_HOSTS`` patterns in force (empty: only the development hosts pass)."""
    return _allowed_hosts.get()


def _split_host(host: str) -> tuple[str, str | None]:
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1], (host[end + 2 :] or None) if host[end + 1 : end + 2] == ":" else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, None


def is_host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Django's ``validate_host``: does *host* (``name`` or ``name:port``) match a pattern?"""
    name, port = _split_host(host)
    for pattern in patterns:
        if pattern == "*":
            return True
        pattern_name, pattern_port = _split_host(pattern)
        if pattern_port is not None and pattern_port != port:
            continue
        if pattern_name.startswith("."):
            if name == pattern_name[1:] or name.endswith(pattern_name):
                return True
        elif name == pattern_name:
            return True
    return False


def _origin(message: Message) -> str | None:
    for name, value in message.get("headers") or []:
        if bytes(name).lower() == b"origin":
            try:
                return bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


class BaseOriginValidator(abc.ABC, Generic[P, R]):
    """A class-based decorator for connect consumers; subclass and implement :meth:`validate_origin`.

    A subclass without ``validate_origin`` cannot decorate anything (``TypeError`` at import).

    A missing, empty or non-ASCII ``Origin`` header, or ``validate_origin`` returning false,
    raises :exc:`~trio_channels.DenyConnection` (the worker answers ``{"close": True}``: HTTP 403).
    """

    def __init__(self, consumer: Callable[P, Awaitable[R]]) -> None:
        self.consumer = consumer
        self._wrapped = around_consumer(consumer, type(self).__name__, self._check)
        functools.update_wrapper(self, consumer)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._wrapped(*args, **kwargs)

    async def _check(self, message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
        origin = _origin(message)
        if not origin or not self.validate_origin(message, origin):
            raise DenyConnection
        return await proceed()

    @abc.abstractmethod
    def validate_origin(self, message: Message, origin: str) -> bool:
        """Return True to accept the connection from *origin* (the raw header value)."""


class AllowedHostsOnlyOriginValidator(BaseOriginValidator[P, R]):
    """Accept only origins whose host matches ``ALLOWED_HOSTS`` (see the module docstring)."""

    def validate_origin(self, message: Message, origin: str) -> bool:
        parts = urlsplit(origin)
        if not parts.scheme or not parts.hostname:
            return False  # "null", file://, garbage
        host = parts.netloc.rpartition("@")[2]
        return is_host_allowed(host, _allowed_hosts.get() or DEVELOPMENT_HOSTS)


#: The Channels name for :class:`AllowedHostsOnlyOriginValidator`.
allowed_hosts_only = AllowedHostsOnlyOriginValidator
