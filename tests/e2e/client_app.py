"""The server the browser client's in-page suite talks to (``tests/js/suite.mjs``).

* ``GET /suite/<file>``: the suite's page and script (``tests/js``).
* WebSocket ``/script/``: a server the page scripts. On connect it sends
  ``{"stream": "ctl", "payload": {"query": ..., "positions": ...}}`` (its query string and what
  :func:`~trio_channels.generic.recover_positions` read from it). Then, by stream:

  - ``ctl``: ``{"frames": [text, ...], "close": code}`` sends those frames as they are, then
    closes with *code* (if any);
  - ``rpc``: answers a request through :func:`~trio_channels.generic.reply_to`:
    ``{"answer": x}`` with ``{"answer": x}``, ``{"fail": text}`` with an error, ``{"silent":
    true}`` not at all;
  - anything else comes back as it was sent.
"""

from __future__ import annotations

import json
from pathlib import Path

from trio_channels import Message, route
from trio_channels.generic import recover_positions, reply_to
from trio_channels.http import static_files_consumer

JS = Path(__file__).resolve().parents[1] / "js"


async def script_connect(message: Message) -> None:
    query = message.get("query_string", b"").decode("latin-1")
    hello = {"query": query, "positions": recover_positions(message)}
    await message.reply_channel.send(
        {"accept": True, "text": json.dumps({"stream": "ctl", "payload": hello})}
    )


async def script_receive(message: Message) -> None:
    text = message.get("text") or ""
    frame = json.loads(text)
    payload = frame["payload"]
    if frame["stream"] == "ctl":
        for sent in payload.get("frames", []):
            await message.reply_channel.send({"text": sent})
        if payload.get("close"):
            await message.reply_channel.send({"close": payload["close"]})
    elif frame["stream"] == "rpc":
        if "answer" in payload:
            await reply_to(message, frame, {"answer": payload["answer"]})
        elif "fail" in payload:
            await reply_to(message, frame, error=payload["fail"])
    else:
        await message.reply_channel.send({"text": text})


routing = [
    route("http.request", static_files_consumer(JS, "/suite/"), path=r"^/suite/"),
    route("websocket.connect", script_connect, path=r"^/script/$"),
    route("websocket.receive", script_receive, path=r"^/script/$"),
]
