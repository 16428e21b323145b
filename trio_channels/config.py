"""``ServerConfig``: everything :func:`~trio_channels.server.serve` needs to know, in one value.

One frozen, validated object is what the command line, a settings module and library code
all build, and what ``serve(routing, config)`` takes::

    config = ServerConfig(
        layer="redis://localhost:6379/0",
        bind=["0.0.0.0:8000"],
        concurrency=200,
        interface_config=InterfaceConfig(http_timeout=30, limit_concurrency=5000),
    )
    await serve("myproject.routing.channel_routing", config)

Every field is checked when the config is made: a bad value raises :exc:`ValueError` (or
:exc:`TypeError` for a value of the wrong kind) naming the option and the value, e.g.
``ServerConfig(concurrency=0)`` raises ``ValueError: concurrency must be an int >= 1, got 0``.
The interface's own settings are the nested :class:`~interface.InterfaceConfig` (the
``interface`` package cannot import this one); ``grace_period`` here is the one shutdown
budget of the whole process, and ``serve()`` hands it to the interface too.

:func:`load_settings` reads a Channels-style settings module (``CHANNEL_LAYERS`` and friends)
into a routing and config fields.
"""

from __future__ import annotations

import importlib
import os
import socket
import sysconfig
import traceback
from collections.abc import Mapping
from typing import Any

import attrs

import layers
from interface import InterfaceConfig
from interface.listeners import parse_bind
from layers import BaseChannelLayer, InMemoryChannelLayer
from layers.base import redacted

from .auth import UserLoader
from .http import ASGIApp
from .routing import import_by_path
from .stores import SessionStore

__all__ = [
    "BACKEND_ALIASES",
    "DEFAULT_CHANNEL_CAPACITY",
    "DEMO_ROUTING",
    "ConfigurationError",
    "ServerConfig",
    "Settings",
    "describe_error",
    "load_settings",
    "metrics_bind_for_process",
]

#: The routing served when none is given: the built-in demo (``python -m trio_channels run``).
DEMO_ROUTING = "trio_channels.demo.routing:routing"

#: Capacities of the layer ``serve()`` makes from a URL (or for ``layer=None``). An interface
#: process's prefix carries the replies of all its connections, so it needs room for a group
#: send to every member at once; the request channels absorb a burst of a thousand connects
#: or requests before answering 503. Disconnects are not refused work but cleanup a consumer
#: must see (groups to leave): room for ten thousand sockets closing at once (a reconnect
#: storm, a deploy) rather than drops.
DEFAULT_CHANNEL_CAPACITY: dict[str, int] = {
    "interface.*!": 10_000,
    "http.request": 1_000,
    "websocket.connect": 1_000,
    "websocket.receive": 1_000,
    "websocket.disconnect": 10_000,
    "http.disconnect": 10_000,
}

#: Channels 1 backend names a settings module may use, and the layers they mean.
BACKEND_ALIASES = {
    "asgiref.inmemory.ChannelLayer": "layers.InMemoryChannelLayer",
    "asgi_redis.RedisChannelLayer": "layers.redis.RedisChannelLayer",
}


class ConfigurationError(ValueError):
    """A configuration that cannot work; ``str()`` is one line naming the bad value."""


# ----------------------------------------------------------------------------- validators


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _int_at_least(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"{attribute.name} must be an int >= {minimum}, got {value!r}")

    return check


def _seconds(*, allow_zero: bool, optional: bool = False) -> Any:
    rule = ">= 0" if allow_zero else "> 0"

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not _is_number(value) or not (value >= 0 if allow_zero else value > 0):
            raise ValueError(f"{attribute.name} must be a number of seconds {rule}, got {value!r}")

    return check


def _strings(value: Any) -> tuple[Any, ...]:
    """A sequence of options as a tuple; one string is one option, not its characters."""
    if isinstance(value, (str, socket.socket)):
        return (value,)
    if value is None:
        return ()
    return tuple(value)


def _optional_strings(value: Any) -> tuple[str, ...] | None:
    return None if value is None else _strings(value)


def _workers(value: object) -> object:
    if value is True:
        return 1
    if value is False:
        return 0
    return value


