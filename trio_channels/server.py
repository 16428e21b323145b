"""``serve()``: the composition root that wires a layer, interface listeners and workers.

One nursery supervises everything::

    serve()
     ├─ the channel layer (entered: its timers / pollers run in its own nursery)
     ├─ outer nursery: the interface's reply poller, the signal watcher, the metrics listener
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
from functools import partial
from typing import Any

import attrs
import trio

from interface import BindError, InterfaceServer, serve_interface, serve_websocket_listener
from interface.asgi import tls_context
from interface.listeners import bind_sockets, close_sockets
from layers import BaseChannelLayer, InMemoryChannelLayer
from layers.concurrency import open_service_nursery

from .auth import use_user_loader
from .channel import use_layer
from .config import DEFAULT_CHANNEL_CAPACITY, DEMO_ROUTING, ServerConfig
from .http import http_fallback
from .routing import Router
from .security import use_allowed_hosts
from .stores import InMemorySessionStore, RedisSessionStore, SessionStore, use_session_store
from .worker import Worker, run_worker, select_channels

__all__ = ["DEFAULT_CHANNEL_CAPACITY", "BindError", "ServerConfig", "ServerInfo", "serve"]

log = logging.getLogger("trio_channels.server")


@attrs.frozen(kw_only=True)
class ServerInfo:
    """What ``serve()`` hands to ``task_status.started()``: where it listens and what runs."""

    urls: list[str]
    ws_urls: list[str]
    layer: BaseChannelLayer
    interface: InterfaceServer | None
    workers: list[Worker]
    shutdown: trio.Event
    config: ServerConfig
    #: Where ``GET /metrics`` answers (``--metrics-bind``), else ``None``.
    metrics_url: str | None = None

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


def _layer_options(routing: Any) -> dict[str, Any]:
    """The options of a layer made for *routing*: the demo's (history, presence events)."""
    if not (isinstance(routing, str) and routing == DEMO_ROUTING):
        return {}
    from .demo.routing import LAYER_OPTIONS

    return LAYER_OPTIONS


