"""A Trio-native Redis connection: hiredis parses, redis-py packs, nothing hand-written.

Theory of operation
-------------------
A :class:`RedisConnection` is one socket with a writer task and a reader task. A caller
appends its packed command to the outgoing buffer and a :class:`_Pending` slot to a deque in
one synchronous step, so requests and slots are in the same order; the writer sends whatever
has accumulated in one write; the reader feeds every received chunk to a ``hiredis.Reader``
and completes slots in order. Many concurrent callers thus share the connection (pipelining).
A caller cancelled while waiting marks its slot abandoned: the reader still consumes that
reply and drops it, so a stale reply can never reach the next caller, and since only the
writer touches the socket a command is never half-written.

Errors are redis-py's: socket problems become ``redis.exceptions.ConnectionError`` (one place,
:func:`map_errors`), timeouts ``TimeoutError``, error replies ``ResponseError`` and its
subclasses by the table redis-py's parsers use (:data:`_ERROR_CLASSES`, public classes only:
nothing here imports a private redis-py module). A connection that failed once is dead; the
:class:`ConnectionPool` makes a new one on the next request.

Where a pool connects is decided in one place, per new connection: its *resolver*. For a
:class:`RedisAddress` that is the address itself; for a :class:`SentinelAddress` it is a
:class:`SentinelResolver`, which asks the sentinels for the primary (``SENTINEL
get-master-addr-by-name``, each sentinel in turn, each within a timeout) and checks with
``ROLE`` that the server it names is a primary. A reply saying that a server is not (or not
yet) the primary -- ``READONLY``, ``LOADING`` -- means the command did not run there: the pool
then retires that connection (it takes no new commands and closes once its replies are in)
and runs the command once more on a connection to the primary the sentinels name now.
Connection loss needs nothing special: the next connection is resolved anew. Nothing above
the pool knows whether its server is fixed or Sentinel-managed.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeAlias

import attrs
import hiredis
import trio
from redis import exceptions as errors
from redis.connection import HiredisRespSerializer, parse_url
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

from ..base import redacted
from ..histograms import ROUND_TRIP_BUCKETS, Histogram

__all__ = [
    "ClusterAddress",
    "ConnectionPool",
    "RedisAddress",
    "RedisConnection",
    "RequestCounter",
    "SentinelAddress",
    "SentinelResolver",
    "ServerAddress",
    "server_address",
    "split_urls",
]

log = logging.getLogger("layers.redis")

_NOT_ENOUGH_DATA = object()


@attrs.frozen(kw_only=True)
class RedisAddress:
    """Where and how to connect, from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Raises :exc:`ValueError` naming *url* if it cannot be parsed."""
        try:
            options = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"Redis URL {redacted(url)!r} is invalid: {exc}") from None
        from urllib.parse import urlsplit

        database = urlsplit(url).path.strip("/")
        if not url.lower().startswith("unix:") and database and not database.isdigit():
            # redis-py's parse_url silently falls back to database 0 here.
            raise ValueError(
                f"Redis URL {redacted(url)!r} is invalid: the database {database!r} must be a number, like /0"
            )
        return cls(
            host=options.get("host") or "localhost",
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            tls=url.lower().startswith("rediss://"),
            socket_timeout=float(options.get("socket_timeout") or 10.0),
        )

    def __str__(self) -> str:
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{'rediss' if self.tls else 'redis'}://{where}/{self.db}"


#: The URL schemes of a Sentinel-managed primary (``rediss+`` is TLS to sentinels and servers).
SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT: Final = 26379


#: The URL schemes of a Redis Cluster (``rediss-`` is TLS to every node).
CLUSTER_SCHEMES: Final = ("redis-cluster", "rediss-cluster")
DEFAULT_CLUSTER_PORT: Final = 6379


def _is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def _is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def split_urls(text: str) -> list[str]:
    """Comma-separated URLs (one per shard), keeping the commas of a Sentinel or Cluster URL's
    host list: ``redis+sentinel://a:26379,b:26379/m/0,redis://c:6379/0`` is two URLs."""
    urls: list[str] = []
    for piece in (part.strip() for part in text.split(",")):
        if not piece:
            continue
        if urls and "://" not in piece and (_is_sentinel_url(urls[-1]) or _is_cluster_url(urls[-1])):
            # Still in the previous URL's sentinel list if nothing after its host list began.
            after_scheme = urls[-1].partition("://")[2]
            if not any(mark in after_scheme for mark in "/?#"):
                urls[-1] += "," + piece
                continue
        urls.append(piece)
    return urls


@attrs.frozen
class _MultiHostURL:
    """The parts of a ``scheme://[[user]:password@]host[:port],host2[:port2].../path?query`` URL."""

    scheme: str
    username: str | None
    password: str | None
    hosts: tuple[tuple[str, int], ...]
    path: str
    query: str

    @classmethod
    def split(cls, url: str, what: str, schemes: tuple[str, ...], default_port: int) -> _MultiHostURL:
        """Raises :exc:`ValueError` starting with *what* unless *url* has one of *schemes*."""
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in schemes:
            raise ValueError(f"{what}: the scheme must be {' or '.join(f'{name}://' for name in schemes)}")
        rest, _, _fragment = rest.partition("#")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            if not colon:
                raise ValueError(
                    f"{what}: put a colon before the password (':PASSWORD@', or 'USER:PASSWORD@' "
                    "for an ACL user)"
                )
            username = urllib.parse.unquote(user) or None
            password = urllib.parse.unquote(secret)
        parts = tuple(
            _host_port(part.strip(), what, default_port) for part in hosts.split(",") if part.strip()
        )
        return cls(scheme.lower(), username, password, parts, path, query)


