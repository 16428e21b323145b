"""Many processes on the Redis layer, and faults: Redis killed and restarted, a worker killed."""

from __future__ import annotations

import logging
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from functools import partial

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from layers import from_url
from trio_channels import run_worker
from trio_channels.server import DEFAULT_CHANNEL_CAPACITY

from ..redis_server import RedisServer
from .conftest import StartServer, ws_url
from .processes import running

ROUTING = "benchmarks.app.routing"


async def _get_hello(client: httpx.AsyncClient, url: str) -> int:
    response = await client.get(url + "/hello")
    if response.status_code == 200:
        assert response.text == "Hello world! You asked for /hello"
    return response.status_code


async def test_interface_and_two_workers_chat(redis_server: RedisServer) -> None:
    """run --noworker + 2 workers on Redis: 20 clients in 2 rooms exchange 1,000 messages;
    each gets every message of its room and none of the other; GET /hello works too."""
    layer = ["--layer", redis_server.url]
    async with (
        running("run", ROUTING, "--noworker", "--bind", "127.0.0.1:0", *layer) as (_, url),
        running("worker", ROUTING, *layer, marker="worker listening on"),
        running("worker", ROUTING, *layer, marker="worker listening on"),
    ):
        async with httpx.AsyncClient() as client:
            assert await _get_hello(client, url) == 200
        rooms = {"red": 10, "blue": 10}
        per_client = 50
        received: dict[tuple[str, int], Counter[str]] = {}
        joined = trio.Semaphore(0)
        go = trio.Event()

        async def client(room: str, index: int) -> None:
            counts: Counter[str] = Counter()
            received[(room, index)] = counts
            expected = rooms[room] * per_client
            async with open_websocket_url(ws_url(url, f"/chat/{room}/")) as ws:
                joined.release()
                await go.wait()
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        for number in range(per_client):
                            await ws.send_message(f"{room}:{index}:{number}")
                            await trio.sleep(0.001)

                    nursery.start_soon(send)
                    while sum(counts.values()) < expected:
                        counts[(await ws.get_message()).split(":")[0]] += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for room, size in rooms.items():
                    for index in range(size):
                        nursery.start_soon(client, room, index)
                for _ in range(sum(rooms.values())):
                    await joined.acquire()
                await trio.sleep(0.3)  # let every group_add land before anyone talks
                go.set()
        for (room, _), counts in received.items():
            assert counts == Counter({room: rooms[room] * per_client})


@pytest.fixture
def redis_server_aof() -> Iterator[RedisServer]:
    """A redis-server of this test's own with AOF persistence: a restart keeps its data."""
    server = RedisServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_redis_outage_and_recovery(redis_server_aof: RedisServer, start_server: StartServer) -> None:
    """Redis (with persistence) killed while traffic flows between an interface and a worker
    that do not share a process: new HTTP gets 503, open WebSockets stay open, nothing
    crashes; within 5 s of Redis coming back, traffic flows again."""
    redis_server = redis_server_aof
    layer = from_url(redis_server.url, channel_capacity=DEFAULT_CHANNEL_CAPACITY)
    # The worker's own layer stands for another process: every message crosses Redis.
    async with from_url(redis_server.url, channel_capacity=DEFAULT_CHANNEL_CAPACITY) as worker_layer:
        async with trio.open_nursery() as workers:
            await workers.start(partial(run_worker, worker_layer, ROUTING))
            info = await start_server(ROUTING, layer=layer, workers=False)
            await _outage(redis_server, info.url)
            workers.cancel_scope.cancel()


