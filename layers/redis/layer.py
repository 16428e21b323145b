"""``RedisChannelLayer``: channels and groups in one or more Redis servers.

Theory of operation
-------------------
Every channel is a Redis list ``<prefix>:c:<name>`` (a process-specific channel lives in its
prefix's list, so an interface process needs one blocking pop for all its connections).
Sends and group sends are Lua scripts (capacity check + push + statistics in one atomic
round trip). A group is a sorted set of members scored by add time, plus a hash of each
member's capacity; a group send pushes one item per list, so the members a process holds get
**one** item that the process fans out locally.

Receiving shares the in-memory layer's machinery (:mod:`layers._backend`): a receiver parks
on its channel names, and one *poller* task per (server, set of lists) runs ``BLPOP`` on a
dedicated connection **only while** someone here is waiting, handing each item to a parked
receiver. An item nobody is
waiting for any more (the receiver was cancelled meanwhile) goes back to the head of its
list, so a cancelled receive loses nothing and a busy worker hoards nothing; items for this
process's own prefix stay in a local queue instead, since only this process reads them.

Several hosts shard by consistent hashing on the channel's non-local name (so a process
prefix and everything under it live on one server) and on the group name. A host is a fixed
server or a Sentinel-managed primary; only the connection pools know which (their resolver,
in :mod:`.connection`): after a failover, new connections go to the new primary.

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
from collections import deque
from collections.abc import AsyncIterator, Collection, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final

import attrs
import trio
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from .._backend import Delivery, OwnChannel, ParkingLayer, fair_order, query_options, single_reader_names
from ..base import (
    ChannelFull,
    ChannelLayerUnavailable,
    LayerStatistics,
    MembershipLost,
    decode_message,
    non_local_name,
    validate_channel_name,
    validate_group_name,
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
from .connection import (
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

#: How long one BLPOP waits before the poller checks whether anyone still waits.
BLOCK_SECONDS = 1

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
    """What this process knows of one shard's server (see "Lost memberships" above)."""

    run_id: str | None = None
    epoch: bytes | None = None
    address: str | None = None


def _run_id(info: Any) -> str | None:
    """The ``run_id`` in an ``INFO server`` reply (None if INFO was refused, e.g. by an ACL)."""
    if not isinstance(info, bytes):
        return None
    for line in info.decode("utf-8", "replace").splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:") :].strip()
    return None


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
    if isinstance(value, (str, tuple, dict, RedisAddress, SentinelAddress)):
        value = [value]
    addresses: list[ServerAddress] = []
    for host in value:
        if isinstance(host, (tuple, list)) and len(host) == 2:
            addresses.append(RedisAddress(host=str(host[0]), port=int(host[1])))
        elif isinstance(host, (str, dict, RedisAddress, SentinelAddress)):
            addresses.append(server_address(host))
        else:
            raise ValueError(
                f"Redis host {host!r} is invalid: use 'redis://host:port/db', (host, port), "
                "'redis+sentinel://host:26379/mymaster/0' or a Sentinel dict"
            )
    if not addresses:
        raise ValueError("hosts must name at least one Redis server")
    return addresses


