"""Side by side in one run: trio_channels (in-memory or Redis layer) against bare Hypercorn-Trio.

    python -m benchmarks.compare [--seconds 5] [--connections 50] [--layer memory://]

Each server runs in its own process pinned to CPU 0; the load generator runs here, pinned to
CPU 1. Prints one JSON line per measurement, then a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .loadgen import run as run_scenario

ROOT = Path(__file__).resolve().parents[1]


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


@asynccontextmanager
async def server(command: list[str], marker: bytes) -> AsyncIterator[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, env=env, cwd=ROOT, preexec_fn=lambda: _pin(0)
    )
    assert process.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(30):
            while marker not in buffer:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"server exited: {buffer!r}")
                buffer += chunk
        url = buffer.split(marker, 1)[1].split()[0].decode()
        yield "http://" + url
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def main(args: argparse.Namespace) -> None:
    _pin(1)
    servers = {
        f"trio_channels ({args.layer})": (
            [sys.executable, "-m", "trio_channels", "run", "benchmarks.app.routing", "--bind", "127.0.0.1:0",
             "--layer", args.layer, "-v", "0"],
            b" at http://",
        ),
        "bare Hypercorn-Trio": ([sys.executable, "-m", "benchmarks.bare", "--bind", "127.0.0.1:18765"], b"serving at http://"),
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for name, (command, marker) in servers.items():
        async with server(command, marker) as url:
            for scenario, connections in (
                ("http", args.connections),
                ("echo", args.connections),
                ("fanout", args.members),
            ):
                result = await run_scenario(url, scenario, connections, args.seconds, args.messages)
                result["server"] = name
                print(json.dumps(result), flush=True)
                results.setdefault(name, {})[scenario] = result
    ours, bare = results.values()
    rows = [
        ("HTTP `GET /hello`, requests/s", "http", "requests_per_s"),
        ("WebSocket echo, messages/s", "echo", "messages_per_s"),
        ("WebSocket echo p50 round trip, ms", "echo", "p50_ms"),
        ("WebSocket echo p99 round trip, ms", "echo", "p99_ms"),
        (f"fan-out to {args.members} members, deliveries/s", "fanout", "deliveries_per_s"),
    ]
    names = list(results)
    print(f"\n| measurement | {names[0]} | {names[1]} | ratio |\n| --- | --- | --- | --- |")
    for label, scenario, key in rows:
        mine, theirs = ours[scenario][key], bare[scenario][key]
        ratio = f"{mine / theirs:.2f}x" if theirs else "-"
        print(f"| {label} | {mine:,} | {theirs:,} | {ratio} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--members", type=int, default=200, help="fan-out group size")
    parser.add_argument("--messages", type=int, default=50, help="fan-out broadcasts")
    parser.add_argument("--layer", default="memory://")
    parser.add_argument(
        "--redis", action="store_true", help="start a redis-server of our own and use it as the layer"
    )
    arguments = parser.parse_args()
    if arguments.redis:
        from tests.redis_server import RedisServer

        redis = RedisServer().start()
        arguments.layer = redis.url
        try:
            trio.run(main, arguments)
        finally:
            redis.cleanup()
    else:
        trio.run(main, arguments)
