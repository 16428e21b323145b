"""``serve()``: the composition root that wires a layer, interface listeners and workers.

One nursery supervises everything::

    serve()
     ├─ the channel layer (entered: its timers / pollers run in its own nursery)
     ├─ outer nursery: the interface's reply poller, the signal watcher
     └─ graceful nursery: HTTP+WebSocket listeners, WebSocket-only listeners, workers

Shutdown (SIGINT/SIGTERM, or the ``shutdown`` event): listeners stop accepting, cancel the
connections that wait for a request (an idle keep-alive or pre-connection) and close WebSockets
with 1001, workers stop pulling, in-flight requests and consumers get ``grace_period`` seconds,
then everything left is cancelled. A second signal cancels everything at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import trio

import layers
from interface import BindError, InterfaceConfig, InterfaceServer, serve_interface, serve_websocket_listener
from interface.asgi import tls_context
from interface.listeners import bind_sockets
from layers import BaseChannelLayer, InMemoryChannelLayer
from layers.concurrency import open_service_nursery

from .auth import UserLoader, use_user_loader
from .channel import use_layer
from .http import ASGIApp, http_fallback
from .routing import Router
from .security import use_allowed_hosts
from .stores import InMemorySessionStore, RedisSessionStore, SessionStore, use_session_store
from .worker import Worker, run_worker, select_channels

__all__ = ["BindError", "ServerInfo", "serve"]

log = logging.getLogger("trio_channels.server")


#: Capacities for the layer serve() and the CLI make. An interface process's prefix carries the
#: replies of all its connections, so it needs room for a group send to every member at once;
#: the request channels absorb a burst of a thousand connects or requests before answering 503.
#: Disconnects are not refused work but cleanup a consumer must see (groups to leave): room for
#: ten thousand sockets closing at once (a reconnect storm, a deploy) rather than drops.
DEFAULT_CHANNEL_CAPACITY: dict[str, int] = {
    "interface.*!": 10_000,
    "http.request": 1_000,
    "websocket.connect": 1_000,
    "websocket.receive": 1_000,
    "websocket.disconnect": 10_000,
    "http.disconnect": 10_000,
}


@attrs.frozen(kw_only=True)
class ServerInfo:
    """What ``serve()`` hands to ``task_status.started()``: where it listens and what runs."""

    urls: list[str]
    ws_urls: list[str]
    layer: BaseChannelLayer
    interface: InterfaceServer | None
    workers: list[Worker]
    shutdown: trio.Event

    @property
    def url(self) -> str:
        """The first HTTP URL (or WebSocket URL when only WebSocket listeners run)."""
        return (self.urls or self.ws_urls)[0]


@attrs.define(eq=False)
class _Signals:
    """SIGINT/SIGTERM: the first shuts down gracefully, a second one stops at once."""

    shutdown: trio.Event
    hard_stop: trio.CancelScope = attrs.Factory(trio.CancelScope)
    forced_by: int | None = None

    async def watch(self) -> None:
        graceful = False
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not graceful:
                    graceful = True
                    log.info("received %s: shutting down gracefully (again to stop at once)", name)
                    self.shutdown.set()
                    continue
                log.warning("received %s again: stopping at once, cancelling work in flight", name)
                self.forced_by = signum
                self.hard_stop.cancel()
                return


async def _open_session_store(
    stack: contextlib.AsyncExitStack, store: SessionStore | str | None, layer: BaseChannelLayer
) -> SessionStore:
    if isinstance(store, str):
        if store.startswith("memory://"):
            return InMemorySessionStore()
        return await stack.enter_async_context(RedisSessionStore(store))
    if store is not None:
        return store
    shared = layer.shared_store_address()
    if shared is not None:
        address, prefix = shared
        return await stack.enter_async_context(RedisSessionStore(address, prefix=f"{prefix}:session"))
    return InMemorySessionStore()


def _is_open(layer: BaseChannelLayer) -> bool:
    return bool(getattr(layer, "is_open", False))


async def serve(
    routing: Any = None,
    *,
    layer: BaseChannelLayer | str | None = None,
    bind: Sequence[str] = ("127.0.0.1:8000",),
    ws_bind: Sequence[str] = (),
    interface: bool = True,
    workers: bool | int = True,
    concurrency: int = 100,
    only_channels: Sequence[str] = (),
    exclude_channels: Sequence[str] = (),
    consumer_timeout: float | None = None,
    interface_config: InterfaceConfig | None = None,
    http_app: ASGIApp | str | None = None,
    static_root: str | None = None,
    static_url: str = "/static/",
    certfile: str | None = None,
    keyfile: str | None = None,
    grace_period: float = 10,
    session_store: SessionStore | str | None = None,
    user_loader: UserLoader | None = None,
    allowed_hosts: Sequence[str] | None = None,
    shutdown: trio.Event | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run interface listeners and workers for *routing* on *layer* until shut down.

    *routing* is a routing list, a dotted path to one, or ``None`` for the built-in demo.
    *layer* is a layer, a URL (``"redis://localhost:6379/0"``) or ``None`` (in-memory); a
    layer that is not open yet is opened here and closed on the way out. ``bind`` takes
    ``host:port`` (port 0 picks a free one), ``unix:PATH`` and ``fd://N``; ``ws_bind`` adds
    WebSocket-only listeners. ``workers`` is ``True`` (one worker), ``False`` (interface only)
    or a number of worker tasks.

    ``task_status.started()`` hands back a :class:`ServerInfo` once every listener is bound and
    every worker is pulling. Stops when *shutdown* is set, or on SIGINT/SIGTERM with
    ``handle_signals=True``, gracefully (see the module docstring); cancelling it is a hard stop,
    and so is a second signal (after a second SIGINT it raises :exc:`KeyboardInterrupt`).

    Consumers' sessions live in *session_store* (a store, a ``redis://`` URL, or ``None``: the
    Redis layer's first server for a Redis layer, else in memory); *user_loader* loads users
    for ``message.user``; *allowed_hosts* is ``ALLOWED_HOSTS`` for origin checks.

    Every address is bound before anything else starts. Raises :exc:`ValueError` for a
    configuration that cannot work (an in-memory layer without both an interface and workers,
    an address that is not ``host:port``, ``unix:PATH`` or ``fd://N``, a certfile without a
    keyfile), :exc:`ImportError` for a bad routing path, and :exc:`BindError` (an
    :exc:`OSError` naming the address and the reason) if a bind fails; never an exception
    group for these.
    """
    if routing is None:
        routing = "trio_channels.demo.routing.routing"
    bind = [bind] if isinstance(bind, str) else list(bind)  # one address, not its characters
    ws_bind = [ws_bind] if isinstance(ws_bind, str) else list(ws_bind)
    if layer is None:
        layer = InMemoryChannelLayer(channel_capacity=DEFAULT_CHANNEL_CAPACITY)
    elif isinstance(layer, str):
        layer = layers.from_url(layer)
    n_workers = int(workers) if not isinstance(workers, bool) else (1 if workers else 0)
    if isinstance(layer, InMemoryChannelLayer) and not (interface and n_workers):
        raise ValueError(
            "the in-memory layer is not cross-process: run the interface and the workers in one "
            "process, or use a Redis layer (--layer redis://localhost:6379/0)"
        )
    router = (
        Router(routing, http_fallback=http_fallback(http_app, static_root, static_url)) if n_workers else None
    )
    config = interface_config or InterfaceConfig(grace_period=grace_period)
    if bool(certfile) != bool(keyfile):
        raise ValueError(
            f"TLS needs both a certfile and a keyfile, got certfile={certfile!r} keyfile={keyfile!r}"
        )
    tls_context(certfile, keyfile)  # fail now, not after the workers started
    shutdown = shutdown or trio.Event()
    signals = _Signals(shutdown) if handle_signals else None

    hosts_setting = use_allowed_hosts(allowed_hosts) if allowed_hosts is not None else None

    async def run() -> None:
        assert isinstance(layer, BaseChannelLayer)
        # The ambient settings are context variables, seen by every task started below.
        async with contextlib.AsyncExitStack() as stack:
            store = await _open_session_store(stack, session_store, layer)
            stack.enter_context(use_session_store(store))
            if user_loader is not None:
                stack.enter_context(use_user_loader(user_loader))
            if hosts_setting is not None:
                stack.enter_context(hosts_setting)
            with signals.hard_stop if signals else contextlib.nullcontext():
                await run_servers()

    async def run_servers() -> None:
        assert isinstance(layer, BaseChannelLayer)
        # Workers stop only after the listeners finished, so the websocket.disconnect messages
        # sent while closing WebSockets with 1001 are still consumed.
        workers_shutdown = trio.Event()
        with use_layer(layer):
            async with open_service_nursery() as outer:
                if signals:
                    outer.start_soon(signals.watch)
                async with trio.open_nursery() as worker_nursery:
                    started: list[Worker] = []
                    for _ in range(n_workers):
                        assert router is not None
                        started.append(
                            await worker_nursery.start(
                                partial(
                                    run_worker,
                                    layer,
                                    router,
                                    only_channels=only_channels,
                                    exclude_channels=exclude_channels,
                                    concurrency=concurrency,
                                    consumer_timeout=consumer_timeout,
                                    grace_period=grace_period,
                                    shutdown=workers_shutdown,
                                )
                            )
                        )
                    async with trio.open_nursery() as listeners:
                        urls: list[str] = []
                        ws_urls: list[str] = []
                        server = None
                        if interface:
                            server = InterfaceServer(layer, config)
                            if isinstance(layer, InMemoryChannelLayer) and router is not None:
                                # Every consumer is here: optional messages go only where a
                                # route of the application's takes them (on a shared layer,
                                # workers elsewhere may: everything is sent).
                                server.consumed_channels = router.routed & frozenset(
                                    select_channels(router.channels(), only_channels, exclude_channels)
                                )
                            await outer.start(server.run)
                            await outer.start(server.run_membership_watcher)
                            if sockets:
                                urls = await listeners.start(
                                    partial(
                                        serve_interface,
                                        server,
                                        sockets,
                                        certfile=certfile,
                                        keyfile=keyfile,
                                        shutdown=shutdown,
                                    )
                                )
                            if ws_sockets:
                                ws_urls = await listeners.start(
                                    partial(serve_websocket_listener, server, ws_sockets, shutdown=shutdown)
                                )
                        task_status.started(
                            ServerInfo(
                                urls=urls,
                                ws_urls=ws_urls,
                                layer=layer,
                                interface=server,
                                workers=started,
                                shutdown=shutdown,
                            )
                        )
                        await shutdown.wait()
                    workers_shutdown.set()
                outer.cancel_scope.cancel()

    # Bind before anything starts, so a bad address fails at once, before anything said it is
    # listening; the listeners own the sockets from then on (closing one twice is harmless).
    bound = await bind_sockets([*bind, *ws_bind]) if interface else []
    sockets, ws_sockets = bound[: len(bind)], bound[len(bind) :]
    try:
        if _is_open(layer):
            await run()
        else:
            async with layer:
                await run()
    finally:
        for sock in bound:
            sock.close()
    if signals and signals.forced_by == signal.SIGINT:
        raise KeyboardInterrupt
