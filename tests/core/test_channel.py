"""Channel, Group and Message outside and inside a layer context."""

from __future__ import annotations

import pytest
import trio

from layers import ChannelFull, InMemoryChannelLayer
from trio_channels import (
    CannotRecover,
    Channel,
    Group,
    GroupHistory,
    GroupSendReport,
    Message,
    NoReplyChannel,
    current_layer,
    use_layer,
)
from trio_channels.channel import Outbox, use_outbox

from ..helpers import receive_now


async def test_no_layer_context_says_how_to_fix_it() -> None:
    """Using Channel/Group with no layer anywhere is a RuntimeError naming both fixes."""
    with pytest.raises(
        RuntimeError,
        match=r"pass layer=\.\.\. to Channel/Group, or wrap the code in 'with trio_channels.use_layer",
    ):
        await Channel("x").send({})
    with pytest.raises(RuntimeError, match="no current channel layer"):
        await Group("g").send({})


async def test_explicit_layer_and_use_layer() -> None:
    """layer= wins; use_layer() sets the current layer for the block."""
    layer = InMemoryChannelLayer()
    await Channel("a", layer=layer).send({"n": 1})
    assert await receive_now(layer, ["a"]) == ("a", {"n": 1})
    with use_layer(layer):
        assert current_layer() is layer
        await Channel("b").send({"n": 2})
        await Group("g").add(Channel("b"))
        await Group("g").add("c")
        assert sorted(await Group("g").channels()) == ["b", "c"]
        await Group("g").discard("c")
        await Group("g").send({"n": 3})
    assert await receive_now(layer, ["b"]) == ("b", {"n": 2})
    assert await receive_now(layer, ["b"]) == ("b", {"n": 3})
    with pytest.raises(RuntimeError):
        current_layer()


async def test_outside_a_consumer_sends_are_immediate() -> None:
    """Outside a consumer a send reaches the layer at once (and can raise ChannelFull)."""
    layer = InMemoryChannelLayer(capacity=1)
    await Channel("a", layer=layer).send({})
    with pytest.raises(ChannelFull):
        await Channel("a", layer=layer).send({})


def test_names_are_validated() -> None:
    """Bad names fail when the Channel or Group is made; bytes names are decoded."""
    with pytest.raises(TypeError, match="channel name 'bad name'"):
        Channel("bad name")
    with pytest.raises(TypeError, match="group name 'a!b'"):
        Group("a!b")
    assert Channel(b"ascii.name").name == "ascii.name"
    assert Channel("x") == Channel("x") and len({Channel("x"), Channel("x")}) == 1
    assert str(Channel("x")) == "x"


async def test_non_dict_content_is_a_type_error() -> None:
    """Sending something that is not a dict names the channel and the type."""
    layer = InMemoryChannelLayer()
    with pytest.raises(TypeError, match=r"Channel\('x'\).send\(\) needs a dict message, not list"):
        await Channel("x", layer=layer).send([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Group\('g'\).send\(\) needs a dict message, not str"):
        await Group("g", layer=layer).send("hi")  # type: ignore[arg-type]


def test_message_is_dict_like() -> None:
    """Message reads and writes its content; reply_channel is a Channel."""
    layer = InMemoryChannelLayer()
    message = Message({"text": "hi", "reply_channel": "interface.p!c"}, Channel("websocket.receive"), layer)
    assert message["text"] == "hi" and message.get("bytes") is None and "text" in message
    assert message.reply_channel == Channel("interface.p!c")
    message["extra"] = 1
    assert dict(message.items())["extra"] == 1
    assert sorted(message.keys()) == ["extra", "reply_channel", "text"]
    copied = message.copy()
    copied["text"] = "changed"
    assert message["text"] == "hi"
    assert message.has_reply_channel


def test_a_message_without_a_reply_channel_says_so_when_asked_for_it() -> None:
    """``reply_channel`` is never None: a message without one raises NoReplyChannel, an
    AttributeError naming the channel (so getattr(message, "reply_channel", None) still works)."""
    bare = Message({}, Channel("chat-messages"), InMemoryChannelLayer())
    assert not bare.has_reply_channel
    with pytest.raises(NoReplyChannel, match=r"the message on 'chat-messages' has no reply_channel"):
        bare.reply_channel  # noqa: B018 - the access is the test
    assert isinstance(NoReplyChannel("x"), AttributeError)
    assert getattr(bare, "reply_channel", None) is None


# ------------------------------------------------------------------ presence, history, reports


async def test_group_presence_history_and_reports() -> None:
    """Group.add(info=), presence(), history() and send() returning the layer's report."""
    layer = InMemoryChannelLayer(history={"room-*": {"size": 10, "ttl": 60}})
    room = Group("room-a", layer=layer)
    await room.add(Channel("p!ann"), info={"name": "Ann"})
    await room.add("p!bob")
    assert await room.presence() == {"p!ann": {"name": "Ann"}, "p!bob": None}
    report = await room.send({"text": "hi"}, exclude=Channel("p!ann"))
    assert isinstance(report, GroupSendReport)
    assert (report.delivered, report.offset) == (1, 1)
    history = await room.history()
    assert history == GroupHistory(messages=[(1, {"text": "hi"})], epoch=report.epoch, offset=1)
    assert (await room.send({"text": "all"}, exclude=["p!ann", Channel("p!bob")])).delivered == 0  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="channel name 'no good'"):
        await room.send({"text": "x"}, exclude="no good")


async def test_group_add_recover() -> None:
    """Group.add(recover=(epoch, offset)) queues what was missed and returns it; an old
    epoch raises CannotRecover (the channel is added all the same)."""
    layer = InMemoryChannelLayer(history={"room-*": {"size": 10, "ttl": 60}})
    room = Group("room-r", layer=layer)
    first = await room.send({"n": 1})
    await room.send({"n": 2})
    assert first is not None and first.epoch is not None
    replay = await room.add("p!late", recover=(first.epoch, 1))
    assert replay.messages == [(2, {"n": 2})]
    _, message = await receive_now(layer, ["p!"])
    assert message == {"n": 2, "__history__": {"group": "room-r", "epoch": first.epoch, "offset": 2}}
    with pytest.raises(CannotRecover, match="epoch changed") as info:
        await room.add("p!stale", recover=("old-epoch", 1))
    assert (info.value.epoch, info.value.offset) == (first.epoch, 2)
    assert "p!stale" in await room.channels()
    assert [offset for offset, _ in (await room.add("p!new", recover=1)).messages] == [2]


async def test_group_send_in_a_consumer_is_buffered_with_its_exclude() -> None:
    """Inside a consumer Group.send returns None (buffered), and the flush honours exclude;
    a message already carrying a position is refused at the call."""
    layer = InMemoryChannelLayer()
    outbox = Outbox(layer)
    await layer.group_add("g", "p!me")
    await layer.group_add("g", "p!you")
    with use_layer(layer), use_outbox(outbox):
        assert await Group("g").send({"text": "hi"}, exclude="p!me") is None
        with pytest.raises(ValueError, match=r"message\['__history__'\] is set by the layer"):
            await Group("g").send({"text": "again", "__history__": {}})
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(["p!"])  # nothing before the flush
    await outbox.flush()
    assert await receive_now(layer, ["p!"]) == ("p!you", {"text": "hi"})
    with pytest.raises(trio.WouldBlock):
        await layer.receive_nowait(["p!"])
