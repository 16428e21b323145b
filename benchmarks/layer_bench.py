"""Channel layer throughput: one JSON line per figure.

    python -m benchmarks.layer_bench [--layer memory://] [--seconds 3]

Figures:
* ``pairs``: send+receive pairs per second on one channel, a sender task and a receiver task;
* ``pairs_concurrent``: the same with 50 senders and 50 receivers (how traffic from many
  connections and consumers arrives; on Redis their commands share pipelined round trips);
* ``pairs_sequential``: the same from one task (send, then receive), the per-call overhead;
* ``pairs_remote`` (shared layers only): 50 senders on one layer object and 50 receivers on
  another, which the layer cannot tell from two processes: every message crosses the server
  (in one layer object, a receiver waiting in the sending process gets it in process);
* ``send_group``: messages delivered per second by ``send_group`` to 1,000 members (members are
  reply channels under one process prefix, drained by one receiver, as an interface server does);
* ``individual_sends``: the same deliveries done as 1,000 separate ``send`` calls, the baseline
  ``send_group`` is compared against.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import trio
import trio.lowlevel

import layers

SMALL = {"text": "hello world", "reply_channel": "interface.bench!abcdefgh", "order": 1}


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 1), "unit": unit, **extra}), flush=True)


async def bench_pairs(
    layer: layers.BaseChannelLayer,
    seconds: float,
    tasks: int = 1,
    receiving: layers.BaseChannelLayer | None = None,
) -> float:
    """*tasks* senders and *tasks* receivers on one channel (the receivers on *receiving*, if
    given); pairs completed per second."""
    count = 0
    receiving = receiving or layer

    async def receiver() -> None:
        nonlocal count
        while True:
            await receiving.receive(["bench"])
            count += 1

    async def sender(end: float) -> None:
        while time.perf_counter() < end:
            try:
                await layer.send("bench", SMALL)
            except layers.ChannelFull:
                await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(receiver)
        start = time.perf_counter()
        async with trio.open_nursery() as senders:
            for _ in range(tasks):
                senders.start_soon(sender, start + seconds)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return count / elapsed


async def bench_pairs_sequential(layer: layers.BaseChannelLayer, seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            await layer.send("bench-seq", SMALL)
            await layer.receive(["bench-seq"])
        count += 100
        if time.perf_counter() > end:
            break
    return count / (time.perf_counter() - start)


async def bench_fanout(layer: layers.BaseChannelLayer, seconds: float, members: int, grouped: bool) -> float:
    prefix = "interface.fanout!"
    names = [f"{prefix}c{i}" for i in range(members)]
    for name in names:
        await layer.group_add("bench-group", name)
    delivered = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        if grouped:
            await layer.send_group("bench-group", SMALL)
        else:
            for name in names:
                await layer.send(name, SMALL)
        for _ in range(members):
            await layer.receive([prefix])
        delivered += members
    elapsed = time.perf_counter() - start
    for name in names:
        await layer.group_discard("bench-group", name)
    return delivered / elapsed


async def main(url: str, seconds: float, members: int) -> None:
    layer = layers.from_url(url, channel_capacity={"interface.*!": members * 2}, capacity=1000)
    async with layer:
        await layer.flush()
        emit("pairs", await bench_pairs(layer, seconds), "pairs/s", layer=url, tasks=1)
        emit("pairs_concurrent", await bench_pairs(layer, seconds, 50), "pairs/s", layer=url, tasks=50)
        await layer.flush()
        if not url.startswith("memory"):
            async with layers.from_url(url, capacity=1000) as other:
                remote = await bench_pairs(layer, seconds, 50, receiving=other)
            emit("pairs_remote", remote, "pairs/s", layer=url, tasks=50)
            await layer.flush()
        emit("pairs_sequential", await bench_pairs_sequential(layer, seconds), "pairs/s", layer=url)
        grouped = await bench_fanout(layer, seconds, members, grouped=True)
        emit("send_group", grouped, "deliveries/s", layer=url, members=members)
        single = await bench_fanout(layer, seconds, members, grouped=False)
        emit("individual_sends", single, "deliveries/s", layer=url, members=members)
        emit("send_group_speedup", grouped / single, "x", layer=url, members=members)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", default="memory://", help="layer URL (default: memory://)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each figure")
    parser.add_argument("--members", type=int, default=1000, help="group size for send_group")
    parser.add_argument("--redis", action="store_true", help="start a redis-server of our own and use it")
    args = parser.parse_args()
    if args.redis:
        from tests.redis_server import RedisServer

        server = RedisServer().start()
        try:
            trio.run(main, server.url, args.seconds, args.members)
        finally:
            server.cleanup()
    else:
        trio.run(main, args.layer, args.seconds, args.members)
