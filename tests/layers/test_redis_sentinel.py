"""Redis Sentinel: the URL and dict forms, and the layer against real sentinels.

The processes are real (tests/redis_server.py): a primary, a replica and three sentinels. The
failover under a running chat, and the CLI, are in tests/e2e/test_redis_sentinel.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
from redis import exceptions as errors
from redis.exceptions import ConnectionError

import layers
from layers import ChannelLayerUnavailable
from layers.redis import RedisChannelLayer, SentinelAddress, server_address
from layers.redis.connection import ConnectionPool, RedisAddress, _error_reply, split_urls
from trio_channels.stores import RedisSessionStore

from ..helpers import assert_nothing, receive_now
from ..redis_server import RedisSentinel, RedisServer, SentinelSet, _free_port


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- the forms


def test_url_form() -> None:
    address = server_address("redis+sentinel://:secret@s1:26380,[::1],s3/my%2Fservice/2?socket_timeout=3")
    assert address == SentinelAddress(
        sentinels=(("s1", 26380), ("::1", 26379), ("s3", 26379)),
        service_name="my/service",
        db=2,
        password="secret",
        socket_timeout=3.0,
    )
    assert str(address) == "redis+sentinel://s1:26380,[::1]:26379,s3:26379/my%2Fservice/2"
    tls = server_address(
        "rediss+sentinel://app:pw@s1/mymaster?sentinel_password=spw&sentinel_username=sentry"
        "&sentinel_socket_timeout=0.5&expiry=30"
    )
    assert isinstance(tls, SentinelAddress)
    assert (tls.tls, tls.db, tls.username, tls.password) == (True, 0, "app", "pw")
    assert (tls.sentinel_username, tls.sentinel_password, tls.sentinel_socket_timeout) == (
        "sentry",
        "spw",
        0.5,
    )
    primary = tls.primary("10.0.0.5", 6380)
    assert primary == RedisAddress(host="10.0.0.5", port=6380, username="app", password="pw", tls=True)
    assert tls.sentinel("s1", 26379).password == "spw"


def test_dict_form_takes_channels_redis_and_redis_py_names() -> None:
    """channels_redis's keys (master_name, sentinel_kwargs) and redis-py's (service_name) and
    the flat sentinel_* ones: the same address."""
    expected = SentinelAddress(
        sentinels=(("s1", 26379), ("s2", 26380)),
        service_name="mymaster",
        db=1,
        password="pw",
        tls=True,
        sentinel_password="spw",
        sentinel_socket_timeout=1.5,
    )
    common: dict[str, Any] = {"db": 1, "password": "pw", "ssl": True}
    assert (
        server_address(
            {
                "sentinels": [("s1", 26379), "s2:26380"],
                "master_name": "mymaster",
                "sentinel_kwargs": {"password": "spw", "socket_timeout": 1.5},
                **common,
            }
        )
        == expected
    )
    assert (
        server_address(
            {
                "sentinels": (("s1", 26379), ("s2", 26380)),
                "service_name": "mymaster",
                "sentinel_password": "spw",
                "sentinel_socket_timeout": 1.5,
                **common,
            }
        )
        == expected
    )
    one = server_address({"sentinels": ("s1", 26379), "master_name": "m"})
    assert isinstance(one, SentinelAddress) and one.sentinels == (("s1", 26379),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "the service name is missing"),
        ("redis+sentinel://s1:26379/", "the service name is missing"),
        ("redis+sentinel:///mymaster/0", "name at least one sentinel"),
        ("redis+sentinel://s1:26379/mymaster/zero", "the database 'zero' must be a number"),
        ("redis+sentinel://s1:26379/mymaster/0/extra", "/SERVICE_NAME or /SERVICE_NAME/DB"),
        ("redis+sentinel://s1:port/mymaster", "must be a number from 1 to 65535"),
        ("redis+sentinel://s1:99999/mymaster", "must be a number from 1 to 65535"),
        ("redis+sentinel://::1:26379/mymaster", "in brackets"),
        ("redis+sentinel://s1/mymaster?socket_timeout=soon", "option socket_timeout must be a number"),
        ("redis+sentinel://secret@s1/mymaster", "put a colon before the password"),
    ],
)
def test_bad_urls_are_one_clear_error(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="Redis Sentinel URL") as error:
        server_address(url)
    assert says in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"master_name": "m"}, "needs 'sentinels'"),
        ({"sentinels": [], "master_name": "m"}, "needs 'sentinels'"),
        ({"sentinels": [("s1", "26379")], "master_name": "m"}, "is not (host, port)"),
        ({"sentinels": [("s1", 26379)]}, "needs 'master_name'"),
        ({"sentinels": [("s1", 26379)], "master_name": "m", "service_name": "m"}, "not both"),
        ({"sentinels": [("s1", 26379)], "master_name": "m", "hosts": []}, "unknown key 'hosts'"),
        ({"sentinels": [("s1", 26379)], "master_name": ""}, "non-empty str"),
        ({"sentinels": [("s1", 26379)], "master_name": "m", "db": -1}, "database must be a number"),
        ({"sentinels": [("s1", 26379)], "master_name": "m", "ssl": "no"}, "'ssl' must be True or False"),
        ({"sentinels": [("s1", 26379)], "master_name": "m", "socket_timeout": 0}, "more than 0 seconds"),
        ({"sentinels": [("s1", 26379)], "master_name": "m", "sentinel_kwargs": {"db": 1}}, "takes username"),
        (
            {
                "sentinels": [("s1", 26379)],
                "master_name": "m",
                "sentinel_password": "a",
                "sentinel_kwargs": {"password": "b"},
            },
            "given twice",
        ),
    ],
)
def test_bad_dicts_are_one_clear_error(config: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as error:
        RedisChannelLayer(hosts=[config])
    assert says in str(error.value)


def test_comma_separated_urls_keep_a_sentinel_host_list_together() -> None:
    assert split_urls("redis+sentinel://a:1,b:2/m/0, redis://c:6379/0,rediss+sentinel://d,e/n") == [
        "redis+sentinel://a:1,b:2/m/0",
        "redis://c:6379/0",
        "rediss+sentinel://d,e/n",
    ]
    # Outside a sentinel list a bare host is not a URL, and says so.
    with pytest.raises(ValueError, match="b:6379"):
        layers.from_url("redis://a:6379/0,b:6379")
    layer = layers.from_url("redis+sentinel://a:1,b:2/m/0,redis+sentinel://c:3/n/1?expiry=7&prefix=app")
    assert isinstance(layer, RedisChannelLayer)
    assert [str(host) for host in layer.hosts] == ["redis+sentinel://a:1,b:2/m/0", "redis+sentinel://c:3/n/1"]
    assert (layer.expiry, layer.prefix) == (7, "app")


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        # Redis 6.2's words for a script whose write met a replica (Redis 7 sends READONLY as is)
        (
            "ERR Error running script (call to f_4cdfe4582c53b2731bbec456a3b294289c611e3b): "
            "@user_script:1: @user_script: 1: -READONLY You can't write against a read only replica. ",
            errors.ReadOnlyError,
        ),
        (
            "ERR Error running script (call to f_00): @user_script:3: @user_script: 3: "
            "-OOM command not allowed when used memory > 'maxmemory'. ",
            errors.OutOfMemoryError,
        ),
        (
            "ERR Error running script (call to f_00): @user_script:3: user_script:3: oops",
            errors.ResponseError,
        ),
    ],
)
def test_a_redis_6_script_error_keeps_the_class_of_what_failed(
    reply: str, error_class: type[errors.RedisError]
) -> None:
    """So a script that met a demoted primary on Redis 6.2 is retried like any READONLY."""
    error = _error_reply(reply)
    assert type(error) is error_class
    assert "Error running script" in str(error)


# ----------------------------------------------------------------------------- real sentinels


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels for this module's tests that fail nothing over."""
    topology = SentinelSet(service="shared").start(watched=False)
    try:
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
def own_sentinels() -> Iterator[SentinelSet]:
    """A topology of this test's own, to break."""
    topology = SentinelSet().start(watched=False)
    try:
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
async def primary(sentinels: SentinelSet) -> AsyncIterator[ConnectionPool]:
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress(host="127.0.0.1", port=sentinels.primary.port), nursery)
        yield pool
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_layer_on_sentinel_url_uses_the_primary(
    sentinels: SentinelSet, primary: ConnectionPool
) -> None:
    """From the URL and from the dict form: sends, groups and receives go to the primary."""
    prefix = _prefix()
    ports = [sentinel.port for sentinel in sentinels.sentinels]
    dict_form = {"sentinels": [("127.0.0.1", port) for port in ports], "master_name": "shared", "db": 0}
    for hosts in ([sentinels.url], [dict_form]):
        async with RedisChannelLayer(hosts=hosts, prefix=prefix) as layer:
            await layer.group_add("room", "member")
            await layer.send_group("room", {"text": "hello"})
            assert await receive_now(layer, ["member"]) == ("member", {"text": "hello"})
            await layer.send("queued", {"n": 1})
            assert await primary.execute("LLEN", f"{prefix}:c:queued") == 1
            assert await receive_now(layer, ["queued"]) == ("queued", {"n": 1})
            await layer.flush()


