"""Redis Cluster: which node serves a slot, and pools that follow it.

Theory of operation
-------------------
A :class:`ClusterTopology` is one slot map (slot -> the primary serving it), asked of the
cluster's nodes with ``CLUSTER SLOTS`` (Redis >= 3; each node in turn, the last one that
answered first, each within a short timeout) and shared by everything that talks to one
cluster. It is refreshed when it is marked stale: a ``MOVED`` redirect says the map is out of
date (the slot named is noted at once), and a node that cannot be reached is asked about no
more until the others have said who serves its slots now (a failover promotes a replica).

A :class:`ClusterSlotResolver` is the resolver of a :class:`~.connection.ConnectionPool` bound
to one slot: each new connection goes to the node the map names for it. The pool does the
rest as it does for Sentinel: a command answered ``MOVED`` did not run, so the pool retires the
connection and runs it once more where the map (refreshed) says; an ``ASK`` redirect (a slot
being migrated) runs the command once on the node named, behind ``ASKING``. The channel layer
keeps every key of one shard under one hash tag (see :func:`shard_tags`), so each of its
pools serves one slot.

A :class:`ClusterClient` routes each command by the slot of its key instead, over one pool
per node: for callers whose keys are spread over every slot (the session store).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import attrs
import trio
from redis import exceptions as errors
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError, RedisError

from .connection import (
    REDIRECTS,
    ClusterAddress,
    ConnectionPool,
    RedisAddress,
    RedisConnection,
    failure_reason,
    is_ask,
    map_errors,
    node_text,
    redirect_text,
)

__all__ = ["ClusterClient", "ClusterSlotResolver", "ClusterTopology", "key_slot", "shard_tags"]

log = logging.getLogger("layers.redis")

#: Seconds one node gets to answer ``CLUSTER SLOTS`` (a dead host must not hold up the others).
SLOTS_TIMEOUT: Final = 2.0


def shard_tags(count: int) -> list[str]:
    """The hash tags of *count* shards: tag *k* hashes into the *k*-th of *count* equal runs of
    slots, so shards spread as evenly over the primaries as their slots are (with 12, the
    default, exactly for 1, 2, 3, 4 or 6 primaries splitting the slots evenly). The same for
    every process: the first numbers, counting up, that land in each run."""
    tags: list[str] = []
    number = 0
    for shard in range(count):
        low = shard * REDIS_CLUSTER_HASH_SLOTS // count
        high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        while not low <= key_slot(str(number).encode()) < high:
            number += 1
        tags.append(str(number))
        number += 1
    return tags


@attrs.define(eq=False)
class ClusterTopology:
    """The slot map of one cluster (see the module docstring)."""

    address: ClusterAddress
    #: Bumped by every refresh (callers that waited for one in progress need not do another).
    generation: int = 0
    stale: bool = True
    _owners: list[RedisAddress | None] = attrs.field(
        factory=lambda: [None] * REDIS_CLUSTER_HASH_SLOTS, init=False, repr=False
    )
    _order: list[tuple[str, int]] = attrs.field(init=False)
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    def __attrs_post_init__(self) -> None:
        self._order = list(self.address.nodes)

    def owner(self, slot: int) -> RedisAddress | None:
        """The primary serving *slot*, as the map last said."""
        return self._owners[slot]

    def moved(self, slot: int, host: str, port: int) -> None:
        """A ``MOVED`` reply: *slot* is served at *host*:*port* now; the rest of the map may have
        changed as well (a failover moves every slot of a node), so it is refreshed next time."""
        self._owners[slot] = self.address.node(host, port)
        self.stale = True

    async def refresh(self, *, unreachable: RedisAddress | None = None) -> None:
        """Ask the nodes for the slot map (the node *unreachable* last). Raises redis-py's
        :exc:`~redis.exceptions.ConnectionError` naming every node asked and what it did if
        none answered with a map."""
        seen = self.generation
        async with self._lock:
            if self.generation != seen:
                return  # refreshed while we waited
            order = list(self._order)
            if unreachable is not None and (unreachable.host, unreachable.port) in order:
                order.remove((unreachable.host, unreachable.port))
                order.append((unreachable.host, unreachable.port))
            failures: list[str] = []
            for node in order:
                try:
                    ranges = await self._ask(node)
                except RedisError as exc:
                    failures.append(f"{node_text(*node)}: {failure_reason(exc)}")
                    continue
                if not ranges:
                    failures.append(f"{node_text(*node)}: serves no slots (is the cluster set up?)")
                    continue
                self._apply(ranges, node)
                return
            raise ConnectionError(
                f"no node of the Redis cluster {self.address} answered with its slot map ({'; '.join(failures)})"
            )

    async def _ask(self, node: tuple[str, int]) -> list[Any]:
        address = self.address.node(*node)
        failure: RedisError | None = None
        ranges: list[Any] = []
        async with trio.open_nursery() as nursery:
            try:
                with map_errors(address), trio.fail_after(min(SLOTS_TIMEOUT, address.socket_timeout)):
                    connection = await RedisConnection.open(address, nursery)
                    try:
                        ranges = await connection.execute("CLUSTER", "SLOTS")
                    finally:
                        await connection.aclose()
            except errors.ResponseError as exc:
                failure = ConnectionError(f"is not a cluster node ({exc})")
            except RedisError as exc:
                failure = exc
        if failure is not None:
            raise failure
        return ranges

    def _apply(self, ranges: list[Any], asked: tuple[str, int]) -> None:
        owners: list[RedisAddress | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        nodes: dict[tuple[str, int], None] = {asked: None}
        for entry in ranges:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            for index, served_by in enumerate(entry[2:]):
                host = served_by[0].decode() if served_by[0] else ""
                node = (host or asked[0], int(served_by[1]))  # "": the host we asked (Redis's rule)
                nodes[node] = None
                if index == 0:
                    primary = self.address.node(*node)
            owners[start : end + 1] = [primary] * (end - start + 1)
        changed = [
            f"slot {slot} {node_text(old.host, old.port)} -> {node_text(new.host, new.port)}"
            for slot, (old, new) in enumerate(zip(self._owners, owners, strict=True))
            if old is not None and new is not None and old != new
        ]
        if changed and self.generation:
            log.info(
                "Redis Cluster %s: the slot map changed (%d slots, e.g. %s)",
                self.address,
                len(changed),
                changed[0],
            )
        self._owners = owners
        # Next time: the node that answered first, then every node the map names, then the rest.
        self._order = list({**nodes, **dict.fromkeys(self._order)})
        self.generation += 1
        self.stale = False


@attrs.define(eq=False)
class ClusterSlotResolver:
    """The resolver of a pool bound to one *slot* (see the module docstring)."""

    topology: ClusterTopology
    slot: int
    follows_primary: ClassVar[bool] = True

    async def connect(self, nursery: trio.Nursery) -> RedisConnection:
        """A connection to the node serving the slot; one that cannot be reached makes the map
        be asked again (a failover under way?), and the node it names then is tried."""
        if self.topology.stale:
            await self.topology.refresh()
        owner = self._owner()
        try:
            return await RedisConnection.open(owner, nursery)
        except RedisError:
            self.topology.stale = True
            await self.topology.refresh(unreachable=owner)
            if self._owner() == owner:
                raise
        return await RedisConnection.open(self._owner(), nursery)

    def _owner(self) -> RedisAddress:
        owner = self.topology.owner(self.slot)
        if owner is None:
            self.topology.stale = True
            raise errors.ClusterDownError(f"no node of {self.topology.address} serves slot {self.slot} now")
        return owner

    def redirected(self, error: errors.AskError) -> None:
        """A ``MOVED`` (noted in the map) or ``ASK`` (the map stays: the move is not done)."""
        if not is_ask(error):
            self.topology.moved(error.slot_id, error.host, error.port)

    def node(self, host: str, port: int) -> RedisAddress:
        return self.topology.address.node(host, port)


@attrs.define(eq=False)
class ClusterClient:
    """Commands routed by the slot of their first key (``args[1]``), over one pool per node,
    redirects followed: ``await client.execute("GET", key)``. Its connections live in
    *nursery*; ``aclose()`` closes them."""

    address: ClusterAddress
    nursery: trio.Nursery
    topology: ClusterTopology = attrs.Factory(lambda self: ClusterTopology(self.address), takes_self=True)
    _pools: dict[RedisAddress, ConnectionPool] = attrs.Factory(dict)

    def _pool(self, node: RedisAddress) -> ConnectionPool:
        pool = self._pools.get(node)
        if pool is None:
            pool = self._pools[node] = ConnectionPool(node, self.nursery)
        return pool

    async def execute(self, *args: Any) -> Any:
        """One command on the node serving its key's slot; an error reply is raised."""
        slot = key_slot(args[1].encode() if isinstance(args[1], str) else args[1])
        for attempt in range(REDIRECTS + 1):
            if self.topology.stale:
                await self.topology.refresh()
            node = self.topology.owner(slot)
            if node is None:
                self.topology.stale = True
                raise errors.ClusterDownError(f"no node of {self.address} serves slot {slot} now")
            try:
                (result,) = await self._pool(node).execute_many([args])
            except ConnectionError:
                self.topology.stale = True  # a failover? the next command asks the others
                raise
            if is_ask(result):
                result = await self._asking(result, args)
            if isinstance(result, errors.MovedError) and attempt < REDIRECTS:
                log.info("Redis at %s answered %s", node, redirect_text(result))
                self.topology.moved(result.slot_id, result.host, result.port)
                continue
            if isinstance(result, RedisError):
                raise result
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _asking(self, error: errors.AskError, command: Sequence[Any]) -> Any:
        pool = self._pool(self.address.node(error.host, error.port))
        _, result = await pool.execute_many([("ASKING",), command])
        return result

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
