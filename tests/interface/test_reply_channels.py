"""Reply channels of an InterfaceServer: names, and how replies reach a connection (issue 12)."""

from __future__ import annotations

import re

import trio

from interface import InterfaceServer
from interface.core import NAME_BYTES
from layers import InMemoryChannelLayer


def test_names_are_unique_unguessable_and_under_the_prefix() -> None:
    """Each reply channel is the process prefix plus 72 random bits (12 URL-safe characters),
    and many drawn at once (past a pool refill) never repeat."""
    server = InterfaceServer(InMemoryChannelLayer())
    names = [server.open_replies().name for _ in range(3000)]
    assert len(set(names)) == len(names)
    assert NAME_BYTES * 8 >= 64
    pattern = re.compile(re.escape(server.prefix) + r"[A-Za-z0-9_-]{12}")
    assert all(pattern.fullmatch(name) for name in names)
    assert re.fullmatch(r"interface\.[A-Za-z0-9_-]{12}!", server.prefix)


async def test_replies_come_straight_from_the_layer_in_order() -> None:
    """On a layer with own channels a connection receives its replies itself, in order; what
    overflows its reply_buffer is refused and counted; closing drops what is left."""
    layer = InMemoryChannelLayer()
    server = InterfaceServer(layer)
    assert server.own_channels
    replies = server.open_replies()
    overflowed: list[bool] = []
    replies.on_overflow = lambda: overflowed.append(True)
    for n in range(3):
        await layer.send(replies.name, {"n": n})
    assert [await replies.receive() for _ in range(2)] == [{"n": 0}, {"n": 1}]
    assert await replies.receive_nowait() == {"n": 2}
    await layer.send_group("nobody", {})  # (no member: nothing)
    await layer.group_add("g", replies.name)
    for n in range(server.config.reply_buffer + 2):
        await layer.send_group("g", {"n": n})
    assert overflowed == [True, True]
    replies.close()
    await layer.send(replies.name, {"late": True})  # gone: dropped, not held
    assert layer.state.own == {}


async def test_a_layer_without_own_channels_gets_a_reply_poller(nursery: trio.Nursery) -> None:
    """Where the layer cannot hand a connection its own channel, one poller relays replies."""

    class PrefixOnly(InMemoryChannelLayer):
        extensions = ("groups", "flush", "statistics", "delay")

    layer = PrefixOnly()
    server = InterfaceServer(layer)
    assert not server.own_channels
    await nursery.start(server.run)
    replies = server.open_replies()
    await layer.send(replies.name, {"n": 1})
    with trio.fail_after(5):
        assert await replies.receive() == {"n": 1}
    replies.close()
