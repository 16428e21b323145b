"""The Redis layer's locality, round trips and per-channel capacity (issue 12).

Two ``RedisChannelLayer`` objects on one server stand for two processes: nothing but Redis
connects them. What Redis saw is read from ``INFO commandstats``; what a layer asked of it from
its own request counter (one per round trip), never from MONITOR.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import pytest
import trio
import trio.testing
from hypothesis import strategies as st

from layers import ChannelFull
from layers.redis import RedisChannelLayer
from layers.redis.connection import ConnectionPool, RedisAddress

from ..helpers import assert_nothing, receive_now
from ..redis_server import RedisServer
from .conftest import LEGACY_BINARY

BINARIES = ["newest", "6.2"] if LEGACY_BINARY is not None else ["newest"]


@pytest.fixture(params=BINARIES)
def server(request: pytest.FixtureRequest) -> RedisServer:
    """A server of each redis-server binary there is (Redis 7 has BLMPOP, 6.2 does not)."""
    if request.param == "newest":
        servers: list[RedisServer] = request.getfixturevalue("redis_servers")
    else:
        servers = request.getfixturevalue("legacy_redis_servers")
    return servers[0]


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[ConnectionPool]:
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress.from_url(server.url), nursery)
        yield pool
        await pool.aclose()
        nursery.cancel_scope.cancel()


@pytest.fixture
def options(server: RedisServer) -> dict[str, Any]:
    """Layer options: this server, a prefix of the test's own."""
    return {"hosts": [server.url], "prefix": f"t{uuid.uuid4().hex[:12]}", "capacity": 5, "expiry": 2}


async def _calls(admin: ConnectionPool) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    info = (await admin.execute("INFO", "commandstats")).decode()
    calls = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            calls[name] = int(stats.split("calls=")[1].split(",")[0])
    return calls


def _delta(before: dict[str, int], after: dict[str, int], *names: str) -> int:
    return sum(after.get(name, 0) - before.get(name, 0) for name in names)


#: Commands that store messages (Redis counts those its scripts run too: a send's RPUSH).
WRITES = ("rpush", "lpush")


async def _parked(
    layer: RedisChannelLayer, nursery: trio.Nursery, names: list[str], count: int = 1
) -> list[Any]:
    got: list[Any] = []

    async def receiver() -> None:
        for _ in range(count):
            got.append(await layer.receive(names))

    nursery.start_soon(receiver)
    # Blocked for a while, not only waiting for a reply: its poller's first pop is back.
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    return got


async def test_a_hand_over_in_process_never_touches_redis(
    options: dict[str, Any], admin: ConnectionPool
) -> None:
    """A message for a receiver parked in the sending process is handed over there: Redis sees
    no send (issue 12, "an idle local worker takes a local interface's message directly")."""
    async with RedisChannelLayer(**options) as layer:
        before = await _calls(admin)
        with trio.fail_after(10):
            for number in range(20):
                async with trio.open_nursery() as nursery:
                    got = await _parked(layer, nursery, ["websocket.receive", "http.request"])
                    message = {"n": number}
                    await layer.send_owned("websocket.receive", message)
                assert got == [("websocket.receive", message)] and got[0][1] is message
        assert _delta(before, await _calls(admin), *WRITES) == 0


async def test_own_prefix_keeps_this_process_s_sends_here(
    options: dict[str, Any], admin: ConnectionPool
) -> None:
    """Sends from this process to channels under its own prefix never reach Redis, parked
    receiver or not; a send from another process still arrives (through Redis), and leaving
    ``own_prefix`` drops what is held."""
    async with RedisChannelLayer(**options) as interface, RedisChannelLayer(**options) as worker:
        with interface.own_prefix("iface.p!"):
            before = await _calls(admin)
            with trio.fail_after(10):
                for number in range(3):
                    await interface.send_owned("iface.p!a", {"n": number})
                async with trio.open_nursery() as nursery:
                    got = await _parked(interface, nursery, ["iface.p!"], count=4)
                    await interface.send("iface.p!b", {"n": "parked"})
            assert _delta(before, await _calls(admin), *WRITES) == 0
            assert got == [("iface.p!a", {"n": n}) for n in range(3)] + [("iface.p!b", {"n": "parked"})]
            await worker.send("iface.p!c", {"n": "remote"})
            assert await receive_now(interface, ["iface.p!"]) == ("iface.p!c", {"n": "remote"})
            await interface.send("iface.p!d", {"n": "held"})
        await assert_nothing(interface, ["iface.p!"])
        assert await admin.execute("LLEN", f"{options['prefix']}:c:iface.p!") == 0


