"""``python -m trio_channels``: ``run`` (interface + workers) and ``worker`` (workers only).

Exit status: 0 after a clean shutdown; 2 for anything wrong at start-up (a bad routing path,
settings module, layer URL, ASGI app, TLS file, or an address that cannot be bound), printed
as one line on stderr like argparse's own usage errors; 130 after a second Ctrl+C (or one
before start-up finished); 1 for an error while running.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import sysconfig
import traceback
from collections.abc import Sequence
from typing import Any

import attrs
import trio

import layers
from interface import InterfaceConfig

from .http import http_fallback
from .routing import Router, import_by_path
from .server import DEFAULT_CHANNEL_CAPACITY, ServerInfo

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

DEMO_ROUTING = "trio_channels.demo.routing.routing"
BACKEND_ALIASES = {
    "asgiref.inmemory.ChannelLayer": "layers.InMemoryChannelLayer",
    "asgi_redis.RedisChannelLayer": "layers.redis.RedisChannelLayer",
}


class ConfigurationError(Exception):
    """A user configuration problem: reported as one line, exit status 2."""


_OURS = tuple(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + package + os.sep
    for package in ("trio_channels", "layers", "interface")
)
_STDLIB = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


def _user_location(exc: BaseException) -> str | None:
    """``FILE, line N`` of the innermost frame in the user's code that *exc* came from."""
    while exc.__cause__ is not None:  # the original error, not our re-raise of it
        exc = exc.__cause__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}"
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        filename = os.path.abspath(frame.f_code.co_filename)
        if frame.f_code.co_filename.startswith("<") or filename.startswith((*_OURS, _STDLIB)):
            continue
        found = f"{filename}, line {line}"
    return found


def _one_line(what: str, value: str, exc: BaseException) -> str:
    """*exc*, raised while loading *value* (a *what*), as one line naming the value and where."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    ours = bool(frames) and os.path.abspath(frames[-1][0].f_code.co_filename).startswith(_OURS)
    if isinstance(exc, SyntaxError):
        message = f"SyntaxError: {exc.msg}"
    elif ours and str(exc):  # our messages say what is wrong; the type adds nothing
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    if repr(value) not in message:
        message = f"{what} {value!r}: {message}"
    location = _user_location(exc)
    if location is not None:
        message += f" ({location})"
    return " ".join(message.split())  # a multi-line message would not be one line


def _load_settings(path: str) -> dict[str, Any]:
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        reason = "no module of that name" if getattr(exc, "name", None) == path else str(exc)
        raise ConfigurationError(f"settings module {path!r} could not be imported: {reason}") from exc
    except Exception as exc:
        raise ConfigurationError(_one_line("settings module", path, exc)) from exc
    layers_setting = getattr(module, "CHANNEL_LAYERS", None)
    if not isinstance(layers_setting, dict) or "default" not in layers_setting:
        raise ConfigurationError(f"settings module {path!r} needs CHANNEL_LAYERS = {{'default': {{...}}}}")
    default = layers_setting["default"]
    result: dict[str, Any] = {
        "routing": default.get("ROUTING"),
        "allowed_hosts": getattr(module, "ALLOWED_HOSTS", None),
        "session_store": getattr(module, "SESSION_STORE", None),
    }
    loader = getattr(module, "AUTH_USER_LOADER", None)
    if isinstance(loader, str):
        try:
            loader = import_by_path(loader, "AUTH_USER_LOADER")
        except ImportError as exc:
            raise ConfigurationError(str(exc)) from exc
    result["user_loader"] = loader
    backend = default.get("BACKEND")
    config = dict(default.get("CONFIG", {}))
    if backend is None:
        raise ConfigurationError(f"settings module {path!r}: CHANNEL_LAYERS['default'] has no BACKEND")
    try:
        if "://" in backend:
            result["layer"] = layers.from_url(backend, **config)
        else:
            cls = import_by_path(BACKEND_ALIASES.get(backend, backend), "channel layer BACKEND")
            result["layer"] = cls(**config)
    except Exception as exc:
        raise ConfigurationError(f"settings module {path!r}: {_one_line('BACKEND', backend, exc)}") from exc
    return result


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


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    settings = _load_settings(args.settings) if args.settings else {}
    routing = args.routing or settings.get("routing") or DEMO_ROUTING
    if args.layer:
        try:
            layer = layers.from_url(args.layer, channel_capacity=DEFAULT_CHANNEL_CAPACITY)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(str(exc)) from exc
    else:
        layer = settings.get("layer") or layers.InMemoryChannelLayer(
            channel_capacity=DEFAULT_CHANNEL_CAPACITY
        )
    try:
        Router(routing)  # import everything now: a typo is one line, not a traceback
    except Exception as exc:
        raise ConfigurationError(_one_line("routing", routing, exc)) from exc
    if args.command == "run" and args.http_app:
        try:
            http_fallback(args.http_app)
        except Exception as exc:
            raise ConfigurationError(_one_line("ASGI app", args.http_app, exc)) from exc
    in_memory = isinstance(layer, layers.InMemoryChannelLayer)
    if in_memory and (args.command == "worker" or getattr(args, "noworker", False)):
        what = "'worker'" if args.command == "worker" else "'run --noworker'"
        raise ConfigurationError(
            f"{what} needs a cross-process channel layer, and the in-memory layer lives in one process: "
            "use --layer redis://localhost:6379/0 (or plain 'run', which runs workers in-process)"
        )
    return {
        "routing": routing,
        "layer": layer,
        "demo": routing == DEMO_ROUTING,
        "session_store": args.session_store or settings.get("session_store"),
        "user_loader": settings.get("user_loader"),
        "allowed_hosts": settings.get("allowed_hosts"),
    }


async def _run(args: argparse.Namespace, prepared: dict[str, Any], announce: _Announce) -> None:
    from .server import serve

    options: dict[str, Any] = {
        "layer": prepared["layer"],
        "concurrency": args.concurrency,
        "consumer_timeout": args.consumer_timeout,
        "grace_period": args.grace_period,
        "handle_signals": True,
        "session_store": prepared["session_store"],
        "user_loader": prepared["user_loader"],
        "allowed_hosts": prepared["allowed_hosts"],
    }
    if args.command == "run":
        options.update(
            bind=args.bind or ["127.0.0.1:8000"],
            ws_bind=args.ws_bind,
            workers=not args.noworker,
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
                grace_period=args.grace_period,
            ),
        )
    else:
        options.update(
            interface=False, only_channels=args.only_channels, exclude_channels=args.exclude_channels
        )

    await serve(prepared["routing"], task_status=announce, **options)


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
    announce = _Announce(args.command, "the built-in demo" if prepared["demo"] else prepared["routing"])
    try:
        trio.run(_run, args, prepared, announce)
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
