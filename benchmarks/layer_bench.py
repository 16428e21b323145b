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
  ``send_group`` is compared against;
* ``send_group_history``: ``send_group`` to a group that keeps a history (each message stored
  and numbered, every delivery carrying its position), in batches alternating with batches
  to a group without (``send_group_plain``), so both see the same machine; with the CPU
  time of this process per delivery (``*_cpu_us``: steadier than wall time on a shared
  machine) and their ratio ``history_cost``;
* ``group_presence``: ``group_presence`` calls per second on a group of 10,000 members (under
  10 process prefixes, each with a small ``info``), and the milliseconds one takes (wall and
  this process's CPU).

    python -m benchmarks.layer_bench --only fanout,presence --runs 3   # interleaved runs
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


def emit(figure: str, value: float, unit: str, *, digits: int = 1, **extra: Any) -> None:
    with open("/proc/loadavg") as file:
        load = float(file.read().split()[0])
    line = {"figure": figure, "value": round(value, digits), "unit": unit, **extra, "load1": load}
    print(json.dumps(line, ensure_ascii=False), flush=True)


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


async def bench_history_cost(
    layer: layers.BaseChannelLayer, seconds: float, members: int
) -> dict[str, tuple[float, float]]:
    """Fan-out to a group without history and to one with, in alternating batches of 10
    sends: ``{"plain" | "history": (deliveries/s, CPU µs of this process per delivery)}``."""
    prefix = "interface.fanout!"
    names = [f"{prefix}c{i}" for i in range(members)]
    groups = {"plain": "bench-group", "history": "bench-history"}
    for group in groups.values():
        for name in names:
            await layer.group_add(group, name)
    wall = dict.fromkeys(groups, 0.0)
    cpu = dict.fromkeys(groups, 0.0)
    delivered = dict.fromkeys(groups, 0)
    end = time.perf_counter() + 2 * seconds
    turn = 0
    while time.perf_counter() < end:
        order = list(groups) if turn % 2 else list(reversed(groups))
        turn += 1
        for kind in order:
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(10):
                await layer.send_group(groups[kind], SMALL)
                for _ in range(members):
                    await layer.receive([prefix])
            wall[kind] += time.perf_counter() - started
            cpu[kind] += time.process_time() - started_cpu
            delivered[kind] += 10 * members
    for group in groups.values():
        for name in names:
            await layer.group_discard(group, name)
    return {kind: (delivered[kind] / wall[kind], cpu[kind] / delivered[kind] * 1e6) for kind in groups}


async def bench_presence(
    layer: layers.BaseChannelLayer, seconds: float, members: int = 10_000
) -> tuple[float, float]:
    """group_presence on a group of *members* members with info: (calls/s, CPU ms per call)."""
    for index in range(members):
        await layer.group_add(
            "bench-presence",
            f"interface.p{index % 10}!c{index}",
            info={"user": index, "name": f"user {index}"},
        )
    assert len(await layer.group_presence("bench-presence")) == members
    calls = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() < start + seconds:
        await layer.group_presence("bench-presence")
        calls += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    await layer.flush()
    return calls / elapsed, cpu / calls * 1000


async def main(url: str, seconds: float, members: int, only: set[str]) -> None:
    layer = layers.from_url(
        url,
        channel_capacity={"interface.*!": members * 2},
        capacity=1000,
        history={"bench-history": {"size": 100, "ttl": 300}},
    )
    async with layer:
        await layer.flush()
        if "pairs" in only:
            emit("pairs", await bench_pairs(layer, seconds), "pairs/s", layer=url, tasks=1)
            emit("pairs_concurrent", await bench_pairs(layer, seconds, 50), "pairs/s", layer=url, tasks=50)
            await layer.flush()
            if not url.startswith("memory"):
                async with layers.from_url(url, capacity=1000) as other:
                    remote = await bench_pairs(layer, seconds, 50, receiving=other)
                emit("pairs_remote", remote, "pairs/s", layer=url, tasks=50)
                await layer.flush()
            emit("pairs_sequential", await bench_pairs_sequential(layer, seconds), "pairs/s", layer=url)
        if "fanout" in only:
            grouped = await bench_fanout(layer, seconds, members, grouped=True)
            emit("send_group", grouped, "deliveries/s", layer=url, members=members)
            costs = await bench_history_cost(layer, seconds, members)
            for kind, (rate, cpu_us) in costs.items():
                emit(f"send_group_{kind}", rate, "deliveries/s", layer=url, members=members)
                emit(f"send_group_{kind}_cpu_us", cpu_us, "µs/delivery", layer=url, members=members, digits=3)
            emit("history_cost", costs["history"][1] / costs["plain"][1], "x (CPU)", layer=url, digits=3)
            single = await bench_fanout(layer, seconds, members, grouped=False)
            emit("individual_sends", single, "deliveries/s", layer=url, members=members)
            emit("send_group_speedup", grouped / single, "x", layer=url, members=members)
        if "presence" in only:
            per_second, cpu_ms = await bench_presence(layer, seconds)
            emit("group_presence", per_second, "calls/s", layer=url, members=10_000)
            emit("group_presence_ms", 1000 / per_second, "ms", layer=url, members=10_000, digits=2)
            emit("group_presence_cpu_ms", cpu_ms, "ms", layer=url, members=10_000, digits=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", default="memory://", help="layer URL (default: memory://)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each figure")
    parser.add_argument("--members", type=int, default=1000, help="group size for send_group")
    parser.add_argument("--redis", action="store_true", help="start a redis-server of our own and use it")
    parser.add_argument("--only", default="pairs,fanout,presence", help="figures to run (comma-separated)")
    parser.add_argument("--runs", type=int, default=1, help="run everything this many times, interleaved")
    args = parser.parse_args()
    only = set(args.only.split(","))
    for _ in range(args.runs):
        if args.redis:
            from tests.redis_server import RedisServer

            server = RedisServer().start()
            try:
                trio.run(main, server.url, args.seconds, args.members, only)
            finally:
                server.cleanup()
        else:
            trio.run(main, args.layer, args.seconds, args.members, only)
