"""Redis Cluster: the URL and dict forms, the key layout, and the layer against real clusters.

The nodes are real (tests/redis_server.py, ``redis-cli --cluster create``). The conformance
suite runs on the session's cluster as the ``redis-cluster`` backend; here: what only a
cluster does (slots moved under an open layer: ``MOVED`` and ``ASK``), the session store, and
the errors. The failover under a running chat and the CLI are in tests/e2e/test_redis_cluster.py.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

import layers
from layers import ChannelLayerUnavailable
from layers.redis import ClusterAddress, RedisChannelLayer, server_address
from layers.redis.cluster import shard_tags
from layers.redis.connection import DEFAULT_CLUSTER_SHARDS, split_urls
from trio_channels.stores import RedisSessionStore

from ..helpers import receive_now
from ..redis_server import RedisCluster, RedisServer, _ask, _free_cluster_port


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- the forms


def test_url_form() -> None:
    address = server_address("redis-cluster://:secret@n1:7000,[::1],n3:7002/?socket_timeout=3&shards=6")
    assert address == ClusterAddress(
        nodes=(("n1", 7000), ("::1", 6379), ("n3", 7002)), password="secret", socket_timeout=3.0, shards=6
    )
    assert str(address) == "redis-cluster://n1:7000,[::1]:6379,n3:7002/"
    tls = server_address("rediss-cluster://app:pw@n1/0?expiry=30")
    assert isinstance(tls, ClusterAddress)
    assert (tls.tls, tls.username, tls.password, tls.shards) == (True, "app", "pw", DEFAULT_CLUSTER_SHARDS)
    node = tls.node("10.0.0.5", 7001)
    assert (node.host, node.port, node.username, node.password, node.tls) == (
        "10.0.0.5",
        7001,
        "app",
        "pw",
        True,
    )


def test_dict_form() -> None:
    expected = ClusterAddress(nodes=(("n1", 7000), ("n2", 7001)), password="pw", tls=True, shards=3)
    config = {"cluster": [("n1", 7000), "n2:7001"], "password": "pw", "ssl": True, "shards": 3}
    assert server_address(config) == expected
    layer = RedisChannelLayer(hosts=[config])
    assert layer.hosts == [expected] and layer.shards == 3
    assert server_address({"cluster": "n1:7000"}) == ClusterAddress(nodes=(("n1", 7000),))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis-cluster:///", "name at least one node"),
        ("redis-cluster://n1:7000/1", "only database 0"),
        ("redis-cluster://n1:port/", "must be a number from 1 to 65535"),
        ("redis-cluster://n1:99999/", "must be a number from 1 to 65535"),
        ("redis-cluster://::1:7000/", "in brackets"),
        ("redis-cluster://n1/?socket_timeout=soon", "option socket_timeout must be a number"),
        ("redis-cluster://n1/?shards=many", "option shards='many' must be a whole number"),
        ("redis-cluster://n1/?shards=0", "shards must be a whole number from 1 to 256"),
        ("redis-cluster://secret@n1/", "put a colon before the password"),
    ],
)
def test_bad_urls_are_one_clear_error(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="Redis Cluster URL") as error:
        layers.from_url(url)
    assert says in str(error.value)
    assert str(error.value).count(repr(url)) == 1
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"cluster": []}, "a list of (host, port)"),
        ({"cluster": [("n1", "7000")]}, "is not (host, port)"),
        ({"cluster": ["n1:7000"], "db": 0}, "unknown key 'db'"),
        ({"cluster": ["n1:7000"], "ssl": "no"}, "'ssl' must be True or False"),
        ({"cluster": ["n1:7000"], "socket_timeout": 0}, "more than 0 seconds"),
        ({"cluster": ["n1:7000"], "shards": 1000}, "from 1 to 256"),
    ],
)
def test_bad_dicts_are_one_clear_error(config: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match="a Redis Cluster host") as error:
        RedisChannelLayer(hosts=[config])
    assert says in str(error.value)


def test_a_cluster_is_the_only_host() -> None:
    assert split_urls("redis-cluster://a:1,b:2/?shards=3") == ["redis-cluster://a:1,b:2/?shards=3"]
    with pytest.raises(ValueError, match=r"one Redis Cluster \(redis-cluster://a:1,b:2/\) and nothing else"):
        layers.from_url("redis-cluster://a:1,b:2/,redis://c:6379/0")
    with pytest.raises(ValueError, match=r"prefix 'app\{x\}' is invalid on a Redis Cluster"):
        RedisChannelLayer(hosts="redis-cluster://a:1/", prefix="app{x}")


def test_shard_tags_spread_evenly_over_the_slots() -> None:
    """Tag k hashes into the k-th equal run of slots; the same list every time."""
    for count in (1, 3, 12, 64):
        tags = shard_tags(count)
        assert len(set(tags)) == count
        for shard, tag in enumerate(tags):
            slot = key_slot(tag.encode())
            assert (
                shard * REDIS_CLUSTER_HASH_SLOTS // count
                <= slot
                < (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // count
            )
    assert shard_tags(12) == shard_tags(12)


def test_single_server_and_sharded_key_names_are_unchanged() -> None:
    """Only a cluster's keys get a hash tag."""
    plain = RedisChannelLayer(hosts=["redis://a:6379/0", "redis://b:6379/0"], prefix="app")
    assert plain._list_key("chat!") == "app:c:chat!"
    assert plain._group_keys("room")[0] == "app:g:room"
    cluster = RedisChannelLayer(hosts="redis-cluster://a:7000/", prefix="app")
    tags = shard_tags(DEFAULT_CLUSTER_SHARDS)
    list_key = cluster._list_key("chat!")
    assert list_key == f"app:{{{tags[cluster._shard('chat!')]}}}:c:chat!"
    assert cluster._stamps_key("chat!x").startswith(list_key.partition(":c:")[0])


