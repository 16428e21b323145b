"""``RedisChannelLayer``: channels and groups in one or more Redis servers.

Theory of operation
-------------------
Every channel is a Redis list ``<prefix>:c:<name>`` (a process-specific channel lives in its
prefix's list, so an interface process needs one blocking pop for all its connections).
Sends and group sends are Lua scripts (capacity check + push + statistics in one atomic
round trip). A group is a sorted set of members scored by add time, plus a hash of each
member's capacity; a group send pushes one item per list, so the members a process holds get
**one** item that the process fans out locally.

A process-specific channel ``prefix!local`` shares its prefix's list yet has a capacity of
its own: the SEND script keeps, per such channel, a list of the *stamps* (expiry times) of its
messages not yet taken, and the owning process removes the stamp of each message it takes
(``LREM``, written ahead of its next pop or send, or soon after by a background task). Stamps
past their time drop out by themselves, so a count can never stay wrong for longer than the
layer's expiry.

Receiving shares the in-memory layer's machinery (:mod:`layers._backend`): a receiver parks
on its channel names, and one *poller* task per (server, set of lists) pops on a dedicated
connection **only while** someone here is waiting, handing each item to a parked receiver.
One blocking pop per round trip takes as many items as there are waiting receivers (all that
is queued, for a process prefix): ``BLMPOP`` on Redis >= 7, else ``BLPOP`` with a
non-blocking pop for the rest pipelined behind it. An item nobody is waiting for any more (the
receiver was cancelled meanwhile) goes back to the head of its list, so a cancelled receive
loses nothing and a busy worker hoards nothing; items for a process prefix are held here
instead, since only this process reads them.

Locality (DESIGN §11, "the process is the unit of locality"): a send first looks for a
receiver parked in this process and hands the message straight to it, never touching Redis;
only when none waits here does it go to Redis, for any process. A process that declares a
prefix its own (``own_prefix``: the interface does) keeps whatever it sends under it: handed
over, or held here against each channel's capacity; one poller per own prefix pops what
other processes send there. To keep each channel's order, a message is handed over here only
if no earlier message of this process to that list may still wait in Redis: the layer notes
the lists it sent to, and forgets one when a pop issued after those sends found it empty, or
after ``expiry``.

Several hosts shard by consistent hashing on the channel's non-local name (so a process
prefix and everything under it live on one server) and on the group name. A host is a fixed
server or a Sentinel-managed primary; only the connection pools know which (their resolver,
in :mod:`.connection`): after a failover, new connections go to the new primary. On a Redis
Cluster the shards are hash tags instead of servers: every key of shard *k* starts
``<prefix>:{<tag k>}:``, so each shard is one slot and every script stays in it, and each
shard's pool follows the node serving that slot (:mod:`.cluster`). A group send across shards
is one script on the group's shard and one per shard holding members' lists.

Lost memberships: every new connection asks its server for its ``run_id`` (``INFO server``)
and for the layer's *epoch* key ``<prefix>:epoch``, a random token the first process to
connect stores there (``SET NX``). Per shard, the layer remembers both. A server that comes
back with another ``run_id`` and the same epoch restarted with its data (persistence); one
whose epoch is gone or different lost everything it held: the layer logs a WARNING and
reports a :class:`~layers.base.MembershipLost` through ``membership_lost``. A replica promoted
by Sentinel is the first kind: another ``run_id``, the epoch it replicated.

Errors: a server that cannot be reached, or answers that it cannot serve now (loading,
read-only, out of memory, busy), becomes :exc:`~layers.ChannelLayerUnavailable` in one place,
:class:`_MapErrors`; any other error is a bug and propagates as it is. Pollers and the delayed
mover retry the unavailable with backoff and let bugs through.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import random
import secrets
import zlib
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final

import attrs
import trio
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from .._backend import Delivery, ParkingLayer, fair_order, query_options, single_reader_names
from .._inmemory_state import InMemoryState, Payload
from ..base import (
    ChannelFull,
    ChannelLayerUnavailable,
    LayerStatistics,
    MembershipLost,
    check_owned_message,
    decode_message,
    encode_trusted_message,
    non_local_name,
    redacted,
    validate_channel_name,
    validate_group_name,
    validate_process_prefix,
)
from ..concurrency import open_service_nursery
from ..groups import (
    FULL_CHANNELS_LIMIT,
    HISTORY_KEY,
    GroupHistory,
    GroupSendReport,
    Since,
    cannot_recover,
    refuse_position,
    validate_exclude,
    validate_history_range,
    validate_info,
    validate_since,
)
from ..histograms import HistogramSnapshot
from . import scripts
from .cluster import ClusterSlotResolver, ClusterTopology, key_slot, shard_tags
from .connection import (
    ClusterAddress,
    ConnectionPool,
    RedisAddress,
    RedisConnection,
    SentinelAddress,
    SentinelResolver,
    ServerAddress,
    server_address,
    split_urls,
)

__all__ = ["RedisChannelLayer", "RedisServerStatistics"]

log = logging.getLogger("layers.redis")

#: How long one blocking pop waits before the poller checks whether anyone still waits.
BLOCK_SECONDS = 1
#: How many lists this process remembers having sent to (see "Locality").
_IN_REDIS_LIMIT: Final = 4096
#: Seconds the stamps of taken messages wait for a pop or a send to carry them to Redis before
#: they get a request of their own (meanwhile other processes see those channels that much fuller).
FORGET_DELAY = 0.05

#: What "Redis cannot serve us now" looks like: socket trouble (redis-py's ConnectionError and
#: TimeoutError, as connection.py raises them; OSError should one slip through) and the error
#: replies of a server that is loading, read-only after a failover, out of memory or down...
_UNAVAILABLE: Final = (
    ConnectionError,
    TimeoutError,
    OSError,
    OutOfMemoryError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
)
#: ...and the error replies redis-py has no class for that mean the same (UNBLOCKED: a blocking
#: command ended because its server became a replica).
_UNAVAILABLE_REPLIES: Final = ("BUSY ", "MISCONF ", "NOREPLICAS ", "UNBLOCKED ")


#: ChannelLayerUnavailable raised per server (``str(address)``), in this process: the metrics.
_UNAVAILABLE_COUNTS: dict[str, int] = {}


@attrs.frozen(kw_only=True)
class RedisServerStatistics:
    """One server of a Redis layer, as this process saw it: ``server`` names it,
    ``round_trips`` times its (pipelined) command round trips, ``unavailable`` counts the
    :exc:`~layers.ChannelLayerUnavailable` its commands raised."""

    server: str
    round_trips: HistogramSnapshot
    unavailable: int


class _MapErrors:
    """``with _MapErrors(address):`` (or ``async with``, beside another async context
    manager): the one place Redis failures become ChannelLayerUnavailable.

    After httpcore's ``map_exceptions``; a class rather than a generator because it wraps
    every command.
    """

    __slots__ = ("address",)

    def __init__(self, address: ServerAddress) -> None:
        self.address = address

    def __enter__(self) -> None:
        pass

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, _UNAVAILABLE) or (
            isinstance(exc, ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)
        ):
            server = str(self.address)
            _UNAVAILABLE_COUNTS[server] = _UNAVAILABLE_COUNTS.get(server, 0) + 1
            raise ChannelLayerUnavailable(
                f"Redis at {self.address} is unavailable: {exc or type(exc).__name__}"
            ) from exc


def _expires_ms(item: bytes) -> int:
    """When a stored item expires, in Redis ``TIME`` milliseconds (see :mod:`.scripts`)."""
    return int(item.split(b"|", 1)[0])


def consistent_hash(name: str, ring: int) -> int:
    """The shard of *name* among *ring* servers (asgi_redis's scheme: crc32 into 4096 buckets)."""
    if ring == 1:
        return 0
    bucket = zlib.crc32(name.encode("utf-8")) & 0xFFF
    return int(bucket / (4096 / ring))


@attrs.define(eq=False)
class _Script:
    source: str
    sha: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, pool: ConnectionPool, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with _MapErrors(pool.address):
            try:
                return await pool.execute("EVALSHA", self.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await pool.execute("EVAL", self.source, len(keys), *keys, *args)


async def _command(pool: ConnectionPool, *args: Any) -> Any:
    with _MapErrors(pool.address):
        return await pool.execute(*args)


async def _commands(pool: ConnectionPool, commands: Sequence[Sequence[Any]]) -> list[Any]:
    with _MapErrors(pool.address):
        return await pool.execute_many(commands)


_SEND = _Script(scripts.SEND)
_GROUP_ADD = _Script(scripts.GROUP_ADD)
_GROUP_DISCARD = _Script(scripts.GROUP_DISCARD)
_GROUP_MEMBERS = _Script(scripts.GROUP_MEMBERS)
_GROUP_SEND = _Script(scripts.GROUP_SEND)
_RECOVER_PUSH = _Script(scripts.RECOVER_PUSH)
_HISTORY_READ = _Script(scripts.HISTORY_READ)
_HEARTBEAT = _Script(scripts.HEARTBEAT)
_SWEEP = _Script(scripts.SWEEP)
_DELAY_ADD = _Script(scripts.DELAY_ADD)
_DELAY_DUE = _Script(scripts.DELAY_DUE)
_LIST_STATS = _Script(scripts.LIST_STATS)
_GROUP_PUSH = _Script(scripts.GROUP_PUSH)
_POP_MANY = _Script(scripts.POP_MANY)


def _report(
    delivered: int, full: int, gone: int, offset: int, epoch: bytes, full_channels: list[str]
) -> GroupSendReport:
    return GroupSendReport(
        delivered=int(delivered),
        full=int(full),
        expired=int(gone),
        offset=int(offset) if offset else None,
        epoch=epoch.decode() if offset else None,
        full_channels=tuple(full_channels),
    )


def _positive_seconds(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


@attrs.define(eq=False)
class _ServerIdentity:
    """What this process knows of one shard's server (see "Lost memberships" above), and
    whether it has ``BLMPOP`` (Redis >= 7)."""

    run_id: str | None = None
    epoch: bytes | None = None
    address: str | None = None
    blmpop: bool = False


def _info_field(info: Any, field: str) -> str | None:
    """A field of an ``INFO server`` reply (None if INFO was refused, e.g. by an ACL)."""
    if not isinstance(info, bytes):
        return None
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith(field + ":"):
            return line[len(field) + 1 :].strip()
    return None


def _run_id(info: Any) -> str | None:
    """The ``run_id`` in an ``INFO server`` reply."""
    return _info_field(info, "run_id")


def _version(info: Any) -> tuple[int, ...]:
    """The ``redis_version`` in an ``INFO server`` reply, ``()`` if unknown."""
    text = _info_field(info, "redis_version") or ""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def _fernet(keys: Sequence[str | bytes] | None) -> Any:
    if not keys:
        return None
    if isinstance(keys, (str, bytes)):
        raise ValueError("symmetric_encryption_keys must be a list of keys, not a single key")
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:
        raise ValueError(
            "symmetric_encryption_keys needs the 'cryptography' package (pip install trio-channels[encryption])"
        ) from exc
    fernets = []
    for key in keys:
        raw = key.encode("utf-8") if isinstance(key, str) else key
        fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    return MultiFernet(fernets)


def _hosts(value: Any) -> list[ServerAddress]:
    if isinstance(value, (str, tuple, dict, RedisAddress, SentinelAddress, ClusterAddress)):
        value = [value]
    addresses: list[ServerAddress] = []
    for host in value:
        if isinstance(host, (tuple, list)) and len(host) == 2:
            addresses.append(RedisAddress(host=str(host[0]), port=int(host[1])))
        elif isinstance(host, (str, dict, RedisAddress, SentinelAddress, ClusterAddress)):
            addresses.append(server_address(host))
        else:
            raise ValueError(
                f"Redis host {host!r} is invalid: use 'redis://host:port/db', (host, port), "
                "'redis+sentinel://host:26379/mymaster/0', 'redis-cluster://host1:7000,host2:7001/' "
                "or a Sentinel or Cluster dict"
            )
    if not addresses:
        raise ValueError("hosts must name at least one Redis server")
    if len(addresses) > 1 and any(isinstance(address, ClusterAddress) for address in addresses):
        cluster = next(address for address in addresses if isinstance(address, ClusterAddress))
        raise ValueError(
            f"hosts may name one Redis Cluster ({cluster}) and nothing else: the cluster shards by "
            "itself; name all its nodes in one redis-cluster:// URL"
        )
    return addresses


@attrs.define(eq=False, kw_only=True)
class RedisChannelLayer(ParkingLayer):
    """A channel layer on one or more Redis servers (several = sharded).

    ``hosts`` takes URLs (``redis://``, ``rediss://``, ``unix://``, for a primary that
    Redis Sentinel manages ``redis+sentinel://`` / ``rediss+sentinel://``, and for a Redis
    Cluster -- then the only host -- ``redis-cluster://`` / ``rediss-cluster://``), ``(host,
    port)`` tuples and Sentinel or Cluster dicts (:meth:`~layers.redis.SentinelAddress.from_dict`,
    :meth:`~layers.redis.ClusterAddress.from_dict`). Enter it
    (``async with``) before use: that starts its connection readers and its delayed-message
    mover in the layer's own nursery, and asks the sentinels of each Sentinel-managed host once,
    or a cluster's nodes for its slot map (:exc:`~layers.ChannelLayerUnavailable` naming them
    if none answers).
    """

    extensions = ("groups", "flush", "statistics", "delay", "presence", "history", "own")

    hosts: list[ServerAddress] = attrs.field(factory=lambda: [RedisAddress()], converter=_hosts)
    prefix: str = "trio_channels"
    symmetric_encryption_keys: Sequence[str | bytes] | None = None
    #: Seconds: every process prefix this process receives on keeps a heartbeat key alive
    #: (refreshed every heartbeat / 3, living one heartbeat); members of a process whose key
    #: lapsed leave their groups, within 2 x heartbeat of its death.
    heartbeat: float = attrs.field(default=15.0, validator=_positive_seconds)
    _crypter: Any = attrs.field(init=False, default=None, repr=False)
    _pools: list[ConnectionPool] = attrs.field(factory=list, init=False, repr=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False, repr=False)
    _pollers: set[tuple[int, frozenset[str]]] = attrs.field(factory=set, init=False, repr=False)
    _delay_wakeup: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _servers: list[_ServerIdentity] = attrs.field(factory=list, init=False, repr=False)
    _owned: dict[str, None] = attrs.field(factory=dict, init=False, repr=False)
    _owned_changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    # Per shard: the prefixes whose heartbeat key this process has set there (a key missing
    # later lapsed; a shard reported as having lost its data starts afresh).
    _beating: list[set[str]] = attrs.field(factory=list, init=False, repr=False)
    # What this process holds (see "Locality"): its own prefixes' messages, and what its
    # pollers popped for prefixes that nobody here took yet.
    _local: InMemoryState = attrs.field(init=False, repr=False)
    _local_wakeup: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _local_deadline: float = attrs.field(default=math.inf, init=False, repr=False)
    #: Our own prefixes, with the scopes of their pollers.
    _own_prefixes: dict[str, trio.CancelScope] = attrs.field(factory=dict, init=False, repr=False)
    #: id(message) of a held, counted message -> (shard, stamps key, stamp).
    _held: dict[int, tuple[int, str, bytes]] = attrs.field(factory=dict, init=False, repr=False)
    #: Per shard: stamps of taken messages to remove, by stamps key.
    _forget: dict[int, dict[str, list[bytes]]] = attrs.field(factory=dict, init=False, repr=False)
    #: Lists this process sent to that may still hold its messages: name -> (send number or
    #: inf while in flight, when).
    _in_redis: dict[str, tuple[float, float]] = attrs.field(factory=dict, init=False, repr=False)
    _forget_since: float = attrs.field(default=0.0, init=False, repr=False)
    #: Reply channels under our own prefixes answered through Redis, until when.
    _remote_replies: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)
    _sends_done: int = attrs.field(default=0, init=False, repr=False)
    _all_in_redis_until: float = attrs.field(default=-math.inf, init=False, repr=False)
    #: Per shard: the prefix of its keys (the layer's prefix; on a cluster, with its hash tag),
    #: and how long its list keys are without the list's name.
    _key_prefixes: list[str] = attrs.field(factory=list, init=False, repr=False)
    _list_key_offsets: list[int] = attrs.field(factory=list, init=False, repr=False)
    _cluster: ClusterAddress | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ValueError(f"prefix must be a non-empty str, got {self.prefix!r}")
        cluster = self.hosts[0]
        if isinstance(cluster, ClusterAddress):
            if "{" in self.prefix or "}" in self.prefix:
                raise ValueError(
                    f"prefix {self.prefix!r} is invalid on a Redis Cluster: it must not contain '{{' or "
                    "'}' (the layer puts a hash tag of its own after it)"
                )
            self._cluster = cluster
            # Each shard's keys share one hash tag, so every script stays in one slot.
            self._key_prefixes = [f"{self.prefix}:{{{tag}}}" for tag in shard_tags(cluster.shards)]
        else:
            self._key_prefixes = [self.prefix] * len(self.hosts)
        self._list_key_offsets = [len(f"{key_prefix}:c:") for key_prefix in self._key_prefixes]
        self._crypter = _fernet(self.symmetric_encryption_keys)
        self._local = InMemoryState(
            expiry=self.expiry,
            group_expiry=self.group_expiry,
            capacities=self._capacities,
            on_remove=self._removed,
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisChannelLayer:
        """``redis://host:6379/0`` or ``redis+sentinel://host1:26379,host2:26379/mymaster/0``
        (several hosts: comma-separated URLs) plus query options ``expiry``, ``group_expiry``,
        ``capacity``, ``max_message_size``, ``prefix``, ``heartbeat``."""
        from urllib.parse import urlsplit

        hosts = split_urls(url)
        if not hosts:
            raise ValueError(f"layer URL {redacted(url)!r} is invalid: it names no Redis server")
        parsed = query_options(url, urlsplit(hosts[-1]).query, text=("prefix",), numbers={"heartbeat": float})
        return cls(hosts=hosts, **{**parsed, **options})

    @property
    def request_count(self) -> int:
        """How many requests (round trips, each of one or more pipelined commands) this layer
        has made to its servers since it was entered: for measurements."""
        return sum(pool.counter.requests for pool in self._pools)

    def shared_store_address(self) -> tuple[ServerAddress, str]:
        """The first server (or the cluster), and this layer's prefix (``serve()`` keeps
        sessions there)."""
        return self.hosts[0], self.prefix

    @property
    def shards(self) -> int:
        """How many shards the layer's keys are spread over: its hosts, or a cluster's hash tags."""
        return len(self._key_prefixes)

    # -- lifetime --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        for address in self.hosts:
            if isinstance(address, SentinelAddress):
                # No answer from any sentinel is most likely a wrong address or service name:
                # say so now, not as 503s later. (The primary itself may be down: that is fine.)
                with _MapErrors(address):
                    await SentinelResolver(address).locate()
        topology = None
        if self._cluster is not None:
            # No node answering is most likely a wrong address: say so now, not as 503s later.
            topology = ClusterTopology(self._cluster)
            with _MapErrors(self._cluster):
                await topology.refresh()
        async with open_service_nursery() as nursery:
            self._nursery = nursery
            self._servers = [_ServerIdentity() for _ in range(self.shards)]
            self._beating = [set() for _ in range(self.shards)]
            if topology is not None:
                self._pools = [
                    ConnectionPool(
                        topology.address,
                        nursery,
                        resolver=ClusterSlotResolver(topology, key_slot(key_prefix.encode())),
                        on_connect=partial(self._identify_server, shard),
                    )
                    for shard, key_prefix in enumerate(self._key_prefixes)
                ]
            else:
                self._pools = [
                    ConnectionPool(address, nursery, on_connect=partial(self._identify_server, shard))
                    for shard, address in enumerate(self.hosts)
                ]
            for shard in range(len(self._pools)):
                nursery.start_soon(self._move_delayed, shard)
                nursery.start_soon(self._heartbeat, shard)
                nursery.start_soon(self._sweep, shard)
            await nursery.start(self._run_local)
            try:
                yield
            finally:
                if self._owned:  # leaving: our members leave at once, not at the heartbeat's end
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        for shard, pool in enumerate(self._pools):
                            keys = [self._heartbeat_key(name, shard) for name in self._owned]
                            with contextlib.suppress(RedisError, OSError, ChannelLayerUnavailable):
                                await _command(pool, "DEL", *keys)
                nursery.cancel_scope.cancel()
                self._nursery = None
                for scope in self._own_prefixes.values():
                    scope.cancel()
                self._own_prefixes.clear()
                with trio.CancelScope(shield=True):
                    for pool in self._pools:
                        await pool.aclose()

    async def _identify_server(self, shard: int, connection: RedisConnection) -> None:
        """Check a new connection's server against what we knew of it (one round trip)."""
        key = f"{self._key_prefixes[shard]}:epoch"
        # A new token each time: a server that lost the key must not get back the one we knew.
        info, _, epoch = await connection.execute_many(
            [("INFO", "server"), ("SET", key, secrets.token_hex(8), "NX"), ("GET", key)]
        )
        if isinstance(epoch, AskError) and not isinstance(epoch, MovedError):
            # A cluster slot being migrated, and the key not on this node (any more): which
            # node holds the epoch is unsettled; the next connection checks it.
            self._servers[shard].blmpop = _version(info) >= (7, 0)
            return
        if isinstance(epoch, RedisError):
            raise epoch
        run_id = _run_id(info)
        known = self._servers[shard]
        known.blmpop = _version(info) >= (7, 0)
        old_run_id, old_epoch, old_address = known.run_id, known.epoch, known.address
        known.run_id, known.epoch, known.address = run_id, epoch, str(connection.address)
        restarted = run_id is not None and old_run_id is not None and run_id != old_run_id
        if old_epoch is None or epoch == old_epoch:
            if restarted and old_address != known.address:
                log.info(
                    "Redis at %s took over from %s (a failover) with the layer's data",
                    connection.address,
                    old_address,
                )
            elif restarted:
                log.info("Redis at %s restarted and kept its data (persistence)", connection.address)
            return
        if restarted:
            reason = f"restarted without its data (run_id {old_run_id:.8}… -> {run_id:.8}…)"
        else:
            reason = f"lost its data (the key {key!r} was gone or replaced: flushed or evicted?)"
        self._beating[shard].clear()  # our heartbeat keys went too: that is this loss, not another
        log.warning(
            "Redis at %s %s: the group memberships and messages it held are lost. "
            "To keep them across restarts, turn on persistence on that server (appendonly yes).",
            connection.address,
            reason,
        )
        self._report_membership_lost(MembershipLost(server=str(connection.address), reason=reason))

    def _require_open(self) -> None:
        if self._nursery is None:
            raise RuntimeError(
                "the Redis layer is not open: use it as 'async with RedisChannelLayer(...) as layer:'"
            )

    @contextlib.contextmanager
    def own_prefix(self, prefix: str) -> Iterator[None]:
        """See :meth:`layers.BaseChannelLayer.own_prefix`: sends from this process to channels
        under *prefix* never touch Redis, and one poller pops what other processes send there."""
        validate_process_prefix(prefix)
        self._require_open()
        if prefix in self._own_prefixes:
            raise RuntimeError(f"process prefix {prefix!r} is already owned in this process")
        scope = self._start_owning(prefix)
        try:
            yield
        finally:
            scope.cancel()
            if self._own_prefixes.get(prefix) is scope:
                del self._own_prefixes[prefix]
            self._local.drop(prefix)

    def _start_owning(self, prefix: str) -> trio.CancelScope:
        scope = self._own_prefixes[prefix] = trio.CancelScope()
        self._own([prefix])  # its heartbeat, too
        assert self._nursery is not None
        self._nursery.start_soon(self._poll_own, prefix, scope)
        return scope

    def _own_channel_prefix(self, prefix: str) -> None:
        # An own channel's prefix is ours from now on, for the layer's life (its poller ends
        # with the layer), unless an own_prefix block holds it already.
        self._require_open()
        if prefix not in self._own_prefixes:
            self._start_owning(prefix)

    # -- keys and encoding -----------------------------------------------------------------

    # Every key of a shard starts with its key prefix (on a cluster: one hash tag, one slot).

    def _list_key(self, name: str) -> str:
        return f"{self._key_prefixes[self._shard(name)]}:c:{name}"

    def _stats_key(self, name: str) -> str:
        return f"{self._key_prefixes[self._shard(name)]}:s:{name}"

    def _global_stats_key(self, shard: int) -> str:
        return f"{self._key_prefixes[shard]}:s:#global#"

    def _stamps_key(self, channel: str) -> str:
        return f"{self._key_prefixes[self._shard(channel)]}:n:{channel}"

    def _shard(self, name: str) -> int:
        return consistent_hash(non_local_name(name), len(self._key_prefixes))

    def _group_shard(self, group: str) -> int:
        return consistent_hash(group, len(self._key_prefixes))

    def _pool(self, name: str) -> ConnectionPool:
        self._require_open()
        return self._pools[self._shard(name)]

    def _seal(self, data: bytes) -> bytes:
        return data if self._crypter is None else bytes(self._crypter.encrypt(data))

    def _open_data(self, data: bytes) -> bytes:
        if self._crypter is None:
            return data
        # No Fernet ttl: it would compare the sender's clock with ours. The message's life is
        # its expiry, on Redis's clock.
        return bytes(self._crypter.decrypt(data))

    # -- sending ---------------------------------------------------------------------------

    async def send_encoded(self, channel: str, data: bytes, *, delay: float = 0, wait: bool = False) -> None:
        validate_channel_name(channel)
        if delay:
            await self._send_delayed(channel, data, delay)
        elif wait:
            await self._waiting_send(self._send_now, channel, data)
        else:
            await self._send_now(channel, data)

    async def send_owned(self, channel: str, message: dict[str, Any], *, wait: bool = False) -> None:
        """See :meth:`layers.BaseChannelLayer.send_owned`: a receiver in this process gets
        *message* itself; through Redis it is encoded once, without a validation walk."""
        if channel == "asgi.delay":
            await self.send(channel, message)
            return
        validate_channel_name(channel)
        check_owned_message(message, self.max_message_size)
        if wait:
            await self._waiting_send(self._send_now, channel, message)
        else:
            await self._send_now(channel, message)

    async def _send_delayed(self, channel: str, data: bytes, delay: float) -> None:
        if not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        name = non_local_name(channel)
        member = b"|".join(
            [
                secrets.token_hex(8).encode(),
                str(self.get_capacity(name)).encode(),
                channel.encode(),
                name.encode(),
                self._seal(data),
            ]
        )
        await _DELAY_ADD(self._pool(name), [f"{self._key_prefixes[self._shard(name)]}:d"], [delay, member])
        self._delay_wakeup.set()

    async def _send_now(self, channel: str, payload: Payload) -> None:
        """One attempt: in this process where the receiver is here (see "Locality"), else
        through Redis. Raises :exc:`ChannelFull`."""
        self._require_open()
        name = non_local_name(channel)
        if name in self._own_prefixes:
            local = not self._answered_elsewhere(channel)
        else:
            local = bool(self._receivers) and not self._sent_to_redis(name)
        if local:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._deliver_here(channel, name, payload):
                await self._maybe_yield()
                return
        await self._send_to_redis(channel, name, payload)

    def _deliver_here(self, channel: str, name: str, payload: Payload) -> bool:
        """Hand *payload* to a receiver parked here, or hold it if *name* is one of our own
        prefixes (:exc:`ChannelFull` if its channel is full); False if it must go to Redis."""
        now = trio.current_time()
        if name in self._owned_prefixes and channel is not name:
            own = self._own_target(channel, name)
            if own is False:
                return True  # under a prefix with own channels, but not open: gone
            if own is not True:
                if own.deliver is not None and self._receivers.parked_own(channel):
                    # Its receiver waits, so nothing is queued before this: offer it directly.
                    payload = decode_message(payload) if isinstance(payload, bytes) else payload
                    if own.deliver(payload):
                        self._local.count_handed_over(name)
                        return True
                waiter = self._receivers.claim_own(channel)
                if waiter is None:
                    own.put(self._local, channel, payload, now)
                    if self._local_deadline == math.inf:
                        self._local_wakeup.set()
                    return True
                self._local.count_handed_over(name)
                message = decode_message(payload) if isinstance(payload, bytes) else payload
                waiter.wake((channel, message, now + self.expiry))
                return True
        waiter = self._receivers.claim(channel, name)
        if waiter is not None:
            self._local.count_handed_over(name)
            message = decode_message(payload) if isinstance(payload, bytes) else payload
            waiter.wake((channel, message, now + self.expiry))
            return True
        if name not in self._own_prefixes:
            return False
        self._local.put(name, channel, payload, now)
        if self._local_deadline == math.inf:
            self._local_wakeup.set()
        return True

    def _answered_elsewhere(self, channel: str) -> bool:
        """Whether *channel*, under one of our own prefixes, may get messages from another
        process that this one's must not overtake: it was the ``reply_channel`` of a message
        this process sent through Redis lately, whose consumer (anywhere) may answer it."""
        until = self._remote_replies.get(channel)
        if until is None:
            return False
        if trio.current_time() < until:
            return True
        del self._remote_replies[channel]
        return False

    def _note_reply_channel(self, payload: Payload) -> None:
        # An owned message (the interface's) sent through Redis: its consumer may run in any
        # process and answer on its reply channel through Redis. Until it can no longer (twice
        # the expiry: the message's life, then its consumer's), this process answers that
        # channel through Redis as well, behind it: so a reply that a consumer here sends after
        # one sent elsewhere (enforce_ordering's successor) cannot arrive first.
        reply = payload.get("reply_channel") if isinstance(payload, dict) else None
        if type(reply) is not str or non_local_name(reply) not in self._own_prefixes:
            return
        now = trio.current_time()
        table = self._remote_replies
        if len(table) >= _IN_REDIS_LIMIT and reply not in table:
            for old in [key for key, until in table.items() if until <= now]:
                del table[old]
            if len(table) >= _IN_REDIS_LIMIT:
                del table[next(iter(table))]  # the oldest: it would have expired first
        table.pop(reply, None)
        table[reply] = now + 2 * self.expiry

    async def _send_to_redis(self, channel: str, name: str, payload: Payload) -> None:
        data = (
            payload if isinstance(payload, bytes) else encode_trusted_message(payload, self.max_message_size)
        )
        shard = self._shard(name)
        list_key = self._list_key(name)
        capacity = self.get_capacity(name)
        counted = "!" in channel
        stamps_key = self._stamps_key(channel) if counted else list_key
        # Stamps of this channel's messages we took and have not told Redis about yet: with
        # this send, so that a take followed by a send finds the room it made.
        forget: list[bytes] = []
        if counted and shard in self._forget:
            pending = self._forget[shard]
            forget = pending.pop(stamps_key, forget)
            if not pending:
                del self._forget[shard]
        before = self._in_redis.get(name)
        self._in_redis[name] = (math.inf, trio.current_time())
        try:
            sent = await _SEND(
                self._pools[shard],
                [list_key, self._stats_key(name), self._global_stats_key(shard), stamps_key],
                [capacity, self.expiry, channel, self._seal(data), *forget],
            )
        except BaseException:
            if forget:
                self._forget.setdefault(shard, {}).setdefault(stamps_key, []).extend(forget)
            # Perhaps it was stored.
            self._note_in_redis(name)
            if self._own_prefixes:
                self._note_reply_channel(payload)
            raise
        if not sent:
            if before is None:
                self._in_redis.pop(name, None)
            else:
                self._in_redis[name] = before
            raise ChannelFull(
                f"channel {channel!r} is full ({capacity} messages waiting); the message was not sent"
            )
        self._note_in_redis(name)
        if self._own_prefixes:
            self._note_reply_channel(payload)

    async def _move_delayed(self, shard: int) -> None:
        pool = self._pools[shard]
        backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        failures = 0
        key_prefix = self._key_prefixes[shard]
        while True:
            try:
                moved, dropped, wait_ms = await _DELAY_DUE(
                    pool,
                    [f"{key_prefix}:d", self._global_stats_key(shard)],
                    [f"{key_prefix}:c:", f"{key_prefix}:s:", self.expiry],
                )
                failures = 0
            except ChannelLayerUnavailable as exc:
                failures += 1
                if failures == 1:
                    log.warning("delayed-message mover for %s: %s; retrying", pool.address, exc.__cause__)
                await trio.sleep(backoff.compute(failures))
                continue
            if dropped:
                log.warning("dropped %d delayed message(s): their channels were full", dropped)
            if moved == 200:
                continue
            # Delays scheduled by this process wake us; those of other processes are seen
            # within a second.
            pause = 1.0 if wait_ms < 0 else min(1.0, wait_ms / 1000)
            self._delay_wakeup = wakeup = trio.Event()
            with trio.move_on_after(pause):
                await wakeup.wait()

    # -- locality bookkeeping --------------------------------------------------------------

    def _note_in_redis(self, name: str) -> None:
        """A message of this process for list *name* may be in Redis from now on."""
        self._sends_done += 1
        now = trio.current_time()
        table = self._in_redis
        table[name] = (self._sends_done, now)
        if len(table) > _IN_REDIS_LIMIT:
            for old in [key for key, (_, since) in table.items() if now - since > self.expiry]:
                del table[old]
            if len(table) > _IN_REDIS_LIMIT:
                # Too many to remember: presume every list holds some of ours, for a while.
                table.clear()
                self._all_in_redis_until = now + self.expiry

    def _sent_to_redis(self, name: str) -> bool:
        """Whether a message this process sent to list *name* may still wait in Redis, so a
        later one must not overtake it by a hand-over here."""
        entry = self._in_redis.get(name)
        now = trio.current_time()
        if entry is None:
            return now < self._all_in_redis_until
        if now - entry[1] > self.expiry:  # whatever we sent has expired by now
            del self._in_redis[name]
            return False
        return True

    def _seen_empty(self, names: Sequence[str], issued: int) -> None:
        """A pop issued when :attr:`_sends_done` was *issued* found the lists *names* empty:
        what this process had sent to them before is out of Redis."""
        table = self._in_redis
        if not table:
            return
        for name in names:
            entry = table.get(name)
            if entry is not None and entry[0] <= issued:
                del table[name]

    def _forget_later(self, shard: int, stamps_key: str, stamp: bytes) -> None:
        """A counted message was taken here: tell Redis (with the next pop or send, or within
        :data:`FORGET_DELAY` seconds)."""
        if not self._forget:
            self._forget_since = trio.current_time()
            self._local_wakeup.set()
        self._forget.setdefault(shard, {}).setdefault(stamps_key, []).append(stamp)

    def _removed(self, channel: str, payload: Payload, taken: bool) -> None:
        # on_remove of the local state: a held message left it.
        self._room_freed(channel)
        if self._held:
            held = self._held.pop(id(payload), None)
            if held is not None and taken:
                self._forget_later(*held)

    async def _run_local(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep expired held messages; tell Redis of taken ones that no pop or send carried
        there within :data:`FORGET_DELAY` (a receiver that parks again soon, the common case,
        sends them with its next pop: no round trip of their own)."""
        task_status.started()
        while True:
            now = trio.current_time()
            self._local_deadline = deadline = self._local.sweep(now)
            self._local_wakeup = wakeup = trio.Event()
            if self._forget:
                due = self._forget_since + FORGET_DELAY
                if now < due:
                    deadline = min(deadline, due)
                else:
                    forget, self._forget = self._forget, {}
                    for shard, by_key in forget.items():
                        commands = [
                            ("LREM", key, 1, stamp) for key, stamps in by_key.items() for stamp in stamps
                        ]
                        # Unavailable: the stamps expire with their messages; until then they count.
                        with contextlib.suppress(ChannelLayerUnavailable):
                            await _commands(self._pools[shard], commands)
                    continue
            with trio.move_on_at(deadline):
                await wakeup.wait()

    def _room_window(self, channel: str) -> int:
        # Held here: exact wake-ups, one at a time. In Redis: up to 16 tries in flight (their
        # round trips pipelined on one connection), in the order the senders came.
        return 1 if non_local_name(channel) in self._own_prefixes else 16

    async def _wait_for_room(self, channel: str, failures: int) -> None:
        if non_local_name(channel) in self._own_prefixes:
            # Held here: only a take here makes room.
            await super()._wait_for_room(channel, failures)
            return
        # Redis holds it, and another process may drain it: nothing can wake us then, so back
        # off (5 ms, doubling, 200 ms at most), but wake early when this process pops from it.
        event = self._room_events.get(channel)
        if event is None:
            event = self._room_events[channel] = trio.Event()
        with trio.move_on_after(min(0.005 * 2 ** min(failures - 1, 6), 0.2)):
            await event.wait()

    def _hold(self, shard: int, name: str, deliveries: list[Delivery], stamp: bytes | None) -> None:
        """Keep popped *deliveries* of list *name* here for the next receive (only this
        process reads its prefixes); a counted one counts in Redis until it is taken."""
        now = trio.current_time()
        for channel, message, deadline in deliveries:
            self._local.put(name, channel, message, now, deadline=deadline, admitted=True)
            if stamp is not None:
                self._held[id(message)] = (shard, self._stamps_key(channel), stamp)
        if self._local_deadline == math.inf:
            self._local_wakeup.set()

    # -- receiving -------------------------------------------------------------------------

    def _take(self, names: list[str]) -> Delivery | None:
        if len(names) == 1 and names[0] in self._own_open:  # receive_own
            entry = self._local.take_own(names[0], trio.current_time())
        else:
            entry = self._local.take(names, trio.current_time())
        if entry is None:
            return None
        deadline, channel, data = entry
        return channel, decode_message(data) if isinstance(data, bytes) else data, deadline

    async def _fetch_nowait(self, names: list[str]) -> Delivery | None:
        self._own(names)
        by_shard: dict[int, list[str]] = {}
        for name in names:
            by_shard.setdefault(self._shard(name), []).append(name)
        for shard in fair_order(list(by_shard)):
            pool = self._pools[shard]
            lists = {self._list_key(name): name for name in by_shard[shard]}
            while flat := await _POP_MANY(pool, fair_order(list(lists)), [1]):
                list_key, ttl, item = flat[:3]
                name = lists[list_key.decode()]
                self._room_freed(name)
                deliveries, stamp = self._unpack(name, item, ttl)
                if name in self._owned_prefixes:  # own channels' messages go to their own FIFOs
                    deliveries = self._sort_own(shard, name, deliveries, stamp)
                if deliveries:  # else it expired, could not be read or was not for us: pop the next
                    first = deliveries[0]
                    if stamp is not None:
                        self._forget_later(shard, self._stamps_key(first[0]), stamp)
                    leftovers = self._hand_out(shard, name, deliveries[1:], None)
                    if leftovers:  # the rest of a fan-out item: only this process reads it
                        self._hold(shard, name, leftovers, None)
                    return first
        return None

    def _drop_own(self, channel: str) -> int:
        return self._local.drop_own(channel)

    def _will_park(self, names: list[str]) -> None:
        names = [non_local_name(name) for name in names]  # an own channel: its prefix's list
        self._own(names)
        by_shard: dict[int, list[str]] = {}
        for name in names:
            if name not in self._own_prefixes:  # our own prefixes have a poller of their own
                by_shard.setdefault(self._shard(name), []).append(name)
        for shard, shard_names in by_shard.items():
            key = (shard, frozenset(shard_names))
            if key not in self._pollers:
                self._pollers.add(key)
                assert self._nursery is not None
                self._nursery.start_soon(self._poll, key)

    async def _pop(
        self, shard: int, connection: RedisConnection, keys: list[str], want: int, *, block: bool = True
    ) -> list[tuple[str, int, bytes]]:
        """Pop up to *want* items from the first of the lists *keys* that has some, with
        *block* waiting up to ``BLOCK_SECONDS`` while all are empty: one round trip. Blocking:
        ``BLMPOP`` (Redis >= 7), else ``BLPOP`` with a non-blocking pop for the rest pipelined
        behind it; not blocking: ``LMPOP``, else the ``POP_MANY`` script. Returns ``(list key,
        ms to live, item)``; ahead of the pop go the stamps of taken messages Redis has not been
        told of. Lists seen empty are reported to :meth:`_seen_empty`."""
        forget = self._forget.pop(shard, None)
        commands: list[tuple[Any, ...]] = (
            [("LREM", key, 1, stamp) for key, stamps in forget.items() for stamp in stamps] if forget else []
        )
        skip = len(commands)
        issued = self._sends_done
        mpop = self._servers[shard].blmpop
        if mpop:
            if block:
                commands.append(("BLMPOP", BLOCK_SECONDS, len(keys), *keys, "LEFT", "COUNT", want))
            else:
                commands.append(("LMPOP", len(keys), *keys, "LEFT", "COUNT", want))
        elif block:
            commands.append(("BLPOP", *keys, BLOCK_SECONDS))
        commands.append(("TIME",))
        if not mpop and (want > 1 or not block):
            more = want - 1 if block else want
            if len(keys) == 1:
                commands.append(("LPOP", keys[0], more))
            else:
                commands.append(("EVALSHA", _POP_MANY.sha, len(keys), *keys, more))
        try:
            replies = await connection.execute_many(commands)
        except BaseException:
            if forget:  # perhaps not run: again next time (removing a stamp twice is harmless)
                mine = self._forget.setdefault(shard, {})
                for key, stamps in forget.items():
                    mine.setdefault(key, []).extend(stamps)
            raise
        for reply in replies:
            if isinstance(reply, RedisError) and not isinstance(reply, NoScriptError):
                raise reply
        replies = replies[skip:]
        popped = replies.pop(0) if mpop or block else None
        time, rest = replies[0], (replies[1] if len(replies) > 1 else None)
        now_ms = int(time[0]) * 1000 + int(time[1]) // 1000
        offset = self._list_key_offsets[shard]
        names = [key[offset:] for key in keys]
        items: list[tuple[str, int, bytes]] = []
        if mpop:
            if popped is None:
                self._seen_empty(names, issued)
                return items
            list_key = popped[0].decode()
            items = [(list_key, _expires_ms(item) - now_ms, item) for item in popped[1]]
            if len(items) < want:
                self._seen_empty([list_key[offset:]], issued)
            return items
        if popped is not None:
            list_key = popped[0].decode()
            items.append((list_key, _expires_ms(popped[1]) - now_ms, popped[1]))
        if isinstance(rest, NoScriptError):
            await connection.execute("SCRIPT", "LOAD", _POP_MANY.source)
            return items
        if len(keys) == 1 and rest:
            items.extend((keys[0], _expires_ms(item) - now_ms, item) for item in rest)
        elif rest:
            for index in range(0, len(rest), 3):
                items.append((rest[index].decode(), int(rest[index + 1]), rest[index + 2]))
        if (block and popped is None) or len(items) < want:
            # Nothing to block on, or the non-blocking pop came back short: all were empty.
            self._seen_empty(names, issued)
        return items

    async def _poll(self, key: tuple[int, frozenset[str]]) -> None:
        """Pop for the receivers parked here on *key*'s lists, while there are any."""
        shard, names = key
        lists = {self._list_key(name): name for name in names}
        keys = tuple(names)
        # Only this process reads its own prefix, so take all that is queued there at once.
        prefixes = any(name.endswith("!") for name in names)
        try:
            await self._poll_lists(shard, lists, lambda: self._receivers.count(keys), prefixes)
        finally:
            self._pollers.discard(key)

    async def _poll_own(self, prefix: str, scope: trio.CancelScope) -> None:
        """Pop everything other processes send to our own *prefix*, for as long as we own it."""
        with scope:
            await self._poll_lists(self._shard(prefix), {self._list_key(prefix): prefix}, lambda: 1, True)

    async def _poll_lists(
        self, shard: int, lists: dict[str, str], waiting: Callable[[], int], everything: bool
    ) -> None:
        pool = self._pools[shard]
        backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        failures = 0
        names = list(lists.values())
        probed = -1
        while waiting():
            try:
                async with _MapErrors(pool.address), pool.dedicated() as connection:
                    while count := waiting():
                        order = random.sample(list(lists), len(lists))
                        # Where messages of ours may still wait in these lists, first pop without
                        # blocking: coming back short, it tells us they are out (see "Locality"),
                        # and sends may be handed over here again. Once per batch of our sends.
                        probe = self._sends_done != probed and any(map(self._sent_to_redis, names))
                        if probe:
                            probed = self._sends_done
                        items = await self._pop(
                            shard, connection, order, 1000 if everything else min(count, 100), block=not probe
                        )
                        if failures:
                            log.info("Redis at %s is back", pool.address)
                            failures = 0
                        if items:
                            await self._dispatch(shard, pool, lists, items)
            except ChannelLayerUnavailable as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "receiving from Redis at %s failed (%s); retrying with backoff",
                        pool.address,
                        exc.__cause__,
                    )
                await trio.sleep(backoff.compute(failures))

    async def _dispatch(
        self, shard: int, pool: ConnectionPool, lists: dict[str, str], items: list[tuple[str, int, bytes]]
    ) -> None:
        back: dict[str, list[bytes]] = {}
        for list_key, ttl, item in items:
            name = lists[list_key]
            self._room_freed(name)  # a sender here waiting for room in that list may try again
            deliveries, stamp = self._unpack(name, item, ttl)
            leftovers = self._hand_out(shard, name, deliveries, stamp)
            if not leftovers:
                continue
            if name.endswith("!") or len(deliveries) > 1:
                # Only this process reads its prefix: keep them here for the next receive.
                self._hold(shard, name, leftovers, stamp)
            else:
                back.setdefault(list_key, []).append(item)
        for list_key in back:
            # Before any checkpoint: from now on a send must not overtake what goes back.
            self._in_redis[lists[list_key]] = (math.inf, trio.current_time())
        for list_key, returned in back.items():
            # The receivers left meanwhile: give the messages back, at the head and in their
            # order, for anyone.
            with trio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
                await pool.execute("LPUSH", list_key, *reversed(returned))
            self._note_in_redis(lists[list_key])

    def _hand_out(
        self, shard: int, name: str, deliveries: list[Delivery], stamp: bytes | None
    ) -> list[Delivery]:
        """Give each delivery from list *name* to a parked receiver; return those nobody took."""
        if name in self._owned_prefixes:
            deliveries = self._sort_own(shard, name, deliveries, stamp)
        leftovers = []
        for delivery in deliveries:
            waiter = self._receivers.claim(delivery[0], name)
            if waiter is None:
                leftovers.append(delivery)
            else:
                waiter.wake(delivery)
                if stamp is not None:
                    self._forget_later(shard, self._stamps_key(delivery[0]), stamp)
        return leftovers

    def _sort_own(
        self, shard: int, name: str, deliveries: list[Delivery], stamp: bytes | None
    ) -> list[Delivery]:
        """Of *deliveries* popped from the list of *name*, a prefix with own channels, give
        each one for an own channel to its receiver, or hold it in its FIFO here, or drop it
        (see "Own channels" in :mod:`layers._backend`); return the others."""
        usual = []
        now = trio.current_time()
        for delivery in deliveries:
            channel = delivery[0]
            own = self._own_target(channel, name)
            if own is True:
                usual.append(delivery)
                continue
            if own is not False:
                waiter = self._receivers.claim_own(channel)
                if waiter is not None:
                    waiter.wake(delivery)
                else:
                    try:
                        own.put(self._local, channel, delivery[1], now, deadline=delivery[2], admitted=True)
                    except ChannelFull:
                        pass  # counted, and on_overflow told
                    else:
                        if stamp is not None:  # it counts in Redis until it is taken
                            self._held[id(delivery[1])] = (shard, self._stamps_key(channel), stamp)
                        if self._local_deadline == math.inf:
                            self._local_wakeup.set()
                        continue
            # Handed over or gone: this message no longer counts against its channel.
            if stamp is not None:
                self._forget_later(shard, self._stamps_key(channel), stamp)
        return usual

    def _unpack(self, name: str, item: bytes, ttl_ms: int) -> tuple[list[Delivery], bytes | None]:
        """The deliveries in *item*, which has *ttl_ms* left to live by Redis's clock (never
        this host's: the deadline is that much from now on Trio's clock), and its stamp if it
        counts in its channel's stamps (a live message sent to one process-specific channel)."""
        if ttl_ms <= 0:
            return [], None
        deadline = trio.current_time() + ttl_ms / 1000
        stamp, kind, field, data = item.split(b"|", 3)
        position: tuple[str, int, str] | None = None
        if kind in (b"DH", b"FH"):
            place, data = data.split(b"|", 1)
            in_group, at, in_epoch = place.decode().split(",")
            position = (in_group, int(at), in_epoch)
        try:
            payload = self._open_data(data)
        except Exception:
            log.error("dropped a message on %r that could not be decrypted (wrong or retired key?)", name)
            return [], None
        if position is None:  # the common case, kept tight
            if kind == b"D":
                channel = field.decode()
                # A message SEND pushed for one process-specific channel counts in its stamps.
                return [(channel, decode_message(payload), deadline)], stamp if "!" in channel else None
            return [
                (name + local, decode_message(payload), deadline) for local in field.decode().split(",")
            ], None
        group, offset, epoch = position
        channels = (
            [field.decode()] if kind == b"DH" else [name + local for local in field.decode().split(",")]
        )
        deliveries = []
        for channel in channels:
            message = decode_message(payload)
            message[HISTORY_KEY] = {"group": group, "epoch": epoch, "offset": offset}
            deliveries.append((channel, message, deadline))
        return deliveries, None

    # -- channels --------------------------------------------------------------------------

    async def new_channel(self, pattern: str) -> str:
        for name in single_reader_names(pattern):  # endless: ends at an unused name
            if not await _command(self._pool(name), "EXISTS", self._list_key(name)):
                break
        return name

    # -- groups ----------------------------------------------------------------------------

    def _group_keys(self, group: str) -> list[str]:
        """The group's zset, capacities, infos and tracked prefixes."""
        p = self._key_prefixes[self._group_shard(group)]
        return [f"{p}:g:{group}", f"{p}:gc:{group}", f"{p}:gi:{group}", f"{p}:gt:{group}"]

    def _history_keys(self, group: str) -> list[str]:
        p = self._key_prefixes[self._group_shard(group)]
        return [f"{p}:h:{group}", f"{p}:hm:{group}"]

    def _history_args(self, group: str) -> list[Any]:
        """size, ttl (ms), meta ttl (ms), a new epoch token: the history part of a script's ARGV."""
        options = self.history_options(group)
        if options is None:
            return [0, 0, 0, ""]
        ttl = math.ceil(options.ttl * 1000)
        return [options.size, ttl, max(ttl, math.ceil(self.group_expiry * 1000)), secrets.token_hex(6)]

    def _heartbeat_key(self, prefix: str, shard: int = 0) -> str:
        """The heartbeat key of a process *prefix* on *shard* (every shard has one of each)."""
        return f"{self._key_prefixes[shard]}:hb:{prefix}"

    def _group_pool(self, group: str) -> ConnectionPool:
        self._require_open()
        return self._pools[self._group_shard(group)]

    def _info(self, sealed: bytes) -> dict[str, Any] | None:
        if not sealed:
            return None
        try:
            return decode_message(self._open_data(sealed))
        except Exception:
            log.error("presence info that could not be decrypted was shown as None (wrong or retired key?)")
            return None

    async def _add(
        self, group: str, channel: str, info: dict[str, Any] | None, recover: Since | None, push: bool
    ) -> list[Any]:
        validate_group_name(group)
        validate_channel_name(channel)
        encoded = validate_info(info)
        events = self.presence_events(group)
        name = non_local_name(channel)
        shard = self._group_shard(group)
        heartbeat = self._heartbeat_key(name, shard) if name.endswith("!") else ""
        args: list[Any] = [
            channel,
            self.get_capacity(channel),
            self.group_expiry,
            b"" if encoded is None else self._seal(encoded),
            heartbeat,
            name if heartbeat else "",
            group,
            int(events),
        ]
        if recover is None:
            args.append("add")
        else:
            size, _, meta_ttl, token = self._history_args(group)
            epoch, offset = ("", recover) if isinstance(recover, int) else recover
            args += ["recover", epoch, offset, size, meta_ttl, token, self.expiry, int(push)]
        if push:  # the replay goes into the channel's list, on the group's shard
            list_keys = [self._list_key(name), self._stats_key(name), self._global_stats_key(shard)]
        else:  # not touched, but in the group's slot all the same (a cluster checks KEYS)
            key_prefix = self._key_prefixes[shard]
            list_keys = [f"{key_prefix}:c:{name}", f"{key_prefix}:s:{name}", self._global_stats_key(shard)]
        keys = [
            *self._group_keys(group),
            f"{self._key_prefixes[shard]}:pg",
            *self._history_keys(group),
            *list_keys,
        ]
        result: list[Any] = await _GROUP_ADD(self._group_pool(group), keys, args)
        return result

    async def _announce_join(self, group: str, channel: str, info: dict[str, Any] | None) -> None:
        event = {"presence": "join", "group": group, "channel": channel, "info": info}
        _, left = await self._fan_out(group, self._encode(event), {channel})
        await self._announce_leaves(group, left)

    async def group_add(self, group: str, channel: str, *, info: dict[str, Any] | None = None) -> None:
        new = (await self._add(group, channel, info, None, False))[0]
        if new and self.presence_events(group):
            await self._announce_join(group, channel, info)

    async def group_recover(
        self, group: str, channel: str, since: Since, *, info: dict[str, Any] | None = None
    ) -> GroupHistory:
        since = validate_since(since)
        validate_channel_name(channel)
        name = non_local_name(channel)
        # The replay must reach the channel's list ahead of every later group message. With the
        # list on the group's server, one script adds and queues the replay atomically. Else
        # the list is held first: group sends queue beside it until the replay is in.
        shard = self._shard(name)
        together = shard == self._group_shard(validate_group_name(group))
        hold = side = ""
        if not together:
            key_prefix = self._key_prefixes[shard]
            hold, side = f"{key_prefix}:hold:{name}", f"{key_prefix}:side:{name}"
            await _command(self._pool(name), "SET", hold, "1", "PX", 10_000)
        try:
            new, problem, current_epoch, latest, entries = await self._add(
                group, channel, info, since, together
            )
            problem = problem.decode()
            if not together:
                replay = [] if problem else [part for entry in entries for part in entry]
                fitted = await _RECOVER_PUSH(
                    self._pool(name),
                    [self._list_key(name), hold, side, self._stats_key(name), self._global_stats_key(shard)],
                    [self.get_capacity(channel), self.expiry, channel, f"{group},", current_epoch, *replay],
                )
                hold = ""
                if not fitted:
                    problem = "no room"
        finally:
            if hold:  # failed or cancelled before the replay: release the held list
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(2),
                    contextlib.suppress(RedisError, OSError, ChannelLayerUnavailable),
                ):
                    await _RECOVER_PUSH(
                        self._pool(name),
                        [
                            self._list_key(name),
                            hold,
                            side,
                            self._stats_key(name),
                            self._global_stats_key(shard),
                        ],
                        [self.get_capacity(channel), self.expiry, channel, f"{group},", ""],
                    )
        if new and self.presence_events(group):  # after the replay: the hold is as short as can be
            await self._announce_join(group, channel, info)
        if problem:
            epoch_now = current_epoch.decode() if current_epoch else None
            raise cannot_recover(group, problem, since, epoch_now, int(latest) if epoch_now else None)
        return GroupHistory(
            messages=[(int(entry[0]), decode_message(self._open_data(entry[1]))) for entry in entries],
            epoch=current_epoch.decode(),
            offset=int(latest),
        )

    async def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_channel_name(channel)
        removed, info = await _GROUP_DISCARD(self._group_pool(group), self._group_keys(group)[:3], [channel])
        if removed and self.presence_events(group):
            await self._announce_leaves(group, [channel.encode(), info])

    async def _members(self, group: str, what: str, data: bytes = b"") -> list[Any]:
        validate_group_name(group)
        heartbeats = self._heartbeat_key("", self._group_shard(group))
        args: list[Any] = [self.group_expiry, heartbeats, int(self.presence_events(group)), what]
        if what == "send":
            args += [*self._history_args(group), data]
        keys = [*self._group_keys(group), *self._history_keys(group)]
        result: list[Any] = await _GROUP_MEMBERS(self._group_pool(group), keys, args)
        if result[1]:
            await self._announce_leaves(group, result[1])
        return result

    async def group_channels(self, group: str) -> list[str]:
        members = (await self._members(group, "members"))[0]
        return [member.decode() for member in members]

    async def group_presence(self, group: str) -> dict[str, dict[str, Any] | None]:
        members, _, _, _, _, flat = await self._members(group, "presence")
        infos = dict(zip(flat[::2], flat[1::2], strict=True))
        return {member.decode(): self._info(infos.get(member, b"")) for member in members}

    async def group_history(
        self, group: str, *, since: int | None = None, limit: int | None = None
    ) -> GroupHistory:
        validate_group_name(group)
        validate_history_range(since, limit)
        size, _, meta_ttl, token = self._history_args(group)
        if not size:
            return GroupHistory(messages=[], epoch=None, offset=None)
        epoch, latest, entries = await _HISTORY_READ(
            self._group_pool(group),
            self._history_keys(group),
            [token, meta_ttl, size, -1 if since is None else since, -1 if limit is None else limit],
        )
        return GroupHistory(
            messages=[(int(entry[0]), decode_message(self._open_data(entry[1]))) for entry in entries],
            epoch=epoch.decode(),
            offset=int(latest),
        )

    async def send_group_encoded(
        self, group: str, data: bytes, *, exclude: str | Collection[str] | None = None
    ) -> GroupSendReport:
        validate_group_name(group)
        excluded = validate_exclude(exclude)
        refuse_position(data)
        report, left = await self._fan_out(group, data, excluded, history=True)
        await self._announce_leaves(group, left)
        return report

    async def _fan_out(
        self, group: str, data: bytes, excluded: Collection[str], *, history: bool = False
    ) -> tuple[GroupSendReport, list[bytes]]:
        """Send *data* to *group* (stored in its history if *history*); the report, and the
        members that left on the way as ``[member, info, ...]`` (when it has presence events)."""
        sealed = self._seal(data)
        history_args = self._history_args(group) if history else [0, 0, 0, ""]
        shard = self._group_shard(group)
        key_prefix = self._key_prefixes[shard]
        if self.shards == 1:
            # One round trip: store, read the members, evict the gone, push one item per list.
            delivered, full, gone, offset, epoch, skipped, left = await _GROUP_SEND(
                self._group_pool(group),
                [*self._group_keys(group), self._global_stats_key(shard), *self._history_keys(group)],
                [
                    f"{key_prefix}:c:",
                    f"{key_prefix}:s:",
                    self.group_expiry,
                    self.expiry,
                    self.capacity,
                    sealed,
                    self._heartbeat_key("", shard),
                    int(self.presence_events(group)),
                    group,
                    *history_args,
                    *excluded,
                ],
            )
            return _report(delivered, full, gone, offset, epoch, [m.decode() for m in skipped]), left
        # Sharded: store and read the members in one round trip, then one per shard (server,
        # or cluster slot) holding members' lists, run concurrently.
        args: list[Any] = [
            self.group_expiry,
            self._heartbeat_key("", shard),
            int(self.presence_events(group)),
            "send",
        ]
        members, left, gone, epoch, offset, _ = await _GROUP_MEMBERS(
            self._group_pool(group),
            [*self._group_keys(group), *self._history_keys(group)],
            [*args, *history_args, sealed],
        )
        position = f"{group},{offset},{epoch.decode()}" if offset else ""
        by_shard: dict[int, dict[str, list[str]]] = {}
        for member in members:
            name = member.decode()
            if name not in excluded:
                list_name = non_local_name(name)
                by_shard.setdefault(self._shard(list_name), {}).setdefault(list_name, []).append(name)
        totals = [0, 0, int(gone)]
        full_channels: list[str] = []
        left = list(left)

        async def push(list_shard: int, lists: dict[str, list[str]]) -> None:
            list_prefix = self._key_prefixes[list_shard]
            keys = [self._global_stats_key(list_shard)]
            push_args: list[Any] = [self.expiry, sealed, position]
            for name, group_members in lists.items():
                keys += [
                    self._list_key(name),
                    self._stats_key(name),
                    f"{list_prefix}:hold:{name}",
                    f"{list_prefix}:side:{name}",
                ]
                push_args += [
                    self.get_capacity(name),
                    "F" if name.endswith("!") else "D",
                    ",".join(group_members),
                ]
            results = await _GROUP_PUSH(self._pools[list_shard], keys, push_args)
            for group_members, result in zip(lists.values(), results, strict=True):
                totals[0] += result[0]
                totals[1] += result[1]
                if result[1]:
                    full_channels.extend(group_members[: FULL_CHANNELS_LIMIT - len(full_channels)])
                for evicted in result[2:]:
                    totals[2] += 1
                    removed, info = await _GROUP_DISCARD(
                        self._group_pool(group), self._group_keys(group)[:3], [evicted]
                    )
                    if removed and self.presence_events(group):
                        left.extend((evicted, info))

        async with trio.open_nursery() as nursery:
            for list_shard, lists in by_shard.items():
                nursery.start_soon(push, list_shard, lists)
        return _report(totals[0], totals[1], totals[2], offset, epoch, full_channels), left

    async def _announce_leaves(self, group: str, left: list[Any]) -> None:
        """Send a leave event for each ``member, info`` pair in *left* (and for members that
        leave while these are sent)."""
        while left:
            pairs, left = list(zip(left[::2], left[1::2], strict=True)), []
            for member, info in pairs:
                name = member.decode() if isinstance(member, bytes) else member
                event = {"presence": "leave", "group": group, "channel": name, "info": self._info(info)}
                _, more = await self._fan_out(group, self._encode(event), ())
                left += more

    # -- heartbeats and the presence sweep ------------------------------------------------

    def _own(self, names: Sequence[str]) -> None:
        """Note the process prefixes this process receives on: it keeps them alive."""
        for name in names:
            if name.endswith("!") and name not in self._owned:
                self._owned[name] = None
                changed, self._owned_changed = self._owned_changed, trio.Event()
                changed.set()  # wakes every shard's heartbeat: the key is set at once

    async def _heartbeat(self, shard: int) -> None:
        """Keep this process's heartbeat keys alive on one server (every heartbeat / 3)."""
        pool = self._pools[shard]
        ttl = math.ceil(self.heartbeat * 1000)
        beating = self._beating[shard]
        while True:
            changed = self._owned_changed
            owned = list(self._owned)
            if owned:
                try:
                    existed = await _HEARTBEAT(
                        pool, [self._heartbeat_key(name, shard) for name in owned], [ttl]
                    )
                except ChannelLayerUnavailable:
                    pass  # the pollers log it; the key may lapse, which the next beat reports
                else:
                    lapsed = [
                        name
                        for name, alive in zip(owned, existed, strict=True)
                        if not alive and name in beating
                    ]
                    beating.update(owned)
                    if lapsed:
                        reason = (
                            f"this process's heartbeat for {', '.join(lapsed)} lapsed (Redis was out of "
                            f"reach for over {self.heartbeat:g} s): its members may have left their groups"
                        )
                        log.warning("Redis at %s: %s", pool.address, reason)
                        self._report_membership_lost(MembershipLost(server=str(pool.address), reason=reason))
            with trio.move_on_after(self.heartbeat / 3):
                await changed.wait()

    async def _sweep(self, shard: int) -> None:
        """Every heartbeat / 2, remove dead and lapsed members everywhere (one process does it
        per period) and send their leave events: a dead process's members leave within
        2 x heartbeat even in a group nobody touches."""
        pool = self._pools[shard]
        key_prefix = self._key_prefixes[shard]
        while True:
            await trio.sleep(self.heartbeat / 2)
            try:
                found = await _SWEEP(
                    pool,
                    [f"{key_prefix}:pg", f"{key_prefix}:sweep-lock"],
                    [
                        f"{key_prefix}:",
                        self.group_expiry,
                        self._heartbeat_key("", shard),
                        math.ceil(self.heartbeat * 500),
                    ],
                )
                for index in range(0, len(found), 2):
                    await self._announce_leaves(found[index].decode(), found[index + 1])
            except ChannelLayerUnavailable:
                continue

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        self._require_open()
        self._local.flush()
        self._held.clear()
        self._forget.clear()
        self._in_redis.clear()
        self._remote_replies.clear()
        self._all_room_freed()
        for pool, key_prefix in zip(self._pools, self._key_prefixes, strict=True):
            cursor = b"0"
            epoch = f"{key_prefix}:epoch".encode()  # kept: a flush is no loss to report later
            heartbeats = f"{key_prefix}:hb:".encode()  # kept: the processes live on
            while True:
                cursor, keys = await _command(pool, "SCAN", cursor, "MATCH", f"{key_prefix}:*", "COUNT", 1000)
                keys = [key for key in keys if key != epoch and not key.startswith(heartbeats)]
                if keys:
                    await _command(pool, "DEL", *keys)
                if cursor in (b"0", 0, "0"):
                    break

    def server_statistics(self) -> list[RedisServerStatistics]:
        """Round trips and errors per server (shard), as this process saw them; no I/O."""
        return [
            RedisServerStatistics(
                server=str(pool.address),
                round_trips=pool.round_trips.snapshot(),
                unavailable=_UNAVAILABLE_COUNTS.get(str(pool.address), 0),
            )
            for pool in self._pools
        ]

    async def statistics(self, channel: str | None = None) -> LayerStatistics:
        self._require_open()
        if channel is not None:
            name = non_local_name(validate_channel_name(channel))
            pool = self._pool(name)
            counters = await _command(
                pool, "HMGET", self._stats_key(name), "messages_count", "channel_full_count"
            )
            length, age = await _LIST_STATS(pool, [self._list_key(name)], [self.expiry])
            return _plus(
                LayerStatistics(
                    channel=channel,
                    messages_count=int(counters[0] or 0),
                    messages_pending=int(length),
                    messages_max_age=max(0.0, age / 1000) if age >= 0 else 0.0,
                    channel_full_count=int(counters[1] or 0),
                ),
                self._local.statistics(trio.current_time(), channel),
            )
        messages = full = pending = 0
        max_age = 0.0
        for shard, pool in enumerate(self._pools):
            key_prefix = self._key_prefixes[shard]
            counters = await _command(
                pool, "HMGET", self._global_stats_key(shard), "messages_count", "channel_full_count"
            )
            messages += int(counters[0] or 0)
            full += int(counters[1] or 0)
            cursor = b"0"
            while True:
                cursor, keys = await _command(
                    pool, "SCAN", cursor, "MATCH", f"{key_prefix}:c:*", "COUNT", 1000
                )
                for key in keys:
                    length, age = await _LIST_STATS(pool, [key], [self.expiry])
                    pending += int(length)
                    if age >= 0:
                        max_age = max(max_age, age / 1000)
                if cursor in (b"0", 0, "0"):
                    break
        return _plus(
            LayerStatistics(
                channel=None,
                messages_count=messages,
                messages_pending=pending,
                messages_max_age=max_age,
                channel_full_count=full,
            ),
            self._local.statistics(trio.current_time()),
        )


def _plus(shared: LayerStatistics, local: LayerStatistics) -> LayerStatistics:
    """What Redis counted, plus what this process handled without it (see "Locality")."""
    return LayerStatistics(
        channel=shared.channel,
        messages_count=shared.messages_count + local.messages_count,
        messages_pending=shared.messages_pending + local.messages_pending,
        messages_max_age=max(shared.messages_max_age, local.messages_max_age),
        channel_full_count=shared.channel_full_count + local.channel_full_count,
    )
