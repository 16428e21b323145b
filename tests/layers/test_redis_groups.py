"""What only the Redis layer promises about presence and history: one round trip per send,
streams and TTLs, restarts, per-process heartbeats, held lists, encryption at rest."""

from __future__ import annotations

import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

import layers
from layers import HISTORY_KEY, CannotRecover
from layers.redis import RedisChannelLayer, consistent_hash
from layers.redis.connection import ConnectionPool, RedisAddress

from ..e2e.processes import started
from ..helpers import assert_nothing, receive_now
from ..redis_server import RedisServer
from .test_redis_layer import _evalsha_calls, _reconnected

HISTORY = {"room-*": {"size": 100, "ttl": 30}}
EVENTS = {"room-*": {"events": True}}


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(redis_servers: list[RedisServer]) -> AsyncIterator[ConnectionPool]:
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress.from_url(redis_servers[0].url), nursery)
        yield pool
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_a_send_with_history_is_one_script_call(
    redis_servers: list[RedisServer], admin: ConnectionPool
) -> None:
    """Storing and numbering the message and the fan-out to 1,000 members of one process are
    one script call; the stream entry's id is the offset; the stream lives `ttl` after the
    last send, the epoch and offset max(ttl, group expiry)."""
    prefix = _prefix()
    async with RedisChannelLayer(hosts=[redis_servers[0].url], prefix=prefix, history=HISTORY) as layer:
        members = [f"interface.p1!c{index}" for index in range(1000)]
        for member in members:
            await layer.group_add("room-big", member)
        await layer.send_group("room-big", {"text": "first"})
        before = await _evalsha_calls(admin)
        report = await layer.send_group("room-big", {"text": "to all"}, exclude="interface.p1!c0")
        assert await _evalsha_calls(admin) - before == 1
        assert (report.delivered, report.offset) == (999, 2)
        entries = await admin.execute("XRANGE", f"{prefix}:h:room-big", "-", "+")
        assert [entry[0] for entry in entries] == [b"1-0", b"2-0"]
        assert 29_000 < await admin.execute("PTTL", f"{prefix}:h:room-big") <= 30_000
        assert 86_399_000 < await admin.execute("PTTL", f"{prefix}:hm:room-big") <= 86_400_000
        assert await admin.execute("LLEN", f"{prefix}:c:interface.p1!") == 2  # one item per send
        item = await admin.execute("LINDEX", f"{prefix}:c:interface.p1!", 1)
        assert item.split(b"|")[1:4] == [b"FH", item.split(b"|")[2], f"room-big,2,{report.epoch}".encode()]
        got = []
        with trio.fail_after(10):
            for _ in range(1999):
                got.append(await layer.receive(["interface.p1!"]))
        last = [message for channel, message in got if message["text"] == "to all"]
        assert len(last) == 999
        assert last[0][HISTORY_KEY] == {"group": "room-big", "epoch": report.epoch, "offset": 2}


async def test_restart_without_persistence_starts_a_new_epoch(redis_server: RedisServer) -> None:
    """A Redis restarted without its data loses the history: the next message starts a new
    epoch at offset 1, and a client at a position of the old epoch cannot recover."""
    async with RedisChannelLayer(hosts=[redis_server.url], prefix=_prefix(), history=HISTORY) as layer:
        old = await layer.send_group("room-r", {"n": 1})
        redis_server.stop()
        redis_server.start()
        await _reconnected(layer, "room-r")
        new = await layer.send_group("room-r", {"n": 2})
        assert new.offset == 1 and new.epoch != old.epoch
        assert old.epoch is not None
        with pytest.raises(CannotRecover) as info:
            await layer.group_recover("room-r", "interface.p1!c1", (old.epoch, 1))
        assert (info.value.reason, info.value.epoch, info.value.offset) == ("epoch", new.epoch, 1)


async def test_restart_with_persistence_keeps_the_epoch() -> None:
    """With persistence (AOF), history survives a restart: same epoch, offsets go on, and a
    client recovers what was sent before and after the restart."""
    server = RedisServer(appendonly=True).start()
    try:
        async with RedisChannelLayer(hosts=[server.url], prefix=_prefix(), history=HISTORY) as layer:
            await layer.flush()
            first = await layer.send_group("room-p", {"n": 1})
            await layer.send_group("room-p", {"n": 2})
            server.stop()
            server.start()
            await _reconnected(layer, "room-p")
            third = await layer.send_group("room-p", {"n": 3})
            assert (third.epoch, third.offset) == (first.epoch, 3)
            assert first.epoch is not None
            replay = await layer.group_recover("room-p", "interface.p1!c1", (first.epoch, 1))
            assert replay.messages == [(2, {"n": 2}), (3, {"n": 3})]
    finally:
        server.cleanup()