# ----------------------------------------------------------------------------- on a real cluster


async def test_the_shards_spread_over_every_primary(redis_cluster: RedisCluster) -> None:
    """Channels sent to land on every primary, each list key on the node serving its slot."""
    prefix = _prefix()
    async with RedisChannelLayer(hosts=redis_cluster.url, prefix=prefix) as layer:
        names = [f"spread-{index}" for index in range(60)]
        for name in names:
            await layer.send(name, {"n": 1})
        by_node: Counter[int] = Counter()
        for node in redis_cluster.nodes:
            keys = _ask(node.port, "KEYS", f"{prefix}:*:c:*")
            by_node[node.port] = len(keys)
            for key in keys:
                assert redis_cluster.owner_port(key.decode()) == node.port
        assert sum(by_node.values()) == len(names)
        assert all(by_node[node.port] > 0 for node in redis_cluster.nodes), by_node
        await layer.flush()


async def test_session_store_on_a_cluster_url(redis_cluster: RedisCluster) -> None:
    """Sessions spread over the nodes: each key where its slot is served."""
    async with RedisSessionStore(redis_cluster.url, prefix=_prefix()) as store:
        keys = [await store.create({"user": index}, ttl=60) for index in range(30)]
        for index, key in enumerate(keys):
            assert await store.load(key) == {"user": index}
        ports = {redis_cluster.owner_port(f"{store.prefix}:{key}") for key in keys}
        assert len(ports) == 3
        for key in keys:
            port = redis_cluster.owner_port(f"{store.prefix}:{key}")
            assert _ask(port, "EXISTS", f"{store.prefix}:{key}") == 1
        await store.delete(keys[0])
        assert await store.load(keys[0]) is None


async def test_unreachable_cluster_fails_entering_naming_every_node() -> None:
    ports = [_free_cluster_port(), _free_cluster_port()]
    url = f"redis-cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/"
    layer = layers.from_url(url)
    with trio.fail_after(20), pytest.raises(ChannelLayerUnavailable) as error:
        async with layer:
            pass
    message = str(error.value)
    assert message.startswith(f"Redis at {url} is unavailable: no node of the Redis cluster {url} answered")
    for port in ports:
        assert f"127.0.0.1:{port}: connection refused" in message


async def test_a_server_that_is_not_a_cluster_node_is_named(redis_servers: list[RedisServer]) -> None:
    port = redis_servers[0].port
    with trio.fail_after(20), pytest.raises(ChannelLayerUnavailable) as error:
        async with layers.from_url(f"redis-cluster://127.0.0.1:{port}/"):
            pass
    assert f"127.0.0.1:{port}: is not a cluster node (" in str(error.value)


# ----------------------------------------------------------------------------- slots that move


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test's own, whose slots it moves."""
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


def _node_id(port: int) -> str:
    return str(_ask(port, "CLUSTER", "MYID").decode())


