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
import functools
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .channel import Message
from .exceptions import DenyConnection
from .sessions import _find_message

__all__ = [
    "AllowedHostsOnlyOriginValidator",
    "BaseOriginValidator",
    "allowed_hosts_only",
    "is_host_allowed",
    "set_allowed_hosts",
]

DEVELOPMENT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_allowed_hosts: list[str] = []


def set_allowed_hosts(hosts: Sequence[str]) -> None:
    """Set ``ALLOWED_HOSTS`` for :data:`allowed_hosts_only` (the CLI does it from settings)."""
    if isinstance(hosts, str):
        raise TypeError(f"ALLOWED_HOSTS must be a list of host patterns, not the str {hosts!r}")
    _allowed_hosts[:] = [host.lower() for host in hosts]


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


class BaseOriginValidator(abc.ABC):
    """A class-based decorator for connect consumers; subclass and implement :meth:`validate_origin`.

    A subclass without ``validate_origin`` cannot decorate anything (``TypeError`` at import).

    A missing, empty or non-ASCII ``Origin`` header, or ``validate_origin`` returning false,
    raises :exc:`~trio_channels.DenyConnection` (the worker answers ``{"close": True}``: HTTP 403).
    """

    def __init__(self, consumer: Callable[..., Any]) -> None:
        self.consumer = consumer
        functools.update_wrapper(self, consumer)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        message = _find_message(args, type(self).__name__)
        origin = _origin(message)
        if not origin or not self.validate_origin(message, origin):
            raise DenyConnection
        return await self.consumer(*args, **kwargs)

    @abc.abstractmethod
    def validate_origin(self, message: Message, origin: str) -> bool:
        """Return True to accept the connection from *origin* (the raw header value)."""


class AllowedHostsOnlyOriginValidator(BaseOriginValidator):
    """Accept only origins whose host matches ``ALLOWED_HOSTS`` (see the module docstring)."""

    def validate_origin(self, message: Message, origin: str) -> bool:
        parts = urlsplit(origin)
        if not parts.scheme or not parts.hostname:
            return False  # "null", file://, garbage
        host = parts.netloc.rpartition("@")[2]
        return is_host_allowed(host, _allowed_hosts or DEVELOPMENT_HOSTS)


#: The Channels name for :class:`AllowedHostsOnlyOriginValidator`.
allowed_hosts_only = AllowedHostsOnlyOriginValidator
