"""Worker throughput: messages/s through layer -> worker -> no-op consumer -> reply.

    python -m benchmarks.worker_bench [--seconds 3] [--concurrency 100]

A producer keeps ``--inflight`` requests outstanding on ``bench.request``, each carrying a
reply channel under one process prefix; the consumer replies ``{"ok": True}`` (buffered and
flushed when it returns, as every consumer's sends are); a collector receives the replies on
the prefix, as an interface server's reply poller does. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import trio

import layers
from trio_channels import Message, route, run_worker


async def reply(message: Message) -> None:
    await message.reply_channel.send({"ok": True})


async def main(url: str, seconds: float, concurrency: int, inflight: int) -> None:
    layer = layers.from_url(url, capacity=10 * inflight)
    async with layer:
        await layer.flush()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_worker, layer, [route("bench.request", reply)], concurrency=concurrency)
            )
            replies = 0
            start = time.perf_counter()
            end = start + seconds
            for n in range(inflight):
                await layer.send("bench.request", {"reply_channel": f"bench.reply!c{n}", "n": n})
            sent = inflight
            while time.perf_counter() < end:
                await layer.receive(["bench.reply!"])
                replies += 1
                await layer.send("bench.request", {"reply_channel": f"bench.reply!c{sent}", "n": sent})
                sent += 1
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    print(
        json.dumps(
            {
                "figure": "worker_round_trips",
                "value": round(replies / elapsed, 1),
                "unit": "messages/s",
                "layer": url,
                "concurrency": concurrency,
                "inflight": inflight,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", default="memory://")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=50)
    args = parser.parse_args()
    trio.run(main, args.layer, args.seconds, args.concurrency, args.inflight)