def _begin_move(cluster: RedisCluster, slot: int, source: int, target: int) -> None:
    _ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", _node_id(source))
    _ask(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", _node_id(target))


def _finish_move(cluster: RedisCluster, slot: int, source: int, target: int) -> None:
    """Migrate the slot's keys, then tell every node who serves it (as redis-cli does)."""
    while keys := _ask(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100"):
        _ask(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    for node in cluster.nodes:
        _ask(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", _node_id(target))


async def test_a_slot_moved_under_an_open_layer_is_followed(
    own_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A shard's slot moved to another node while a layer has connections to the old one:
    sends there are answered MOVED -- so they did not run -- and run once on the new node;
    a receiver parked on a list of that shard gets what is sent after the move."""
    caplog.set_level(logging.INFO, "layers.redis")
    async with RedisChannelLayer(hosts=own_cluster.url, prefix=_prefix()) as layer:
        channel = "moving"
        slot = key_slot(layer._list_key(channel).encode())
        source = own_cluster.owner_port(layer._list_key(channel))
        target = next(node.port for node in own_cluster.nodes if node.port != source)
        await layer.send(channel, {"n": 1})
        assert await receive_now(layer, [channel]) == (channel, {"n": 1})
        await layer.send(channel, {"n": 2})  # waits in the list: moved with the slot
        _begin_move(own_cluster, slot, source, target)
        _finish_move(own_cluster, slot, source, target)
        assert own_cluster.owner_port(layer._list_key(channel)) == target

        await layer.send(channel, {"n": 3})
        got = [await receive_now(layer, [channel]) for _ in range(2)]
        assert got == [(channel, {"n": 2}), (channel, {"n": 3})]
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                received: list[Any] = []

                async def receive() -> None:
                    received.append(await layer.receive([channel]))

                nursery.start_soon(receive)
                await trio.sleep(0.2)
                await layer.send(channel, {"n": 4})
        assert received == [(channel, {"n": 4})]
    moved = [record.getMessage() for record in caplog.records if "MOVED" in record.getMessage()]
    assert any(f"MOVED slot {slot} to 127.0.0.1:{target}" in text for text in moved), moved


async def test_a_slot_being_migrated_is_asked_for_on_the_new_node(own_cluster: RedisCluster) -> None:
    """While a slot migrates, a command on one key that is not on the old node (any more) is
    answered ASK: it runs once on the new node, behind ASKING (the session store's)."""
    async with RedisSessionStore(own_cluster.url, prefix=_prefix()) as store:
        key = f"{store.prefix}:migrating"
        slot = key_slot(key.encode())
        source = own_cluster.owner_port(key)
        target = next(node.port for node in own_cluster.nodes if node.port != source)
        await store.save("before", {"n": 0}, ttl=60)  # connected before the move began
        _begin_move(own_cluster, slot, source, target)
        await store.save("migrating", {"n": 1}, ttl=60)
        count = ("CLUSTER", "COUNTKEYSINSLOT", str(slot))
        assert (_ask(source, *count), _ask(target, *count)) == (0, 1)  # stored on the new node
        assert await store.load("migrating") == {"n": 1}
        _finish_move(own_cluster, slot, source, target)
        assert _ask(target, "EXISTS", key) == 1
        assert await store.load("migrating") == {"n": 1}


async def test_a_script_on_a_slot_being_migrated_waits_then_is_unavailable(own_cluster: RedisCluster) -> None:
    """A script's keys split between two nodes mid-migration: Redis answers TRYAGAIN. The
    layer tries again for a moment, then says the layer is unavailable -- the send did not run --
    and once the migration is done the same send works."""
    async with RedisChannelLayer(hosts=own_cluster.url, prefix=_prefix()) as layer:
        channel = "migrating"
        list_key = layer._list_key(channel)
        slot = key_slot(list_key.encode())
        source = own_cluster.owner_port(list_key)
        target = next(node.port for node in own_cluster.nodes if node.port != source)
        await layer.statistics(channel)  # connected before the move began
        _begin_move(own_cluster, slot, source, target)
        with trio.fail_after(20), pytest.raises(ChannelLayerUnavailable, match=r"TRYAGAIN|rehashing"):
            await layer.send(channel, {"n": 1})
        _finish_move(own_cluster, slot, source, target)
        await layer.send(channel, {"n": 2})
        assert await receive_now(layer, [channel]) == (channel, {"n": 2})
        with pytest.raises(trio.WouldBlock):
            await layer.receive_nowait([channel])


async def test_a_group_send_is_one_push_per_shard_holding_members(redis_cluster: RedisCluster) -> None:
    """Members under three process prefixes and a plain channel, all in one shard (not the
    group's): the send is one script on the group's shard and one on theirs -- not one per
    list. Counted by the nodes themselves (SLOWLOG with a threshold of 0 logs every command)."""
    from layers.redis import scripts
    from layers.redis.layer import _Script

    push_sha = _Script(scripts.GROUP_PUSH).sha.encode()
    async with RedisChannelLayer(hosts=redis_cluster.url, prefix=_prefix()) as layer:
        group = "cost-room"
        shard = (layer._group_shard(group) + 1) % layer.shards
        names = [f"cost{index}" for index in range(10_000)]
        prefixes = [f"{name}!" for name in names if layer._shard(f"{name}!") == shard][:3]
        plain = next(name for name in names if layer._shard(name) == shard)
        members = [f"{prefix}x" for prefix in prefixes] + [plain]
        for member in members:
            await layer.group_add(group, member)
        await layer.send_group(group, {"n": 0})  # the scripts are loaded on every node now
        ports = [node.port for node in redis_cluster.nodes]
        try:
            for port in ports:
                _ask(port, "CONFIG", "SET", "slowlog-log-slower-than", "0")
                _ask(port, "SLOWLOG", "RESET")
            report = await layer.send_group(group, {"n": 1})
            logged = [entry[3] for port in ports for entry in _ask(port, "SLOWLOG", "GET", "-1")]
        finally:
            for port in ports:
                _ask(port, "CONFIG", "SET", "slowlog-log-slower-than", "10000")
        assert report.delivered == 4
        pushes = [args for args in logged if args[:2] == [b"EVALSHA", push_sha]]
        assert len(pushes) == 1, logged
        for member in members:
            assert (await receive_now(layer, [member if "!" not in member else member[:-1]]))[1] == {"n": 0}
