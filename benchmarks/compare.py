"""Side by side in one run: trio_channels (in-memory or Redis layer) against bare Hypercorn-Trio.

    python -m benchmarks.compare [--seconds 5] [--connections 50] [--layer memory://]

Each server runs in its own process pinned to CPU 0; the load generator runs here, pinned to
CPU 1. Prints one JSON line per measurement, then a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from tests.e2e.processes import started

from .loadgen import run as run_scenario

ROOT = Path(__file__).resolve().parents[1]


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


async def main(args: argparse.Namespace) -> None:
    _pin(1)
    servers = {
        f"trio_channels ({args.layer})": (
            [sys.executable, "-m", "trio_channels", "run", "benchmarks.app.routing", "--bind", "127.0.0.1:0",
             "--layer", args.layer, "--no-access-log"]
        ),
        "bare Hypercorn-Trio": [sys.executable, "-m", "benchmarks.bare", "--bind", "127.0.0.1:18765"],
    }  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for name, command in servers.items():
        # Each server prints "... at http://HOST:PORT" once it listens.
        async with started(command, " at ", preexec_fn=lambda: _pin(0)) as (_, url):
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
