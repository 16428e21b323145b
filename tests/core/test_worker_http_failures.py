"""A failed http.request consumer is answered on its reply channel (in-memory layer, mock clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from layers import InMemoryChannelLayer
from trio_channels import ConsumeLater, Message, Worker, route, run_worker
from trio_channels.exceptions import RequestAborted

from ..helpers import assert_nothing, receive_now

StartWorker = Callable[..., Awaitable[Worker]]
REPLY = "interface.p!c"
START = {"status": 200, "headers": [[b"content-type", b"text/plain"]], "more_content": True}
CLOSED = {"content": b"", "more_content": False, "closed": True}


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    async with InMemoryChannelLayer(capacity=100) as opened:
        yield opened


@pytest.fixture
def start_worker(nursery: trio.Nursery, layer: InMemoryChannelLayer) -> StartWorker:
    async def start(consumer: Any, **options: Any) -> Worker:
        routing = [route(["http.request", "other"], consumer)]
        worker: Worker = await nursery.start(partial(run_worker, layer, routing, **options))
        return worker

    return start


async def replies(layer: InMemoryChannelLayer) -> list[dict[str, Any]]:
    """The replies for REPLY: the first within 10 s, then more until none comes for 1 s."""
    got = [(await receive_now(layer, ["interface.p!"], timeout=10))[1]]
    while True:
        with trio.move_on_after(1):
            got.append((await layer.receive(["interface.p!"]))[1])
            continue
        return got


async def test_raised_before_responding_is_500(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """Nothing sent: one complete 500 response."""

    async def consumer(message: Message) -> None:
        raise ValueError("boom")

    await start_worker(consumer)
    await layer.send("http.request", {"reply_channel": REPLY})
    (answer,) = await replies(layer)
    assert answer["status"] == 500 and answer["more_content"] is False
    assert answer["content"] == b"500 Internal Server Error\n"
    assert [b"content-length", str(len(answer["content"])).encode()] in answer["headers"]


async def test_timed_out_is_500(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """Cancelled by consumer_timeout: a 500 saying so."""

    async def consumer(message: Message) -> None:
        await trio.sleep_forever()

    await start_worker(consumer, consumer_timeout=5)
    await layer.send("http.request", {"reply_channel": REPLY})
    (answer,) = await replies(layer)
    assert answer["status"] == 500 and b"timed out" in answer["content"]


async def test_half_built_buffered_response_gives_way_to_the_500(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """Buffered parts of an unfinished response never go out; the 500 does (other sends do too)."""

    async def consumer(message: Message) -> None:
        await message.reply_channel.send(START)
        await message.reply_channel.send({"content": b"x", "more_content": True})
        await message.channel_layer.send("side", {"kept": True})
        raise ValueError("boom")

    await start_worker(consumer)
    await layer.send("http.request", {"reply_channel": REPLY})
    (answer,) = await replies(layer)
    assert answer["status"] == 500
    assert await receive_now(layer, ["side"]) == ("side", {"kept": True})


async def test_started_response_is_closed(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """Part of the response already sent: buffered parts follow, then a closed chunk aborts it."""

    async def consumer(message: Message) -> None:
        await message.reply_channel.send(START, immediately=True)
        await message.reply_channel.send({"content": b"buffered", "more_content": True})
        raise ValueError("boom")

    await start_worker(consumer)
    await layer.send("http.request", {"reply_channel": REPLY})
    assert await replies(layer) == [START, {"content": b"buffered", "more_content": True}, CLOSED]


@pytest.mark.parametrize("immediately", [False, True])
async def test_complete_response_stands(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    immediately: bool,
) -> None:
    """A complete response (sent or buffered) is all the client gets, even if the consumer raises."""
    complete = {"status": 200, "content": b"done"}

    async def consumer(message: Message) -> None:
        await message.reply_channel.send(complete, immediately=immediately)
        raise ValueError("boom")

    await start_worker(consumer)
    await layer.send("http.request", {"reply_channel": REPLY})
    assert await replies(layer) == [complete]


@pytest.mark.parametrize("error", [ConsumeLater(), RequestAborted("gone")])
async def test_not_failures(
    autojump: trio.testing.MockClock,
    layer: InMemoryChannelLayer,
    start_worker: StartWorker,
    error: Exception,
) -> None:
    """ConsumeLater (the message comes back) and RequestAborted (nobody to answer) send nothing."""
    calls: list[int] = []

    async def consumer(message: Message) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise error

    worker = await start_worker(consumer)
    await layer.send("http.request", {"reply_channel": REPLY})
    await assert_nothing(layer, ["interface.p!"], wait=2)
    assert worker.statistics().failed == 0


async def test_other_channels_get_no_answer(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer, start_worker: StartWorker
) -> None:
    """Only http.request consumers are answered: a message on another channel is just dropped."""

    async def consumer(message: Message) -> None:
        raise ValueError("boom")

    await start_worker(consumer)
    await layer.send("other", {"reply_channel": REPLY})
    await assert_nothing(layer, ["interface.p!"], wait=2)


async def test_cancelled_by_shutdown_is_503(
    autojump: trio.testing.MockClock, layer: InMemoryChannelLayer
) -> None:
    """A consumer still running when the grace period ends: its client gets a 503."""
    shutdown = trio.Event()

    async def consumer(message: Message) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        routing = [route("http.request", consumer)]
        await nursery.start(partial(run_worker, layer, routing, grace_period=3, shutdown=shutdown))
        await layer.send("http.request", {"reply_channel": REPLY})
        await trio.sleep(1)
        shutdown.set()
    (answer,) = await replies(layer)
    assert answer["status"] == 503