def _dict_options(config: Mapping[str, Any], what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The checks every dict form shares: no unknown key, 'ssl' a bool (as ``tls``), and
    'socket_timeout' a number of seconds; returns those two as options."""
    unknown = [key for key in config if key not in keys]
    if unknown:
        raise ValueError(f"{what} has the unknown key {unknown[0]!r}; the keys are {', '.join(keys)}")
    options: dict[str, Any] = {}
    if "ssl" in config:
        if not isinstance(config["ssl"], bool):
            raise ValueError(f"{what}: 'ssl' must be True or False, got {config['ssl']!r}")
        options["tls"] = config["ssl"]
    if "socket_timeout" in config:
        options["socket_timeout"] = _number(config["socket_timeout"], f"{what}: 'socket_timeout'")
    return options


def _host_port(text: str, what: str, default_port: int = DEFAULT_SENTINEL_PORT) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); *what* prefixes errors."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{what}: {text!r} is not host:port")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" in text:
        raise ValueError(f"{what}: write the IPv6 address {text!r} in brackets, like [::1]:26379")
    if not host:
        raise ValueError(f"{what}: {text!r} has no host")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: the port in {text!r} must be a number from 1 to 65535")
    return host, int(port)


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"{what} must be more than 0 seconds, got {value!r}")
    return number


@attrs.frozen(kw_only=True)
class SentinelAddress:
    """A primary that Redis Sentinel manages: the sentinels to ask, the service (the name in
    their ``sentinel monitor`` line), and how to talk to the primary once found.

    ``username``/``password`` are the primary's (and its replicas'); the sentinels, if they
    have a password of their own, take ``sentinel_username``/``sentinel_password``. ``tls``
    applies to both. Each sentinel gets ``sentinel_socket_timeout`` seconds to answer.
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_timeout: float = 10.0
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_socket_timeout: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not self.sentinels:
            raise ValueError("a Sentinel-managed Redis needs at least one sentinel")
        if not isinstance(self.service_name, str) or not self.service_name:
            raise ValueError(f"the Sentinel service name must be a non-empty str, got {self.service_name!r}")
        if not isinstance(self.db, int) or isinstance(self.db, bool) or self.db < 0:
            raise ValueError(f"the database must be a number >= 0, got {self.db!r}")

    @classmethod
    def from_url(cls, url: str) -> SentinelAddress:
        """``redis+sentinel://[[user]:password@]host[:port][,host2[:port2]...]/SERVICE[/DB]``
        (``rediss+sentinel://`` for TLS; sentinel ports default to 26379) with the query
        options ``socket_timeout``, ``sentinel_username``, ``sentinel_password`` and
        ``sentinel_socket_timeout`` (others are left to the layer). Raises :exc:`ValueError`
        naming *url* if it cannot be parsed."""
        what = f"Redis Sentinel URL {redacted(url)!r} is invalid"
        parts = _MultiHostURL.split(url, what, SENTINEL_SCHEMES, DEFAULT_SENTINEL_PORT)
        sentinels, path, query = parts.hosts, parts.path, parts.query
        if not sentinels:
            raise ValueError(
                f"{what}: name at least one sentinel, like redis+sentinel://host:26379/mymaster/0"
            )
        segments = [urllib.parse.unquote(part) for part in path.split("/")] if path else []
        while segments and not segments[-1]:
            segments.pop()
        if not segments or not segments[0]:
            raise ValueError(
                f"{what}: the service name is missing; write redis+sentinel://host:26379/SERVICE_NAME/DB"
            )
        if len(segments) > 2:
            raise ValueError(f"{what}: the path must be /SERVICE_NAME or /SERVICE_NAME/DB")
        database = segments[1] if len(segments) == 2 else "0"
        if not database.isdigit():
            raise ValueError(f"{what}: the database {database!r} must be a number, like /mymaster/0")
        options: dict[str, Any] = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key in ("sentinel_username", "sentinel_password"):
                options[key] = value
            elif key in ("socket_timeout", "sentinel_socket_timeout"):
                options[key] = _number(value, f"{what}: option {key}")
        return cls(
            sentinels=sentinels,
            service_name=segments[0],
            db=int(database),
            username=parts.username,
            password=parts.password,
            tls=parts.scheme == "rediss+sentinel",
            **options,
        )

    #: The keys of the dict form (``CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]``).
    DICT_KEYS: ClassVar = (
        "sentinels",
        "master_name",
        "service_name",
        "db",
        "username",
        "password",
        "ssl",
        "socket_timeout",
        "sentinel_username",
        "sentinel_password",
        "sentinel_socket_timeout",
        "sentinel_kwargs",
    )
    _SENTINEL_KWARGS: ClassVar = ("username", "password", "socket_timeout")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> SentinelAddress:
        """The dict form, channels_redis's keys with redis-py's names beside them::

            {"sentinels": [("sentinel-1", 26379), "sentinel-2:26379"],
             "master_name": "mymaster",          # or "service_name", redis-py's word
             "db": 0, "username": ..., "password": ...,   # the primary's
             "ssl": False, "socket_timeout": 10,
             "sentinel_password": ...,           # or "sentinel_kwargs": {"password": ...}
             "sentinel_username": ..., "sentinel_socket_timeout": 2}

        Raises :exc:`ValueError` naming the key or value that is wrong.
        """
        what = "a Redis Sentinel host"
        options = _dict_options(config, what, cls.DICT_KEYS)
        raw = config.get("sentinels")
        if not raw:
            raise ValueError(
                f"{what} needs 'sentinels': a list of (host, port), like [('sentinel-1', 26379)]; got {raw!r}"
            )
        sentinels = _nodes(raw, f"{what}: 'sentinels'", "sentinel", DEFAULT_SENTINEL_PORT)
        if "master_name" in config and "service_name" in config:
            raise ValueError(f"{what}: give 'master_name' or 'service_name' (the same thing), not both")
        service = config.get("master_name", config.get("service_name"))
        if service is None:
            raise ValueError(f"{what} needs 'master_name': the service name the sentinels monitor")
        for key in ("db", "username", "password", "sentinel_username", "sentinel_password"):
            if key in config:
                options[key] = config[key]
        if "sentinel_socket_timeout" in config:
            options["sentinel_socket_timeout"] = _number(
                config["sentinel_socket_timeout"], f"{what}: 'sentinel_socket_timeout'"
            )
        extra = config.get("sentinel_kwargs") or {}
        if not isinstance(extra, Mapping) or any(key not in cls._SENTINEL_KWARGS for key in extra):
            raise ValueError(
                f"{what}: 'sentinel_kwargs' takes {', '.join(cls._SENTINEL_KWARGS)}; got {extra!r}"
            )
        for key, value in extra.items():
            name = f"sentinel_{key}" if key != "socket_timeout" else "sentinel_socket_timeout"
            if name in options:
                raise ValueError(f"{what}: {key!r} is given twice, in 'sentinel_kwargs' and as {name!r}")
            options[name] = (
                _number(value, f"{what}: 'sentinel_kwargs' socket_timeout")
                if key == "socket_timeout"
                else value
            )
        return cls(sentinels=sentinels, service_name=service, **options)

    def primary(self, host: str, port: int) -> RedisAddress:
        """The address of the primary at *host*:*port*, with this service's credentials."""
        return RedisAddress(host=host, port=port, db=self.db, tls=self.tls, **self._credentials())

    def _credentials(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "socket_timeout": self.socket_timeout}

    def sentinel(self, host: str, port: int) -> RedisAddress:
        """The address of the sentinel at *host*:*port* (database 0, the sentinels' credentials)."""
        timeout, username, password = (
            self.sentinel_socket_timeout,
            self.sentinel_username,
            self.sentinel_password,
        )
        return RedisAddress(
            host=host, port=port, tls=self.tls, username=username, password=password, socket_timeout=timeout
        )

    def __str__(self) -> str:
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{urllib.parse.quote(self.service_name, safe='')}/{self.db}"