async def test_history_and_info_are_encrypted_at_rest(
    redis_servers: list[RedisServer], admin: ConnectionPool
) -> None:
    """With symmetric_encryption_keys, the stream and the presence info hold ciphertext."""
    prefix = _prefix()
    async with RedisChannelLayer(
        hosts=[redis_servers[0].url], prefix=prefix, history=HISTORY, symmetric_encryption_keys=["k"]
    ) as layer:
        await layer.group_add("room-s", "room-s-member", info={"name": "Alice Secret"})
        await layer.send_group("room-s", {"card": "4111"})
        stored = await admin.execute("XRANGE", f"{prefix}:h:room-s", "-", "+")
        assert b"4111" not in stored[0][1][1]
        assert b"Alice" not in await admin.execute("HGET", f"{prefix}:gi:room-s", "room-s-member")
        assert await layer.group_presence("room-s") == {"room-s-member": {"name": "Alice Secret"}}
        assert (await layer.group_history("room-s")).messages == [(1, {"card": "4111"})]


# ------------------------------------------------------------------ heartbeats


async def _receive_forever(layer: RedisChannelLayer, prefix: str) -> None:
    while True:
        await layer.receive([prefix])


async def _heartbeat_written(pool: ConnectionPool, key: str) -> None:
    """Wait until *key* exists: another task writes it on the server, nothing here can wake us."""
    with trio.fail_after(5):
        while not await pool.execute("EXISTS", key):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_a_closed_process_members_leave_at_once(redis_servers: list[RedisServer]) -> None:
    """The members of a process whose layer closed (it deletes its heartbeat keys) leave at
    the next look at the group, with their leave events, long before their group expiry."""
    options = {"hosts": [redis_servers[0].url], "prefix": _prefix(), "presence": EVENTS, "heartbeat": 60}
    async with RedisChannelLayer(**options) as worker:  # type: ignore[arg-type]
        async with RedisChannelLayer(**options) as interface, trio.open_nursery() as nursery:  # type: ignore[arg-type]
            nursery.start_soon(_receive_forever, interface, "interface.gone!")
            await _heartbeat_written(interface._pools[0], interface._heartbeat_key("interface.gone!"))
            await worker.group_add("room-c", "room-c-watch")
            await worker.group_add("room-c", "interface.gone!a", info={"name": "Ann"})
            nursery.cancel_scope.cancel()
        assert await worker.group_presence("room-c") == {"room-c-watch": None}
        _, join = await receive_now(worker, ["room-c-watch"])
        assert join["presence"] == "join"
        assert await receive_now(worker, ["room-c-watch"]) == (
            "room-c-watch",
            {"presence": "leave", "group": "room-c", "channel": "interface.gone!a", "info": {"name": "Ann"}},
        )


_PROCESS = """
import sys, trio
from layers.redis import RedisChannelLayer

async def main():
    async with RedisChannelLayer(hosts=[sys.argv[1]], prefix=sys.argv[2], heartbeat=float(sys.argv[3])) as layer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer.receive, ["interface.doomed!"])
            while not await layer._pools[0].execute("EXISTS", layer._heartbeat_key("interface.doomed!")):
                await trio.sleep(0.01)
            print("beating", flush=True)
            await trio.sleep_forever()

trio.run(main)
"""


async def test_a_killed_process_members_leave_within_two_heartbeats(redis_servers: list[RedisServer]) -> None:
    """A process killed with SIGKILL cannot clean up: its members leave within 2 x heartbeat
    of its death, leave events included, though nobody touches the group; while it lived
    they stayed, for many heartbeats."""
    heartbeat = 1.0
    prefix = _prefix()
    options = {"hosts": [redis_servers[0].url], "prefix": prefix, "presence": EVENTS, "heartbeat": heartbeat}
    script = [sys.executable, "-c", textwrap.dedent(_PROCESS), redis_servers[0].url, prefix, str(heartbeat)]
    async with RedisChannelLayer(**options) as layer:  # type: ignore[arg-type]
        async with started(script, "beating") as (process, _):
            await layer.group_add("room-k", "interface.doomed!a", info={"name": "Ann"})
            await layer.group_add("room-k", "room-k-watch")
            await trio.sleep(3 * heartbeat)  # alive: its member stays
            assert set(await layer.group_presence("room-k")) == {"interface.doomed!a", "room-k-watch"}
            process.send_signal(signal.SIGKILL)
            await process.wait()
            killed = trio.current_time()
            with trio.fail_after(2 * heartbeat + 2):  # the bound, and slack for a loaded machine
                _, message = await layer.receive(["room-k-watch"])
            assert message == {
                "presence": "leave",
                "group": "room-k",
                "channel": "interface.doomed!a",
                "info": {"name": "Ann"},
            }
            assert trio.current_time() - killed < 2 * heartbeat + 2
        assert await layer.group_presence("room-k") == {"room-k-watch": None}


