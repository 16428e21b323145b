"""The one module that touches Hypercorn's internals.

The main port serves HTTP/1.1 and WebSockets itself; what it hands to Hypercorn is HTTP/2
(ALPN ``h2`` on TLS binds, prior knowledge, or an ``Upgrade: h2c``), driving the ASGI-3
:class:`~interface.InterfaceApp`. Hypercorn's public entry point (``hypercorn.trio.serve``)
owns its sockets and its accept loop, so to hand it single connections this module uses its
Trio worker's parts directly: ``TCPServer`` (one connection), ``WorkerContext`` (the
"terminated" event that closes idle connections) and ``Lifespan``. Those are not a public
API: setup.cfg pins Hypercorn below the next minor version, and :func:`check_hypercorn` (run
by the test suite) fails loudly, naming what changed, when their signatures move.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

__all__ = ["Hypercorn", "check_hypercorn", "hypercorn_config", "tls_context"]


def hypercorn_config(
    binds: Sequence[str],
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout: float = 10,
    keep_alive_timeout: float = 5,
) -> Config:
    config = Config()
    config.keep_alive_timeout = keep_alive_timeout
    config.bind = list(binds)
    config.certfile = certfile
    config.keyfile = keyfile
    config.accesslog = None  # interface.access logs HTTP and WebSocket alike
    config.errorlog = logging.getLogger("interface.hypercorn")
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    return config


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """Hypercorn's server TLS context (ALPN ``h2`` and ``http/1.1``) for *certfile* and
    *keyfile*, if given. Raises :exc:`ValueError` naming the files if they cannot be loaded."""
    try:
        return hypercorn_config([], certfile=certfile, keyfile=keyfile).create_ssl_context()
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"TLS certificate {certfile!r} with key {keyfile!r} could not be loaded: {exc}"
        ) from exc


@attrs.define(eq=False)
class Hypercorn:
    """Hypercorn's HTTP machinery for connections a listener hands over, one ASGI-3 *app*."""

    app: Any
    config: Config
    _wrapped: ASGIWrapper = attrs.field(init=False)
    _context: WorkerContext = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._wrapped = ASGIWrapper(self.app)
        self._context = WorkerContext(None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the app's lifespan (startup before, shutdown after) around the block."""
        lifespan = Lifespan(self._wrapped, self.config, {})
        async with trio.open_nursery() as nursery:
            await nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            yield
            await lifespan.wait_for_shutdown()
            nursery.cancel_scope.cancel()

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (HTTP/1.1 or HTTP/2; TLS already handshaken or not) to its end."""
        await TCPServer(self._wrapped, self.config, self._context, {}, stream).run()  # type: ignore[arg-type]

    async def terminate(self) -> None:
        """Graceful shutdown: Hypercorn closes its idle keep-alive connections."""
        await self._context.terminated.set()


#: What this module relies on: (class, the parameters its constructor is called with).
_EXPECTED: tuple[tuple[type, tuple[str, ...]], ...] = (
    (TCPServer, ("self", "app", "config", "context", "state", "stream")),
    (WorkerContext, ("self", "max_requests")),
    (Lifespan, ("self", "app", "config", "state")),
    (ASGIWrapper, ("self", "app")),
)
_COROUTINES: tuple[tuple[type, str], ...] = (
    (TCPServer, "run"),
    (Lifespan, "handle_lifespan"),
    (Lifespan, "wait_for_startup"),
    (Lifespan, "wait_for_shutdown"),
)


def check_hypercorn() -> None:
    """Raise :exc:`RuntimeError` naming what changed if Hypercorn's internals we use moved."""
    problems = []
    for owner, expected in _EXPECTED:
        found = tuple(inspect.signature(vars(owner)["__init__"]).parameters)
        if found != expected:
            problems.append(f"{owner.__qualname__}.__init__{found} (expected {expected})")
    for owner, name in _COROUTINES:
        if not inspect.iscoroutinefunction(getattr(owner, name, None)):
            problems.append(f"{owner.__qualname__}.{name} is no longer a coroutine function")
    context = WorkerContext(None)
    if not inspect.iscoroutinefunction(getattr(getattr(context, "terminated", None), "set", None)):
        problems.append("WorkerContext(None).terminated.set is no longer a coroutine function")
    if problems:
        raise RuntimeError(
            "Hypercorn's internals that interface/_hypercorn.py uses have changed: "
            + "; ".join(problems)
            + ". Adapt interface/_hypercorn.py and the version bound in setup.cfg."
        )