def _nodes(
    raw: Any, what: str, kind: str = "node", default_port: int = DEFAULT_CLUSTER_PORT
) -> tuple[tuple[str, int], ...]:
    """The (host, port) list of the dict forms: ``[("h", 7000), "h2:7001"]``, or one of them."""
    if isinstance(raw, str) or (isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], int)):
        raw = [raw]
    if not raw or not isinstance(raw, (list, tuple)):
        raise ValueError(f"{what}: a list of (host, port), like [('redis-1', 7000)], is needed; got {raw!r}")
    nodes = []
    for entry in raw:
        if isinstance(entry, str):
            nodes.append(_host_port(entry, what, default_port))
        elif (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and isinstance(entry[0], str)
            and entry[0]
            and isinstance(entry[1], int)
            and 0 < entry[1] < 65536
        ):
            nodes.append((entry[0], entry[1]))
        else:
            raise ValueError(f"{what}: the {kind} {entry!r} is not (host, port) or 'host:port'")
    return tuple(nodes)


#: How many shards a cluster's keys are spread over by default (see :class:`ClusterAddress`).
DEFAULT_CLUSTER_SHARDS: Final = 12


@attrs.frozen(kw_only=True)
class ClusterAddress:
    """A Redis Cluster: the nodes to ask for its slot map first (any few of its primaries or
    replicas will do: the map names the rest), and how to talk to every node.

    ``shards`` is how many hash tags the layer spreads its keys over (see docs/redis.rst,
    "Redis Cluster"): every process of a deployment must use the same number.
    """

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_timeout: float = 10.0
    shards: int = DEFAULT_CLUSTER_SHARDS

    def __attrs_post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("a Redis Cluster needs at least one node to start from")
        if type(self.shards) is not int or not 1 <= self.shards <= 256:
            raise ValueError(
                f"the cluster's shards must be a whole number from 1 to 256, got {self.shards!r}"
            )

    @classmethod
    def from_url(cls, url: str) -> ClusterAddress:
        """``redis-cluster://[[user]:password@]host[:port][,host2[:port2]...][/]`` (``rediss-cluster://``
        for TLS; ports default to 6379; a cluster has only database 0, so the path is empty,
        ``/`` or ``/0``) with the query options ``socket_timeout`` and ``shards`` (others are
        left to the layer). Raises :exc:`ValueError` naming *url* if it cannot be parsed."""
        what = f"Redis Cluster URL {redacted(url)!r} is invalid"
        parts = _MultiHostURL.split(url, what, CLUSTER_SCHEMES, DEFAULT_CLUSTER_PORT)
        nodes, path, query = parts.hosts, parts.path, parts.query
        if not nodes:
            raise ValueError(f"{what}: name at least one node, like redis-cluster://host1:7000,host2:7001/")
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"{what}: a Redis Cluster has only database 0; the path must be empty, / or /0")
        options: dict[str, Any] = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key == "socket_timeout":
                options[key] = _number(value, f"{what}: option {key}")
            elif key == "shards":
                if not value.isdigit():
                    raise ValueError(f"{what}: option shards={value!r} must be a whole number")
                options[key] = int(value)
        try:
            return cls(
                nodes=nodes,
                username=parts.username,
                password=parts.password,
                tls=parts.scheme == "rediss-cluster",
                **options,
            )
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None

    #: The keys of the dict form (``CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]``).
    DICT_KEYS: ClassVar = ("cluster", "username", "password", "ssl", "socket_timeout", "shards")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ClusterAddress:
        """The dict form::

            {"cluster": [("redis-1", 7000), "redis-2:7001"],   # nodes to start from
             "username": ..., "password": ..., "ssl": False,
             "socket_timeout": 10, "shards": 12}

        Raises :exc:`ValueError` naming the key or value that is wrong.
        """
        what = "a Redis Cluster host"
        options = _dict_options(config, what, cls.DICT_KEYS)
        options.update((key, config[key]) for key in ("username", "password", "shards") if key in config)
        try:
            return cls(nodes=_nodes(config.get("cluster"), f"{what}: 'cluster'"), **options)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None

    def node(self, host: str, port: int) -> RedisAddress:
        """The address of the node at *host*:*port*, with the cluster's credentials."""
        return RedisAddress(host=host, port=port, tls=self.tls, **self._credentials())

    def _credentials(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "socket_timeout": self.socket_timeout}

    def __str__(self) -> str:
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.nodes)
        return f"{'rediss-cluster' if self.tls else 'redis-cluster'}://{hosts}/"


