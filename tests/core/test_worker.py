"""The worker and consumer atomicity, on the real in-memory layer under a mock clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from layers import ChannelLayerUnavailable, InMemoryChannelLayer
from trio_channels import (
    Channel,
    ConsumeLater,
    DenyConnection,
    Group,
    Message,
    Worker,
    route,
    run_worker,
)

from ..helpers import assert_nothing, receive_now

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    async with InMemoryChannelLayer(capacity=2000) as opened:
        yield opened


@pytest.fixture
def start_worker(nursery: trio.Nursery, layer: InMemoryChannelLayer) -> StartWorker:
    async def start(routing: Any, **options: Any) -> Worker:
        worker: Worker = await nursery.start(partial(run_worker, layer, routing, **options))
        return worker

    return start


async def test_sends_are_buffered_until_the_consumer_finishes(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """A consumer's reply reaches the layer only when the consumer returns."""
    inside, release = trio.Event(), trio.Event()

    async def consumer(message: Message) -> None:
        await message.reply_channel.send({"text": "one"})
        await Group("g").send({"text": "group"})
        await Channel("side").send({"text": "two"})
        inside.set()
        await release.wait()

    await layer.group_add("g", "reply!g")
    await start_worker([route("work", consumer)], concurrency=1)
    await layer.send("work", {"reply_channel": "reply!a"})
    await inside.wait()
    await assert_nothing(layer, ["reply!", "side"])
    release.set()
    assert await receive_now(layer, ["reply!"]) == ("reply!a", {"text": "one"})
    assert await receive_now(layer, ["reply!"]) == ("reply!g", {"text": "group"})
    assert await receive_now(layer, ["side"]) == ("side", {"text": "two"})


