"""Redis round trips per WebSocket echo, through the whole stack (issue 12).

    python -m benchmarks.redis_round_trips [--echoes 2000] [--redis-server PATH]

For each deployment — interface and workers in one process; interface and worker apart (two
layer objects, which Redis cannot tell from two processes) — one WebSocket echoes ``--echoes``
frames one at a time through ``serve()`` on a ``redis-server`` of its own. Prints one JSON line
per deployment: the round trips per echo the layers made (requests: every
``RedisConnection.execute_many`` call, counted here, so it works on any version of the
layer), and the commands per echo Redis ran (``INFO commandstats`` deltas; commands that
scripts run count too). Idle work (the delayed-message mover, blocking pops timing out once a
second) is included: it is what a deployment pays.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Any

import trio
from trio_websocket import open_websocket_url

import layers
from layers.redis.connection import ConnectionPool, RedisAddress, RedisConnection
from trio_channels import run_worker
from trio_channels.server import serve

ROUTING = "benchmarks.app.routing"

requests = 0
_execute_many = RedisConnection.execute_many


async def _counted(self: RedisConnection, commands: Any) -> list[Any]:
    global requests
    requests += 1
    return await _execute_many(self, commands)


async def _commandstats(url: str) -> dict[str, int]:
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool(RedisAddress.from_url(url), nursery)
        info = (await pool.execute("INFO", "commandstats")).decode()
        await pool.aclose()
    calls = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            calls[name] = int(stats.split("calls=")[1].split(",")[0])
    return calls


async def measure(url: str, deployment: str, echoes: int) -> dict[str, Any]:
    apart = deployment == "interface and worker apart"
    async with layers.from_url(url) as worker_layer, trio.open_nursery() as workers:
        if apart:
            await workers.start(partial(run_worker, worker_layer, ROUTING))
        async with trio.open_nursery() as servers:
            info = await servers.start(
                partial(serve, ROUTING, layer=layers.from_url(url), bind=["127.0.0.1:0"], workers=not apart)
            )
            ws_url = info.url.replace("http://", "ws://") + "/echo/"
            async with open_websocket_url(ws_url) as ws:
                for number in range(50):  # warm up: connections open, scripts loaded
                    await ws.send_message(str(number))
                    await ws.get_message()
                await trio.sleep(0.2)
                before, requests_before, started = await _commandstats(url), requests, time.perf_counter()
                for number in range(echoes):
                    await ws.send_message(str(number))
                    assert await ws.get_message() == str(number)
                elapsed = time.perf_counter() - started
                after, requests_after = await _commandstats(url), requests
            info.shutdown.set()
        workers.cancel_scope.cancel()
    commands = {
        name: round((after.get(name, 0) - before.get(name, 0)) / echoes, 2)
        for name in sorted(after)
        if name != "info" and after.get(name, 0) != before.get(name, 0)
    }
    return {
        "deployment": deployment,
        "echoes": echoes,
        "round_trips_per_echo": round((requests_after - requests_before) / echoes, 2),
        "commands_per_echo": commands,
        "echoes_per_s": round(echoes / elapsed, 1),
    }


async def main(echoes: int, binary: str | None) -> None:
    from tests.redis_server import RedisServer

    RedisConnection.execute_many = _counted  # type: ignore[method-assign]
    for deployment in ("interface and workers in one process", "interface and worker apart"):
        server = (RedisServer(binary=binary) if binary else RedisServer()).start()
        try:
            result = await measure(server.url, deployment, echoes)
        finally:
            server.cleanup()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--echoes", type=int, default=2000, help="echoes to count over (default: 2000)")
    parser.add_argument("--redis-server", help="the redis-server binary (default: the newest found)")
    args = parser.parse_args()
    trio.run(main, args.echoes, args.redis_server)
