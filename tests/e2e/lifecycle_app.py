"""A slow HTTP consumer for the shutdown tests: ``GET /slow/SECONDS`` answers after that long."""

from __future__ import annotations

import trio

from trio_channels import Message, route
from trio_channels.http import Response, send_response


async def slow(message: Message, seconds: str) -> None:
    print("slow request started", flush=True)  # the test's cue: the request is in flight
    await trio.sleep(float(seconds))
    await send_response(message, Response("done"))


channel_routing = [route("http.request", slow, path=r"^/slow/(?P<seconds>[0-9.]+)$")]
