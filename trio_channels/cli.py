"""``python -m trio_channels``: ``run`` (interface + workers) and ``worker`` (workers only).

Every option is also an environment variable, ``TRIO_CHANNELS_`` and the flag's name
(``--ws-max-size`` is ``TRIO_CHANNELS_WS_MAX_SIZE``; repeatable options take a
comma-separated list; switches take ``1``/``true``/``yes`` or ``0``/``false``/``no``); uvicorn's
``FORWARDED_ALLOW_IPS`` works too. A flag beats its variable, which beats a ``--settings``
module, which beats the :class:`~trio_channels.config.ServerConfig` default.
:doc:`configuration` lists them all.

Exit status: 0 after a clean shutdown; 2 for anything wrong at start-up (a bad routing path,
settings module, layer URL, ASGI app, TLS file, log config, environment variable, an address
that cannot be bound, or a layer that cannot start: no sentinel of a ``redis+sentinel://`` URL,
or no node of a ``redis-cluster://`` one, answers), printed as one line on stderr like argparse's own usage errors; 130 after a second
Ctrl+C (or one before start-up finished); 1 for an error while running.

``--processes N`` (and ``--reload``) run the server as children of a supervisor
(:mod:`trio_channels.supervisor`): this process binds and checks everything a child would,
then starts them; a supervisor that gives up prints one line and exits 2 (a child failed
before every child had been ready) or 1 (later: a crash loop).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import attrs
import trio

from interface import InterfaceConfig
from interface.asgi import tls_context
from interface.listeners import bind_sockets, close_sockets
from layers import ChannelLayerUnavailable

from . import __version__
from .config import (
    DEMO_ROUTING,
    ConfigurationError,
    ServerConfig,
    Settings,
    describe_error,
    load_settings,
    metrics_bind_for_process,
)
from .http import http_fallback
from .logconfig import LOG_LEVELS, configure_logging
from .routing import Router
from .server import ServerInfo
from .supervisor import Supervised, Supervisor, cpu_count

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

log = logging.getLogger("trio_channels")

ENV_PREFIX = "TRIO_CHANNELS_"
#: Environment variables other servers use, honoured as aliases (uvicorn's, gunicorn's).
ENV_ALIASES = {"forwarded_allow_ips": "FORWARDED_ALLOW_IPS"}
_VERBOSITY = {0: "warning", 1: "info", 2: "debug"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@attrs.frozen
class Option:
    """One command-line option: its flags, the config field it sets, and its environment variable."""

    action: argparse.Action
    commands: tuple[str, ...]
    #: ``"concurrency"``, ``"interface_config.http_timeout"``, or ``None`` for the CLI's own.
    field: str | None
    #: ``value`` (one value), ``list`` (repeatable), ``switch`` (no value).
    kind: str

    @property
    def flag(self) -> str:
        """The long flag (``--ws-max-size``), or the positional's name (``ROUTING``)."""
        long = [flag for flag in self.action.option_strings if flag.startswith("--")]
        return long[0] if long else str(self.action.metavar or self.action.dest).upper()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").upper().replace("-", "_")


def _octal(text: str) -> int:
    """An octal file mode (``660``, ``0660``, ``0o660``)."""
    value = int(text.removeprefix("0o"), 8)
    if not 0 <= value <= 0o777:
        raise ValueError(text)
    return value


_octal.__name__ = "octal mode"  # argparse names the type in its error: "invalid octal mode value"


class _Builder:
    """Adds options to the parsers and remembers them (for environment variables and the docs)."""

    def __init__(self) -> None:
        self.options: list[Option] = []

    def add(
        self,
        parsers: Sequence[tuple[str, argparse._ActionsContainer]],
        *flags: str,
        field: str | None = None,
        help: str,
        **kwargs: Any,
    ) -> None:
        action_name = kwargs.get("action", "store")
        kind = (
            "list"
            if action_name == "append"
            else "switch"
            if action_name in ("store_true", "store_const")
            else "value"
        )
        kwargs.setdefault("default", None)  # unset: the config's default (or the settings module's) applies
        actions = [parser.add_argument(*flags, help=help, **kwargs) for _, parser in parsers]
        option = Option(actions[0], tuple(command for command, _ in parsers), field, kind)
        env = option.env + (
            f" or {ENV_ALIASES[option.action.dest]}" if option.action.dest in ENV_ALIASES else ""
        )
        for action in actions:
            action.help = f"{help} [env {env}]"
        self.options.append(option)


