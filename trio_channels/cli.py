"""``python -m trio_channels``: ``run`` (interface + workers) and ``worker`` (workers only).

Exit status: 0 after a clean shutdown; 2 for anything wrong at start-up (a bad routing path,
settings module, layer URL, ASGI app, TLS file, or an address that cannot be bound), printed
as one line on stderr like argparse's own usage errors; 130 after a second Ctrl+C (or one
before start-up finished); 1 for an error while running.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import trio

import layers
from interface import InterfaceConfig

from .config import DEMO_ROUTING, ConfigurationError, ServerConfig, Settings, describe_error, load_settings
from .http import http_fallback
from .routing import Router
from .server import ServerInfo

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "routing",
        nargs="?",
        help="dotted path to a routing list, e.g. myproject.routing.channel_routing (default: the built-in demo)",
    )
    parser.add_argument(
        "--layer",
        metavar="URL",
        help="channel layer URL: memory:// (default), redis://host:6379/0, rediss://...",
    )
    parser.add_argument(
        "--settings",
        metavar="MODULE",
        help="a module with CHANNEL_LAYERS (BACKEND, CONFIG, ROUTING) and ALLOWED_HOSTS, like Channels' settings",
    )
    parser.add_argument(
        "--session-store",
        metavar="URL",
        help="where sessions live: memory:// or redis://... (default: the Redis layer's server, else memory)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="consumers running at once per worker (100)"
    )
    parser.add_argument(
        "--consumer-timeout",
        type=float,
        metavar="SECONDS",
        help="cancel a consumer after this long (default: its message's expiry)",
    )
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="0 quiet, 1 info (default), 2 debug: log every message",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_channels",
        description="Channel layers, groups and routed consumers on Trio: serve HTTP and WebSockets, run workers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="serve HTTP and WebSockets, with workers in the same process (unless --noworker)",
        description="Serve HTTP and WebSockets and run workers in one process. With no ROUTING, serves the built-in demo.",
    )
    _add_common(run)
    net = run.add_argument_group("listening")
    net.add_argument(
        "--bind",
        action="append",
        metavar="ADDRESS",
        help="host:port, unix:PATH or fd://N; repeatable (default 127.0.0.1:8000)",
    )
    net.add_argument(
        "--ws-bind",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an extra WebSocket-only listener; repeatable",
    )
    net.add_argument("--certfile", help="TLS certificate (PEM) for --bind listeners")
    net.add_argument("--keyfile", help="TLS private key (PEM) for --bind listeners")
    net.add_argument(
        "--noworker",
        action="store_true",
        help="no workers here: run them with 'worker' (needs a cross-process layer)",
    )
    timeouts = run.add_argument_group("timeouts (seconds)")
    timeouts.add_argument(
        "--http-timeout", type=float, default=120, help="answer 503 if no response comes (120)"
    )
    timeouts.add_argument(
        "--websocket-connect-timeout",
        type=float,
        default=5,
        help="deny (403) a handshake not accepted in time (5)",
    )
    timeouts.add_argument(
        "--websocket-timeout",
        type=float,
        help="maximum WebSocket lifetime; -1 for none (default: the layer's group_expiry)",
    )
    timeouts.add_argument("--ping-interval", type=float, default=20, help="ping WebSockets this often (20)")
    timeouts.add_argument(
        "--ping-timeout", type=float, default=30, help="close a WebSocket whose pong is this late (30)"
    )
    timeouts.add_argument(
        "--grace-period",
        type=float,
        default=10,
        help="on SIGINT/SIGTERM, let in-flight work finish this long (10)",
    )
    http = run.add_argument_group("HTTP")
    http.add_argument(
        "--proxy-headers", action="store_true", help="trust X-Forwarded-For/-Proto/-Port from a proxy"
    )
    http.add_argument("--root-path", default="", help="ASGI root_path when mounted below a URL prefix")
    http.add_argument(
        "--access-log",
        metavar="PATH",
        help="access log file, or - for stdout (default: stdout at -v 1 and up)",
    )
    http.add_argument(
        "--http-app",
        metavar="MODULE:APP",
        help="an ASGI-3 app for un-routed HTTP requests (Starlette, Quart-Trio...)",
    )
    http.add_argument("--static-root", metavar="DIR", help="serve files from DIR for un-routed HTTP requests")
    http.add_argument("--static-url", default="/static/", help="URL prefix of --static-root (/static/)")
    http.add_argument(
        "--max-body-size", type=int, default=100 * 1024 * 1024, help="largest request body in bytes (100 MiB)"
    )

    worker = commands.add_parser(
        "worker",
        help="run workers only, against a cross-process layer (Redis)",
        description="Run a worker: consume messages from the layer and route them to consumers.",
    )
    _add_common(worker)
    worker.add_argument(
        "--only-channels",
        action="append",
        default=[],
        metavar="GLOB",
        help="listen only on matching channels; repeatable",
    )
    worker.add_argument(
        "--exclude-channels",
        action="append",
        default=[],
        metavar="GLOB",
        help="never listen on matching channels; repeatable",
    )
    worker.add_argument(
        "--grace-period",
        type=float,
        default=10,
        help="on SIGINT/SIGTERM, let running consumers finish this long (10)",
    )
    return parser


def _configure_logging(verbosity: int, access_log: str | None, command: str) -> None:
    level = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}[verbosity]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("hpack", "h2", "h11", "trio-websocket", "interface.hypercorn"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    access = logging.getLogger("interface.access")
    access.propagate = False
    if command != "run" or (access_log is None and verbosity < 1):
        access.setLevel(logging.WARNING)
        return
    handler: logging.Handler
    if access_log in (None, "-"):
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(access_log)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)


@attrs.frozen
class _Prepared:
    routing: Any
    config: ServerConfig

    @property
    def demo(self) -> bool:
        return self.routing == DEMO_ROUTING


def _config(args: argparse.Namespace, settings: Settings | None) -> ServerConfig:
    """The ServerConfig the command line asks for (on top of the settings module's fields)."""
    options: dict[str, Any] = dict(settings.options) if settings else {}
    if args.layer:
        options["layer"] = args.layer
    options.update(
        concurrency=args.concurrency,
        consumer_timeout=args.consumer_timeout,
        grace_period=args.grace_period,
    )
    if args.session_store:
        options["session_store"] = args.session_store
    if args.command == "run":
        options.update(
            bind=args.bind or ["127.0.0.1:8000"],
            ws_bind=args.ws_bind,
            workers=0 if args.noworker else 1,
            certfile=args.certfile,
            keyfile=args.keyfile,
            http_app=args.http_app,
            static_root=args.static_root,
            static_url=args.static_url,
            interface_config=InterfaceConfig(
                http_timeout=args.http_timeout,
                websocket_connect_timeout=args.websocket_connect_timeout,
                websocket_timeout=args.websocket_timeout,
                ping_interval=args.ping_interval,
                ping_timeout=args.ping_timeout,
                root_path=args.root_path,
                proxy_headers=args.proxy_headers,
                max_body_size=args.max_body_size,
            ),
        )
    else:
        options.update(
            interface=False, only_channels=args.only_channels, exclude_channels=args.exclude_channels
        )
    try:
        return ServerConfig(**options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(str(exc)) from exc


def _prepare(args: argparse.Namespace) -> _Prepared:
    settings = load_settings(args.settings) if args.settings else None
    routing = args.routing or (settings.routing if settings else None) or DEMO_ROUTING
    layer = args.layer or (settings.options.get("layer") if settings else None)
    if args.command == "worker" or getattr(args, "noworker", False):
        memory = (
            layer is None
            or isinstance(layer, layers.InMemoryChannelLayer)
            or (isinstance(layer, str) and layer.lower().startswith("memory:"))
        )
        if memory:
            what = "'worker'" if args.command == "worker" else "'run --noworker'"
            raise ConfigurationError(
                f"{what} needs a cross-process channel layer, and the in-memory layer lives in one process: "
                "use --layer redis://localhost:6379/0 (or plain 'run', which runs workers in-process)"
            )
    config = _config(args, settings)
    try:
        Router(routing)  # import everything now: a typo is one line, not a traceback
    except Exception as exc:
        raise ConfigurationError(describe_error("routing", routing, exc)) from exc
    if config.http_app is not None:
        try:
            http_fallback(config.http_app)
        except Exception as exc:
            raise ConfigurationError(describe_error("ASGI app", str(config.http_app), exc)) from exc
    return _Prepared(routing, config)


async def _run(prepared: _Prepared, announce: _Announce) -> None:
    from .server import serve

    await serve(prepared.routing, prepared.config, handle_signals=True, task_status=announce)


@attrs.define
class _Announce:
    """The CLI's ``task_status``: prints where it serves once ``serve()`` is ready."""

    command: str
    what: str
    started_: bool = False

    def started(self, info: ServerInfo | None = None) -> None:
        assert info is not None
        self.started_ = True
        layer_name = type(info.layer).__name__
        if self.command == "run":
            for url in info.urls + info.ws_urls:
                print(
                    f"trio_channels: serving {self.what} at {url} ({layer_name}); press Ctrl+C to stop",
                    flush=True,
                )
        else:
            channels = ", ".join(info.workers[0].channels) if info.workers else ""
            print(
                f"trio_channels: worker listening on {channels} ({layer_name}); press Ctrl+C to stop",
                flush=True,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbosity, getattr(args, "access_log", None), args.command)
    try:
        prepared = _prepare(args)
    except ConfigurationError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    announce = _Announce(args.command, "the built-in demo" if prepared.demo else prepared.routing)
    try:
        trio.run(_run, prepared, announce)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        if announce.started_ and not isinstance(exc, OSError):
            raise  # a bug, not a configuration problem: the traceback helps
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1 if announce.started_ else 2
    except BaseException as exc:
        if _interrupted(exc):
            return 130
        raise
    return 0


def _interrupted(exc: BaseException) -> bool:
    """Whether *exc* is a Ctrl+C, maybe inside exception groups."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and any(_interrupted(inner) for inner in exc.exceptions)
