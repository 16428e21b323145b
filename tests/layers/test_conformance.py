"""The channel layer conformance suite: every backend runs this file unchanged.

Cases 1-18 are asgiref 1.1.2's ``conformance.py`` (reference §4.2) in Trio style, then its
extras (§4.3), then what our contract adds (blocking receive, cancellation, fairness, errors).
"""

from __future__ import annotations

import math
import random
from typing import Any

import hypothesis
import pytest
import trio
import trio.testing
from hypothesis import strategies as st

import layers
import layers.base
from layers import (
    BaseChannelLayer,
    ChannelFull,
    ChannelLayerError,
    ChannelLayerUnavailable,
    MessageTooLarge,
)
from trio_channels.server import DEFAULT_CHANNEL_CAPACITY

from ..helpers import assert_nothing, receive_now
from .conftest import CAPACITY, EXPIRY, GROUP_EXPIRY, VIRTUAL_TIME, LayerFactory, Outage

# ------------------------------------------------------------------ asgiref's 18 cases


async def test_send_recv(layer: BaseChannelLayer) -> None:
    """Messages come back on the channel they were sent to; multi-channel receive finds the other."""
    for value in ("blue", "green", "yellow"):
        await layer.send("sr_test", {"value": value})
    await layer.send("sr_test2", {"value": "red"})
    values = set()
    for _ in range(3):
        channel, message = await receive_now(layer, ["sr_test"])
        assert channel == "sr_test"
        values.add(message["value"])
    assert values == {"blue", "green", "yellow"}
    assert await receive_now(layer, ["sr_test", "sr_test2"]) == ("sr_test2", {"value": "red"})


async def test_single_process_receive(layer: BaseChannelLayer) -> None:
    """Receiving on a process prefix returns the full process-specific name."""
    await layer.send("spr_test!a", {"value": "blue"})
    assert await receive_now(layer, ["spr_test!"]) == ("spr_test!a", {"value": "blue"})
    await layer.send("spr_test!b", {"value": "green"})
    assert await receive_now(layer, ["spr_test!"]) == ("spr_test!b", {"value": "green"})


async def test_single_process_receive_error(layer: BaseChannelLayer) -> None:
    """Receiving on a name with a local part is an error that says to use the prefix."""
    with pytest.raises(TypeError, match=r"'spr_test!c'.*'spr_test!'"):
        await layer.receive(["spr_test!c"])


