"""Binding listening sockets, and the shutdown every listener shares.

:func:`bind_sockets` turns the ``--bind`` spellings (``host:port``, ``unix:PATH``, ``fd://N``)
into bound, listening sockets before anything else starts, so a bad address fails at once
with one clear error (:exc:`BindError`, or :exc:`ValueError` for a spelling that cannot work).

:func:`serve_connections` is the accept loop with the graceful shutdown every listener
shares. A connection is *idle* while it waits for a request (reading a request head, or
between keep-alive requests); it wraps those waits in :meth:`IdleConnections.waiting`. On
shutdown the listeners stop accepting, every idle connection is cancelled at once (a browser's
idle pre-connection must not hold the process for the grace period), the listener's own
``on_shutdown`` runs (closing WebSockets with 1001), and what is left (requests in flight)
gets ``grace_period`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import attrs
import trio

__all__ = [
    "BindError",
    "IdleConnections",
    "StartedWith",
    "bind_sockets",
    "close_sockets",
    "guarded",
    "open_listeners",
    "parse_bind",
    "serve_connections",
]

log = logging.getLogger("interface")

BACKLOG = 100


class BindError(OSError):
    """A listening address could not be bound; ``str()`` names the address and the reason."""

    def __init__(self, bind: str, reason: str, code: int | None = None) -> None:
        super().__init__(code, reason)
        self.bind = bind
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot listen on {self.bind!r}: {self.reason}"


@attrs.frozen
class TCPAddress:
    host: str
    port: int


@attrs.frozen
class UnixAddress:
    path: str


@attrs.frozen
class FdAddress:
    fd: int


Address = TCPAddress | UnixAddress | FdAddress


def parse_bind(bind: str) -> Address:
    """The address *bind* spells (``host:port``, ``[v6]:port``, ``unix:PATH``, ``fd://N``).

    Raises :exc:`ValueError` naming *bind* if it is none of those, or its port is out of range.
    """
    if bind.startswith("unix:"):
        if not bind[5:]:
            raise ValueError(f"bind {bind!r} is invalid: unix: needs a path, like unix:/run/app.sock")
        return UnixAddress(bind[5:])
    if bind.startswith("fd://"):
        if not bind[5:].isdigit():
            raise ValueError(f"bind {bind!r} is invalid: fd:// needs a file descriptor number, like fd://3")
        return FdAddress(int(bind[5:]))
    host, sep, port = bind.replace("[", "").replace("]", "").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind {bind!r} is invalid: write it as host:port, [ipv6]:port, unix:PATH or fd://N")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"bind {bind!r} is invalid: the port must be between 0 and 65535")
    return TCPAddress(host, int(port))


def _reason(exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EADDRNOTAVAIL:
        reason += " (it is not an address of this host)"
    return reason


#: The Unix socket files bound here, to remove when their socket is closed: (path, inode).
_created: weakref.WeakKeyDictionary[socket.socket, tuple[str, int]] = weakref.WeakKeyDictionary()


def _remove_stale_socket(bind: str, path: str) -> None:
    """Remove the socket file at *path* if no server listens on it (a crashed run left it)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: binding fails with "address already in use", as it should
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        if probe.connect_ex(path) != errno.ECONNREFUSED:
            raise BindError(
                bind, "address already in use (a server is listening on that socket)", errno.EADDRINUSE
            )
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def close_sockets(sockets: Iterable[socket.socket]) -> None:
    """Close *sockets*; remove the Unix socket files :func:`bind_sockets` created for them
    (unless another process has replaced the file since). Closing twice is harmless."""
    for sock in sockets:
        created = _created.pop(sock, None)
        if created is not None:
            path, inode = created
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.remove(path)
        sock.close()


async def _bind_one(bind: str, address: Address, backlog: int, uds_perms: int) -> socket.socket:
    target: Any = None
    if isinstance(address, FdAddress):
        # A socket handed over by a supervisor (systemd, circus): already bound, maybe listening.
        sock = socket.socket(fileno=address.fd)
    elif isinstance(address, UnixAddress):
        _remove_stale_socket(bind, address.path)
        sock, target = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address.path
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        # Resolve in a thread (trio does), then bind a numeric address: bind() never blocks.
        found = await trio.socket.getaddrinfo(
            address.host or None, address.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        sock, target = socket.socket(family, socket.SOCK_STREAM), found[0][4]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if sock.type != socket.SOCK_STREAM:
            raise BindError(bind, "it is not a stream socket")
        if target is not None:
            sock.bind(target)
        if isinstance(address, UnixAddress):
            os.chmod(address.path, uds_perms)
            _created[sock] = (address.path, os.stat(address.path).st_ino)
        sock.listen(backlog)  # also where a port bound with SO_REUSEADDR turns out to be taken
        sock.setblocking(False)
    except BaseException:
        close_sockets([sock])
        raise
    return sock


async def bind_sockets(
    binds: Sequence[str | socket.socket], *, backlog: int = BACKLOG, uds_perms: int = 0o660
) -> list[socket.socket]:
    """Bind and listen on every address of *binds*, all or nothing; sockets pass through as they are.

    A ``unix:PATH`` socket file gets the mode *uds_perms*; a stale one (nobody listens on it: a
    crashed run left it) is replaced, a live one is :exc:`BindError` "address already in use".
    :func:`close_sockets` closes the sockets and removes the files again.

    Raises :exc:`ValueError` for a spelling that cannot work (see :func:`parse_bind`) before
    binding anything, and :exc:`BindError` (an :exc:`OSError`) naming the address and the
    reason if the system refuses one; the sockets it bound are closed then.
    """
    addresses = [(bind, parse_bind(bind)) for bind in binds if isinstance(bind, str)]
    bound: list[socket.socket] = []
    try:
        for bind, address in addresses:
            try:
                bound.append(await _bind_one(bind, address, backlog, uds_perms))
            except socket.gaierror as exc:
                raise BindError(bind, f"host not found ({(exc.strerror or str(exc)).lower()})") from None
            except BindError:
                raise
            except OSError as exc:
                raise BindError(bind, _reason(exc), exc.errno) from None
    except BaseException:
        close_sockets(bound)
        raise
    fresh = iter(bound)
    return [bind if isinstance(bind, socket.socket) else next(fresh) for bind in binds]


def open_listeners(
    sockets: Sequence[socket.socket], scheme: str, ssl_context: ssl.SSLContext | None = None
) -> tuple[list[trio.abc.Listener[Any]], list[str]]:
    """Trio listeners on *sockets* (TLS with *ssl_context*) and their URLs, ``scheme://host:port``."""
    listeners: list[trio.abc.Listener[Any]] = []
    urls: list[str] = []
    for sock in sockets:
        listener: trio.abc.Listener[Any] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        if ssl_context is not None:
            listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
        listeners.append(listener)
        address = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            urls.append(f"{scheme}://unix:{address}")
        elif sock.family == socket.AF_INET6:
            urls.append(f"{scheme}://[{address[0]}]:{address[1]}")
        else:
            urls.append(f"{scheme}://{address[0]}:{address[1]}")
    return listeners, urls


@attrs.define(eq=False)
class IdleConnections:
    """The connections of one listener that wait for a request; see the module docstring."""

    _waiting: set[trio.CancelScope] = attrs.Factory(set)
    closed: bool = False

    @contextlib.contextmanager
    def waiting(self) -> Iterator[trio.CancelScope]:
        """A cancel scope around a wait for the next request; cancelled at once on shutdown.

        After :meth:`close` the scope is cancelled on entry. Check ``cancelled_caught`` on it
        to tell "shutting down" from the wait's own outcome, then close the connection.
        """
        with trio.CancelScope() as scope:
            if self.closed:
                scope.cancel()
            self._waiting.add(scope)
            try:
                yield scope
            finally:
                self._waiting.discard(scope)

    def close(self) -> None:
        """Cancel every idle connection now, and any that goes idle from now on."""
        self.closed = True
        for scope in self._waiting:
            scope.cancel()

    def __len__(self) -> int:
        return len(self._waiting)


async def serve_connections(
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    idle: IdleConnections,
    shutdown: trio.Event | None,
    grace_period: float,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    name: str = "",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on *listeners*, running ``handler(stream)`` per connection, until shut down.

    ``task_status.started()`` is called once accepting. Runs until cancelled (a hard stop), or
    until *shutdown* is set: then it closes the listeners, cancels the connections in *idle*,
    awaits *on_shutdown*, and returns when every connection is done, cancelling those still
    running after *grace_period* seconds. *name* (the URLs) is for the log.
    """
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(
                partial(trio.serve_listeners, handler, list(listeners), handler_nursery=connections)
            )
            task_status.started()
            if shutdown is None:
                await trio.sleep_forever()
            assert shutdown is not None
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()
        log.info(
            "stopped listening on %s; requests in flight get up to %g s", name or "its sockets", grace_period
        )
        idle.close()
        if on_shutdown is not None:
            await on_shutdown()
        connections.cancel_scope.deadline = trio.current_time() + grace_period


async def guarded(handler: Callable[[trio.abc.Stream], Awaitable[None]], stream: trio.abc.Stream) -> None:
    """Run ``handler(stream)``; an error in it closes that connection only (and is logged)."""
    try:
        await handler(stream)
    except Exception:
        log.exception("connection handler failed; closed that connection")
        await trio.aclose_forcefully(stream)


@attrs.define
class StartedWith:
    """A ``task_status`` that reports *value* instead of what it is started with
    (a listener reports its URLs, where ``serve_listeners`` reports its listeners)."""

    status: trio.TaskStatus[list[str]]
    value: list[str]

    def started(self, _: object = None) -> None:
        self.status.started(self.value)