def _default(field: str) -> Any:
    """The default of a ServerConfig field, or of ``interface_config.<name>``."""
    owner: Any = ServerConfig
    if field.startswith("interface_config."):
        owner, field = InterfaceConfig, field.split(".", 1)[1]
    default = attrs.fields_dict(owner)[field].default
    factory = getattr(default, "factory", None)
    return factory() if factory is not None else default


def _build() -> tuple[argparse.ArgumentParser, list[Option]]:
    parser = argparse.ArgumentParser(
        prog="python -m trio_channels",
        description="Channel layers, groups and routed consumers on Trio: serve HTTP and WebSockets, run workers.",
    )
    python = f"{platform.python_implementation()} {platform.python_version()}"
    parser.add_argument(
        "--version",
        action="version",
        version=f"trio_channels {__version__} ({python}, Trio {trio.__version__}) on {platform.system()}",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="serve HTTP and WebSockets, with workers in the same process (unless --noworker)",
        description="Serve HTTP and WebSockets and run workers in one process. With no ROUTING, serves the built-in demo.",
    )
    worker = commands.add_parser(
        "worker",
        help="run workers only, against a cross-process layer (Redis)",
        description="Run a worker: consume messages from the layer and route them to consumers.",
    )
    b = _Builder()
    both = [("run", run), ("worker", worker)]

    def groups(title: str, *commands: str) -> list[tuple[str, argparse._ActionsContainer]]:
        parsers = {"run": run, "worker": worker}
        return [(command, parsers[command].add_argument_group(title)) for command in commands or parsers]

    b.add(
        both,
        "routing",
        nargs="?",
        metavar="ROUTING",
        help="the routing list, as module:name or a dotted path, e.g. myproject.routing:channel_routing "
        "(default: the --settings module's ROUTING, else the built-in demo)",
    )
    app = groups("application")
    b.add(
        app,
        "--layer",
        metavar="URL",
        field="layer",
        help="channel layer URL: memory:// (default), redis://host:6379/0, rediss://..., "
        "redis+sentinel://host1:26379,host2:26379/SERVICE/0, redis-cluster://host1:7000,host2:7001/",
    )
    b.add(
        app,
        "--settings",
        metavar="MODULE",
        help="a module with CHANNEL_LAYERS (BACKEND, CONFIG, ROUTING) and ALLOWED_HOSTS, like Channels' settings",
    )
    b.add(
        app,
        "--session-store",
        metavar="URL",
        field="session_store",
        help="where sessions live: memory://, redis://..., redis+sentinel://... or redis-cluster://... "
        "(default: the Redis layer's server or cluster, else memory)",
    )
    b.add(
        app,
        "--concurrency",
        type=int,
        metavar="N",
        field="concurrency",
        help=f"consumers running at once per worker ({_default('concurrency')})",
    )
    b.add(
        app,
        "--consumer-timeout",
        type=float,
        metavar="SECONDS",
        field="consumer_timeout",
        help="cancel a consumer after this long (default: its message's expiry)",
    )
    b.add(
        app,
        "--grace-period",
        type=float,
        metavar="SECONDS",
        field="grace_period",
        help=f"on SIGINT/SIGTERM, let in-flight work finish this long ({_default('grace_period')})",
    )
    b.add(
        groups("processes"),
        "--processes",
        type=int,
        metavar="N",
        help="run N processes sharing the listening sockets, under a supervisor that restarts them; "
        "0: one per core (default 1: this process serves; N > 1 needs a cross-process layer)",
    )
    channels = groups("channels", "worker")
    b.add(
        channels,
        "--only-channels",
        action="append",
        metavar="GLOB",
        field="only_channels",
        help="listen only on matching channels; repeatable",
    )
    b.add(
        channels,
        "--exclude-channels",
        action="append",
        metavar="GLOB",
        field="exclude_channels",
        help="never listen on matching channels; repeatable",
    )

    net = groups("listening", "run")
    b.add(
        net,
        "--bind",
        action="append",
        metavar="ADDRESS",
        field="bind",
        help="host:port, [v6]:port, unix:PATH or fd://N; repeatable (default 127.0.0.1:8000)",
    )
    b.add(
        net,
        "--ws-bind",
        action="append",
        metavar="ADDRESS",
        field="ws_bind",
        help="an extra WebSocket-only listener, written like --bind; repeatable",
    )
    b.add(
        net,
        "--uds-perms",
        type=_octal,
        metavar="MODE",
        field="uds_perms",
        help="file mode of the unix: sockets, in octal (0660: owner and group)",
    )
    b.add(
        net,
        "--certfile",
        metavar="PEM",
        field="certfile",
        help="TLS certificate for the --bind listeners (with --keyfile)",
    )
    b.add(net, "--keyfile", metavar="PEM", field="keyfile", help="TLS private key for the --bind listeners")
    b.add(
        net,
        "--noworker",
        action="store_const",
        const=0,
        dest="workers",
        field="workers",
        help="no workers here: run them with 'worker' (needs a cross-process layer)",
    )

    limits = groups("limits and timeouts", "run")
    i = "interface_config."
    b.add(
        limits,
        "--http-timeout",
        type=float,
        metavar="SECONDS",
        field=i + "http_timeout",
        help=f"answer 503 if no response comes in time ({_default(i + 'http_timeout')})",
    )
    b.add(
        limits,
        "--websocket-connect-timeout",
        type=float,
        metavar="SECONDS",
        field=i + "websocket_connect_timeout",
        help=f"deny (403) a handshake not accepted in time ({_default(i + 'websocket_connect_timeout')})",
    )
    b.add(
        limits,
        "--websocket-timeout",
        type=float,
        metavar="SECONDS",
        field=i + "websocket_timeout",
        help="maximum WebSocket lifetime; -1 for none (default: the layer's group_expiry)",
    )
    b.add(
        limits,
        "--ping-interval",
        type=float,
        metavar="SECONDS",
        field=i + "ping_interval",
        help=f"ping WebSockets this often; 0 for never ({_default(i + 'ping_interval')})",
    )
    b.add(
        limits,
        "--ping-timeout",
        type=float,
        metavar="SECONDS",
        field=i + "ping_timeout",
        help=f"close a WebSocket whose pong is this late ({_default(i + 'ping_timeout')})",
    )
    b.add(
        limits,
        "--timeout-keep-alive",
        type=float,
        metavar="SECONDS",
        field=i + "timeout_keep_alive",
        help=f"close an idle keep-alive connection after this long ({_default(i + 'timeout_keep_alive')})",
    )
    b.add(
        limits,
        "--limit-concurrency",
        type=int,
        metavar="N",
        field=i + "limit_concurrency",
        help="answer 503 to new requests and WebSockets while N are in flight (default: no limit)",
    )
    b.add(
        limits,
        "--max-body-size",
        type=int,
        metavar="BYTES",
        field=i + "max_body_size",
        help=f"largest request body; larger: 413 ({_default(i + 'max_body_size')})",
    )
    b.add(
        limits,
        "--ws-max-size",
        type=int,
        metavar="BYTES",
        field=i + "websocket_max_message_size",
        help=f"largest WebSocket message; larger: close 1009 ({_default(i + 'websocket_max_message_size')})",
    )

    http = groups("HTTP and WebSockets", "run")
    b.add(
        http,
        "--ws-protocol",
        action="append",
        metavar="NAME",
        field=i + "ws_protocols",
        help="a subprotocol the server accepts (the client's first one it knows is chosen); repeatable",
    )
    b.add(
        http,
        "--proxy-headers",
        action="store_true",
        field=i + "proxy_headers",
        help="honour X-Forwarded-For/-Proto/-Port from the --forwarded-allow-ips proxies",
    )
    b.add(
        http,
        "--forwarded-allow-ips",
        metavar="IPS",
        field=i + "forwarded_allow_ips",
        help="proxies trusted with proxy headers: IPs and networks, comma-separated, or * (127.0.0.1); implies --proxy-headers",
    )
    b.add(
        http,
        "--root-path",
        metavar="PATH",
        field=i + "root_path",
        help="ASGI root_path when mounted below a URL prefix",
    )
    b.add(
        http,
        "--http-app",
        metavar="MODULE:APP",
        field="http_app",
        help="an ASGI-3 app for un-routed HTTP requests (Starlette, Quart-Trio...)",
    )
    b.add(
        http,
        "--static-root",
        metavar="DIR",
        field="static_root",
        help="serve files from DIR for un-routed HTTP requests",
    )
    b.add(
        http,
        "--static-url",
        metavar="URL",
        field="static_url",
        help=f"URL prefix of --static-root ({_default('static_url')})",
    )

    logs = groups("logging")
    b.add(
        logs,
        "--log-level",
        choices=list(LOG_LEVELS),
        metavar="LEVEL",
        help="critical, error, warning, info (default), debug (every message) or trace (also the protocol libraries)",
    )
    b.add(
        logs,
        "-v",
        "--verbosity",
        type=int,
        choices=(0, 1, 2),
        help="Daphne's spelling: 0 is --log-level warning, 1 info, 2 debug",
    )
    b.add(
        logs,
        "--log-config",
        metavar="FILE",
        help="a logging dictConfig file (.json, or .yaml/.yml with PyYAML), applied over the defaults",
    )
    b.add(
        logs[:1],
        "--access-log",
        metavar="PATH",
        help="access log file, or - for stdout (the default at log level info and below)",
    )
    b.add(logs[:1], "--no-access-log", action="store_true", help="no access log")

    b.add(
        groups("metrics"),
        "--metrics-bind",
        metavar="HOST:PORT",
        field="metrics_bind",
        help="serve GET /metrics in the Prometheus text format there (needs the metrics extra)",
    )
    dev = groups("development", "run")
    b.add(
        dev,
        "--reload",
        action="store_true",
        help="restart when a .py file changes (needs watchfiles: pip install 'trio-channels[reload]')",
    )
    b.add(
        dev,
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="a directory --reload watches; repeatable (default: the current directory)",
    )
    return parser, b.options


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    return _build()[0]