#: Where a pool connects: a fixed server, whichever one the sentinels name the primary, or (with
#: a slot, see :mod:`.cluster`) the node of a Redis Cluster that serves that slot.
ServerAddress: TypeAlias = RedisAddress | SentinelAddress | ClusterAddress


def server_address(value: str | Mapping[str, Any] | ServerAddress) -> ServerAddress:
    """A server from a URL (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    ``rediss+sentinel://``, ``redis-cluster://``, ``rediss-cluster://``), a Sentinel or Cluster
    dict (:meth:`SentinelAddress.from_dict`, :meth:`ClusterAddress.from_dict`: a dict with a
    ``"cluster"`` key is a cluster) or an address.

    Raises :exc:`ValueError` naming the value if it is none of those.
    """
    if isinstance(value, (RedisAddress, SentinelAddress, ClusterAddress)):
        return value
    if isinstance(value, str):
        if _is_sentinel_url(value):
            return SentinelAddress.from_url(value)
        if _is_cluster_url(value):
            return ClusterAddress.from_url(value)
        return RedisAddress.from_url(value)
    if isinstance(value, Mapping):
        if "cluster" in value:
            return ClusterAddress.from_dict(value)
        return SentinelAddress.from_dict(value)
    raise ValueError(
        f"Redis host {value!r} is invalid: use a URL ('redis://host:6379/0', "
        "'redis+sentinel://host:26379/mymaster/0', 'redis-cluster://host1:7000,host2:7001/') "
        "or a Sentinel or Cluster dict"
    )


@contextlib.contextmanager
def map_errors(address: RedisAddress) -> Iterator[None]:
    """The one place where I/O errors become redis-py's exceptions."""
    try:
        yield
    except trio.TooSlowError as exc:
        raise TimeoutError(f"Redis at {address} did not answer in time") from exc
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionError(f"Redis at {address}: {exc or type(exc).__name__}") from exc


@attrs.define(eq=False, slots=True)
class _Pending:
    event: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False


#: Error replies by their first word -> redis-py's (public) exception classes: the table its
#: own parsers use, so callers see what redis-py users see (the word is dropped from the text).
_ERROR_CLASSES: Final[dict[str, type[RedisError]]] = {
    "WRONGPASS": errors.AuthenticationError,
    "NOAUTH": errors.AuthenticationError,
    "NOPERM": errors.NoPermissionError,
    "NOSCRIPT": errors.NoScriptError,
    "READONLY": errors.ReadOnlyError,
    "LOADING": errors.BusyLoadingError,
    "EXECABORT": errors.ExecAbortError,
    "OOM": errors.OutOfMemoryError,
    "MASTERDOWN": errors.MasterDownError,
    "CLUSTERDOWN": errors.ClusterDownError,
    "CROSSSLOT": errors.ClusterCrossSlotError,
    "TRYAGAIN": errors.TryAgainError,
    "MOVED": errors.MovedError,
    "ASK": errors.AskError,
}
#: ``ERR`` replies that mean more than a failed command.
_ERR_CLASSES: Final[dict[str, type[RedisError]]] = {
    "max number of clients reached": ConnectionError,
    "invalid password": errors.AuthenticationError,
    "Client sent AUTH, but no password is set": errors.AuthenticationError,
    "AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?": errors.AuthenticationError,
    "wrong number of arguments for 'auth' command": errors.AuthenticationWrongNumberOfArgsError,
    "wrong number of arguments for 'AUTH' command": errors.AuthenticationWrongNumberOfArgsError,
}


