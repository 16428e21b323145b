"""``serve()``: the composition root that wires a layer, interface listeners and workers.

One nursery supervises everything::

    serve()
     ├─ the channel layer (entered: its timers / pollers run in its own nursery)
     ├─ outer nursery: the interface's reply poller, the signal watcher
     └─ graceful nursery: HTTP+WebSocket listeners, WebSocket-only listeners, workers

Shutdown (SIGINT/SIGTERM, or the ``shutdown`` event): listeners stop accepting and close
WebSockets with 1001, workers stop pulling, in-flight requests and consumers get
``grace_period`` seconds, then everything left is cancelled.
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
from interface import InterfaceConfig, InterfaceServer, serve_interface, serve_websocket_listener
from layers import BaseChannelLayer, InMemoryChannelLayer
from layers.concurrency import open_service_nursery

from .auth import UserLoader, use_user_loader
from .channel import use_layer
from .http import ASGIApp, http_fallback
from .routing import Router
from .security import set_allowed_hosts
from .sessions import InMemorySessionStore, RedisSessionStore, SessionStore, use_session_store
from .worker import Worker, run_worker

__all__ = ["ServerInfo", "serve"]

log = logging.getLogger("trio_channels.server")


#: Capacities for the layer serve() and the CLI make. An interface process's prefix carries the
#: replies of all its connections, so it needs room for a group send to every member at once;
#: the request channels absorb a burst of a thousand connects or requests before answering 503.
DEFAULT_CHANNEL_CAPACITY: dict[str, int] = {
    "interface.*!": 10_000,
    "http.request": 1_000,
    "websocket.connect": 1_000,
    "websocket.receive": 1_000,
    "websocket.disconnect": 1_000,
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


def _split_host_port(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"WebSocket bind {bind!r} is invalid: write it as host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve_websocket_only(
    server: InterfaceServer,
    bind: str,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    host, port = _split_host_port(bind)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            urls = await accepting.start(
                partial(serve_websocket_listener, server, host, port, handler_nursery=connections)
            )
            task_status.started(urls)
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        await server.close_websockets()
        connections.cancel_scope.deadline = trio.current_time() + server.config.grace_period


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
            shutdown.set()
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
    if type(layer).__name__ == "RedisChannelLayer":
        first = layer.hosts[0]  # type: ignore[attr-defined]
        prefix = f"{layer.prefix}:session"  # type: ignore[attr-defined]
        return await stack.enter_async_context(RedisSessionStore(first, prefix=prefix))
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
    ``handle_signals=True``, gracefully (see the module docstring); cancelling it is a hard stop.

    Consumers' sessions live in *session_store* (a store, a ``redis://`` URL, or ``None``: the
    Redis layer's first server for a Redis layer, else in memory); *user_loader* loads users
    for ``message.user``; *allowed_hosts* is ``ALLOWED_HOSTS`` for origin checks.

    Raises :exc:`ValueError` for a configuration that cannot work (an in-memory layer without
    both an interface and workers), :exc:`ImportError` for a bad routing path, and
    :exc:`OSError` if a bind fails.
    """
    if routing is None:
        routing = "trio_channels.demo.routing.routing"
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
    shutdown = shutdown or trio.Event()

    if allowed_hosts is not None:
        set_allowed_hosts(allowed_hosts)

    async def run() -> None:
        assert isinstance(layer, BaseChannelLayer)
        async with contextlib.AsyncExitStack() as stack:
            store = await _open_session_store(stack, session_store, layer)
            stack.enter_context(use_session_store(store))
            if user_loader is not None:
                stack.enter_context(use_user_loader(user_loader))
            await run_servers()

    async def run_servers() -> None:
        assert isinstance(layer, BaseChannelLayer)
        # Workers stop only after the listeners finished, so the websocket.disconnect messages
        # sent while closing WebSockets with 1001 are still consumed.
        workers_shutdown = trio.Event()
        with use_layer(layer):
            async with open_service_nursery() as outer:
                if handle_signals:
                    outer.start_soon(_watch_signals, shutdown)
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
                            await outer.start(server.run_reply_poller)
                            if bind:
                                urls = await listeners.start(
                                    partial(
                                        serve_interface,
                                        server,
                                        bind,
                                        certfile=certfile,
                                        keyfile=keyfile,
                                        shutdown=shutdown,
                                    )
                                )
                            for ws in ws_bind:
                                ws_urls += await listeners.start(
                                    partial(_serve_websocket_only, server, ws, shutdown)
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

    if _is_open(layer):
        await run()
    else:
        async with layer:
            await run()
