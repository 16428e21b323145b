"""Behaviour specific to the in-memory layer (its timer task, lifetime, no-I/O twins)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from layers import InMemoryChannelLayer


async def test_timer_sweeps_abandoned_channels(autojump: trio.testing.MockClock) -> None:
    """Messages nobody reads are dropped at their expiry, and their channel leaves its groups."""
    async with InMemoryChannelLayer(expiry=10) as layer:
        await layer.group_add("g", "gone!c1")
        await layer.send("gone!c1", {"n": 1})
        await layer.send("abandoned", {"n": 1})
        assert (await layer.statistics()).messages_pending == 2
        await trio.sleep(10.5)
        assert (await layer.statistics()).messages_pending == 0
        assert await layer.group_channels("g") == []


async def test_timer_sleeps_when_idle(autojump: trio.testing.MockClock) -> None:
    """An idle layer's timer waits without waking up (the clock can jump a day at once)."""
    async with InMemoryChannelLayer() as layer:
        await trio.sleep(86400)
        await layer.send("x", {})
        assert await layer.receive_nowait(["x"]) == ("x", {})


async def test_twins_are_no_checkpoints() -> None:
    """In memory, send_nowait and receive_nowait never yield, even when cancelled."""
    layer = InMemoryChannelLayer()
    with trio.CancelScope() as scope:
        scope.cancel()
        with trio.testing.assert_no_checkpoints():
            await layer.send_nowait("something", {"a": 1})
            assert await layer.receive_nowait(["something"]) == ("something", {"a": 1})
            with pytest.raises(trio.WouldBlock):
                await layer.receive_nowait(["something"])


async def test_delay_needs_an_open_layer() -> None:
    """A delayed send on a layer that was never entered says how to fix it."""
    with pytest.raises(RuntimeError, match="async with InMemoryChannelLayer"):
        await InMemoryChannelLayer().send("x", {}, delay=1)


async def test_layer_is_entered_once() -> None:
    """Entering an open layer again is an error, not a second timer."""
    async with InMemoryChannelLayer() as layer:
        with pytest.raises(RuntimeError, match="already open"):
            await layer.__aenter__()


async def test_errors_in_the_body_come_out_unwrapped() -> None:
    """An exception inside 'async with layer' reaches the caller as itself, not a group."""
    with pytest.raises(KeyError):
        async with InMemoryChannelLayer():
            raise KeyError("mine")


async def test_single_reader_channels_leave_no_trace(autojump: trio.testing.MockClock) -> None:
    """Thousands of new_channel names, each used once, do not accumulate state."""
    async with InMemoryChannelLayer() as layer:
        for _ in range(1000):
            name = await layer.new_channel("body?")
            await layer.send(name, {})
            await layer.receive([name])
        assert layer.state.queues == {}


async def test_retry_when_full(autojump: trio.testing.MockClock) -> None:
    """retry_when_full waits out a full channel that drains, and gives up on one that does not."""
    from functools import partial

    from layers.base import retry_when_full

    layer = InMemoryChannelLayer(capacity=1)
    await layer.send_nowait("busy", {"n": 0})

    async def drain_later() -> None:
        await trio.sleep(0.3)
        await layer.receive_nowait(["busy"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_later)
        started = trio.current_time()
        await retry_when_full(partial(layer.send, "busy", {"n": 1}), timeout=5)
        assert 0.3 <= trio.current_time() - started < 0.6
    assert await layer.receive_nowait(["busy"]) == ("busy", {"n": 1})
    await layer.send_nowait("busy", {"n": 2})
    with pytest.raises(trio.TooSlowError, match=r"stayed full for 1\.0 s"):
        await retry_when_full(partial(layer.send, "busy", {"n": 3}), timeout=1)


async def test_a_queued_owned_message_is_not_copied() -> None:
    """In memory an owned message waits in its queue as it is: its receiver gets the very dict
    even when it comes later (a user's send is decoded afresh for each receive)."""
    layer = InMemoryChannelLayer()
    owned = {"bytes": b"frame", "order": 3}
    await layer.send_owned("later!c1", owned)
    await layer.send("later!c1", {"n": "copied"})
    channel, message = await layer.receive_nowait(["later!"])
    assert channel == "later!c1" and message is owned
    assert (await layer.statistics("later!c1")).messages_count == 2


async def test_waiting_for_room_is_woken_not_polled(autojump: trio.testing.MockClock) -> None:
    """A sender waiting for room sleeps until the receive that makes room wakes it: no timer
    runs meanwhile, so the autojumping clock jumps an hour at once (retry_when_full's backoff
    would wake it every 200 ms), and it is sent at the very moment of that receive. (An expiry
    makes room too: the timer's sweep wakes it then.)"""
    async with InMemoryChannelLayer(capacity=1, expiry=7200) as layer:
        await layer.send("busy", {"n": 0})
        sent_at: list[float] = []

        async def waiting_sender() -> None:
            await layer.send_owned("busy", {"n": 1}, wait=True)
            sent_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_sender)
            await trio.testing.wait_all_tasks_blocked()
            # Nothing due before the first message's expiry: no retry timer is running.
            assert trio.lowlevel.current_statistics().seconds_to_next_deadline > 7000
            start = trio.current_time()
            await trio.sleep(3600)  # an hour of waiting: one jump, no wake-ups in between
            assert sent_at == []
            taken_at = trio.current_time()
            assert await layer.receive_nowait(["busy"]) == ("busy", {"n": 0})
        assert sent_at == [taken_at] and taken_at - start == 3600
        assert await layer.receive_nowait(["busy"]) == ("busy", {"n": 1})


async def test_ten_thousand_senders_wait_their_turn(autojump: trio.testing.MockClock) -> None:
    """Issue 12 target 5 at the layer: 10,000 senders at once into a channel of 1,000, drained
    by 100 receivers: every message arrives exactly once and none is refused. (Each receive
    wakes one waiting sender, never all of them, so this takes about a second.)"""
    async with InMemoryChannelLayer(capacity=1000) as layer:
        got: list[int] = []
        done = trio.Event()

        async def sender(number: int) -> None:
            await layer.send_owned("websocket.receive", {"n": number}, wait=True)

        async def receiver() -> None:
            while True:
                _, message = await layer.receive(["websocket.receive"])
                got.append(message["n"])
                if len(got) == 10_000:
                    done.set()
                await trio.sleep(0.001)

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for number in range(10_000):
                    nursery.start_soon(sender, number)
                await trio.testing.wait_all_tasks_blocked()
                for _ in range(100):
                    nursery.start_soon(receiver)
                await done.wait()
                nursery.cancel_scope.cancel()
        assert sorted(got) == list(range(10_000))