def _error_reply(text: str) -> RedisError:
    word, _, rest = text.partition(" ")
    if word == "ERR":
        if rest.startswith("Error running script"):
            # Redis < 7 wraps the error of a script's failed call in an ERR ("...: @user_script:
            # 12: -READONLY You can't write..."); Redis 7 passes it on as it is. Same class.
            inner = rest.rpartition(": -")[2].partition(" ")[0]
            if inner in _ERROR_CLASSES and inner not in ("MOVED", "ASK"):
                return _ERROR_CLASSES[inner](rest)
        return _ERR_CLASSES.get(rest, ResponseError)(rest)
    error_class = _ERROR_CLASSES.get(word)
    try:
        return ResponseError(text) if error_class is None else error_class(rest)
    except Exception:  # MOVED/ASK parse their text; never let a reply break the reader
        return ResponseError(text)


def _raised(result: Any) -> Any:
    """*result*, one command's reply, unless it is an error reply: that is raised."""
    if isinstance(result, RedisError):  # an error reply (AuthenticationError is not a ResponseError)
        raise result
    return result


@attrs.define(eq=False, slots=True)
class RequestCounter:
    """How many requests (:meth:`RedisConnection.execute_many` calls: one round trip each,
    whatever the number of commands in it) some connections have made."""

    requests: int = 0


@attrs.define(eq=False)
class RedisConnection:
    """One connection; see the module docstring. Use :meth:`open` inside a nursery."""

    address: RedisAddress
    _stream: trio.abc.Stream | None = None
    _pending: deque[_Pending] = attrs.Factory(deque)
    _outgoing: bytearray = attrs.Factory(bytearray)
    _wake_writer: trio.Event = attrs.Factory(trio.Event)
    _serializer: HiredisRespSerializer = attrs.Factory(HiredisRespSerializer)
    _closed: trio.Event = attrs.Factory(trio.Event)
    _failure: BaseException | None = None
    _retired: bool = False
    #: Where its requests are counted (its pool's), if anywhere.
    counter: RequestCounter | None = None

    @classmethod
    async def open(cls, address: RedisAddress, nursery: trio.Nursery) -> RedisConnection:
        """Connect, start the reader in *nursery*, authenticate and select the database."""
        connection = cls(address)
        with map_errors(address), trio.fail_after(address.socket_timeout):
            if address.path:
                stream: trio.abc.Stream = await trio.open_unix_socket(address.path)
            else:
                stream = await trio.open_tcp_stream(address.host, address.port)
                if address.tls:
                    stream = trio.SSLStream(
                        stream, ssl.create_default_context(), server_hostname=address.host
                    )
                    await stream.do_handshake()
        connection._stream = stream
        # The tasks get the stream itself: the connection may be closed before they start.
        nursery.start_soon(connection._read_replies, stream)
        nursery.start_soon(connection._write_requests, stream)
        try:
            if address.password is not None:
                if address.username:
                    await connection.execute("AUTH", address.username, address.password)
                else:
                    await connection.execute("AUTH", address.password)
            if address.db:
                await connection.execute("SELECT", address.db)
        except BaseException:
            await connection.aclose()
            raise
        return connection

    @property
    def broken(self) -> bool:
        """Closed, or retired: a pool hands it out no more."""
        return self._retired or self._closed.is_set()

    async def retire(self) -> None:
        """Take no new commands; close once the replies already asked for are in (their
        callers still get them). For a server that stopped being the one to talk to."""
        self._retired = True
        if not self._pending:
            await self.aclose()

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply (error replies are raised)."""
        return _raised(*await self.execute_many([args]))

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send several commands in one write; error replies are returned, not raised."""
        if self._closed.is_set():
            raise ConnectionError(f"Redis at {self.address}: connection closed ({self._failure})")
        if self._retired:
            raise ConnectionError(f"Redis at {self.address}: connection retired (not sent)")
        if self.counter is not None:
            self.counter.requests += 1
        for command in commands:
            for chunk in self._serializer.pack(*command):
                self._outgoing += chunk
        slots = [_Pending() for _ in commands]
        # Queued and slotted in the same synchronous step, so replies match requests; the
        # writer task sends whatever has accumulated in one write (concurrent callers share
        # syscalls as well as round trips).
        self._pending.extend(slots)
        self._wake_writer.set()
        try:
            for slot in slots:
                await slot.event.wait()
        except BaseException:
            for slot in slots:
                slot.abandoned = True  # its reply will be read and dropped
            raise
        results = []
        for slot in slots:
            if slot.error is not None:
                raise slot.error
            results.append(slot.result)
        return results

    async def _write_requests(self, stream: trio.abc.Stream) -> None:
        try:
            while True:
                await self._wake_writer.wait()
                if self._closed.is_set():
                    return
                self._wake_writer = trio.Event()
                data, self._outgoing = bytes(self._outgoing), bytearray()
                if not data:
                    continue
                with trio.fail_after(self.address.socket_timeout), map_errors(self.address):
                    await stream.send_all(data)
        except (ConnectionError, TimeoutError) as exc:
            self._fail(exc)
            with trio.CancelScope(shield=True):
                await self._close_stream()

    async def _read_replies(self, stream: trio.abc.Stream) -> None:
        reader = hiredis.Reader(replyError=_error_reply, notEnoughData=_NOT_ENOUGH_DATA)
        try:
            while not self._closed.is_set():
                with map_errors(self.address):
                    data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError(f"Redis at {self.address} closed the connection")
                reader.feed(bytes(data))
                while True:
                    reply = reader.gets()
                    if reply is _NOT_ENOUGH_DATA:
                        break
                    if not self._pending:
                        raise ConnectionError(f"Redis at {self.address} sent a reply nobody asked for")
                    slot = self._pending.popleft()
                    if not slot.abandoned:
                        slot.result = reply
                        slot.event.set()
                if self._retired and not self._pending:
                    return  # every reply it owed is in: close (below)
        except (ConnectionError, hiredis.ProtocolError) as exc:
            self._fail(exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc)))
        finally:
            self._fail(ConnectionError(f"Redis at {self.address}: connection closed"))
            with trio.CancelScope(shield=True):
                await self._close_stream()

    def _fail(self, error: BaseException) -> None:
        if self._closed.is_set():
            return
        self._failure = error
        self._closed.set()
        self._wake_writer.set()  # the writer sees the connection closed and ends
        while self._pending:
            slot = self._pending.popleft()
            slot.error = error
            slot.event.set()

    async def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await trio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        """Close the connection; pending callers get ConnectionError. Idempotent."""
        self._fail(ConnectionError(f"Redis at {self.address}: connection closed"))
        await self._close_stream()