async def test_a_busy_receiver_here_leaves_the_message_to_other_processes(options: dict[str, Any]) -> None:
    """Locality never starves the rest: when no receiver waits in the sending process, the
    message goes to Redis and a receiver of another process gets it; when one waits here
    again, it gets the next one."""
    async with RedisChannelLayer(**options) as here, RedisChannelLayer(**options) as there:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                remote = await _parked(there, nursery, ["work"])
                await here.send("work", {"n": 1})  # nobody waits here
            assert remote == [("work", {"n": 1})]
            async with trio.open_nursery() as nursery:
                remote = await _parked(there, nursery, ["work"])
                local = await _parked(here, nursery, ["work"])
                await here.send("work", {"n": 2})
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert local == [("work", {"n": 2})] and remote == []
                await there.send("work", {"n": 3})  # from the other side: its receiver's turn
            assert remote == [("work", {"n": 3})]


async def test_a_hand_over_never_overtakes_a_message_of_ours_in_redis(options: dict[str, Any]) -> None:
    """Regression: a message sent while nobody waited here went to Redis; a receiver that parks
    here right after, while its poller's pop is on its way, must get it before the next one,
    which therefore goes through Redis too (FIFO per channel, issue 12)."""
    async with RedisChannelLayer(**options) as layer:
        for attempt in range(10):
            await layer.send("fifo", {"n": 1})
            got: list[Any] = []

            async def receiver(got: list[Any]) -> None:
                for _ in range(2):
                    got.append(await layer.receive(["fifo"]))

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receiver, got)
                    while "fifo" not in layer._receivers:  # parked, its poller not back yet
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    await layer.send("fifo", {"n": 2})
            assert got == [("fifo", {"n": 1}), ("fifo", {"n": 2})], attempt


async def test_a_reply_channel_answered_elsewhere_is_answered_through_redis(
    options: dict[str, Any], admin: ConnectionPool
) -> None:
    """Once this process sent a message through Redis whose consumer may answer on one of our
    own reply channels from another process, our own replies to that channel go through Redis
    too (queued behind that process's), so enforce_ordering's successor here cannot overtake
    its predecessor's reply from there. A reply channel whose inputs stayed here is answered
    here."""
    async with RedisChannelLayer(**options) as interface, RedisChannelLayer(**options) as worker:
        with interface.own_prefix("ans.p!"):
            await interface.send_owned("work", {"reply_channel": "ans.p!x", "order": 1})  # to Redis
            await receive_now(worker, ["work"])
            await worker.send("ans.p!x", {"text": "from there"})
            before = await _calls(admin)
            await interface.send("ans.p!x", {"text": "from here"})
            assert _delta(before, await _calls(admin), "rpush") == 2  # the item and its stamp
            await interface.send("ans.p!y", {"text": "only here"})
            assert _delta(before, await _calls(admin), "rpush") == 2
            got = [await receive_now(interface, ["ans.p!"]) for _ in range(3)]
        assert [text for channel, m in got if channel == "ans.p!x" for text in [m["text"]]] == [
            "from there",
            "from here",
        ]


async def test_capacity_per_channel_across_processes(options: dict[str, Any], admin: ConnectionPool) -> None:
    """A reply channel's capacity is its own, also when the sender is another process: a full
    ``p!a`` refuses, ``p!b`` under the same prefix does not; once the owner took one of
    ``p!a``'s, a waiting send gets in. The count lives in Redis with a TTL."""
    async with RedisChannelLayer(**options) as owner, RedisChannelLayer(**options) as worker:
        with owner.own_prefix("cap.p!"):
            for number in range(5):
                await worker.send("cap.p!a", {"n": number})
            with pytest.raises(ChannelFull, match=r"'cap\.p!a' is full"):
                await worker.send("cap.p!a", {"n": 5})
            await worker.send("cap.p!b", {"n": "b"})
            ttl = await admin.execute("PTTL", f"{options['prefix']}:n:cap.p!a")
            assert 0 < ttl <= 3000
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    got = await _parked(owner, nursery, ["cap.p!"], count=1)
                assert got[0][0] in ("cap.p!a", "cap.p!b")
                while got[-1][0] != "cap.p!a":
                    got.append(await receive_now(owner, ["cap.p!"]))
                await worker.send("cap.p!a", {"n": 5}, wait=True)  # the owner's take made room
            with pytest.raises(ChannelFull):
                await worker.send("cap.p!a", {"n": 6})


async def test_a_stamp_heals_itself(options: dict[str, Any]) -> None:
    """Messages of a process-specific channel that nobody takes expire, and so does their
    count: the channel takes messages again after ``expiry``."""
    async with RedisChannelLayer(**options) as layer:
        for number in range(5):
            await layer.send("heal.p!a", {"n": number})
        with pytest.raises(ChannelFull):
            await layer.send("heal.p!a", {})
        await trio.sleep(2.1)
        await layer.send("heal.p!a", {"n": "again"})
        assert await receive_now(layer, ["heal.p!"]) == ("heal.p!a", {"n": "again"})