async def test_message_expiry(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """An unread message is gone after the expiry."""
    await layer.send("me_test", {"value": "blue"})
    await trio.sleep(EXPIRY + 0.5)
    await assert_nothing(layer, ["me_test"])


async def test_new_channel_single_reader(layer: BaseChannelLayer) -> None:
    """new_channel gives a fresh '?' name that works as a channel."""
    name1 = await layer.new_channel("test.foo?")
    assert isinstance(name1, str)
    assert not name1.endswith("?") and name1.count("?") == 1
    await layer.send(name1, {"value": "blue"})
    name2 = await layer.new_channel("test.foo?")
    assert name2 != name1
    assert await receive_now(layer, [name1, name2]) == (name1, {"value": "blue"})


async def test_new_channel_failures(layer: BaseChannelLayer) -> None:
    """new_channel refuses '!' patterns and patterns without a type character."""
    with pytest.raises(TypeError, match=r"'test!'.*must be a str ending in '\?'"):
        await layer.new_channel("test!")
    with pytest.raises(TypeError, match=r"'test.foo'"):
        await layer.new_channel("test.foo")


async def test_strings(layer: BaseChannelLayer) -> None:
    """Bytes and text survive a round trip as distinct types, nested."""
    message = {
        "values": {
            "utf-bytes": b"\xc2\xa3",
            "unicode": "\u00a3",
            "ascii": "\u1f612",
            "bytes": b"\x01\x00\x03\x21",
        }
    }
    await layer.send("str_test", message)
    _, received = await receive_now(layer, ["str_test"])
    for key, value in message["values"].items():
        assert type(received["values"][key]) is type(value)
        assert received["values"][key] == value


async def test_groups(layer: BaseChannelLayer) -> None:
    """A group send reaches the members and not a discarded one."""
    await layer.group_add("tgroup", "tg_test")
    await layer.group_add("tgroup", "tg_test2")
    await layer.group_add("tgroup", "tg_test3")
    await layer.group_discard("tgroup", "tg_test3")
    await layer.send_group("tgroup", {"value": "orange"})
    assert await receive_now(layer, ["tg_test"]) == ("tg_test", {"value": "orange"})
    assert await receive_now(layer, ["tg_test2"]) == ("tg_test2", {"value": "orange"})
    await assert_nothing(layer, ["tg_test3"])


async def test_groups_process(layer: BaseChannelLayer) -> None:
    """Process-specific members each get the message, through their shared prefix."""
    for member in ("tgp!test", "tgp!test2", "tgp!test3"):
        await layer.group_add("tgroup", member)
    await layer.group_discard("tgroup", "tgp!test2")
    await layer.send_group("tgroup", {"value": "orange"})
    got = set()
    for _ in range(2):
        channel, message = await receive_now(layer, ["tgp!"])
        assert message == {"value": "orange"}
        got.add(channel)
    assert got == {"tgp!test", "tgp!test3"}
    await assert_nothing(layer, ["tgp!"])


async def test_group_channels(layer: BaseChannelLayer) -> None:
    """group_channels lists the members, at once after adds and discards."""
    for member in ("tgc_test", "tgc_test2", "tgc_test3"):
        await layer.group_add("tgroup", member)
    assert set(await layer.group_channels("tgroup")) == {"tgc_test", "tgc_test2", "tgc_test3"}
    await layer.group_discard("tgroup", "tgc_test2")
    assert set(await layer.group_channels("tgroup")) == {"tgc_test", "tgc_test3"}


async def test_flush(layer: BaseChannelLayer) -> None:
    """flush drops waiting messages."""
    await layer.send("fl_test", {"value": "blue"})
    await layer.flush()
    await assert_nothing(layer, ["fl_test"])


async def test_flush_groups(layer: BaseChannelLayer) -> None:
    """flush drops groups and what was sent to them."""
    await layer.group_add("tfg_group", "tfg_test")
    await layer.send_group("tfg_group", {"value": "blue"})
    await layer.flush()
    await assert_nothing(layer, ["tfg_test"])
    assert await layer.group_channels("tfg_group") == []


async def test_group_expiry(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """Membership lapses group_expiry seconds after the last add."""
    assert layer.group_expiry == GROUP_EXPIRY
    await layer.group_add("tge_group", "tge_test")
    await trio.sleep(GROUP_EXPIRY + 0.5)
    await layer.send_group("tge_group", {"value": "blue"})
    await assert_nothing(layer, ["tge_test"])
    assert await layer.group_channels("tge_group") == []


async def test_capacity(layer: BaseChannelLayer) -> None:
    """The send after capacity messages raises ChannelFull."""
    for index in range(CAPACITY):
        await layer.send("cap_test", {"n": index})
    with pytest.raises(layer.ChannelFull, match="'cap_test' is full"):
        await layer.send("cap_test", {"n": CAPACITY})


async def test_capacity_process(layer: BaseChannelLayer) -> None:
    """Each channel under a process prefix has a capacity of its own (issue 12: a prefix used
    to share one among all its channels, so one busy connection starved the others)."""
    for index in range(CAPACITY):
        await layer.send("capp!busy", {"n": index})
    with pytest.raises(ChannelFull, match="'capp!busy' is full"):
        await layer.send("capp!busy", {"n": CAPACITY})
    for index in range(CAPACITY):
        await layer.send(f"capp!other{index}", {"n": index})
    received = [await receive_now(layer, ["capp!"]) for _ in range(2 * CAPACITY)]
    assert received == [("capp!busy", {"n": n}) for n in range(CAPACITY)] + [
        (f"capp!other{n}", {"n": n}) for n in range(CAPACITY)
    ]
    await layer.send("capp!busy", {"n": "room again"})


async def test_capacity_group(layer: BaseChannelLayer) -> None:
    """A group send to a full member never raises."""
    await layer.group_add("tcg_group", "tcg_test")
    for index in range(CAPACITY + 1):
        await layer.send_group("tcg_group", {"n": index})
    first = await receive_now(layer, ["tcg_test"])
    assert first == ("tcg_test", {"n": 0})


async def test_exceptions(layer: BaseChannelLayer) -> None:
    """The layer carries its exception classes as attributes."""
    assert layer.MessageTooLarge is MessageTooLarge
    assert layer.ChannelFull is ChannelFull
    assert layer.ChannelLayerUnavailable is ChannelLayerUnavailable
    assert issubclass(layer.MessageTooLarge, Exception)
    assert issubclass(ChannelLayerUnavailable, ChannelLayerError)


async def test_message_alteration_after_send(layer: BaseChannelLayer) -> None:
    """The sender mutating its dict after send changes nothing."""
    message = {"value": [1, 2, 3]}
    await layer.send("channel", message)
    message["value"][0] = 123
    message["extra"] = "x"  # type: ignore[assignment]
    assert await receive_now(layer, ["channel"]) == ("channel", {"value": [1, 2, 3]})


# ------------------------------------------------------------------ asgiref / asgi_redis extras


async def test_group_message_eviction(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """A member whose message expired unread is evicted: the next group send skips it."""
    await layer.group_add("tgme_group", "tgme_test")
    await layer.send_group("tgme_group", {"value": "blue"})
    await trio.sleep(EXPIRY + 0.5)  # past message expiry, before group expiry
    await layer.send_group("tgme_group", {"value": "blue"})
    await assert_nothing(layer, ["tgme_test"])
    assert await layer.group_channels("tgme_group") == []


async def test_statistics(layer: BaseChannelLayer) -> None:
    """Counts of sends and pending messages, globally and per channel."""
    for _ in range(3):
        await layer.send("stats_test", {"value": "x"})
    overall = await layer.global_statistics()
    assert overall["messages_count"] == 3
    assert overall["channel_full_count"] == 0
    assert await layer.channel_statistics("stats_test") == {
        "messages_count": 3,
        "messages_pending": 3,
        "messages_max_age": pytest.approx(0, abs=0.5),
        "channel_full_count": 0,
    }
    await receive_now(layer, ["stats_test"])
    assert (await layer.statistics("stats_test")).messages_pending == 2


async def test_channel_full_statistics(layer: BaseChannelLayer) -> None:
    """Refused sends are counted globally and per channel."""
    for _ in range(CAPACITY):
        await layer.send("cfs_test", {"value": "x"})
    for _ in range(4):
        with pytest.raises(ChannelFull):
            await layer.send("cfs_test", {"value": "x"})
    assert (await layer.statistics()).channel_full_count == 4
    stats = await layer.statistics("cfs_test")
    assert (stats.messages_count, stats.messages_pending, stats.channel_full_count) == (CAPACITY, CAPACITY, 4)


async def test_messages_max_age(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """messages_max_age is the age of the oldest waiting message."""
    await layer.send("age_test", {"value": "x"})
    await trio.sleep(0.6)
    age = (await layer.statistics("age_test")).messages_max_age
    assert 0.5 <= age < EXPIRY


# ------------------------------------------------------------------ our contract


async def test_fifo_per_channel(layer: BaseChannelLayer) -> None:
    """One channel delivers in the order it was sent to."""
    for index in range(CAPACITY):
        await layer.send("fifo", {"n": index})
    received = [(await receive_now(layer, ["fifo"]))[1]["n"] for _ in range(CAPACITY)]
    assert received == list(range(CAPACITY))


async def test_process_channels_fifo(layer: BaseChannelLayer) -> None:
    """Channels under one prefix come back in the order they were sent, with their full names."""
    sent = [(f"fifo.p!c{index % 2}", {"n": index}) for index in range(CAPACITY)]
    for channel, message in sent:
        await layer.send(channel, message)
    assert [await receive_now(layer, ["fifo.p!"]) for _ in sent] == sent


async def test_receive_waits_for_a_send(layer: BaseChannelLayer) -> None:
    """A blocked receive wakes when a message arrives on any of its channels."""
    results: list[tuple[str, dict[str, Any]]] = []

    async def receiver() -> None:
        results.append(await layer.receive(["wait-a", "wait-b"]))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.sleep(0.05)
            assert results == []
            await layer.send("wait-b", {"value": 1})
    assert results == [("wait-b", {"value": 1})]


async def test_cancelled_receive_loses_nothing(layer: BaseChannelLayer) -> None:
    """A receive cancelled while waiting leaves later messages for the next receive."""
    with trio.move_on_after(0.1) as scope:
        await layer.receive(["cancel-test"])
    assert scope.cancelled_caught
    await layer.send("cancel-test", {"value": 1})
    assert await receive_now(layer, ["cancel-test"]) == ("cancel-test", {"value": 1})


async def test_quiet_channel_is_not_starved(layer: BaseChannelLayer) -> None:
    """With a busy and a quiet channel, receives on both soon return the quiet one."""
    for index in range(CAPACITY):
        await layer.send("busy", {"n": index})
    await layer.send("quiet", {"value": "here"})
    seen = []
    for _ in range(CAPACITY + 1):
        channel, _ = await receive_now(layer, ["busy", "quiet"])
        seen.append(channel)
        if channel == "quiet":
            break
    assert "quiet" in seen


async def test_concurrent_receivers_share_the_work(layer_factory: LayerFactory) -> None:
    """100 receivers on one channel each get a distinct message and together get all."""
    async with layer_factory(capacity=200) as layer:
        await layer.flush()
        received: dict[int, int] = {}

        async def receiver(index: int) -> None:
            _, message = await layer.receive(["many"])
            received[index] = message["n"]

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for index in range(100):
                    nursery.start_soon(receiver, index)
                await trio.sleep(0.1)
                for n in range(100):
                    await layer.send("many", {"n": n})
        assert sorted(received.values()) == list(range(100))


async def test_group_members_in_one_process(layer: BaseChannelLayer) -> None:
    """Members under one process prefix each get their own copy of a group send."""
    members = [f"gmp!c{index}" for index in range(CAPACITY)]
    for member in members:
        await layer.group_add("gmp", member)
    await layer.send_group("gmp", {"value": "hi"})
    got = sorted([(await receive_now(layer, ["gmp!"]))[0] for _ in members])
    assert got == sorted(members)


async def test_group_add_refreshes_membership(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """Re-adding a member restarts its group expiry."""
    await layer.group_add("refresh", "refresh_test")
    await trio.sleep(GROUP_EXPIRY * 0.6)
    await layer.group_add("refresh", "refresh_test")
    await trio.sleep(GROUP_EXPIRY * 0.6)
    assert await layer.group_channels("refresh") == ["refresh_test"]


async def test_delayed_send(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """send(..., delay=) delivers no earlier than the delay, then normally."""
    assert "delay" in layer.extensions
    await layer.send("delayed", {"value": 1}, delay=0.5)
    await assert_nothing(layer, ["delayed"], wait=0.3)
    assert await receive_now(layer, ["delayed"], timeout=2) == ("delayed", {"value": 1})


async def test_asgi_delay_channel(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """The ASGI-1 asgi.delay message format schedules its content (delay in milliseconds)."""
    await layer.send("asgi.delay", {"channel": "delayed2", "content": {"value": 2}, "delay": 500})
    await assert_nothing(layer, ["delayed2"], wait=0.3)
    assert await receive_now(layer, ["delayed2"], timeout=2) == ("delayed2", {"value": 2})
    with pytest.raises(ValueError, match=r"message\['delay'\]"):
        await layer.send("asgi.delay", {"channel": "x", "content": {}, "delay": -5})


async def test_extensions(layer: BaseChannelLayer) -> None:
    """Every backend offers the same extensions."""
    assert set(layer.extensions) >= {"groups", "flush", "statistics", "delay"}


async def test_tuples_become_lists(layer: BaseChannelLayer) -> None:
    """Tuples are lists after a round trip (headers as (name, value) pairs are fine to send)."""
    await layer.send("tuples", {"headers": [(b"a", b"b")]})
    assert await receive_now(layer, ["tuples"]) == ("tuples", {"headers": [[b"a", b"b"]]})


# ------------------------------------------------------------------ bad input


BAD_CHANNELS = [
    ("http.request£", "only ASCII letters"),
    ("a" * 120, "must be shorter than 100"),
    ("one?two?three", "at most one"),
    ("four!five!six", "at most one"),
    ("some+other!thing", "only ASCII letters"),
    ("needs.random?", "random part"),
    (b"bytes.name", "must be str"),
]


@pytest.mark.parametrize(("name", "rule"), BAD_CHANNELS)
async def test_bad_channel_names(layer: BaseChannelLayer, name: Any, rule: str) -> None:
    """A bad channel name raises TypeError quoting the name and the rule; the layer still works."""
    with pytest.raises(TypeError, match=rule) as info:
        await layer.send(name, {"value": 1})
    assert repr(name)[:15] in str(info.value)
    with pytest.raises(TypeError, match=rule):
        await layer.receive([name])
    await layer.send("still.fine", {"value": 1})
    assert await receive_now(layer, ["still.fine"]) == ("still.fine", {"value": 1})


@pytest.mark.parametrize("name", ["foo.bar?baz", "foo.bar!baz", "foo.bar£", "x" * 100, "some+other=thing"])
async def test_bad_group_names(layer: BaseChannelLayer, name: str) -> None:
    """A bad group name raises TypeError naming it, for every group operation."""
    for call in (
        layer.group_add(name, "member"),
        layer.group_discard(name, "member"),
        layer.group_channels(name),
        layer.send_group(name, {"value": 1}),
    ):
        with pytest.raises(TypeError, match="group name"):
            await call
    await layer.group_add("good-group", "member")
    assert await layer.group_channels("good-group") == ["member"]


BAD_MESSAGES = [
    ("not a dict", TypeError, r"message must be a dict, not str"),
    ({"payload": [1, 2, 3, {1, 2}]}, TypeError, r"message\['payload'\]\[3\] is invalid: set"),
    ({"n": 2**63}, ValueError, r"message\['n'\] is invalid: .* signed 64-bit"),
    ({"n": -(2**63) - 1}, ValueError, r"signed 64-bit"),
    ({"nested": {1: "x"}}, TypeError, r"message\['nested'\] is invalid: dict keys must be str"),
    ({"obj": object()}, TypeError, r"message\['obj'\] is invalid: object values"),
    ({"__asgi_channel__": "x"}, ValueError, "reserved"),
]


@pytest.mark.parametrize(("message", "error", "text"), BAD_MESSAGES)
async def test_bad_messages(layer: BaseChannelLayer, message: Any, error: type[Exception], text: str) -> None:
    """A bad message fails its sender with the path of the bad value; nothing else is hurt."""
    await layer.group_add("bad-msg-group", "bad-msg-member")
    with pytest.raises(error, match=text):
        await layer.send("bad-msg", message)
    with pytest.raises(error, match=text):
        await layer.send_group("bad-msg-group", message)
    await assert_nothing(layer, ["bad-msg", "bad-msg-member"], wait=0.05)
    await layer.send("bad-msg", {"value": "ok"})
    assert await receive_now(layer, ["bad-msg"]) == ("bad-msg", {"value": "ok"})


async def test_int64_bounds_round_trip(layer: BaseChannelLayer) -> None:
    """The extreme signed 64-bit values are allowed and survive."""
    message = {"low": -(2**63), "high": 2**63 - 1, "float": math.pi, "none": None, "flag": True}
    await layer.send("bounds", message)
    assert await receive_now(layer, ["bounds"]) == ("bounds", message)


async def test_message_too_large(layer_factory: LayerFactory) -> None:
    """A message over max_message_size encoded raises MessageTooLarge with the sizes."""
    async with layer_factory(max_message_size=1000) as layer:
        await layer.flush()
        with pytest.raises(MessageTooLarge, match=r"over the layer's limit of 1000 bytes"):
            await layer.send("big", {"body": b"x" * 1000})
        await layer.group_add("big-group", "big-member")
        with pytest.raises(MessageTooLarge):
            await layer.send_group("big-group", {"body": b"x" * 1000})
        await layer.send("big", {"body": b"x" * 900})
        _, message = await receive_now(layer, ["big"])
        assert len(message["body"]) == 900


async def test_default_size_limit_is_one_mebibyte(layer: BaseChannelLayer) -> None:
    """The default limit accepts 1 MB bodies' worth of ASGI chunks and refuses more."""
    assert layer.max_message_size == 1024 * 1024
    with pytest.raises(MessageTooLarge):
        await layer.send("big", {"body": b"x" * (1024 * 1024)})


async def test_channel_capacity_globs(layer_factory: LayerFactory) -> None:
    """channel_capacity patterns apply per channel; a process-specific channel is looked up by
    its prefix."""
    async with layer_factory(channel_capacity={"http.request": 2, "interface.*!": 3}) as layer:
        await layer.flush()
        for _ in range(2):
            await layer.send("http.request", {})
        with pytest.raises(ChannelFull):
            await layer.send("http.request", {})
        for _ in range(3):
            await layer.send("interface.p1!c0", {})
        with pytest.raises(ChannelFull):
            await layer.send("interface.p1!c0", {})
        for index in range(CAPACITY):
            await layer.send("elsewhere", {"n": index})
        with pytest.raises(ChannelFull):
            await layer.send("elsewhere", {})


# ------------------------------------------------------------------ cancellation, as a property


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[int, list[float], list[float], list[int | None]]:
    count = draw(st.integers(min_value=1, max_value=40))
    send_gaps = draw(st.lists(st.sampled_from([0, 0, 0.001, 0.01]), min_size=count, max_size=count))
    # A receive with a zero timeout is cancelled before it can take anything, so at least one
    # timeout is positive; zeros among them still cancel receivers at their first checkpoint.
    timeouts = draw(st.lists(st.sampled_from([0, 0.0005, 0.002, 0.02, 1]), min_size=1, max_size=20))
    if not any(timeouts):
        timeouts.append(0.002)
    # After each send, maybe cancel one receiver from outside: this hits the window between a
    # message being handed to a parked receiver and that receiver running again.
    cancels = draw(st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=count, max_size=count))
    return count, send_gaps, timeouts, cancels


def _run_cancellation_scenario(
    factory: LayerFactory,
    backend: str,
    receivers: int,
    scenario: tuple[int, list[float], list[float], list[int | None]],
) -> None:
    count, gaps, timeouts, cancels = scenario

    async def run() -> None:
        received: list[list[int]] = [[] for _ in range(receivers)]
        scopes: list[trio.CancelScope | None] = [None] * receivers
        all_received = trio.Event()
        async with factory(capacity=100) as layer:
            await layer.flush()

            async def receiver(index: int) -> None:
                attempt = 0
                while True:
                    timeout = timeouts[(attempt + index) % len(timeouts)]
                    attempt += 1
                    with trio.move_on_after(timeout) as scopes[index]:
                        _, message = await layer.receive(["prop"])
                        received[index].append(message["n"])
                        if sum(map(len, received)) == count:
                            all_received.set()

            # The chaos task cancels the receiver it is told to. It is woken just before each
            # send, so it runs in the same scheduler batch as a receiver that send hands a
            # message to: sometimes before it, which is the window a lossy layer would fail in.
            to_cancel, cancel_requests = trio.open_memory_channel[int](math.inf)

            async def chaos() -> None:
                async for target in cancel_requests:
                    scope = scopes[target]
                    if scope is not None:
                        scope.cancel()

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chaos)
                    for index in range(receivers):
                        nursery.start_soon(receiver, index)
                    for n in range(count):
                        target = cancels[n]
                        if target is not None and target < receivers:
                            to_cancel.send_nowait(target)
                        await layer.send("prop", {"n": n})
                        await trio.sleep(gaps[n])
                    await all_received.wait()
                    nursery.cancel_scope.cancel()
        everything = sorted(n for per in received for n in per)
        assert everything == list(range(count)), "every message exactly once"
        for per in received:
            assert per == sorted(per), "each receiver sees the channel's order"

    clock = trio.testing.MockClock(autojump_threshold=0) if backend in VIRTUAL_TIME else None
    trio.run(run, clock=clock)


@pytest.mark.parametrize("receivers", [1, 4])
def test_cancelled_receivers_lose_nothing(layer_factory: LayerFactory, backend: str, receivers: int) -> None:
    """Receivers cancelled at random points still see every message exactly once, in order."""
    examples = 60 if backend in VIRTUAL_TIME else 8

    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True)
    @hypothesis.given(_scenarios())
    def check(scenario: tuple[int, list[float], list[float], list[int | None]]) -> None:
        _run_cancellation_scenario(layer_factory, backend, receivers, scenario)

    check()


def test_random_is_not_seeded_by_the_suite() -> None:
    """Fairness relies on random shuffles; the suite must not pin the global seed."""
    assert len({random.random() for _ in range(5)}) == 5


async def test_receive_with_deadline(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """The deadline handed out with a message is its expiry on Trio's clock."""
    await layer.send("deadline", {"value": 1})
    sent_at = trio.current_time()
    await trio.sleep(0.25)
    with trio.fail_after(5):
        channel, message, deadline = await layer.receive_with_deadline(["deadline"])
    assert (channel, message) == ("deadline", {"value": 1})
    assert deadline == pytest.approx(sent_at + EXPIRY, abs=0.2)


# ------------------------------------------------------------------ a fan-out burst


async def test_fan_out_burst_loses_nothing(layer_factory: LayerFactory) -> None:
    """Regression (issue 12): 200 members of one process each get all of 200 group sends made
    at once, at serve()'s default capacities (in memory a process prefix shared one capacity
    of 10,000, so 30,000 of these 40,000 deliveries were lost)."""
    async with layer_factory(
        expiry=60, group_expiry=600, capacity=100, channel_capacity=DEFAULT_CHANNEL_CAPACITY
    ) as layer:
        await layer.flush()
        members = [f"interface.burst!m{index}" for index in range(200)]
        for member in members:
            await layer.group_add("burst", member)
        for n in range(200):
            await layer.send_group("burst", {"n": n})
        got: dict[str, list[int]] = {member: [] for member in members}
        with trio.fail_after(60):
            for _ in range(200 * 200):
                channel, message = await layer.receive(["interface.burst!"])
                got[channel].append(message["n"])
        assert all(numbers == list(range(200)) for numbers in got.values())
        with pytest.raises(trio.WouldBlock):
            await layer.receive_nowait(["interface.burst!"])


# ------------------------------------------------------------------ the twins


async def test_receive_nowait(layer: BaseChannelLayer) -> None:
    """receive_nowait returns what is waiting, in order and with full names, else raises
    WouldBlock at once."""
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(["nowait", "nowait.p!"])
    await layer.send("nowait", {"n": 1})
    await layer.send("nowait.p!a", {"n": 2})
    await layer.send("nowait.p!b", {"n": 3})
    assert await layer.receive_nowait(["nowait"]) == ("nowait", {"n": 1})
    assert await layer.receive_nowait(["nowait.p!"]) == ("nowait.p!a", {"n": 2})
    assert await layer.receive_nowait(["nowait.p!"]) == ("nowait.p!b", {"n": 3})
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(["nowait", "nowait.p!"])


async def test_receive_nowait_on_several_channels(layer: BaseChannelLayer) -> None:
    """receive_nowait on several channels (on several shards) finds each one's messages."""
    names = [f"nowait-many-{index}" for index in range(6)]
    for index, name in enumerate(names):
        await layer.send(name, {"n": index})
    got = [await layer.receive_nowait(names) for _ in names]
    assert sorted(got) == sorted((name, {"n": index}) for index, name in enumerate(names))
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(names)


async def test_receive_nowait_fan_out(layer: BaseChannelLayer) -> None:
    """Each member's copy of a group send to one process comes out of receive_nowait."""
    members = [f"nwg!c{index}" for index in range(CAPACITY)]
    for member in members:
        await layer.group_add("nwg", member)
    await layer.send_group("nwg", {"value": "hi"})
    got = [await layer.receive_nowait(["nwg!"]) for _ in members]
    assert sorted(got) == [(member, {"value": "hi"}) for member in sorted(members)]
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(["nwg!"])


async def test_receive_nowait_skips_expired(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """An expired message is not returned by receive_nowait."""
    await layer.send("nowait-old", {"n": 1})
    await trio.sleep(EXPIRY + 0.5)
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(["nowait-old"])


async def test_receive_nowait_checks_names(layer: BaseChannelLayer) -> None:
    """receive_nowait applies receive's name rules."""
    with pytest.raises(TypeError, match=r"'spr_test!c'.*'spr_test!'"):
        await layer.receive_nowait(["spr_test!c"])
    with pytest.raises(TypeError, match="a list of names"):
        await layer.receive_nowait("plain")


async def test_send_nowait(layer: BaseChannelLayer) -> None:
    """send_nowait sends like send: to a parked receiver or in order, ChannelFull at capacity,
    a TypeError for a bad name."""
    results: list[tuple[str, dict[str, Any]]] = []

    async def receiver() -> None:
        results.append(await layer.receive(["snw-wait"]))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.sleep(0.05)
            await layer.send_nowait("snw-wait", {"value": 1})
    assert results == [("snw-wait", {"value": 1})]
    for index in range(CAPACITY):
        await layer.send_nowait("snw", {"n": index})
    with pytest.raises(ChannelFull, match="'snw' is full"):
        await layer.send_nowait("snw", {"n": CAPACITY})
    with pytest.raises(TypeError, match="only ASCII letters"):
        await layer.send_nowait("bad name", {})
    received = [(await receive_now(layer, ["snw"]))[1]["n"] for _ in range(CAPACITY)]
    assert received == list(range(CAPACITY))


# ------------------------------------------------------------------ owned sends, waiting for room, own prefixes


async def _parked(layer: BaseChannelLayer, nursery: trio.Nursery, names: list[str]) -> list[Any]:
    """Start a receiver of one message on *names* and return once it is parked."""
    got: list[Any] = []

    async def receiver() -> None:
        got.append(await layer.receive(names))

    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    return got


async def test_owned_message_reaches_a_parked_receiver_as_it_is(layer: BaseChannelLayer) -> None:
    """send_owned hands a receiver waiting in this process the very dict it was given: no copy
    (issue 12, "no copy for owned messages"), on every backend; a user's send is still a copy."""
    owned = {"text": "mine", "order": 1, "headers": [[b"host", b"x"]]}
    mine = {"text": "a user's", "nested": [1, 2]}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            got = await _parked(layer, nursery, ["owned"])
            await layer.send_owned("owned", owned)
        async with trio.open_nursery() as nursery:
            copied = await _parked(layer, nursery, ["owned"])
            await layer.send("owned", mine)
    assert got == [("owned", owned)] and got[0][1] is owned
    assert copied == [("owned", mine)] and copied[0][1] is not mine
    assert copied[0][1]["nested"] is not mine["nested"]


async def test_owned_message_through_the_layer(layer: BaseChannelLayer) -> None:
    """An owned message nobody waits for yet is queued (in memory as it is, through Redis
    encoded once), in order with the channel's other messages, capacity included."""
    await layer.send_owned("owned-q", {"n": 0})
    await layer.send("owned-q", {"n": 1})
    await layer.send_owned("owned-q", {"n": 2, "bytes": b"\x00"})
    for index in range(3, CAPACITY):
        await layer.send_owned("owned-q", {"n": index})
    with pytest.raises(ChannelFull, match="'owned-q' is full"):
        await layer.send_owned("owned-q", {"n": CAPACITY})
    got = [await receive_now(layer, ["owned-q"]) for _ in range(CAPACITY)]
    assert [message["n"] for _, message in got] == list(range(CAPACITY))
    assert got[2][1]["bytes"] == b"\x00"


async def test_owned_sends_check_cheaply(
    layer_factory: LayerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production trusts the builder of an owned message (no validation walk) but still refuses
    a non-dict and a payload over max_message_size; with CHECK_OWNED (the test suite,
    ``python -X dev``) it checks like a user's send, naming the bad value's path."""
    async with layer_factory(max_message_size=1000) as layer:
        await layer.flush()
        monkeypatch.setattr(layers.base, "CHECK_OWNED", False)
        with pytest.raises(MessageTooLarge, match="over the layer's limit of 1000 bytes"):
            await layer.send_owned("owned-big", {"bytes": b"x" * 1001})
        with pytest.raises(TypeError, match="must be a dict, not list"):
            await layer.send_owned("owned-big", [1])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="only ASCII letters"):
            await layer.send_owned("bad name", {})
        monkeypatch.setattr(layers.base, "CHECK_OWNED", True)
        with pytest.raises(TypeError, match=r"message\['headers'\]\[0\] is invalid: set values"):
            await layer.send_owned("owned-big", {"headers": [{1}]})
        await assert_nothing(layer, ["owned-big"])


async def test_a_send_waits_for_room(layer: BaseChannelLayer) -> None:
    """send(wait=True) to a full channel waits until a receive makes room, then sends; its
    message comes after those that were there (issue 12, "waiting for room without polling")."""
    for index in range(CAPACITY):
        await layer.send("room", {"n": index})
    done = trio.Event()

    async def waiting_sender() -> None:
        await layer.send("room", {"n": CAPACITY}, wait=True)
        done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            first = await layer.receive(["room"])
            await done.wait()
        rest = [await receive_now(layer, ["room"]) for _ in range(CAPACITY)]
    assert [first, *rest] == [("room", {"n": n}) for n in range(CAPACITY + 1)]


async def test_each_channel_under_a_prefix_waits_for_its_own_room(layer: BaseChannelLayer) -> None:
    """A sender waiting on a full ``prefix!a`` is not held up by, and does not hold up, the
    other channels under the prefix; a receive of ``prefix!a`` lets it in."""
    for index in range(CAPACITY):
        await layer.send("roomp!a", {"n": index})
    sent = trio.Event()

    async def waiting_sender() -> None:
        await layer.send_owned("roomp!a", {"n": CAPACITY}, wait=True)
        sent.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_sender)
            await trio.testing.wait_all_tasks_blocked()
            await layer.send("roomp!b", {"n": "b"}, wait=True)  # room there: at once
            assert not sent.is_set()
            got = [await layer.receive(["roomp!"]) for _ in range(CAPACITY + 1)]
            await sent.wait()
        got.append(await receive_now(layer, ["roomp!"]))
    assert [message["n"] for channel, message in got if channel == "roomp!a"] == list(range(CAPACITY + 1))
    assert ("roomp!b", {"n": "b"}) in got


@st.composite
def _waiting_scenarios(draw: st.DrawFn) -> tuple[int, list[float | None], list[float]]:
    senders = draw(st.integers(min_value=1, max_value=12))
    # None: the sender waits as long as it takes; a number: it gives up after that long.
    patience = draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from([0, 0.001, 0.01, 0.05])), min_size=senders, max_size=senders
        )
    )
    pauses = draw(st.lists(st.sampled_from([0, 0, 0.001, 0.02]), min_size=1, max_size=10))
    return senders, patience, pauses


def _run_waiting_scenario(
    factory: LayerFactory, backend: str, scenario: tuple[int, list[float | None], list[float]]
) -> None:
    senders, patience, pauses = scenario

    async def run() -> None:
        outcomes: dict[int, str] = {}
        async with factory() as layer:
            await layer.flush()
            for index in range(CAPACITY):
                await layer.send("wait-prop", {"n": -1 - index})

            async def sender(number: int) -> None:
                limit = patience[number]
                with trio.move_on_after(math.inf if limit is None else limit):
                    await layer.send_owned("wait-prop", {"n": number}, wait=True)
                    outcomes[number] = "sent"
                    return
                outcomes[number] = "gave up"

            received: list[int] = []
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for number in range(senders):
                        nursery.start_soon(sender, number)
                        await trio.testing.wait_all_tasks_blocked()  # they queue in this order
                    index = 0
                    while len(outcomes) < senders or received.count(-CAPACITY) == 0:
                        await trio.sleep(pauses[index % len(pauses)])
                        index += 1
                        try:
                            received.append((await layer.receive_nowait(["wait-prop"]))[1]["n"])
                        except trio.WouldBlock:
                            pass
                while True:
                    with trio.move_on_after(0.2 if backend not in VIRTUAL_TIME else 1):
                        received.append((await layer.receive(["wait-prop"]))[1]["n"])
                        continue
                    break
        assert received[:CAPACITY] == [-1 - index for index in range(CAPACITY)]
        numbers = received[CAPACITY:]
        sent = {number for number, outcome in outcomes.items() if outcome == "sent"}
        assert sent <= set(numbers), "a send that returned was delivered"
        assert len(numbers) == len(set(numbers)), "once"
        if backend in VIRTUAL_TIME:
            assert numbers == sorted(numbers), "waiting senders get room in the order they came"
            assert set(numbers) == sent, "a sender that gave up sent nothing"
        # On Redis, where another process may drain the channel, up to 16 waiting senders try
        # at once (round trips in flight together), so their order is only roughly kept; and a
        # round trip cut short by a cancel may have stored the message.

    clock = trio.testing.MockClock(autojump_threshold=0) if backend in VIRTUAL_TIME else None
    trio.run(run, clock=clock)


def test_waiting_senders_keep_their_turns(layer_factory: LayerFactory, backend: str) -> None:
    """Senders waiting on one full channel, some giving up at random moments while a receiver
    drains it at random pauses: each that sent is delivered once; in memory, in the order the
    senders started waiting, and one that gave up sent nothing. None is left waiting while
    there is room: the test would hang."""
    examples = 60 if backend in VIRTUAL_TIME else 6

    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True)
    @hypothesis.given(_waiting_scenarios())
    def check(scenario: tuple[int, list[float | None], list[float]]) -> None:
        _run_waiting_scenario(layer_factory, backend, scenario)

    check()


async def test_own_prefix(layer: BaseChannelLayer) -> None:
    """Under a prefix this process owns, sends and receives behave as under any prefix: each
    channel in order and with a capacity of its own; leaving the block drops what is held."""
    with pytest.raises(TypeError, match=r"process prefix 'own' is invalid: it must be a str ending in '!'"):
        with layer.own_prefix("own"):
            pass
    with layer.own_prefix("own.p!"):
        for index in range(CAPACITY):
            await layer.send_owned("own.p!a", {"n": index})
        with pytest.raises(ChannelFull, match=r"'own\.p!a' is full"):
            await layer.send("own.p!a", {"n": CAPACITY})
        await layer.send("own.p!b", {"n": "b"})
        got = [await receive_now(layer, ["own.p!"]) for _ in range(CAPACITY + 1)]
        assert [message["n"] for channel, message in got if channel == "own.p!a"] == list(range(CAPACITY))
        assert ("own.p!b", {"n": "b"}) in got
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                parked = await _parked(layer, nursery, ["own.p!"])
                owned = {"n": "straight"}
                await layer.send_owned("own.p!c", owned)
        assert parked == [("own.p!c", owned)] and parked[0][1] is owned
        await layer.send("own.p!d", {"n": "left behind"})
    await assert_nothing(layer, ["own.p!"])


# ------------------------------------------------------------------ losing the server


async def test_unavailable(outage: Outage) -> None:
    """With its server gone, every operation that needs it raises ChannelLayerUnavailable
    naming the server; a parked receive just waits, and the same layer works again once the
    server is back. The in-memory layer has no server to lose and never raises it."""
    async with outage.factory(expiry=60, group_expiry=600) as layer:
        await layer.flush()
        await layer.group_add("down-group", "down-member")
        await layer.send("down-queued", {"n": 0})
        got: list[tuple[str, dict[str, Any]]] = []

        async def receiver() -> None:
            got.append(await layer.receive(["down-after"]))

        calls = {
            "send": lambda: layer.send("down", {}),
            "send_nowait": lambda: layer.send_nowait("down", {}),
            "delayed send": lambda: layer.send("down", {}, delay=5),
            "send_group": lambda: layer.send_group("down-group", {}),
            "group_add": lambda: layer.group_add("down-group", "other"),
            "group_discard": lambda: layer.group_discard("down-group", "other"),
            "group_channels": lambda: layer.group_channels("down-group"),
            "new_channel": lambda: layer.new_channel("down?"),
            "receive_nowait": lambda: layer.receive_nowait(["down-queued"]),
            "statistics": lambda: layer.statistics(),
            "channel statistics": lambda: layer.statistics("down"),
            "flush": lambda: layer.flush(),
        }
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.sleep(0.1)  # parked (on Redis, its poller waits in BLPOP)
                outage.stop()
                for what, call in calls.items():
                    if not outage.servers:
                        await call()
                        continue
                    with pytest.raises(ChannelLayerUnavailable, match=r"Redis at \S+ is unavailable") as info:
                        await call()
                    assert info.value.__cause__ is not None, what
                assert got == []
                outage.start()
                await layer.send("down-after", {"n": 1})
        assert got == [("down-after", {"n": 1})]


# ------------------------------------------------------------------ own channels


async def test_own_channels_are_fifo_per_channel(layer: BaseChannelLayer) -> None:
    """Each own channel of a prefix gets its own messages, in sending order, whatever the
    other channels of the prefix get meanwhile."""
    channels = ["own.fifo!a", "own.fifo!b"]
    count = CAPACITY // 2  # the Redis list of a prefix still counts them together
    for channel in channels:
        layer.open_own(channel)
    for n in range(count):
        for channel in channels:
            await layer.send(channel, {"n": n, "to": channel})
    for channel in reversed(channels):
        with trio.fail_after(5):
            got = [await layer.receive_own(channel) for _ in range(count)]
        assert got == [{"n": n, "to": channel} for n in range(count)]
    with pytest.raises(trio.WouldBlock):
        await layer.receive_own_nowait(channels[0])


async def test_own_channel_hand_off(layer: BaseChannelLayer) -> None:
    """A receiver waiting on its own channel gets each message as it is sent, plain sends and
    group sends alike, in order, and nothing meant for another channel of the prefix."""
    layer.open_own("own.handoff!me")
    layer.open_own("own.handoff!other")
    await layer.group_add("own-handoff", "own.handoff!me")
    got: list[dict[str, Any]] = []

    async def receiver() -> None:
        while len(got) < 6:
            got.append(await layer.receive_own("own.handoff!me"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            for n in range(3):
                await trio.sleep(0.01)
                await layer.send("own.handoff!other", {"n": -1})
                await layer.send("own.handoff!me", {"n": 2 * n})
                await layer.send_group("own-handoff", {"n": 2 * n + 1})
    assert got == [{"n": n} for n in range(6)]
    assert await layer.receive_own_nowait("own.handoff!other") == {"n": -1}


async def test_own_channel_cancelled_receive_loses_nothing(layer: BaseChannelLayer) -> None:
    """A receive_own cancelled while it waits leaves the next message for the next receive."""
    layer.open_own("own.cancel!c")
    for _ in range(3):
        with trio.move_on_after(0.05) as scope:
            await layer.receive_own("own.cancel!c")
        assert scope.cancelled_caught
    await layer.send("own.cancel!c", {"value": 1})
    await layer.send("own.cancel!c", {"value": 2})
    with trio.fail_after(5):
        assert await layer.receive_own("own.cancel!c") == {"value": 1}
        assert await layer.receive_own("own.cancel!c") == {"value": 2}


@pytest.mark.parametrize("receivers_cancelled", [1, 3])
def test_own_channel_cancelled_at_random_loses_nothing(
    layer_factory: LayerFactory, backend: str, receivers_cancelled: int
) -> None:
    """One task receiving its own channel under random cancellations (by its own timeouts and
    from outside, right as messages are handed over) still gets every message once, in order."""
    examples = 40 if backend in VIRTUAL_TIME else 6

    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True)
    @hypothesis.given(_scenarios())
    def check(scenario: tuple[int, list[float], list[float], list[int | None]]) -> None:
        count, gaps, timeouts, cancels = scenario

        async def run() -> None:
            received: list[int] = []
            done = trio.Event()
            scope: list[trio.CancelScope | None] = [None]
            async with layer_factory(capacity=100) as layer:
                await layer.flush()
                layer.open_own("own.prop!c")

                async def receiver() -> None:
                    attempt = 0
                    while True:
                        attempt += 1
                        with trio.move_on_after(timeouts[attempt % len(timeouts)]) as scope[0]:
                            received.append((await layer.receive_own("own.prop!c"))["n"])
                            if len(received) == count:
                                done.set()

                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(receiver)
                        for n in range(count):
                            if cancels[n] is not None and cancels[n] < receivers_cancelled and scope[0]:
                                scope[0].cancel()
                            await layer.send("own.prop!c", {"n": n})
                            await trio.sleep(gaps[n])
                        await done.wait()
                        nursery.cancel_scope.cancel()
            assert received == list(range(count))

        clock = trio.testing.MockClock(autojump_threshold=0) if backend in VIRTUAL_TIME else None
        trio.run(run, clock=clock)

    check()


async def _settle(layer: BaseChannelLayer, channel: str) -> None:
    """Let a shared layer's poller bring in what is queued for *channel*'s prefix."""
    with trio.move_on_after(0.2):
        await layer.receive_own(channel)
        raise AssertionError(f"{channel} got a message it should not have")


async def test_own_channel_capacity_and_overflow(layer: BaseChannelLayer) -> None:
    """An own channel holds at most its capacity; a group send beyond it misses that member
    and each refusal is reported to on_overflow, in the process receiving the channel."""
    overflowed: list[str] = []
    layer.open_own("own.cap!c", capacity=2, on_overflow=overflowed.append)
    layer.open_own("own.cap!idle")
    await layer.group_add("own-cap", "own.cap!c")
    for n in range(4):
        await layer.send_group("own-cap", {"n": n})  # never raises
    await _settle(layer, "own.cap!idle")
    assert overflowed == ["own.cap!c", "own.cap!c"]
    assert layer.own_statistics("own.cap!c").refused == 2  # type: ignore[union-attr]
    with trio.fail_after(5):
        assert [await layer.receive_own("own.cap!c") for _ in range(2)] == [{"n": 0}, {"n": 1}]


async def test_own_channel_full_send_raises(layer: BaseChannelLayer) -> None:
    """A plain send to a full own channel of this process raises ChannelFull (and is reported):
    on Redis too, since the message never leaves the process (its prefix is this process's own)."""
    overflowed: list[str] = []
    layer.open_own("own.capsend!c", capacity=1, on_overflow=overflowed.append)
    await layer.send("own.capsend!c", {"n": 0})
    with pytest.raises(ChannelFull, match=r"'own\.capsend!c' is full"):
        await layer.send("own.capsend!c", {"n": 1})
    assert overflowed == ["own.capsend!c"]


async def test_own_channel_close_drops_what_it_held(layer: BaseChannelLayer) -> None:
    """close_own drops what waits for the channel and what comes later; the other own channels
    of the prefix are untouched, and receiving on a closed one is an error naming it."""
    layer.open_own("own.close!gone")
    layer.open_own("own.close!kept")
    await layer.group_add("own-close", "own.close!gone")
    await layer.group_add("own-close", "own.close!kept")
    await layer.send("own.close!gone", {"n": 0})
    await layer.send("own.close!gone", {"n": 1})
    with trio.fail_after(5):
        while True:  # a shared layer's poller brings them in: close once both are held
            try:
                held = await layer.receive_own_nowait("own.close!kept")
            except trio.WouldBlock:
                break
            raise AssertionError(f"unexpected message {held}")
    assert layer.close_own("own.close!gone") in (0, 1, 2)
    assert layer.close_own("own.close!gone") == 0  # closing twice is harmless
    await layer.send("own.close!gone", {"n": 2})
    await layer.send_group("own-close", {"n": 3})
    with trio.fail_after(5):
        assert await layer.receive_own("own.close!kept") == {"n": 3}
    with pytest.raises(ValueError, match=r"own channel 'own.close!gone' is not open"):
        await layer.receive_own("own.close!gone")
    layer.open_own("own.close!gone")  # it may be opened again: nothing of before is left
    with pytest.raises(trio.WouldBlock):
        await layer.receive_own_nowait("own.close!gone")


async def test_own_channels_are_checked(layer: BaseChannelLayer) -> None:
    """Only full process-specific names can be own channels, each opened once."""
    for name, rule in [
        ("own.bad!", "full process-specific name"),
        ("own-bad", "full process-specific name"),
        ("own bad!x", "only ASCII letters"),
    ]:
        with pytest.raises(TypeError, match=rule):
            layer.open_own(name)
    layer.open_own("own.twice!x")
    with pytest.raises(ValueError, match="already open"):
        layer.open_own("own.twice!x")
    with pytest.raises(ValueError, match="capacity must be an int"):
        layer.open_own("own.twice!y", capacity=0)
    assert "own" in layer.extensions


async def test_own_channel_expiry(layer: BaseChannelLayer, layer_clock: Any) -> None:
    """A message that waited for its own channel longer than the expiry is not received."""
    layer.open_own("own.expiry!c")
    await layer.send("own.expiry!c", {"old": True})
    await trio.sleep(EXPIRY + 0.5)
    await layer.send("own.expiry!c", {"old": False})
    with trio.fail_after(5):
        assert await layer.receive_own("own.expiry!c") == {"old": False}
