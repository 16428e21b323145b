"""What only the Redis layer promises: round trips, fan-out items, TTLs, encryption, sharding."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

import layers
from layers import ChannelLayerUnavailable
from layers.redis import RedisChannelLayer, consistent_hash
from layers.redis.connection import ConnectionPool, RedisAddress

from ..helpers import assert_nothing, receive_now
from ..redis_server import RedisServer


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(redis_servers: list[RedisServer]) -> AsyncIterator[ConnectionPool]:
    """A plain connection to the first server, to look at what the layer stored."""
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress.from_url(redis_servers[0].url), nursery)
        yield pool
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def _evalsha_calls(admin: ConnectionPool) -> int:
    info = (await admin.execute("INFO", "commandstats")).decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_group_send_to_a_thousand_members_of_one_process(
    redis_servers: list[RedisServer], admin: ConnectionPool
) -> None:
    """1,000 members in one process: one script call, one item in that process's list."""
    prefix = _prefix()
    async with RedisChannelLayer(hosts=[redis_servers[0].url], prefix=prefix) as layer:
        members = [f"interface.p1!c{index}" for index in range(1000)]
        for member in members:
            await layer.group_add("big", member)
        before = await _evalsha_calls(admin)
        await layer.send_group("big", {"text": "to all"})
        assert await _evalsha_calls(admin) - before == 1
        assert await admin.execute("LLEN", f"{prefix}:c:interface.p1!") == 1
        got = set()
        with trio.fail_after(10):
            for _ in members:
                channel, message = await layer.receive(["interface.p1!"])
                assert message == {"text": "to all"}
                got.add(channel)
        assert got == set(members)


async def test_channel_keys_expire(redis_servers: list[RedisServer], admin: ConnectionPool) -> None:
    """A channel's list carries a TTL, so an abandoned channel vanishes from Redis."""
    prefix = _prefix()
    async with RedisChannelLayer(hosts=[redis_servers[0].url], prefix=prefix, expiry=30) as layer:
        await layer.send("abandoned", {"n": 1})
        ttl = await admin.execute("PTTL", f"{prefix}:c:abandoned")
        assert 30_000 < ttl <= 31_000


async def test_encryption_with_key_rotation(redis_servers: list[RedisServer], admin: ConnectionPool) -> None:
    """Messages are encrypted at rest; a layer with a new key first and the old one second
    reads what the old layer wrote; a layer without the key drops it with an error logged."""
    prefix = _prefix()
    url = redis_servers[0].url
    async with RedisChannelLayer(hosts=[url], prefix=prefix, symmetric_encryption_keys=["old-key"]) as old:
        await old.send("secret", {"card": "4111"})
        stored = await admin.execute("LINDEX", f"{prefix}:c:secret", 0)
        assert b"4111" not in stored
        await old.send("secret", {"card": "5500"})
    async with RedisChannelLayer(
        hosts=[url], prefix=prefix, symmetric_encryption_keys=["new-key", "old-key"]
    ) as new:
        assert await receive_now(new, ["secret"]) == ("secret", {"card": "4111"})
    async with RedisChannelLayer(hosts=[url], prefix=prefix, symmetric_encryption_keys=["other"]) as wrong:
        await assert_nothing(wrong, ["secret"])
    with pytest.raises(ValueError, match="a list of keys"):
        RedisChannelLayer(symmetric_encryption_keys="one-key")  # type: ignore[arg-type]


async def test_process_prefix_lives_on_one_shard(redis_servers: list[RedisServer]) -> None:
    """Every channel under one process prefix maps to the same shard; groups hash by name."""
    shards = {consistent_hash(layers.non_local_name(f"interface.abc!c{index}"), 3) for index in range(100)}
    assert len(shards) == 1
    spread = {consistent_hash(f"channel-{index}", 3) for index in range(100)}
    assert spread == {0, 1, 2}


def test_from_url_builds_a_sharded_layer(redis_servers: list[RedisServer]) -> None:
    """layers.from_url takes comma-separated Redis URLs (shards) and query options."""
    urls = ",".join(server.url for server in redis_servers)
    layer = layers.from_url(urls + "?expiry=5&prefix=app")
    assert isinstance(layer, RedisChannelLayer)
    assert len(layer.hosts) == 3 and layer.expiry == 5 and layer.prefix == "app"
    with pytest.raises(ValueError, match="capacity='many' must be a number"):
        layers.from_url("redis://localhost?capacity=many")