async def serve(
    routing: Any = None,
    config: ServerConfig | None = None,
    *,
    shutdown: trio.Event | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run interface listeners and workers for *routing*, as *config* says, until shut down.

    *routing* is a routing list, its import path (``"myproject.routing:channel_routing"`` or
    ``"myproject.routing.channel_routing"``), or ``None`` for the built-in demo. *config* is a
    :class:`~trio_channels.config.ServerConfig` (``None``: the defaults, the demo's
    ``127.0.0.1:8000`` on an in-memory layer). A layer made from a URL for the demo gets the
    demo's history and presence options (``trio_channels.demo.routing.LAYER_OPTIONS``).

    ``task_status.started()`` hands back a :class:`ServerInfo` once every listener is bound and
    every worker is pulling. Stops when *shutdown* is set, or on SIGINT/SIGTERM with
    ``handle_signals=True``, gracefully (see the module docstring); cancelling it is a hard stop,
    and so is a second signal (after a second SIGINT it raises :exc:`KeyboardInterrupt`).

    Every address is bound before anything else starts. Raises :exc:`ImportError` for a bad
    routing path, :exc:`ValueError` for TLS files that do not load, and :exc:`~trio_channels.server.BindError` (an
    :exc:`OSError` naming the address and the reason) if a bind fails; never an exception
    group for these. (A config that cannot work fails earlier, when it is made.)
    """
    config = config if config is not None else ServerConfig()
    if not isinstance(config, ServerConfig):
        raise TypeError(
            f"serve() takes a ServerConfig as its config, not {type(config).__name__}: "
            "serve(routing, ServerConfig(bind=[...], ...))"
        )
    if routing is None:
        routing = DEMO_ROUTING
    layer = config.make_layer(**_layer_options(routing))
    n_workers = config.workers
    http_fallback_consumer = http_fallback(config.http_app, config.static_root, config.static_url)
    router = Router(routing, http_fallback=http_fallback_consumer) if n_workers else None
    # One shutdown budget for the process: the interface's is the config's.
    interface_config = attrs.evolve(config.interface_config, grace_period=config.grace_period)
    tls_context(config.certfile, config.keyfile)  # fail now, not after the workers started
    user_loader = config.resolved_user_loader()
    shutdown = shutdown if shutdown is not None else trio.Event()
    signals = _Signals(shutdown) if handle_signals else None

    hosts_setting = use_allowed_hosts(config.allowed_hosts) if config.allowed_hosts is not None else None

    async def run() -> None:
        # The ambient settings are context variables, seen by every task started below.
        async with contextlib.AsyncExitStack() as stack:
            store = await _open_session_store(stack, config.session_store, layer)
            stack.enter_context(use_session_store(store))
            if user_loader is not None:
                stack.enter_context(use_user_loader(user_loader))
            if hosts_setting is not None:
                stack.enter_context(hosts_setting)
            with signals.hard_stop if signals else contextlib.nullcontext():
                await run_servers()

    async def run_servers() -> None:
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
                                    only_channels=config.only_channels,
                                    exclude_channels=config.exclude_channels,
                                    concurrency=config.concurrency,
                                    consumer_timeout=config.consumer_timeout,
                                    grace_period=config.grace_period,
                                    shutdown=workers_shutdown,
                                )
                            )
                        )
                    async with trio.open_nursery() as listeners:
                        urls: list[str] = []
                        ws_urls: list[str] = []
                        server = None
                        if config.interface:
                            server = InterfaceServer(layer, interface_config)
                            if isinstance(layer, InMemoryChannelLayer) and router is not None:
                                # Every consumer is here: optional messages go only where a
                                # route of the application's takes them (on a shared layer,
                                # workers elsewhere may: everything is sent).
                                server.consumed_channels = router.routed & frozenset(
                                    select_channels(
                                        router.channels(), config.only_channels, config.exclude_channels
                                    )
                                )
                            await outer.start(server.run)
                            await outer.start(server.run_membership_watcher)
                            if sockets:
                                urls = await listeners.start(
                                    partial(
                                        serve_interface,
                                        server,
                                        sockets,
                                        certfile=config.certfile,
                                        keyfile=config.keyfile,
                                        shutdown=shutdown,
                                    )
                                )
                            if ws_sockets:
                                ws_urls = await listeners.start(
                                    partial(serve_websocket_listener, server, ws_sockets, shutdown=shutdown)
                                )
                        metrics_url = None
                        if metrics_sockets:
                            from .metrics import serve_metrics  # the metrics extra: only when asked for

                            metrics_url = await outer.start(
                                serve_metrics, metrics_sockets[0], layer, server, started
                            )
                        task_status.started(
                            ServerInfo(
                                urls=urls,
                                ws_urls=ws_urls,
                                layer=layer,
                                interface=server,
                                workers=started,
                                shutdown=shutdown,
                                config=config,
                                metrics_url=metrics_url,
                            )
                        )
                        await shutdown.wait()
                    workers_shutdown.set()
                outer.cancel_scope.cancel()

    # Bind before anything starts, so a bad address fails at once, before anything said it is
    # listening; the listeners own the sockets from then on (closing one twice is harmless).
    binds = [*config.bind, *config.ws_bind] if config.interface else []
    metrics_binds = [config.metrics_bind] if config.metrics_bind is not None else []
    bound = await bind_sockets([*binds, *metrics_binds], uds_perms=config.uds_perms)
    sockets, ws_sockets = bound[: len(config.bind)], bound[len(config.bind) : len(binds)]
    metrics_sockets = bound[len(binds) :]
    try:
        if layer.is_open:
            await run()
        else:
            async with layer:
                await run()
    finally:
        close_sockets(bound)  # and remove the Unix socket files they made
    if signals and signals.forced_by == signal.SIGINT:
        raise KeyboardInterrupt