async def test_a_lapsed_heartbeat_is_reported(
    redis_servers: list[RedisServer], admin: ConnectionPool
) -> None:
    """If this process's heartbeat key vanished (Redis out of reach longer than the heartbeat,
    or evicted), its members may have been removed: membership_lost says so, so the interface
    restarts its WebSockets and they rejoin."""
    async with RedisChannelLayer(hosts=[redis_servers[0].url], prefix=_prefix(), heartbeat=0.6) as layer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive_forever, layer, "interface.me!")
            key = layer._heartbeat_key("interface.me!")
            await _heartbeat_written(admin, key)
            with trio.fail_after(5):
                lost = layer.membership_lost
                await trio.sleep(0.3)  # refreshed at least once more
                assert not lost.is_set()
                await admin.execute("DEL", key)
                await lost.wait()
            loss = layer.last_membership_lost
            assert loss is not None and "heartbeat for interface.me! lapsed" in loss.reason
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ recovery across servers


async def test_an_abandoned_hold_is_released_by_the_next_send(
    redis_servers: list[RedisServer], admin: ConnectionPool
) -> None:
    """A recovery across servers holds the member's list while it runs; if its process dies
    in between, the next group send releases what the hold kept back, in order."""
    prefix = _prefix()
    group = next(f"room-h{i}" for i in range(100) if consistent_hash(f"room-h{i}", 3) != 0)
    member = next(f"interface.h{i}!c" for i in range(100) if consistent_hash(f"interface.h{i}!", 3) == 0)
    name = member[: member.index("!") + 1]
    hosts = [server.url for server in redis_servers]
    async with RedisChannelLayer(hosts=hosts, prefix=prefix, history=HISTORY) as layer:
        await layer.group_add(group, member)
        await admin.execute("SET", f"{prefix}:hold:{name}", "1", "PX", 300)  # a recovery that died
        await layer.send_group(group, {"n": 1})
        await assert_nothing(layer, [name], wait=0.1)  # held back
        await trio.sleep(0.3)  # the hold lapsed; nobody lifted it
        await layer.send_group(group, {"n": 2})
        got = [(await receive_now(layer, [name]))[1]["n"] for _ in range(2)]
        assert got == [1, 2]
        assert not await admin.execute("EXISTS", f"{prefix}:side:{name}")


async def test_a_flush_or_a_restart_is_not_reported_as_a_lapsed_heartbeat(
    redis_server: RedisServer,
) -> None:
    """A flush keeps the heartbeat keys (the processes live on: nothing is reported), and a
    Redis that restarted without its data is reported as that, not also as a lapse."""
    async with RedisChannelLayer(hosts=[redis_server.url], prefix=_prefix(), heartbeat=0.6) as layer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive_forever, layer, "interface.me!")
            await _heartbeat_written(layer._pools[0], layer._heartbeat_key("interface.me!"))
            lost = layer.membership_lost
            await layer.flush()
            await trio.sleep(0.5)  # two more beats
            assert not lost.is_set(), layer.last_membership_lost
            redis_server.stop()
            redis_server.start()
            with trio.fail_after(10):
                await lost.wait()
            await trio.sleep(0.5)  # the beats after the restart
            loss = layer.last_membership_lost
            assert loss is not None and "restarted without its data" in loss.reason
            nursery.cancel_scope.cancel()


def test_heartbeat_in_the_url() -> None:
    """The Redis layer's URL takes heartbeat= (seconds); a bad value names it."""
    assert layers.from_url("redis://localhost:6379/0?heartbeat=5").heartbeat == 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="heartbeat='soon' must be a number"):
        layers.from_url("redis://localhost:6379/0?heartbeat=soon")
    with pytest.raises(ValueError, match="heartbeat must be a positive number of seconds, got 0"):
        RedisChannelLayer(heartbeat=0)