async def test_using_a_closed_layer_says_how_to_open_it() -> None:
    """Sending on a layer that was never entered is a clear RuntimeError."""
    with pytest.raises(RuntimeError, match="async with RedisChannelLayer"):
        await RedisChannelLayer().send("x", {})


@pytest.mark.parametrize("skew", [-3600.0, 3600.0], ids=["local-clock-behind", "local-clock-ahead"])
async def test_expiry_ignores_the_local_wall_clock(
    redis_servers: list[RedisServer], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Regression (issue 11): expiry runs on Redis's clock alone. With this host's wall clock an
    hour off, messages (plain, process-specific, delayed, encrypted) are neither dropped early
    nor kept late, and the receive deadline is the TTL Redis computed."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    options = {"hosts": [redis_servers[0].url], "prefix": _prefix(), "expiry": 2}
    async with (
        RedisChannelLayer(**options) as layer,  # type: ignore[arg-type]
        RedisChannelLayer(**options, symmetric_encryption_keys=["k"]) as sealed,  # type: ignore[arg-type]
    ):
        await layer.send("fresh", {"n": 1})
        await layer.send("interface.p1!c1", {"n": 2})
        await layer.send("later", {"n": 3}, delay=0.2)
        with trio.fail_after(5):
            for channels, expected in [(["fresh"], 1), (["interface.p1!"], 2), (["later"], 3)]:
                _, message, deadline = await layer.receive_with_deadline(channels)
                assert message == {"n": expected}
                assert 0 < deadline - trio.current_time() <= 2
        # The sender's clock an hour away from the receiver's: Fernet's own timestamp must not
        # decide either.
        with monkeypatch.context() as other_host:
            other_host.setattr(time, "time", real_time)
            await sealed.send("secret", {"n": 4})
        assert await receive_now(sealed, ["secret"]) == ("secret", {"n": 4})

        await layer.send("stale", {"n": 5})
        await layer.send("interface.p1!c2", {"n": 6})
        await trio.sleep(2.2)
        await assert_nothing(layer, ["stale"])
        await assert_nothing(layer, ["interface.p1!"])


async def _reconnected(layer: RedisChannelLayer, group: str) -> list[str]:
    """The members of *group* once the layer has reconnected (its first attempts may fail)."""
    with trio.fail_after(10):
        while True:
            try:
                return await layer.group_channels(group)
            except ChannelLayerUnavailable:
                await trio.sleep(0.05)


async def test_restart_without_persistence_reports_membership_lost(redis_server: RedisServer) -> None:
    """Regression (issue 11): a Redis restarted without its data is reported through
    membership_lost (one event per loss, naming the server); the groups it held are gone."""
    async with RedisChannelLayer(hosts=[redis_server.url], prefix=_prefix()) as layer:
        await layer.group_add("room", "interface.p1!c1")
        lost = layer.membership_lost
        assert not lost.is_set() and layer.last_membership_lost is None
        redis_server.stop()
        redis_server.start()
        assert await _reconnected(layer, "room") == []
        assert lost.is_set()
        loss = layer.last_membership_lost
        assert loss is not None and loss.server == redis_server.url
        assert "restarted without its data" in loss.reason
        assert not layer.membership_lost.is_set()  # the next loss gets a fresh event


async def test_restart_with_persistence_loses_nothing() -> None:
    """A Redis restarted with its data (AOF) is no loss, and neither is a flush: nothing is
    reported and the groups are still there."""
    server = RedisServer(appendonly=True).start()
    try:
        async with RedisChannelLayer(hosts=[server.url], prefix=_prefix()) as layer:
            await layer.flush()
            await layer.group_add("room", "interface.p1!c1")
            lost = layer.membership_lost
            server.stop()
            server.start()
            assert await _reconnected(layer, "room") == ["interface.p1!c1"]
            assert not lost.is_set() and layer.last_membership_lost is None
    finally:
        server.cleanup()


async def test_a_shard_that_lost_its_data_is_noticed_without_traffic() -> None:
    """With two shards, the one that restarts without its data is reported (by name) within
    seconds even if this process sends nothing to it: every process touches every shard."""
    servers = [RedisServer().start() for _ in range(2)]
    try:
        async with RedisChannelLayer(hosts=[server.url for server in servers], prefix=_prefix()) as layer:
            await layer.statistics()  # connected to both
            lost = layer.membership_lost
            servers[1].stop()
            servers[1].start()
            with trio.fail_after(15):
                await lost.wait()
            assert layer.last_membership_lost is not None
            assert layer.last_membership_lost.server == servers[1].url
    finally:
        for server in servers:
            server.cleanup()