async def _outage(redis_server: RedisServer, url: str) -> None:
    async with httpx.AsyncClient() as client, open_websocket_url(ws_url(url, "/echo/")) as ws:
        with trio.fail_after(10):
            await ws.send_message("before")
            assert await ws.get_message() == "before"
            assert await _get_hello(client, url) == 200

        redis_server.stop()
        with trio.fail_after(10):
            assert await _get_hello(client, url) == 503
            await ws.send_message("during")  # dropped (at most once), but the socket stays open
            await trio.sleep(1)
        assert ws.closed is None

        redis_server.start()
        recovered_at = None
        start = trio.current_time()
        with trio.fail_after(10):
            while recovered_at is None:
                if await _get_hello(client, url) == 200:
                    recovered_at = trio.current_time()
                else:
                    await trio.sleep(0.1)
            await ws.send_message("after")
            with trio.fail_after(5):
                message = await ws.get_message()
            assert message == "after"
        assert recovered_at - start < 5
        assert ws.closed is None


async def test_local_traffic_needs_no_redis(redis_server: RedisServer, start_server: StartServer) -> None:
    """Interface and workers in one process (issue 12, locality): a request and its reply never
    leave the process, so with Redis down HTTP is still answered and echo still echoes, and
    nothing is logged as lost."""
    layer = from_url(redis_server.url, channel_capacity=DEFAULT_CHANNEL_CAPACITY)
    info = await start_server(ROUTING, layer=layer)
    async with httpx.AsyncClient() as client, open_websocket_url(ws_url(info.url, "/echo/")) as ws:
        with trio.fail_after(10):
            assert await _get_hello(client, info.url) == 200
        redis_server.stop()
        with trio.fail_after(10):
            for number in range(20):
                assert await _get_hello(client, info.url) == 200
                await ws.send_message(f"down {number}")
                assert await ws.get_message() == f"down {number}"
        redis_server.start()


async def test_killed_worker_leaves_the_other_serving(redis_server: RedisServer) -> None:
    """A worker process killed mid-flight: the other worker keeps serving."""
    layer = ["--layer", redis_server.url]
    async with (
        running("run", ROUTING, "--noworker", "--bind", "127.0.0.1:0", "--http-timeout", "3", *layer) as (
            _,
            url,
        ),
        running("worker", ROUTING, *layer, marker="worker listening on") as (doomed, _),
        running("worker", ROUTING, *layer, marker="worker listening on"),
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = []
            async with trio.open_nursery() as nursery:

                async def load() -> None:
                    for _ in range(40):
                        statuses.append(await _get_hello(client, url))

                nursery.start_soon(load)
                await trio.sleep(0.1)
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
            # A request the killed worker held, or one Redis handed to its BLPOP before it
            # noticed the dead socket, is lost (at-most-once) and answered 503 after
            # http_timeout. Once Redis has dropped the dead client, every request succeeds.
            await trio.sleep(0.5)
            after = [await _get_hello(client, url) for _ in range(20)]
        assert after == [200] * 20
        assert statuses.count(200) >= 30


async def test_redis_restart_without_persistence_restarts_websockets(
    redis_server: RedisServer, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 11): Redis restarted without persistence forgets every group. The
    layer notices, the interface closes its WebSockets with 1012 (main port and --ws-bind)
    with a WARNING saying how to avoid it; the clients reconnect, their connect consumer
    re-adds them, and a room message reaches every one of them again."""
    layer = from_url(redis_server.url, channel_capacity=DEFAULT_CHANNEL_CAPACITY)
    info = await start_server(ROUTING, layer=layer, ws_bind=["127.0.0.1:0"])
    urls = [ws_url(base, "/chat/lobby/") for base in (info.url, info.ws_urls[0]) for _ in range(2)]

    async def everyone_hears(clients: list[WebSocketConnection], text: str) -> None:
        await clients[0].send_message(text)
        for client in clients:
            assert await client.get_message() == text

    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(open_websocket_url(url)) for url in urls]
            await everyone_hears(clients, "before")

            caplog.clear()
            redis_server.stop()
            redis_server.start()
            for client in clients:
                with pytest.raises(ConnectionClosed) as closed:
                    await client.get_message()
                assert closed.value.reason.code == 1012
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("appendonly yes" in message for message in warnings), warnings

        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(open_websocket_url(url)) for url in urls]
            await everyone_hears(clients, "after")