def node_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def failure_reason(exc: BaseException) -> str:
    """Why *exc* happened, in a few words ("connection refused", not trio's whole story)."""
    cause = exc.__cause__
    if isinstance(cause, trio.TooSlowError):
        return "no answer in time"
    if isinstance(cause, OSError):
        inner = cause.__cause__
        for candidate in getattr(inner, "exceptions", None) or [inner, cause]:
            if isinstance(candidate, OSError) and candidate.strerror:
                # trio's is "error connecting to ('h', 1): connection refused": the end will do
                return candidate.strerror.rpartition(": ")[2].lower()
        return str(cause) or type(cause).__name__
    return str(exc) or type(exc).__name__


#: Replies meaning "this server is not (or not yet) the primary": the command did not run.
_NOT_THE_PRIMARY: Final = (errors.ReadOnlyError, errors.BusyLoadingError, errors.MasterDownError)
#: ...and "another node serves that slot now" (a Redis Cluster's): it did not run either.
_ELSEWHERE: Final = (*_NOT_THE_PRIMARY, errors.MovedError)
#: How many redirects one command follows (a slot can move twice while a cluster reshards).
REDIRECTS: Final = 3


def is_ask(reply: Any) -> bool:
    return isinstance(reply, errors.AskError) and not isinstance(reply, errors.MovedError)


def redirect_text(error: errors.MovedError | errors.AskError | BaseException) -> str:
    if isinstance(error, errors.AskError):  # MovedError is an AskError
        kind = "MOVED" if isinstance(error, errors.MovedError) else "ASK"
        return f"{kind} slot {error.slot_id} to {node_text(error.host, error.port)}"
    return str(error)


@attrs.define(eq=False)
class _FixedServer:
    """The resolver of a :class:`RedisAddress`: always that server."""

    address: RedisAddress
    follows_primary: ClassVar[bool] = False

    async def connect(self, nursery: trio.Nursery) -> RedisConnection:
        return await RedisConnection.open(self.address, nursery)