async def test_one_round_trip_per_message_at_low_load(options: dict[str, Any], admin: ConnectionPool) -> None:
    """Regression (issue 12, "no empty POP_MANY after each BLPOP at low load"): messages sent
    one at a time to a receiver in another process cost that process one request each (a
    blocking pop: BLMPOP on Redis 7, BLPOP on 6.2), and Redis runs no script but the sends."""
    count = 30
    async with RedisChannelLayer(**options) as sender, RedisChannelLayer(**options) as receiver:
        got: list[Any] = []
        arrivals, arrived = trio.open_memory_channel[None](count)

        async def receive_all() -> None:
            for _ in range(count):
                got.append(await receiver.receive(["rt.p!"]))
                arrivals.send_nowait(None)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_all)
                await trio.testing.wait_all_tasks_blocked()
                before, requests = await _calls(admin), receiver.request_count
                for number in range(count):
                    await sender.send("rt.p!x", {"n": number})
                    await arrived.receive()  # one at a time: the lowest load there is
        after = await _calls(admin)
    assert [message["n"] for _, message in got] == list(range(count))
    assert receiver.request_count - requests <= count + 3  # + a time-out or two
    assert _delta(before, after, "rpush") == 2 * count  # each send: its item and its stamp
    if _delta(before, after, "blmpop"):  # Redis 7: nothing but the blocking pops
        assert _delta(before, after, "blmpop") <= count + 2
        assert _delta(before, after, "lpop", "blpop") == 0
    else:  # 6.2: each BLPOP has a non-blocking pop behind it, in the same round trip
        assert _delta(before, after, "blpop") <= count + 2


# ------------------------------------------------------------------ local and remote receivers, as a property


@st.composite
def _mixes(draw: st.DrawFn) -> tuple[int, int, int, list[float], list[float]]:
    count = draw(st.integers(min_value=1, max_value=30))
    local = draw(st.integers(min_value=0, max_value=3))
    remote = draw(st.integers(min_value=0 if local else 1, max_value=3))
    gaps = draw(st.lists(st.sampled_from([0, 0, 0.001, 0.01]), min_size=count, max_size=count))
    # Timeouts of the local receivers: they give up and come back at random moments.
    timeouts = draw(st.lists(st.sampled_from([0.0005, 0.002, 0.02, 1]), min_size=1, max_size=8))
    return count, local, remote, gaps, timeouts


def test_local_and_remote_receivers_share_a_channel(redis_servers: list[RedisServer]) -> None:
    """Receivers in the sending process (cancelled at random) and in another one, on one
    channel: every message reaches exactly one of them, and each sees them in sending order."""

    @hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
    @hypothesis.given(_mixes())
    def check(mix: tuple[int, int, int, list[float], list[float]]) -> None:
        trio.run(_run_mix, redis_servers[0].url, mix)

    check()


async def _run_mix(url: str, mix: tuple[int, int, int, list[float], list[float]]) -> None:
    count, local, remote, gaps, timeouts = mix
    options = {"hosts": [url], "prefix": f"t{uuid.uuid4().hex[:12]}", "capacity": 100}
    received: dict[str, list[int]] = {}
    done = trio.Event()

    def note(who: str, number: int) -> None:
        received.setdefault(who, []).append(number)
        if sum(map(len, received.values())) == count:
            done.set()

    async def local_receiver(layer: RedisChannelLayer, index: int) -> None:
        attempt = 0
        while True:
            with trio.move_on_after(timeouts[(attempt + index) % len(timeouts)]):
                _, message = await layer.receive(["mix"])
                note(f"local{index}", message["n"])
            attempt += 1

    async def remote_receiver(layer: RedisChannelLayer, index: int) -> None:
        while True:
            _, message = await layer.receive(["mix"])
            note(f"remote{index}", message["n"])

    async with RedisChannelLayer(**options) as here, RedisChannelLayer(**options) as there:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(local):
                    nursery.start_soon(local_receiver, here, index)
                for index in range(remote):
                    nursery.start_soon(remote_receiver, there, index)
                await trio.testing.wait_all_tasks_blocked()
                for number in range(count):
                    await here.send("mix", {"n": number})
                    await trio.sleep(gaps[number])
                await done.wait()
                nursery.cancel_scope.cancel()
    assert sorted(n for numbers in received.values() for n in numbers) == list(range(count))
    for who, numbers in received.items():
        assert numbers == sorted(numbers), f"{who} got them out of order: {numbers}"