async def test_immediately_bypasses_the_buffer(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """immediately=True sends while the consumer still runs."""
    release = trio.Event()

    async def consumer(message: Message) -> None:
        await message.reply_channel.send({"text": "now"}, immediately=True)
        await release.wait()

    await start_worker([route("work", consumer)])
    await layer.send("work", {"reply_channel": "reply!a"})
    assert await receive_now(layer, ["reply!"]) == ("reply!a", {"text": "now"})
    release.set()


async def test_buffer_is_flushed_when_the_consumer_raises(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sends made before an exception are still delivered, and the error is logged."""

    async def consumer(message: Message) -> None:
        await message.reply_channel.send({"text": "before"})
        raise ValueError("boom")

    worker = await start_worker([route("work", consumer)])
    await layer.send("work", {"reply_channel": "reply!a"})
    assert await receive_now(layer, ["reply!"]) == ("reply!a", {"text": "before"})
    assert "error in consumer" in caplog.text and "ValueError: boom" in caplog.text
    assert worker.statistics().failed == 1


async def test_accept_then_store_is_race_free(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """The seed's connect pattern: the accept arrives only after the room was stored."""
    sessions: dict[str, str] = {}

    async def ws_connect(message: Message) -> None:
        await message.reply_channel.send({"accept": True})
        await trio.sleep(1)  # e.g. a slow session store
        sessions[message["reply_channel"]] = message["path"].strip("/")

    await start_worker([route("websocket.connect", ws_connect)])
    await layer.send("websocket.connect", {"reply_channel": "interface.p!c1", "path": "/lobby/", "order": 0})
    assert await receive_now(layer, ["interface.p!"]) == ("interface.p!c1", {"accept": True})
    assert sessions == {"interface.p!c1": "lobby"}


async def test_consume_later_requeues(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """ConsumeLater puts the message back; it runs again until it succeeds."""
    attempts: list[int] = []

    async def consumer(message: Message) -> None:
        attempts.append(message.get("__retries__", 0))
        if len(attempts) < 3:
            raise ConsumeLater
        await Channel("done").send({"attempts": len(attempts)})

    worker = await start_worker([route("later", consumer)])
    await layer.send("later", {"value": 1})
    assert await receive_now(layer, ["done"]) == ("done", {"attempts": 3})
    assert attempts == [0, 1, 2]
    assert worker.statistics().requeued == 2


async def test_consume_later_forever_is_dropped_after_ten(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer that always raises ConsumeLater runs 11 times, then the message is dropped."""
    calls = 0

    async def consumer(message: Message) -> None:
        nonlocal calls
        calls += 1
        raise ConsumeLater

    await start_worker([route("later", consumer)])
    await layer.send("later", {})
    await trio.sleep(1)
    assert calls == 11
    assert "after 10 ConsumeLater retries" in caplog.text


async def test_deny_connection(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """DenyConnection on websocket.connect sends {'close': True} to the reply channel."""

    async def connect(message: Message) -> None:
        raise DenyConnection

    await start_worker([route("websocket.connect", connect)])
    await layer.send("websocket.connect", {"reply_channel": "interface.p!c1", "path": "/", "order": 0})
    assert await receive_now(layer, ["interface.p!"]) == ("interface.p!c1", {"close": True})


async def test_misused_deny_connection_is_logged(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DenyConnection outside websocket.connect is logged and the worker goes on."""

    async def receive(message: Message) -> None:
        if message["text"] == "deny":
            raise DenyConnection
        await message.reply_channel.send({"text": "ok"})

    await start_worker([route("websocket.receive", receive)])
    await layer.send("websocket.receive", {"reply_channel": "interface.p!c1", "text": "deny"})
    await layer.send("websocket.receive", {"reply_channel": "interface.p!c1", "text": "fine"})
    assert await receive_now(layer, ["interface.p!"]) == ("interface.p!c1", {"text": "ok"})
    assert "only applies to websocket.connect" in caplog.text


class Weird(BaseException):
    """A BaseException that is not cancellation."""


@pytest.mark.parametrize("error", [ValueError("x"), SystemExit(3), Weird(), GeneratorExit()])
async def test_nothing_a_consumer_raises_stops_the_worker(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
) -> None:
    """Exceptions, including BaseException subclasses, fail only their own message."""

    async def consumer(message: Message) -> None:
        if message["fail"]:
            raise error
        await Channel("out").send({"ok": True})

    worker = await start_worker([route("work", consumer)])
    await layer.send("work", {"fail": True})
    await layer.send("work", {"fail": False})
    assert await receive_now(layer, ["out"]) == ("out", {"ok": True})
    # The two messages run in two consumer tasks: the reply may come before the failure is counted.
    await trio.testing.wait_all_tasks_blocked()
    assert worker.statistics().failed == 1
    assert type(error).__name__ in caplog.text


async def test_bad_message_fails_only_its_consumer(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer sending a bad message gets the TypeError at the send call; others run on."""

    async def consumer(message: Message) -> None:
        if message["bad"]:
            await Channel("out").send({"value": {1, 2}})
        await Channel("out").send({"value": "fine"})

    await start_worker([route("work", consumer)])
    await layer.send("work", {"bad": True})
    await layer.send("work", {"bad": False})
    assert await receive_now(layer, ["out"]) == ("out", {"value": "fine"})
    await assert_nothing(layer, ["out"])
    assert "message['value'] is invalid: set" in caplog.text


async def test_consumer_deadline_is_the_message_expiry(
    autojump: trio.testing.MockClock, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer that hangs is cancelled when its message expires."""
    async with InMemoryChannelLayer(expiry=5) as layer:
        cancelled_at: list[float] = []

        async def hang(message: Message) -> None:
            try:
                await trio.sleep_forever()
            finally:
                cancelled_at.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            worker = await nursery.start(partial(run_worker, layer, [route("hang", hang)]))
            sent_at = trio.current_time()
            await layer.send("hang", {})
            await trio.sleep(10)
            assert cancelled_at == [pytest.approx(sent_at + 5)]
            assert worker.statistics().timed_out == 1
            nursery.cancel_scope.cancel()
    assert "was cancelled: its message expired" in caplog.text


async def test_one_consumer_task_goes_on_after_a_timeout(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """The consumer task whose message's deadline cancelled it (also one that swallowed the
    cancel) takes the next messages, each with a deadline of its own."""
    seen: list[tuple[str, float]] = []

    async def work(message: Message) -> None:
        start = trio.current_time()
        try:
            await trio.sleep(message["sleep"])
        except trio.Cancelled:
            seen.append((f"cancelled {message['n']}", trio.current_time() - start))
            if message["swallow"]:
                return
            raise
        seen.append((f"done {message['n']}", trio.current_time() - start))
        await message.reply_channel.send({"n": message["n"]})

    worker = await start_worker([route("work", work)], concurrency=1, consumer_timeout=2)
    plan = [(1, 5, False), (2, 1, False), (3, 5, True), (4, 1.5, False), (5, 1.5, False)]
    for n, sleep, swallow in plan:
        await layer.send("work", {"n": n, "sleep": sleep, "swallow": swallow, "reply_channel": "reply!a"})
    await trio.sleep(20)
    assert seen == [
        ("cancelled 1", pytest.approx(2)),
        ("done 2", pytest.approx(1)),
        ("cancelled 3", pytest.approx(2)),
        ("done 4", pytest.approx(1.5)),
        ("done 5", pytest.approx(1.5)),
    ]
    assert [(await receive_now(layer, ["reply!"]))[1]["n"] for _ in range(3)] == [2, 4, 5]
    stats = worker.statistics()
    assert (stats.timed_out, stats.consumed, stats.running) == (1, 4, 0)


async def test_consumer_timeout_overrides(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """consumer_timeout sets the deadline from the consumer's start."""
    cancelled_at: list[float] = []

    async def hang(message: Message) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    await start_worker([route("hang", hang)], consumer_timeout=2)
    start = trio.current_time()
    await layer.send("hang", {})
    await trio.sleep(5)
    assert cancelled_at == [pytest.approx(start + 2)]


async def test_worker_stops_pulling_when_busy(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """With every slot busy, the rest stay on the layer for other workers."""
    release = trio.Event()

    async def slow(message: Message) -> None:
        await release.wait()

    worker = await start_worker([route("slow", slow)], concurrency=2)
    for _ in range(5):
        await layer.send("slow", {})
    await trio.sleep(1)
    assert worker.statistics().running == 2
    assert (await layer.statistics("slow")).messages_pending == 3
    release.set()
    await trio.sleep(1)
    assert worker.statistics().consumed == 5


async def test_expired_messages_are_never_started(
    autojump: trio.testing.MockClock, start_worker: StartWorker
) -> None:
    """A message that expires while every slot is busy is never consumed."""
    async with InMemoryChannelLayer(expiry=5) as layer:
        started: list[int] = []

        async def slow(message: Message) -> None:
            started.append(message["n"])
            await trio.sleep(4)

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_worker, layer, [route("q", slow)], concurrency=1))
            await layer.send("q", {"n": 1})
            await trio.sleep(0.5)
            await layer.send("q", {"n": 2})  # waits behind n=1 (3.5 s), runs
            await layer.send("q", {"n": 3})  # would start at 7.5 s, past its expiry at 5.5 s
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert started == [1, 2]


async def test_unrouted_messages_are_logged_and_dropped(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message no route matches is logged, and the worker goes on."""

    async def consumer(message: Message) -> None:
        await Channel("out").send({"ok": True})

    worker = await start_worker([route("work", consumer, kind=r"^good$")])
    await layer.send("work", {"kind": "bad"})
    await layer.send("work", {"kind": "good"})
    assert await receive_now(layer, ["out"]) == ("out", {"ok": True})
    assert worker.statistics().unrouted == 1
    assert "no route matches a message on 'work'" in caplog.text


async def test_verbose_logs_each_message(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG (-v 2) each message's channel and consumer are logged."""
    caplog.set_level(logging.DEBUG, logger="trio_channels")

    async def consumer(message: Message) -> None:
        await Channel("out").send({})

    await start_worker([route("work", consumer)])
    await layer.send("work", {})
    await receive_now(layer, ["out"])
    assert "work -> tests.core.test_worker.test_verbose_logs_each_message.<locals>.consumer" in caplog.text


async def test_full_channel_at_flush_is_logged(
    autojump: trio.testing.MockClock, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply channel that stays full is retried, then reported; the worker carries on."""
    async with InMemoryChannelLayer(channel_capacity={"full": 1}) as layer:
        await layer.send("full", {"n": 0})

        async def consumer(message: Message) -> None:
            if message["target"] == "full":
                await Channel("full").send({"n": 1})
            else:
                await Channel("out").send({"ok": True})

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_worker, layer, [route("work", consumer)]))
            await layer.send("work", {"target": "full"})
            await layer.send("work", {"target": "out"})
            assert await receive_now(layer, ["out"]) == ("out", {"ok": True})
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
    assert "channel 'full' stayed full" in caplog.text


class FlakyLayer(InMemoryChannelLayer):
    """The in-memory layer with the worker's first receives failing, like a Redis that is down
    (or, with *bug*, failing the way a bug in a layer does)."""

    failures: int = 3
    bug: bool = False

    async def receive_with_deadline(self, channels: Any) -> tuple[str, dict[str, Any], float]:
        if self.failures and "work" in channels:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            if self.bug:
                raise KeyError("a bug in the layer")
            raise ChannelLayerUnavailable("layer is down")
        return await super().receive_with_deadline(channels)


async def test_layer_errors_are_retried(
    autojump: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Receive errors are logged and retried with backoff; the worker then serves normally."""
    caplog.set_level(logging.INFO, logger="trio_channels")
    async with FlakyLayer() as layer:

        async def consumer(message: Message) -> None:
            await Channel("out").send({"ok": True})

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_worker, layer, [route("work", consumer)], concurrency=1))
            await layer.send("work", {})
            assert await receive_now(layer, ["out"], timeout=10) == ("out", {"ok": True})
            nursery.cancel_scope.cancel()
    # Logged once (not once per consumer task or per retry), then the recovery.
    assert caplog.text.count("channel layer error (ChannelLayerUnavailable: layer is down)") == 1
    assert "channel layer is back after 3 failed receive(s)" in caplog.text


async def test_a_bug_in_the_layer_is_not_retried(autojump: trio.testing.MockClock) -> None:
    """Regression: an error other than ChannelLayerUnavailable from the layer stops the worker
    (it used to be retried forever, with a warning every 50 failures)."""

    async def consumer(message: Message) -> None:
        pass

    layer = FlakyLayer()
    layer.bug = True
    async with layer:
        bug = pytest.RaisesExc(KeyError, match="a bug in the layer")
        with trio.fail_after(60), pytest.RaisesGroup(bug, allow_unwrapped=True, flatten_subgroups=True):
            await run_worker(layer, [route("work", consumer)], concurrency=1)


async def test_graceful_shutdown(autojump: trio.testing.MockClock, layer: InMemoryChannelLayer) -> None:
    """On shutdown the worker stops pulling and lets running consumers finish."""
    shutdown = trio.Event()
    finished: list[int] = []

    async def consumer(message: Message) -> None:
        await trio.sleep(2)
        finished.append(message["n"])

    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(run_worker, layer, [route("work", consumer)], concurrency=1, shutdown=shutdown)
        )
        await layer.send("work", {"n": 1})
        await layer.send("work", {"n": 2})
        await trio.sleep(1)
        shutdown.set()
    assert finished == [1]
    assert (await layer.statistics("work")).messages_pending == 1


async def test_grace_period_ends_in_cancellation(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer
) -> None:
    """Consumers still running after the grace period are cancelled."""
    shutdown = trio.Event()

    async def consumer(message: Message) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(run_worker, layer, [route("work", consumer)], grace_period=3, shutdown=shutdown)
        )
        await layer.send("work", {})
        await trio.sleep(1)
        shutdown.set()
        stopped_at = trio.current_time()
    assert trio.current_time() == pytest.approx(stopped_at + 3)


async def test_only_and_exclude_channels(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """--only-channels then --exclude-channels globs pick what the worker listens on."""

    async def consumer(message: Message) -> None: ...

    worker = await start_worker(
        [route(["a.one", "a.two", "b.one"], consumer)],
        only_channels=["a.*", "websocket.*"],
        exclude_channels=["*.two"],
    )
    assert worker.channels == ["a.one", "websocket.connect", "websocket.disconnect", "websocket.receive"]


async def test_startup_errors(layer: InMemoryChannelLayer) -> None:
    """Bad routing and options fail before the worker starts, with clear messages."""
    with pytest.raises(ImportError, match=r"tests\.core\.nowhere"):
        await run_worker(layer, [route("x", "tests.core.nowhere.consumer")])
    with pytest.raises(ValueError, match="no channels to listen on"):
        await run_worker(layer, [], only_channels=["nothing.*"])
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        await run_worker(layer, [], concurrency=0)


async def test_mixed_load_exactly_once(autojump: trio.testing.MockClock, start_worker: StartWorker) -> None:
    """1,000 messages over 10 channels at concurrency 50, among failing, hanging and
    ConsumeLater-forever consumers: each good message is consumed exactly once."""
    async with InMemoryChannelLayer(capacity=2000, expiry=30) as layer:
        seen: dict[int, int] = {}

        async def good(message: Message) -> None:
            await trio.sleep(0.01 * (message["n"] % 7))
            seen[message["n"]] = seen.get(message["n"], 0) + 1

        async def raises(message: Message) -> None:
            raise RuntimeError("bad consumer")

        async def hangs(message: Message) -> None:
            await trio.sleep_forever()

        async def later(message: Message) -> None:
            raise ConsumeLater

        channels = [f"load.{index}" for index in range(10)]
        routing = [
            route(channels, raises, kind=r"^raise$"),
            route(channels, hangs, kind=r"^hang$"),
            route(channels, later, kind=r"^later$"),
            route(channels, good, kind=r"^good$"),
        ]
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(
                partial(run_worker, layer, routing, concurrency=50, consumer_timeout=5)
            )
            good_count = 0
            for n in range(1000):
                kind = {0: "raise", 1: "hang", 2: "later"}.get(n % 50, "good")
                good_count += kind == "good"
                await layer.send(channels[n % 10], {"n": n, "kind": kind})
            await trio.sleep(60)
            stats = worker.statistics()
            nursery.cancel_scope.cancel()
        assert len(seen) == good_count == 940
        assert set(seen.values()) == {1}
        assert stats.failed == 20 + 20  # raised, and ConsumeLater given up
        assert stats.timed_out == 20