@attrs.define(eq=False)
class SentinelResolver:
    """The resolver of a :class:`SentinelAddress`: connects to the primary its sentinels name.

    Each new connection asks the sentinels in turn (the last one that answered first, as
    redis-py does), each within ``sentinel_socket_timeout``; connects to the server named and
    checks with ``ROLE`` that it is a primary (a sentinel can be behind during a failover);
    and otherwise goes on to the next sentinel. If no sentinel leads to a primary, it raises
    redis-py's :exc:`~redis.exceptions.ConnectionError` naming every sentinel and what each did.
    """

    address: SentinelAddress
    follows_primary: ClassVar[bool] = True
    #: The primary of the last connection made.
    primary: RedisAddress | None = None
    _order: list[tuple[str, int]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._order = list(self.address.sentinels)

    async def _ask(self, sentinel: tuple[str, int]) -> RedisAddress | None:
        """What *sentinel* names as the primary (None: it does not know the service)."""
        address = self.address.sentinel(*sentinel)
        failure: RedisError | None = None
        async with trio.open_nursery() as nursery:  # for the connection's reader and writer
            try:
                # One deadline for connecting, authenticating and the answer.
                with map_errors(address), trio.fail_after(address.socket_timeout):
                    connection = await RedisConnection.open(address, nursery)
                    try:
                        reply = await connection.execute(
                            "SENTINEL", "get-master-addr-by-name", self.address.service_name
                        )
                    finally:
                        await connection.aclose()
            except RedisError as exc:  # raised out here, not wrapped in the nursery's group
                failure = exc
        if failure is not None:
            raise failure
        if reply is None:
            return None
        host, port = reply
        return self.address.primary(host.decode(), int(port))

    async def _ask_noting(self, sentinel: tuple[str, int], failures: list[str]) -> RedisAddress | None:
        """:meth:`_ask`, with a failure noted in *failures* (and None returned)."""
        try:
            primary = await self._ask(sentinel)
        except RedisError as exc:
            failures.append(f"{node_text(*sentinel)}: {failure_reason(exc)}")
            return None
        if primary is None:
            failures.append(f"{node_text(*sentinel)}: does not know {self.address.service_name!r}")
        return primary

    def _prefer(self, sentinel: tuple[str, int]) -> None:
        self._order.remove(sentinel)
        self._order.insert(0, sentinel)

    def _nothing_found(self, failures: list[str]) -> ConnectionError:
        return ConnectionError(
            f"no sentinel named a primary for {self.address.service_name!r} ({'; '.join(failures)})"
        )

    async def locate(self) -> RedisAddress:
        """The primary the first sentinel to answer names (without connecting to it)."""
        failures: list[str] = []
        for sentinel in list(self._order):
            primary = await self._ask_noting(sentinel, failures)
            if primary is not None:
                self._prefer(sentinel)
                return primary
        raise self._nothing_found(failures)

    async def connect(self, nursery: trio.Nursery) -> RedisConnection:
        """A connection to the primary, checked with ``ROLE``."""
        failures: list[str] = []
        tried: set[RedisAddress] = set()
        for sentinel in list(self._order):
            primary = await self._ask_noting(sentinel, failures)
            if primary is None:
                continue
            where = node_text(primary.host, primary.port)
            if primary in tried:
                failures.append(f"{node_text(*sentinel)}: named {where} too")
                continue
            tried.add(primary)
            where = f"{where} (named by {node_text(*sentinel)})"
            try:
                connection = await RedisConnection.open(primary, nursery)
            except RedisError as exc:
                failures.append(f"{where}: {failure_reason(exc)}")
                continue
            if not await self._is_primary(connection, where, failures):
                continue
            self._prefer(sentinel)
            if self.primary is not None and primary != self.primary:
                log.warning(
                    "Redis Sentinel: the primary of %r is now %s (was %s)",
                    self.address.service_name,
                    node_text(primary.host, primary.port),
                    node_text(self.primary.host, self.primary.port),
                )
            self.primary = primary
            return connection
        raise self._nothing_found(failures)

    async def _is_primary(self, connection: RedisConnection, where: str, failures: list[str]) -> bool:
        """Whether *connection*'s server says it is a primary (or may not say so: an ACL). If
        not, the connection is closed and the reason noted in *failures*."""
        try:
            with map_errors(connection.address), trio.fail_after(connection.address.socket_timeout):
                reply = await connection.execute("ROLE")
        except errors.NoPermissionError:
            return True  # ROLE is not allowed to us; a READONLY reply would tell us later
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await connection.aclose()
            if not isinstance(exc, RedisError):
                raise
            failures.append(f"{where}: {failure_reason(exc)}")
            return False
        role = reply[0].decode() if isinstance(reply, list) and reply else repr(reply)
        if role == "master":
            return True
        with trio.CancelScope(shield=True):
            await connection.aclose()
        failures.append(f"{where}: is a {role}, not the primary (a failover under way?)")
        return False


def _resolver(address: RedisAddress | SentinelAddress) -> _FixedServer | SentinelResolver:
    return SentinelResolver(address) if isinstance(address, SentinelAddress) else _FixedServer(address)


@attrs.define(eq=False)
class ConnectionPool:
    """Connections to one Redis server, living in the owner's *nursery*.

    ``shared()`` is the pipelined connection every short command uses (one is enough: it
    pipelines); ``dedicated()`` lends a connection for a blocking command and takes it back
    afterwards (or closes it if the command was interrupted, since its reply is unknown).
    ``on_connect`` runs on every new connection before anyone uses it (the layer checks there
    whether the server is the one it knew); if it raises, the connection is closed and the
    error reaches whoever asked for the connection.

    *address* is a fixed server or a Sentinel-managed primary; each new connection asks its
    resolver where to go (see the module docstring). When a new connection lands on another
    server than before (a failover), the connections to the old one are retired.
    """

    address: ServerAddress
    nursery: trio.Nursery
    max_idle: int = 8
    on_connect: Callable[[RedisConnection], Awaitable[None]] | None = None
    #: The requests of every connection of the pool (for measurements: round trips).
    counter: RequestCounter = attrs.Factory(RequestCounter)
    #: Where new connections go, if not where *address* says: a Redis Cluster slot's resolver
    #: (:class:`~layers.redis.cluster.ClusterSlotResolver`), which *address* alone cannot name.
    resolver: Any = None
    _resolver: Any = attrs.field(init=False)
    _shared: RedisConnection | None = None
    _connecting: trio.Lock = attrs.Factory(trio.Lock)
    _attempts: int = attrs.field(default=0, init=False)
    _failure: RedisError | None = attrs.field(default=None, init=False)
    _idle: list[RedisConnection] = attrs.Factory(list)
    _all: set[RedisConnection] = attrs.Factory(set)
    #: Seconds from writing the commands of :meth:`execute_many` to reading their replies, on
    #: the shared (pipelined) connection: the round trip a sender sees. Blocking commands on
    #: dedicated connections are not in it.
    round_trips: Histogram = attrs.field(factory=lambda: Histogram(ROUND_TRIP_BUCKETS), init=False)

    def __attrs_post_init__(self) -> None:
        if self.resolver is not None:
            self._resolver = self.resolver
        elif isinstance(self.address, ClusterAddress):
            raise ValueError(
                "a pool on a Redis Cluster connects to the node of one slot: give it that slot's "
                "resolver (layers.redis.cluster.ClusterSlotResolver), or use ClusterClient"
            )
        else:
            self._resolver = _resolver(self.address)

    async def _open(self) -> RedisConnection:
        for attempt in range(REDIRECTS + 1):
            connection = await self._resolver.connect(self.nursery)
            connection.counter = self.counter
            if self.on_connect is None:
                break
            try:
                await self.on_connect(connection)
            except (errors.MovedError, errors.AskError) as exc:
                # A cluster's slot map was out of date (or the slot is being migrated).
                with trio.CancelScope(shield=True):
                    await connection.aclose()
                redirected = getattr(self._resolver, "redirected", None)
                if redirected is None or attempt == REDIRECTS:
                    raise ConnectionError(f"Redis at {connection.address}: {redirect_text(exc)}") from exc
                redirected(exc)
                continue
            except BaseException:
                with trio.CancelScope(shield=True):
                    await connection.aclose()
                raise
            break
        for other in list(self._all):
            if not other.broken and other.address != connection.address:
                await other.retire()  # a failover: nothing more for the old primary
            if other.broken:
                self._all.discard(other)
        self._idle = [idle for idle in self._idle if not idle.broken]
        self._all.add(connection)
        return connection

    async def shared(self) -> RedisConnection:
        if self._shared is None or self._shared.broken:
            attempt = self._attempts
            async with self._connecting:
                if self._shared is None or self._shared.broken:
                    failure = self._failure
                    if failure is not None and self._attempts != attempt:
                        # Another caller tried while we waited, and failed: our answer too
                        # (so callers queued behind a dead server fail together, not in turn).
                        raise type(failure)(*failure.args) from failure
                    self._attempts += 1
                    try:
                        self._shared = await self._open()
                    except RedisError as exc:
                        self._failure = exc
                        raise
                    self._failure = None
        return self._shared

    async def execute(self, *args: Any) -> Any:
        """One command on the shared connection; an error reply is raised."""
        return _raised(*await self.execute_many([args]))

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands in one write on the shared connection; error replies are returned.

        Following a Sentinel-managed primary, the commands answered ``READONLY``, ``LOADING``
        or ``MASTERDOWN`` -- which did not run: that server is not (or not yet) the primary --
        retire the connection and run once more, on a connection to the primary the sentinels
        name now. So a send that met a failover runs once, on the new primary, or not at all.
        """
        connection = await self.shared()
        started = trio.current_time()
        results = await connection.execute_many(commands)
        self.round_trips.observe(trio.current_time() - started)
        if not self._resolver.follows_primary:
            return results
        redirected = getattr(self._resolver, "redirected", None)  # a Redis Cluster slot's
        for attempt in range(REDIRECTS + 1 if redirected is not None else 1):
            for index, result in enumerate(results):
                if is_ask(result):  # the slot is being migrated: this once, there
                    results[index] = await self._asking(result, commands[index])
            again = [index for index, result in enumerate(results) if isinstance(result, _ELSEWHERE)]
            if redirected is not None and not again:
                # TRYAGAIN: a command on several keys of a slot being migrated, some of them
                # moved already; it runs once the migration is done (a few ms per slot).
                again = [
                    index for index, result in enumerate(results) if isinstance(result, errors.TryAgainError)
                ]
                if again:
                    await trio.sleep(0.05 * 2**attempt)
                    retried = await connection.execute_many([commands[index] for index in again])
                    for index, result in zip(again, retried, strict=True):
                        results[index] = result
                    continue
            if not again:
                return results
            first = results[again[0]]
            if redirected is None:
                log.info(
                    "Redis at %s answered %s (%s): asking the sentinels of %s for the primary again",
                    connection.address,
                    type(first).__name__,
                    first,
                    self.address,
                )
            else:
                log.info(
                    "Redis at %s answered %s (%s): following the slot map of %s",
                    connection.address,
                    type(first).__name__,
                    redirect_text(first),
                    self.address,
                )
                redirected(first)
            await connection.retire()
            connection = await self.shared()
            retried = await connection.execute_many([commands[index] for index in again])
            for index, result in zip(again, retried, strict=True):
                results[index] = result
        for index, result in enumerate(results):
            if is_ask(result):  # from the last try of a TRYAGAIN
                results[index] = await self._asking(result, commands[index])
        if any(isinstance(result, _ELSEWHERE) for result in results):
            await connection.retire()  # still not the primary: the next command asks again
        return results

    async def _asking(self, error: errors.AskError, command: Sequence[Any]) -> Any:
        """*command* once on the node an ``ASK`` redirect names, behind ``ASKING``."""
        address = self._resolver.node(error.host, error.port)
        async with trio.open_nursery() as nursery:
            connection = await RedisConnection.open(address, nursery)
            connection.counter = self.counter
            try:
                _, result = await connection.execute_many([("ASKING",), command])
            finally:
                await connection.aclose()
        return result

    @contextlib.asynccontextmanager
    async def dedicated(self) -> Any:
        while self._idle:
            connection = self._idle.pop()
            if not connection.broken:
                break
        else:
            connection = await self._open()
        clean = False
        try:
            yield connection
            clean = True
        except (errors.MovedError, errors.AskError) as exc:
            # A cluster's slot moved (or is moving) away from the node of this connection.
            redirected = getattr(self._resolver, "redirected", None)
            if redirected is None:
                raise
            redirected(exc)
            raise ConnectionError(f"Redis at {connection.address}: {redirect_text(exc)}") from exc
        finally:
            if clean and not connection.broken and len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                self._all.discard(connection)
                with trio.CancelScope(shield=True):
                    await connection.aclose()

    async def aclose(self) -> None:
        for connection in list(self._all):
            await connection.aclose()
        self._all.clear()
        self._idle.clear()
        self._shared = None