def options() -> list[Option]:
    """Every option of every command (what :doc:`configuration` documents)."""
    return _build()[1]


def _from_environment(parser: argparse.ArgumentParser, args: argparse.Namespace, found: list[Option]) -> None:
    """Fill the options not given on the command line from their environment variables."""
    for option in found:
        action = option.action
        if args.command not in option.commands or getattr(args, action.dest, None) is not None:
            continue
        names = [option.env] + ([ENV_ALIASES[action.dest]] if action.dest in ENV_ALIASES else [])
        name = next((name for name in names if name in os.environ), None)
        if name is None:
            continue
        text = os.environ[name]
        try:
            value = _env_value(option, text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            parser.error(f"environment variable {name}={text!r} is invalid for {option.flag}")
        setattr(args, action.dest, value)


def _env_value(option: Option, text: str) -> Any:
    action = option.action
    if option.kind == "switch":
        if text.strip().lower() in _TRUE:
            return action.const
        if text.strip().lower() in _FALSE:
            return None
        raise ValueError(text)
    convert = cast("Callable[[str], Any]", action.type or str)
    values = (
        [convert(part.strip()) for part in text.split(",") if part.strip()]
        if option.kind == "list"
        else [convert(text)]
    )
    if action.choices is not None and any(value not in action.choices for value in values):
        raise ValueError(text)
    return values if option.kind == "list" else values[0]


@attrs.frozen
class _Prepared:
    routing: Any
    config: ServerConfig

    @property
    def demo(self) -> bool:
        return self.routing == DEMO_ROUTING


def _config(args: argparse.Namespace, found: list[Option], settings: Settings | None) -> ServerConfig:
    """The ServerConfig the command line asks for, on top of the settings module's fields."""
    fields: dict[str, Any] = dict(settings.options) if settings else {}
    interface: dict[str, Any] = {}
    for option in found:
        value = getattr(args, option.action.dest, None)
        if option.field is None or args.command not in option.commands or value is None:
            continue
        if option.field.startswith("interface_config."):
            interface[option.field.split(".", 1)[1]] = value
        else:
            fields[option.field] = value
    if "forwarded_allow_ips" in interface:
        interface.setdefault("proxy_headers", True)  # naming the proxies means trusting them
    if args.command == "worker":
        fields["interface"] = False
    try:
        return ServerConfig(**fields, interface_config=InterfaceConfig(**interface))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(str(exc)) from exc


def _in_memory(layer: Any) -> bool:
    try:
        return ServerConfig(layer=layer).in_memory
    except (ValueError, TypeError):
        return False  # a bad layer: _config says what is wrong with it


def _processes(args: argparse.Namespace) -> int:
    """How many processes ``--processes`` asks for (0: one per core)."""
    processes: int | None = args.processes
    if processes is None:
        return 1
    if processes < 0:
        raise ConfigurationError(f"--processes must be 0 (one per core) or more, got {processes}")
    return processes or cpu_count()


def _prepare(args: argparse.Namespace, found: list[Option], *, load_app: bool = True) -> _Prepared:
    """The routing and config the command line asks for; with *load_app*, the routing and
    the ASGI app are imported too, so a typo is one line now, not a traceback later."""
    settings = load_settings(args.settings) if args.settings else None
    routing = args.routing or (settings.routing if settings else None) or DEMO_ROUTING
    layer = args.layer or (settings.options.get("layer") if settings else None)
    if args.processes not in (None, 1) and _in_memory(layer):
        several = "0 (one per core)" if args.processes == 0 else str(args.processes)
        raise ConfigurationError(
            f"--processes {several} needs a cross-process channel layer: the in-memory layer lives in "
            "one process, so groups would not span the processes; use --layer redis://localhost:6379/0 "
            "(or one process)"
        )
    if args.command == "worker" or getattr(args, "workers", None) == 0:
        if _in_memory(layer):
            what = "'worker'" if args.command == "worker" else "'run --noworker'"
            raise ConfigurationError(
                f"{what} needs a cross-process channel layer, and the in-memory layer lives in one process: "
                "use --layer redis://localhost:6379/0 (or plain 'run', which runs workers in-process)"
            )
    config = _config(args, found, settings)
    if not load_app:
        return _Prepared(routing, config)
    try:
        Router(routing)
    except Exception as exc:
        raise ConfigurationError(describe_error("routing", routing, exc)) from exc
    if config.http_app is not None:
        try:
            http_fallback(config.http_app)
        except Exception as exc:
            raise ConfigurationError(describe_error("ASGI app", str(config.http_app), exc)) from exc
    return _Prepared(routing, config)


def _banner(command: str, what: str, report: dict[str, Any], processes: int = 1) -> None:
    """Say where the server serves (or what the worker listens on), once it does."""
    layer = report["layer"] + (f", {processes} processes" if processes > 1 else "")
    if command == "run":
        for url in report["urls"] + report["ws_urls"]:
            log.info("serving %s at %s (%s); press Ctrl+C to stop", what, url, layer)
    else:
        log.info("worker listening on %s (%s); press Ctrl+C to stop", ", ".join(report["channels"]), layer)
    for url in report["metrics_urls"]:
        log.info("Prometheus metrics on %s", url)


@attrs.define
class _Announce:
    """The CLI's ``task_status``: once ``serve()`` is ready, says where it serves (or tells
    the supervisor, which says it once for all its children)."""

    command: str
    what: str
    supervised: Supervised | None = None
    started_: bool = False

    def started(self, info: ServerInfo | None = None) -> None:
        assert info is not None
        self.started_ = True
        report = {
            "pid": os.getpid(),
            "urls": info.urls,
            "ws_urls": info.ws_urls,
            "layer": type(info.layer).__name__,
            "channels": list(info.workers[0].channels) if info.workers else [],
            "metrics_urls": [info.metrics_url] if info.metrics_url is not None else [],
        }
        if self.supervised is not None:
            self.supervised.report_ready(report)
        else:
            _banner(self.command, self.what, report)


async def _run(prepared: _Prepared, announce: _Announce) -> None:
    from .server import serve

    if announce.supervised is None:
        await serve(prepared.routing, prepared.config, handle_signals=True, task_status=announce)
        return
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_orphaned, announce.supervised, shutdown)
            await serve(
                prepared.routing,
                prepared.config,
                shutdown=shutdown,
                handle_signals=True,
                task_status=announce,
            )
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # serve()'s own error, as main() expects it
            raise group.exceptions[0] from None
        raise