def _binds(instance: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for bind in value:
        if isinstance(bind, socket.socket):
            continue
        if not isinstance(bind, str):
            raise TypeError(f"{attribute.name} takes addresses (str) or sockets, got {bind!r}")
        parse_bind(bind)  # ValueError naming the bind


def _all_str(instance: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...] | None) -> None:
    for item in value or ():
        if not isinstance(item, str):
            raise TypeError(f"{attribute.name} takes strings, got {item!r}")


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str or None, got {value!r}")


def _layer(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or isinstance(value, BaseChannelLayer):
        return
    if not isinstance(value, str):
        raise TypeError(f"layer must be a channel layer, a layer URL or None, got {value!r}")
    try:
        layers.from_url(value, channel_capacity=DEFAULT_CHANNEL_CAPACITY)  # built to check, then dropped
    except (ValueError, TypeError) as exc:
        shown = repr(redacted(value))
        message = str(exc) if shown in str(exc) else f"layer URL {shown}: {exc}"
        raise ValueError(message) from exc


def _uds_perms(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not 0 <= value <= 0o777:
        raise ValueError(f"uds_perms must be a file mode from 0o000 to 0o777, like 0o660, got {value!r}")


def _callable_or_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str) and not callable(value):
        raise TypeError(f"{attribute.name} must be a callable or its import path, got {value!r}")


_SESSION_STORE_SCHEMES = (
    *("memory://", "redis://", "rediss://", "unix://"),
    *("redis+sentinel://", "rediss+sentinel://", "redis-cluster://", "rediss-cluster://"),
)


def _session_store(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, str) and not value.lower().startswith(_SESSION_STORE_SCHEMES):
        raise ValueError(
            f"session_store {value!r} is invalid: use memory://, redis://host:6379/0, rediss://..., unix://..., "
            "redis+sentinel://... or redis-cluster://..."
        )


def _metrics_bind(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"metrics_bind must be a 'host:port' string or None, got {value!r}")
    try:
        tcp = not value.startswith(("unix:", "fd://")) and parse_bind(value) is not None
    except ValueError:
        tcp = False
    if not tcp:
        raise ValueError(f"metrics_bind {value!r} is invalid: write it as host:port or [ipv6]:port")
    try:
        importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ValueError(
            f"metrics_bind {value!r} needs prometheus_client, which is not installed: "
            "pip install 'trio-channels[metrics]'"
        ) from exc


def metrics_bind_for_process(bind: str, index: int) -> str:
    """The ``metrics_bind`` of the supervisor's child *index* (1 to N): the port + index - 1
    (``127.0.0.1:9100`` -> ``127.0.0.1:9101`` for child 2); port 0 stays 0 (each picks one).

    Raises :exc:`ValueError` naming *bind* if that port would be over 65535.
    """
    host, _, port = bind.rpartition(":")
    if int(port) == 0:
        return bind
    shifted = int(port) + index - 1
    if shifted > 65535:
        raise ValueError(f"metrics_bind {bind!r}: process {index} would listen on port {shifted}, over 65535")
    return f"{host}:{shifted}"


def _interface_config(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, InterfaceConfig):
        raise TypeError(f"interface_config must be an interface.InterfaceConfig, got {value!r}")


# ----------------------------------------------------------------------------- the config


@attrs.frozen(kw_only=True)
class ServerConfig:
    """What ``serve()`` runs, and how; see the module docstring. Every field has a default."""

    #: The channel layer: a layer, a URL (``"redis://localhost:6379/0"``, ``"memory://"``), or
    #: ``None`` for an in-memory one. A URL is turned into a layer with
    #: :data:`DEFAULT_CHANNEL_CAPACITY` by each ``serve()``; a layer that is not open yet is
    #: opened by ``serve()`` and closed on the way out.
    layer: BaseChannelLayer | str | None = attrs.field(default=None, validator=_layer)
    #: Whether this process serves HTTP and WebSockets (``False``: workers only).
    interface: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: How many workers run here: ``0`` for none (``run --noworker``); ``True`` means 1.
    workers: int = attrs.field(default=1, converter=_workers, validator=_int_at_least(0))
    #: Listening addresses: ``host:port`` (port 0 picks a free one), ``[v6]:port``,
    #: ``unix:PATH``, ``fd://N``, or bound sockets. One string is one address.
    bind: tuple[str | socket.socket, ...] = attrs.field(
        default=("127.0.0.1:8000",), converter=_strings, validator=_binds
    )
    #: Extra WebSocket-only listeners, written like ``bind``.
    ws_bind: tuple[str | socket.socket, ...] = attrs.field(default=(), converter=_strings, validator=_binds)
    #: The file mode of the Unix sockets ``bind`` creates (gunicorn's practice: owner and group).
    uds_perms: int = attrs.field(default=0o660, validator=_uds_perms)
    #: Where ``GET /metrics`` answers in the Prometheus text format (``host:port``; port 0 picks
    #: a free one); ``None``: no metrics listener. Needs the ``metrics`` extra (prometheus_client).
    metrics_bind: str | None = attrs.field(default=None, validator=_metrics_bind)
    #: TLS certificate and private key (PEM) for the ``bind`` listeners: both, or neither.
    certfile: str | None = attrs.field(default=None, validator=_optional_str)
    keyfile: str | None = attrs.field(default=None, validator=_optional_str)
    #: The interface's settings: timeouts, limits, proxy headers, subprotocols.
    interface_config: InterfaceConfig = attrs.field(factory=InterfaceConfig, validator=_interface_config)
    #: Consumers each worker runs at once.
    concurrency: int = attrs.field(default=100, validator=_int_at_least(1))
    #: Channel globs the workers listen on (all the routing handles, if empty) ...
    only_channels: tuple[str, ...] = attrs.field(default=(), converter=_strings, validator=_all_str)
    #: ... and never listen on.
    exclude_channels: tuple[str, ...] = attrs.field(default=(), converter=_strings, validator=_all_str)
    #: Seconds before a consumer is cancelled; ``None``: its message's expiry.
    consumer_timeout: float | None = attrs.field(
        default=None, validator=_seconds(allow_zero=False, optional=True)
    )
    #: Seconds in-flight requests and running consumers get on a graceful shutdown.
    grace_period: float = attrs.field(default=10, validator=_seconds(allow_zero=True))
    #: An ASGI-3 app (or its ``module:attr`` path) for HTTP requests no route takes.
    http_app: ASGIApp | str | None = attrs.field(default=None, validator=_callable_or_path)
    #: Else a directory of static files for them, under ``static_url``; else a 404.
    static_root: str | None = attrs.field(default=None, validator=_optional_str)
    static_url: str = attrs.field(default="/static/", validator=attrs.validators.instance_of(str))
    #: Where sessions live: a store, a ``redis://`` or ``memory://`` URL, or ``None`` (the Redis
    #: layer's first server for a Redis layer, else in memory).
    session_store: SessionStore | str | None = attrs.field(default=None, validator=_session_store)
    #: Loads ``message.user`` from a session's user id: an async callable or its import path.
    user_loader: UserLoader | str | None = attrs.field(default=None, validator=_callable_or_path)
    #: ``ALLOWED_HOSTS`` for origin checks (``None``: the checks' own default).
    allowed_hosts: tuple[str, ...] | None = attrs.field(
        default=None, converter=_optional_strings, validator=_all_str
    )

    def __attrs_post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError(
                f"TLS needs both a certfile and a keyfile, got certfile={self.certfile!r} "
                f"keyfile={self.keyfile!r}"
            )
        if not (self.interface or self.workers):
            raise ValueError("nothing to run: interface=False and workers=0")
        if self.in_memory and not (self.interface and self.workers):
            raise ValueError(
                "the in-memory layer is not cross-process: run the interface and the workers in one "
                "process, or use a Redis layer (layer='redis://localhost:6379/0')"
            )
        if self.interface and not (self.bind or self.ws_bind):
            raise ValueError("an interface needs at least one address in bind or ws_bind")

    @property
    def in_memory(self) -> bool:
        """Whether the layer is (or will be) an in-memory one, which lives in one process."""
        layer = self.layer
        if layer is None:
            return True
        if isinstance(layer, str):
            return layer.lower().startswith("memory:")
        return isinstance(layer, InMemoryChannelLayer)

    def make_layer(self, **options: Any) -> BaseChannelLayer:
        """The layer to serve on: ``layer`` itself, or a new one built from the URL (with the
        layer *options*, e.g. ``history=``, which a layer object ignores)."""
        if isinstance(self.layer, BaseChannelLayer):
            return self.layer
        return layers.from_url(
            self.layer or "memory://", **{"channel_capacity": DEFAULT_CHANNEL_CAPACITY, **options}
        )

    def resolved_user_loader(self) -> UserLoader | None:
        """``user_loader``, imported if it is a path."""
        if isinstance(self.user_loader, str):
            loader: UserLoader = import_by_path(self.user_loader, "user loader")
            return loader
        return self.user_loader

    def evolve(self, **changes: Any) -> ServerConfig:
        """A copy with *changes*, validated again."""
        return attrs.evolve(self, **changes)


# ----------------------------------------------------------------------------- settings modules


@attrs.frozen(kw_only=True)
class Settings:
    """What a settings module says: its ``ROUTING`` and the :class:`ServerConfig` fields it sets."""

    module: str
    routing: Any
    options: Mapping[str, Any]

    def config(self, **overrides: Any) -> ServerConfig:
        """A :class:`ServerConfig` of these settings, with *overrides* on top."""
        return ServerConfig(**{**self.options, **overrides})


def load_settings(module: str) -> Settings:
    """Read a Channels-style settings module (a dotted module path).

    ``CHANNEL_LAYERS = {"default": {"BACKEND": ..., "CONFIG": {...}, "ROUTING": ...}}`` (the
    backend is a URL, a class path, or a Channels 1 name from :data:`BACKEND_ALIASES`), and
    optionally ``ALLOWED_HOSTS``, ``SESSION_STORE`` and ``AUTH_USER_LOADER``. Raises
    :exc:`ConfigurationError`, one line naming the module and the bad value.
    """
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        reason = "no module of that name" if getattr(exc, "name", None) == module else str(exc)
        raise ConfigurationError(f"settings module {module!r} could not be imported: {reason}") from exc
    except Exception as exc:
        raise ConfigurationError(describe_error("settings module", module, exc)) from exc
    channel_layers = getattr(found, "CHANNEL_LAYERS", None)
    if not isinstance(channel_layers, dict) or "default" not in channel_layers:
        raise ConfigurationError(f"settings module {module!r} needs CHANNEL_LAYERS = {{'default': {{...}}}}")
    default = channel_layers["default"]
    backend = default.get("BACKEND")
    if backend is None:
        raise ConfigurationError(f"settings module {module!r}: CHANNEL_LAYERS['default'] has no BACKEND")
    layer_options = dict(default.get("CONFIG", {}))
    try:
        if "://" in backend:
            layer = layers.from_url(backend, **layer_options)
        else:
            cls = import_by_path(BACKEND_ALIASES.get(backend, backend), "channel layer BACKEND")
            layer = cls(**layer_options)
    except Exception as exc:
        raise ConfigurationError(
            f"settings module {module!r}: {describe_error('BACKEND', backend, exc)}"
        ) from exc
    options: dict[str, Any] = {"layer": layer}
    for setting, field in (
        ("ALLOWED_HOSTS", "allowed_hosts"),
        ("SESSION_STORE", "session_store"),
        ("AUTH_USER_LOADER", "user_loader"),
    ):
        value = getattr(found, setting, None)
        if value is not None:
            options[field] = value
    if isinstance(options.get("user_loader"), str):
        try:
            options["user_loader"] = import_by_path(options["user_loader"], "AUTH_USER_LOADER")
        except ImportError as exc:
            raise ConfigurationError(str(exc)) from exc
    return Settings(module=module, routing=default.get("ROUTING"), options=options)


# ----------------------------------------------------------------------------- one-line errors

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


def describe_error(what: str, value: str, exc: BaseException) -> str:
    """*exc*, raised while loading *value* (a *what*), as one line naming the value and where.

    A syntax error or an exception at import time names the user's file and line.
    """
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