async def test_sharding_over_two_sentinel_services() -> None:
    """A list of Sentinel-managed services shards like a list of servers."""
    sets = [SentinelSet(service=f"shard{index}", count=1).start(watched=False) for index in range(2)]
    try:
        url = ",".join(topology.url for topology in sets)
        prefix = _prefix()
        async with layers.from_url(url, prefix=prefix) as layer:
            assert isinstance(layer, RedisChannelLayer)
            names = [f"channel{index}" for index in range(40)]
            for name in names:
                await layer.send(name, {"name": name})
            for name in names:
                assert await receive_now(layer, [name]) == (name, {"name": name})
            async with trio.open_nursery() as nursery:
                pools = [
                    ConnectionPool(RedisAddress(host="127.0.0.1", port=topology.primary.port), nursery)
                    for topology in sets
                ]
                counts = [
                    await pool.execute("HGET", f"{prefix}:s:#global#", "messages_count") for pool in pools
                ]
                for pool in pools:
                    await pool.aclose()
        assert all(int(count) > 0 for count in counts), counts  # both shards got some
        assert sum(int(count) for count in counts) == len(names)
    finally:
        for topology in sets:
            topology.cleanup()


async def test_session_store_on_a_sentinel_url(sentinels: SentinelSet, primary: ConnectionPool) -> None:
    async with RedisSessionStore(sentinels.url, prefix=_prefix()) as store:
        key = await store.create({"user": 7}, ttl=60)
        assert await store.load(key) == {"user": 7}
        assert await primary.execute("EXISTS", f"{store.prefix}:{key}") == 1