async def _orphaned(supervised: Supervised, shutdown: trio.Event) -> None:
    """A child whose supervisor is gone (even killed with SIGKILL) shuts down gracefully."""
    await supervised.wait_orphaned()
    log.warning("the supervisor is gone; shutting down gracefully")
    shutdown.set()


async def _supervise(
    argv: Sequence[str],
    prepared: _Prepared,
    on_ready: Callable[[list[dict[str, Any]]], None],
    *,
    processes: int = 1,
    directories: Sequence[str] | None = None,
) -> tuple[int, str | None]:
    """Bind the sockets once and run the children on them: (the exit status, why it gave up)."""
    config = prepared.config
    binds = [*config.bind, *config.ws_bind] if config.interface else []
    sockets = await bind_sockets(binds, uds_perms=config.uds_perms)
    try:
        supervisor = Supervisor(
            argv=argv,
            binds=sockets[: len(config.bind)],
            ws_binds=sockets[len(config.bind) :],
            processes=processes,
            grace_period=config.grace_period,
            reload_directories=directories,
            on_ready=on_ready,
        )
        return await supervisor.run(), supervisor.error
    finally:
        close_sockets(sockets)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m trio_channels`` with *argv* (default: ``sys.argv[1:]``); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, found = _build()
    args = parser.parse_args(argv)
    _from_environment(parser, args, found)
    prog = f"{parser.prog} {args.command}"
    level = args.log_level or _VERBOSITY.get(args.verbosity if args.verbosity is not None else 1, "info")
    access_log: str | None = None
    if (
        args.command == "run"
        and not args.no_access_log
        and (args.access_log or LOG_LEVELS[level] <= logging.INFO)
    ):
        access_log = args.access_log or "-"
    try:
        configure_logging(level, access_log=access_log, log_config=args.log_config)
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    supervised = Supervised.from_environment()
    if supervised is not None:  # a child of a supervisor: serve its sockets, supervise nothing
        args.bind, args.ws_bind = list(supervised.bind), list(supervised.ws_bind)
        args.reload = None
        args.processes = None
    reloading = args.command == "run" and bool(args.reload)
    try:
        processes = _processes(args)
        if reloading and args.processes not in (None, 1):
            raise ConfigurationError(
                f"--reload runs one process: it cannot be combined with --processes {args.processes}"
            )
        # The reloader's child imports the application: an error in it waits for the next change.
        # With --processes, this process checks it (and the TLS files) once, so a typo is one line.
        prepared = _prepare(args, found, load_app=not reloading)
        if supervised is not None and prepared.config.metrics_bind is not None:
            # Child i of a supervisor serves its own metrics on the port + i - 1 (docs/metrics.rst).
            try:
                metrics_bind = metrics_bind_for_process(prepared.config.metrics_bind, supervised.index)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
            prepared = attrs.evolve(prepared, config=prepared.config.evolve(metrics_bind=metrics_bind))
        if processes > 1:
            try:
                tls_context(prepared.config.certfile, prepared.config.keyfile)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
        if reloading:
            for directory in args.reload_dir or []:
                if not os.path.isdir(directory):
                    raise ConfigurationError(f"--reload-dir {directory!r} is not a directory")
            try:
                import watchfiles  # noqa: F401
            except ImportError:
                raise ConfigurationError(
                    "--reload needs watchfiles: pip install 'trio-channels[reload]'"
                ) from None
    except ConfigurationError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    what = "the built-in demo" if prepared.demo else str(prepared.routing)
    announce = _Announce(args.command, what, supervised)
    try:
        if reloading or processes > 1:
            directories = (
                [os.path.abspath(directory) for directory in args.reload_dir or ["."]] if reloading else None
            )

            def on_ready(reports: list[dict[str, Any]]) -> None:
                announce.started_ = True
                metrics_urls = [url for report in reports for url in report["metrics_urls"]]
                _banner(args.command, what, {**reports[0], "metrics_urls": metrics_urls}, processes)

            status, error = trio.run(
                partial(_supervise, argv, prepared, on_ready, processes=processes, directories=directories)
            )
            if error is not None:
                print(f"{prog}: error: {error}", file=sys.stderr)
            return status
        trio.run(_run, prepared, announce)
    except (OSError, ValueError, TypeError, ImportError, ChannelLayerUnavailable) as exc:
        if announce.started_ and not isinstance(exc, (OSError, ChannelLayerUnavailable)):
            raise  # a bug, not a configuration problem: the traceback helps
        print(f"{prog}: error: {exc}", file=sys.stderr)
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