@attrs.define(eq=False, kw_only=True)
class RedisChannelLayer(ParkingLayer):
    """A channel layer on one or more Redis servers (several = sharded).

    ``hosts`` takes URLs (``redis://``, ``rediss://``, ``unix://``, and for a primary that
    Redis Sentinel manages ``redis+sentinel://`` / ``rediss+sentinel://``), ``(host, port)``
    tuples and Sentinel dicts (:meth:`~layers.redis.SentinelAddress.from_dict`). Enter it
    (``async with``) before use: that starts its connection readers and its delayed-message
    mover in the layer's own nursery, and asks the sentinels of each Sentinel-managed host once
    (:exc:`~layers.ChannelLayerUnavailable` naming them if none answers).
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
    _local: dict[str, deque[Delivery]] = attrs.field(factory=dict, init=False, repr=False)
    _pollers: set[tuple[int, frozenset[str]]] = attrs.field(factory=set, init=False, repr=False)
    _delay_wakeup: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _servers: list[_ServerIdentity] = attrs.field(factory=list, init=False, repr=False)
    _owned: dict[str, None] = attrs.field(factory=dict, init=False, repr=False)
    _owned_changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    # Per shard: the prefixes whose heartbeat key this process has set there (a key missing
    # later lapsed; a shard reported as having lost its data starts afresh).
    _beating: list[set[str]] = attrs.field(factory=list, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ValueError(f"prefix must be a non-empty str, got {self.prefix!r}")
        self._crypter = _fernet(self.symmetric_encryption_keys)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisChannelLayer:
        """``redis://host:6379/0`` or ``redis+sentinel://host1:26379,host2:26379/mymaster/0``
        (several hosts: comma-separated URLs) plus query options ``expiry``, ``group_expiry``,
        ``capacity``, ``max_message_size``, ``prefix``, ``heartbeat``."""
        from urllib.parse import urlsplit

        hosts = split_urls(url)
        if not hosts:
            raise ValueError(f"layer URL {url!r} is invalid: it names no Redis server")
        parsed = query_options(url, urlsplit(hosts[-1]).query, text=("prefix",), numbers={"heartbeat": float})
        return cls(hosts=hosts, **{**parsed, **options})

    def shared_store_address(self) -> tuple[ServerAddress, str]:
        """The first server, and this layer's prefix (``serve()`` keeps sessions there)."""
        return self.hosts[0], self.prefix

    # -- lifetime --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        for address in self.hosts:
            if isinstance(address, SentinelAddress):
                # No answer from any sentinel is most likely a wrong address or service name:
                # say so now, not as 503s later. (The primary itself may be down: that is fine.)
                with _MapErrors(address):
                    await SentinelResolver(address).locate()
        async with open_service_nursery() as nursery:
            self._nursery = nursery
            self._servers = [_ServerIdentity() for _ in self.hosts]
            self._beating = [set() for _ in self.hosts]
            self._pools = [
                ConnectionPool(address, nursery, on_connect=partial(self._identify_server, shard))
                for shard, address in enumerate(self.hosts)
            ]
            for shard in range(len(self._pools)):
                nursery.start_soon(self._move_delayed, shard)
                nursery.start_soon(self._heartbeat, shard)
                nursery.start_soon(self._sweep, shard)
            try:
                yield
            finally:
                if self._owned:  # leaving: our members leave at once, not at the heartbeat's end
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        keys = [self._heartbeat_key(name) for name in self._owned]
                        for pool in self._pools:
                            with contextlib.suppress(RedisError, OSError, ChannelLayerUnavailable):
                                await _command(pool, "DEL", *keys)
                nursery.cancel_scope.cancel()
                self._nursery = None
                with trio.CancelScope(shield=True):
                    for pool in self._pools:
                        await pool.aclose()

    async def _identify_server(self, shard: int, connection: RedisConnection) -> None:
        """Check a new connection's server against what we knew of it (one round trip)."""
        key = f"{self.prefix}:epoch"
        # A new token each time: a server that lost the key must not get back the one we knew.
        info, _, epoch = await connection.execute_many(
            [("INFO", "server"), ("SET", key, secrets.token_hex(8), "NX"), ("GET", key)]
        )
        if isinstance(epoch, RedisError):
            raise epoch
        run_id = _run_id(info)
        known = self._servers[shard]
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

    # -- keys and encoding -----------------------------------------------------------------

    def _list_key(self, name: str) -> str:
        return f"{self.prefix}:c:{name}"

    def _stats_key(self, name: str) -> str:
        return f"{self.prefix}:s:{name}"

    def _shard(self, name: str) -> int:
        return consistent_hash(non_local_name(name), len(self.hosts))

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

    async def send_encoded(self, channel: str, data: bytes, *, delay: float = 0) -> None:
        validate_channel_name(channel)
        name = non_local_name(channel)
        pool = self._pool(name)
        capacity = self.get_capacity(name)
        if delay:
            if not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
                raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
            member = b"|".join(
                [
                    secrets.token_hex(8).encode(),
                    str(capacity).encode(),
                    channel.encode(),
                    name.encode(),
                    self._seal(data),
                ]
            )
            await _DELAY_ADD(pool, [f"{self.prefix}:d"], [delay, member])
            self._delay_wakeup.set()
            return
        sent = await _SEND(
            pool,
            [self._list_key(name), self._stats_key(name), self._stats_key("#global#")],
            [capacity, self.expiry, channel, self._seal(data)],
        )
        if not sent:
            raise ChannelFull(
                f"channel {channel!r} is full ({capacity} messages waiting); the message was not sent"
            )

    async def _move_delayed(self, shard: int) -> None:
        pool = self._pools[shard]
        backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        failures = 0
        while True:
            try:
                moved, dropped, wait_ms = await _DELAY_DUE(
                    pool,
                    [f"{self.prefix}:d", self._stats_key("#global#")],
                    [f"{self.prefix}:c:", f"{self.prefix}:s:", self.expiry],
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

    # -- receiving -------------------------------------------------------------------------

    def _take(self, names: list[str]) -> Delivery | None:
        now = trio.current_time()
        for name in names:
            queue = self._local.get(name)
            while queue:
                delivery = queue.popleft()
                if not queue:
                    del self._local[name]
                if delivery[2] > now:
                    return delivery
        return None

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
                deliveries = self._unpack(name, item, ttl)
                if name in self._owned_prefixes:  # own channels' messages go to their own FIFOs
                    usual: list[Delivery] = []
                    for delivery in deliveries:
                        if self._own_target(delivery[0], name) is True:
                            usual.append(delivery)
                        else:
                            self._hand_out(name, [delivery])
                    deliveries = usual
                if deliveries:  # else it expired, could not be read or was not ours: pop the next
                    leftovers = self._hand_out(name, deliveries[1:])
                    if leftovers:  # the rest of a fan-out item: only this process reads it
                        self._local.setdefault(name, deque()).extend(leftovers)
                    return deliveries[0]
        return None

    async def _fetch_own_nowait(self, channel: str) -> Delivery | None:
        # One round trip: take what is queued for the channel's prefix and sort it out here.
        name = non_local_name(channel)
        pool = self._pools[self._shard(name)]
        flat = await _POP_MANY(pool, [self._list_key(name)], [100])
        for index in range(0, len(flat), 3):
            _, ttl, item = flat[index : index + 3]
            leftovers = self._hand_out(name, self._unpack(name, item, ttl))
            if leftovers:
                self._local.setdefault(name, deque()).extend(leftovers)
        return self._take([channel])

    def _drop_own(self, channel: str) -> int:
        held = self._local.pop(channel, None)
        return 0 if held is None else len(held)

    def _waiting(self, names: Sequence[str]) -> int:
        """Receivers waiting on *names*, and on own channels under those that are prefixes."""
        waiting = self._receivers.count(names)
        for name in names:
            if name.endswith("!"):
                waiting += self._receivers.count_under(name)
        return waiting

    def _will_park(self, names: list[str]) -> None:
        names = [non_local_name(name) for name in names]  # an own channel: its prefix's list
        self._own(names)
        by_shard: dict[int, list[str]] = {}
        for name in names:
            by_shard.setdefault(self._shard(name), []).append(name)
        for shard, shard_names in by_shard.items():
            key = (shard, frozenset(shard_names))
            if key not in self._pollers:
                self._pollers.add(key)
                assert self._nursery is not None
                self._nursery.start_soon(self._poll, key)

    async def _poll(self, key: tuple[int, frozenset[str]]) -> None:
        shard, names = key
        pool = self._pools[shard]
        lists = {self._list_key(name): name for name in names}
        keys = tuple(names)
        # Only this process reads its own prefix, so take all that is queued there at once.
        own_prefix = any(name.endswith("!") for name in names)
        backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        failures = 0
        try:
            while self._waiting(keys):
                try:
                    async with _MapErrors(pool.address), pool.dedicated() as connection:
                        while True:
                            waiting = self._waiting(keys)
                            if not waiting:
                                break
                            order = random.sample(list(lists), len(lists))
                            if waiting > 1 or own_prefix:
                                # As many as there are receivers waiting (everything queued, for
                                # our own prefix) in one round trip; block only when empty.
                                flat = await _POP_MANY(
                                    pool, order, [1000 if own_prefix else min(waiting, 100)]
                                )
                                if flat:
                                    for index in range(0, len(flat), 3):
                                        list_key, ttl, item = flat[index : index + 3]
                                        await self._dispatch(
                                            pool, list_key, lists[list_key.decode()], item, ttl
                                        )
                                    continue
                            # TIME runs as soon as BLPOP returns (one connection runs its commands
                            # in order): the item's time to live, by Redis's clock.
                            popped, now = await connection.execute_many(
                                [("BLPOP", *order, BLOCK_SECONDS), ("TIME",)]
                            )
                            if isinstance(popped, RedisError):
                                raise popped
                            if failures:
                                log.info("Redis at %s is back", pool.address)
                                failures = 0
                            if popped is not None:
                                list_key, item = popped
                                ttl = _expires_ms(item) - (int(now[0]) * 1000 + int(now[1]) // 1000)
                                await self._dispatch(pool, list_key, lists[list_key.decode()], item, ttl)
                except ChannelLayerUnavailable as exc:
                    failures += 1
                    if failures == 1:
                        log.warning(
                            "receiving from Redis at %s failed (%s); retrying with backoff",
                            pool.address,
                            exc.__cause__,
                        )
                    await trio.sleep(backoff.compute(failures))
        finally:
            self._pollers.discard(key)

    async def _dispatch(
        self, pool: ConnectionPool, list_key: bytes, name: str, item: bytes, ttl_ms: int
    ) -> None:
        deliveries = self._unpack(name, item, ttl_ms)
        leftovers = self._hand_out(name, deliveries)
        if not leftovers:
            return
        if name.endswith("!") or len(deliveries) > 1:
            # Only this process reads its prefix: keep them here for the next receive.
            self._local.setdefault(name, deque()).extend(leftovers)
        else:
            # The receiver left meanwhile: give the message back, at the head, for anyone.
            with trio.CancelScope(shield=True), contextlib.suppress(RedisError, OSError):
                await pool.execute("LPUSH", list_key, item)

    def _hand_out(self, name: str, deliveries: list[Delivery]) -> list[Delivery]:
        """Give each delivery from list *name* to a parked receiver; return those nobody took.

        A delivery for an own channel goes to its own receiver or waits in its own FIFO here
        (or is dropped: see "Own channels" in :mod:`layers._backend`); it is never returned.
        """
        leftovers = []
        owned = name in self._owned_prefixes
        for delivery in deliveries:
            target = self._own_target(delivery[0], name) if owned else True
            if target is True:
                waiter = self._receivers.claim(delivery[0], name)
                if waiter is None:
                    leftovers.append(delivery)
                else:
                    waiter.wake(delivery)
            elif target is not False:
                waiter = self._receivers.claim_own(delivery[0])
                if waiter is None:
                    self._keep_own(delivery, target)
                else:
                    waiter.wake(delivery)
        return leftovers

    def _keep_own(self, delivery: Delivery, own: OwnChannel) -> None:
        channel = delivery[0]
        held = self._local.get(channel)
        if held is None:
            self._local[channel] = deque([delivery])
            return
        if len(held) >= own.capacity:
            now = trio.current_time()
            while held and held[0][2] <= now:
                held.popleft()
            if len(held) >= own.capacity:
                own.overflowed(channel)
                return
        held.append(delivery)

    def _unpack(self, name: str, item: bytes, ttl_ms: int) -> list[Delivery]:
        """The deliveries in *item*, which has *ttl_ms* left to live by Redis's clock (never
        this host's: the deadline is that much from now on Trio's clock)."""
        if ttl_ms <= 0:
            return []
        deadline = trio.current_time() + ttl_ms / 1000
        _, kind, field, data = item.split(b"|", 3)
        position: tuple[str, int, str] | None = None
        if kind in (b"DH", b"FH"):
            place, data = data.split(b"|", 1)
            in_group, at, in_epoch = place.decode().split(",")
            position = (in_group, int(at), in_epoch)
        try:
            payload = self._open_data(data)
        except Exception:
            log.error("dropped a message on %r that could not be decrypted (wrong or retired key?)", name)
            return []
        if position is None:  # the common case, kept tight
            if kind == b"D":
                return [(field.decode(), decode_message(payload), deadline)]
            return [(name + local, decode_message(payload), deadline) for local in field.decode().split(",")]
        group, offset, epoch = position
        channels = (
            [field.decode()] if kind == b"DH" else [name + local for local in field.decode().split(",")]
        )
        deliveries = []
        for channel in channels:
            message = decode_message(payload)
            message[HISTORY_KEY] = {"group": group, "epoch": epoch, "offset": offset}
            deliveries.append((channel, message, deadline))
        return deliveries

    # -- channels --------------------------------------------------------------------------

    async def new_channel(self, pattern: str) -> str:
        for name in single_reader_names(pattern):  # endless: ends at an unused name
            if not await _command(self._pool(name), "EXISTS", self._list_key(name)):
                break
        return name

    # -- groups ----------------------------------------------------------------------------

    def _group_keys(self, group: str) -> list[str]:
        """The group's zset, capacities, infos and tracked prefixes."""
        p = self.prefix
        return [f"{p}:g:{group}", f"{p}:gc:{group}", f"{p}:gi:{group}", f"{p}:gt:{group}"]

    def _history_keys(self, group: str) -> list[str]:
        return [f"{self.prefix}:h:{group}", f"{self.prefix}:hm:{group}"]

    def _history_args(self, group: str) -> list[Any]:
        """size, ttl (ms), meta ttl (ms), a new epoch token: the history part of a script's ARGV."""
        options = self.history_options(group)
        if options is None:
            return [0, 0, 0, ""]
        ttl = math.ceil(options.ttl * 1000)
        return [options.size, ttl, max(ttl, math.ceil(self.group_expiry * 1000)), secrets.token_hex(6)]

    def _heartbeat_key(self, prefix: str) -> str:
        return f"{self.prefix}:hb:{prefix}"

    def _group_pool(self, group: str) -> ConnectionPool:
        self._require_open()
        return self._pools[consistent_hash(group, len(self.hosts))]

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
        heartbeat = self._heartbeat_key(name) if name.endswith("!") else ""
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
        keys = [
            *self._group_keys(group),
            f"{self.prefix}:pg",
            *self._history_keys(group),
            self._list_key(name),
            self._stats_key(name),
            self._stats_key("#global#"),
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
        together = self._shard(name) == consistent_hash(validate_group_name(group), len(self.hosts))
        hold = side = ""
        if not together:
            hold, side = f"{self.prefix}:hold:{name}", f"{self.prefix}:side:{name}"
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
                    [self._list_key(name), hold, side, self._stats_key(name), self._stats_key("#global#")],
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
                            self._stats_key("#global#"),
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
        args: list[Any] = [self.group_expiry, self._heartbeat_key(""), int(self.presence_events(group)), what]
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
        if len(self.hosts) == 1:
            # One round trip: store, read the members, evict the gone, push one item per list.
            delivered, full, gone, offset, epoch, skipped, left = await _GROUP_SEND(
                self._group_pool(group),
                [*self._group_keys(group), self._stats_key("#global#"), *self._history_keys(group)],
                [
                    f"{self.prefix}:c:",
                    f"{self.prefix}:s:",
                    self.group_expiry,
                    self.expiry,
                    self.capacity,
                    sealed,
                    self._heartbeat_key(""),
                    int(self.presence_events(group)),
                    group,
                    *history_args,
                    *excluded,
                ],
            )
            return _report(delivered, full, gone, offset, epoch, [m.decode() for m in skipped]), left
        # Sharded: store and read the members in one round trip, then one per server holding
        # members (their pushes run concurrently).
        args: list[Any] = [
            self.group_expiry,
            self._heartbeat_key(""),
            int(self.presence_events(group)),
            "send",
        ]
        members, left, gone, epoch, offset, _ = await _GROUP_MEMBERS(
            self._group_pool(group),
            [*self._group_keys(group), *self._history_keys(group)],
            [*args, *history_args, sealed],
        )
        position = f"{group},{offset},{epoch.decode()}" if offset else ""
        by_prefix: dict[str, list[str]] = {}
        for member in members:
            name = member.decode()
            if name not in excluded:
                by_prefix.setdefault(non_local_name(name), []).append(name)
        totals = [0, 0, int(gone)]
        full_channels: list[str] = []
        left = list(left)

        async def push(name: str, group_members: list[str]) -> None:
            kind = "F" if name.endswith("!") else "D"
            result = await _GROUP_PUSH(
                self._pool(name),
                [
                    self._list_key(name),
                    self._stats_key(name),
                    self._stats_key("#global#"),
                    f"{self.prefix}:hold:{name}",
                    f"{self.prefix}:side:{name}",
                ],
                [self.get_capacity(name), self.expiry, kind, ",".join(group_members), sealed, position],
            )
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
            for name, group_members in by_prefix.items():
                nursery.start_soon(push, name, group_members)
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
                    existed = await _HEARTBEAT(pool, [self._heartbeat_key(name) for name in owned], [ttl])
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
        while True:
            await trio.sleep(self.heartbeat / 2)
            try:
                found = await _SWEEP(
                    pool,
                    [f"{self.prefix}:pg", f"{self.prefix}:sweep-lock"],
                    [
                        f"{self.prefix}:",
                        self.group_expiry,
                        self._heartbeat_key(""),
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
        self._local.clear()
        for pool in self._pools:
            cursor = b"0"
            epoch = f"{self.prefix}:epoch".encode()  # kept: a flush is no loss to report later
            heartbeats = f"{self.prefix}:hb:".encode()  # kept: the processes live on
            while True:
                cursor, keys = await _command(
                    pool, "SCAN", cursor, "MATCH", f"{self.prefix}:*", "COUNT", 1000
                )
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
            return LayerStatistics(
                channel=channel,
                messages_count=int(counters[0] or 0),
                messages_pending=int(length),
                messages_max_age=max(0.0, age / 1000) if age >= 0 else 0.0,
                channel_full_count=int(counters[1] or 0),
            )
        messages = full = pending = 0
        max_age = 0.0
        for pool in self._pools:
            counters = await _command(
                pool, "HMGET", self._stats_key("#global#"), "messages_count", "channel_full_count"
            )
            messages += int(counters[0] or 0)
            full += int(counters[1] or 0)
            cursor = b"0"
            while True:
                cursor, keys = await _command(
                    pool, "SCAN", cursor, "MATCH", f"{self.prefix}:c:*", "COUNT", 1000
                )
                for key in keys:
                    length, age = await _LIST_STATS(pool, [key], [self.expiry])
                    pending += int(length)
                    if age >= 0:
                        max_age = max(max_age, age / 1000)
                if cursor in (b"0", 0, "0"):
                    break
        return LayerStatistics(
            channel=None,
            messages_count=messages,
            messages_pending=pending,
            messages_max_age=max_age,
            channel_full_count=full,
        )