async def test_readonly_after_a_switch_reresolves_and_sends_once(
    own_sentinels: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary demoted by hand (REPLICAOF) under an open layer: a send there is answered
    READONLY -- so it did not run -- and the layer asks the sentinels again and sends it once,
    on the new primary; a receiver blocked on the old primary (ended with UNBLOCKED) follows
    too; no membership is reported lost (the new primary replicated the data)."""
    caplog.set_level(logging.INFO, "layers.redis")
    prefix = _prefix()
    async with RedisChannelLayer(hosts=[own_sentinels.url], prefix=prefix) as layer:
        await layer.group_add("room", "member")
        await layer.send("before", {"n": 0})
        assert await receive_now(layer, ["before"]) == ("before", {"n": 0})
        received: list[tuple[str, dict[str, Any]]] = []
        async with trio.open_nursery() as nursery:

            async def wait_for_one() -> None:
                received.append(await receive_now(layer, ["blocked"], timeout=20))

            nursery.start_soon(wait_for_one)
            await trio.sleep(0.3)  # its BLPOP is on the old primary now
            old_port = own_sentinels.primary.port
            own_sentinels.switch_by_hand()
            with trio.fail_after(10):
                await layer.send("after", {"n": 1})  # READONLY there; run once on the new primary
                await layer.send("blocked", {"n": 2})
                await layer.send_group("room", {"n": 3})
        assert received == [("blocked", {"n": 2})]
        assert await receive_now(layer, ["after"]) == ("after", {"n": 1})
        await assert_nothing(layer, ["after"])  # not twice
        assert await receive_now(layer, ["member"]) == ("member", {"n": 3})  # the group survived
        assert layer.last_membership_lost is None
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"127.0.0.1:{old_port}/0 answered ReadOnlyError" in message for message in messages), messages
    assert any(f"is now 127.0.0.1:{own_sentinels.primary.port}" in message for message in messages), messages


async def test_a_sentinel_naming_a_replica_is_not_followed() -> None:
    """ROLE is checked: a sentinel that names a replica as the primary (stale) leads nowhere,
    and the error says so; a later sentinel in the list that knows better is followed."""
    primary = RedisServer().start()
    replica = RedisServer(arguments=("--replicaof", "127.0.0.1", str(primary.port))).start()
    stale = RedisSentinel(replica.port, "svc", quorum=1).start()
    good = RedisSentinel(primary.port, "svc", quorum=1).start()
    try:
        address = f"redis+sentinel://127.0.0.1:{stale.port}/svc/0"
        async with RedisChannelLayer(hosts=[address], prefix=_prefix()) as layer:
            with pytest.raises(ChannelLayerUnavailable) as error:
                await layer.send("c", {"n": 1})
        assert (
            f"127.0.0.1:{replica.port} (named by 127.0.0.1:{stale.port}): is a slave, not the primary"
            in str(error.value)
        )
        both = f"redis+sentinel://127.0.0.1:{stale.port},127.0.0.1:{good.port}/svc/0"
        async with RedisChannelLayer(hosts=[both], prefix=_prefix()) as layer:
            await layer.send("c", {"n": 1})
            assert await receive_now(layer, ["c"]) == ("c", {"n": 1})
    finally:
        for process in (good, stale, replica, primary):
            process.cleanup()


async def test_unreachable_sentinels_fail_entering_naming_them() -> None:
    ports = [_free_port(), _free_port()]
    url = f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/mymaster/0"
    layer = layers.from_url(url)
    with trio.fail_after(20), pytest.raises(ChannelLayerUnavailable) as error:
        async with layer:
            pass
    message = str(error.value)
    assert message.startswith(f"Redis at {url} is unavailable: no sentinel named a primary for 'mymaster'")
    for port in ports:
        assert f"127.0.0.1:{port}: connection refused" in message
    with pytest.raises(RuntimeError, match="not open"):
        await layer.send("c", {"n": 1})


async def test_unknown_service_fails_entering_naming_it(sentinels: SentinelSet) -> None:
    url = sentinels.url.replace("/shared/", "/nosuchservice/")
    with trio.fail_after(20), pytest.raises(ChannelLayerUnavailable) as error:
        async with layers.from_url(url):
            pass
    port = sentinels.sentinels[0].port
    assert f"127.0.0.1:{port}: does not know 'nosuchservice'" in str(error.value)


async def test_everything_down_every_command_is_unavailable_naming_the_sentinels(
    own_sentinels: SentinelSet,
) -> None:
    """Sentinels and servers gone while the layer is open: every operation raises
    ChannelLayerUnavailable naming the sentinels (a receive waits, as on plain Redis)."""
    async with RedisChannelLayer(hosts=[own_sentinels.url], prefix=_prefix()) as layer:
        await layer.send("c", {"n": 1})
        for process in [*own_sentinels.sentinels, own_sentinels.replica, own_sentinels.primary]:
            assert process is not None
            process.stop()
        operations: dict[str, Callable[[], Awaitable[Any]]] = {
            "send": lambda: layer.send("c", {"n": 2}),
            "receive_nowait": lambda: layer.receive_nowait(["c"]),
            "new_channel": lambda: layer.new_channel("reply.?"),
            "group_add": lambda: layer.group_add("g", "c"),
            "group_discard": lambda: layer.group_discard("g", "c"),
            "send_group": lambda: layer.send_group("g", {"n": 3}),
            "group_channels": lambda: layer.group_channels("g"),
            "statistics": layer.statistics,
            "flush": layer.flush,
        }
        for name, operation in operations.items():
            with trio.fail_after(20), pytest.raises(ChannelLayerUnavailable) as error:
                await operation()
            message = str(error.value)
            assert message.startswith(f"Redis at {own_sentinels.url} is unavailable"), (name, message)
        # The last one went through the sentinels (the first ones may see the lost connection).
        for sentinel in own_sentinels.sentinels:
            assert f"127.0.0.1:{sentinel.port}: connection refused" in message
        with trio.move_on_after(0.5):
            await layer.receive(["c"])
            raise AssertionError("a receive returned while everything was down")


async def test_a_pool_drops_its_connections_to_the_old_primary(own_sentinels: SentinelSet) -> None:
    """Once a new connection lands on a new primary, the pool's idle connections to the old
    one are retired: a blocking command then never goes to the old primary."""
    address = server_address(own_sentinels.url)
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(address, nursery)
        await pool.execute("SET", "k", "v")
        async with pool.dedicated() as connection:
            assert connection.address.port == own_sentinels.primary.port
        own_sentinels.switch_by_hand()
        await pool.execute("SET", "k", "w")  # READONLY, then run on the new primary
        async with pool.dedicated() as connection:
            assert connection.address.port == own_sentinels.primary.port
            assert await connection.execute("GET", "k") == b"w"
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_callers_queued_behind_a_failed_resolution_fail_with_it() -> None:
    """Ten commands at once while the only sentinel accepts but never answers: one of them
    waits for it (sentinel_socket_timeout), the other nine get the same error right after,
    rather than each asking the silent sentinel in turn (ten timeouts in a row)."""
    accepted = 0

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, silent, listeners)
        address = SentinelAddress(
            sentinels=(("127.0.0.1", port),), service_name="m", sentinel_socket_timeout=0.5
        )
        pool = ConnectionPool(address, nursery)
        failures: list[Exception] = []

        async def command() -> None:
            try:
                await pool.execute("PING")
            except ConnectionError as exc:
                failures.append(exc)

        with trio.fail_after(20):
            async with trio.open_nursery() as callers:
                for _ in range(10):
                    callers.start_soon(command)
        nursery.cancel_scope.cancel()
    assert len(failures) == 10
    assert all(f"127.0.0.1:{port}: no answer in time" in str(failure) for failure in failures), failures
    assert accepted == 1


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@localhost:6379/db",
        "redis+sentinel://:s3cret@localhost:26379/",
        "redis-cluster://user:s3cret@localhost:7000/5",
    ],
)
def test_a_bad_url_error_does_not_show_its_password(url: str) -> None:
    """The error names the URL, with its password as ***: start-up errors end up in logs."""
    with pytest.raises(ValueError) as error:
        server_address(url)
    assert "s3cret" not in str(error.value)
    assert ":***@localhost" in str(error.value)
