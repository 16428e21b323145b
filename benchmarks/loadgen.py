"""A load generator for any server speaking the benchmark app's protocol (see benchmarks/app.py).

    python -m benchmarks.loadgen http://127.0.0.1:8000 --scenario echo --connections 50 --seconds 5

Scenarios (one JSON line each):
* ``http``: keep-alive ``GET /hello`` loops on N connections -> requests/s;
* ``echo``: N WebSockets on ``/echo/``, each sending and awaiting its echo -> messages/s with
  p50/p99 round-trip milliseconds;
* ``fanout``: N WebSockets in one ``/chat/<room>/``; one of them broadcasts K messages ->
  deliveries/s (messages received by all members together per second).

Traffic goes only to the URL given, meant to be a loopback address. Every loop is bounded
by ``--seconds`` (and fan-out by ``--messages``) and the run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.parse
from typing import Any

import trio
from trio_websocket import open_websocket_url

REQUEST = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _http_loop(host: str, port: int, stop_at: float, counts: list[int]) -> None:
    stream = await trio.open_tcp_stream(host, port)
    buffer = b""
    try:
        while time.perf_counter() < stop_at:
            await stream.send_all(REQUEST)
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"unexpected response {head[:40]!r}")
            while len(buffer) < length:
                buffer += await stream.receive_some(65536)
            buffer = buffer[length:]
            counts[0] += 1
    finally:
        await stream.aclose()


async def scenario_http(url: str, connections: int, seconds: float) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    counts = [0]
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_http_loop, parts.hostname, parts.port, start + seconds, counts)
    elapsed = time.perf_counter() - start
    return {"scenario": "http", "requests_per_s": round(counts[0] / elapsed, 1), "connections": connections}


async def scenario_echo(url: str, connections: int, seconds: float) -> dict[str, Any]:
    ws = url.replace("http://", "ws://", 1)
    latencies: list[float] = []
    start = time.perf_counter()
    stop_at = start + seconds

    async def client() -> None:
        async with open_websocket_url(ws + "/echo/", message_queue_size=16) as socket:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                await socket.send_message("hello")
                await socket.get_message()
                latencies.append(time.perf_counter() - sent)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(client)
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [0.0]
    return {
        "scenario": "echo",
        "messages_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1 if len(ordered) > 1 else 0] * 1000, 2),
        "connections": connections,
    }


async def scenario_fanout(url: str, connections: int, seconds: float, messages: int) -> dict[str, Any]:
    ws = url.replace("http://", "ws://", 1)
    room = f"/chat/bench{int(time.time() * 1000) % 100000}/"
    received = [0]
    all_connected = trio.Event()
    connected = [0]
    done = trio.Event()
    expected = connections * messages

    async def member(index: int) -> None:
        async with open_websocket_url(ws + room, message_queue_size=64) as socket:
            connected[0] += 1
            if connected[0] == connections:
                all_connected.set()
            if index == 0:
                await all_connected.wait()
                await trio.sleep(0.2)  # let every group_add land
                for number in range(messages):
                    await socket.send_message(f"m{number}")
            with trio.move_on_at(deadline):
                while True:
                    await socket.get_message()
                    received[0] += 1
                    if received[0] == expected:
                        done.set()
                        return

    start = time.perf_counter()
    deadline = trio.current_time() + seconds + 30
    async with trio.open_nursery() as nursery:
        for index in range(connections):
            nursery.start_soon(member, index)
        await all_connected.wait()
        began = time.perf_counter()
        with trio.move_on_at(deadline):
            await done.wait()
        elapsed = time.perf_counter() - began
        nursery.cancel_scope.cancel()
    del start
    return {
        "scenario": "fanout",
        "deliveries_per_s": round(received[0] / elapsed, 1),
        "delivered": received[0],
        "expected": expected,
        "members": connections,
    }


async def run(url: str, scenario: str, connections: int, seconds: float, messages: int) -> dict[str, Any]:
    if scenario == "http":
        return await scenario_http(url, connections, seconds)
    if scenario == "echo":
        return await scenario_echo(url, connections, seconds)
    return await scenario_fanout(url, connections, seconds, messages)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--scenario", choices=("http", "echo", "fanout"), default="echo")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--messages", type=int, default=100, help="fan-out: messages broadcast")
    args = parser.parse_args()
    print(
        json.dumps(trio.run(run, args.url, args.scenario, args.connections, args.seconds, args.messages)),
        flush=True,
    )
