"""A consumer under enforce_ordering that sleeps a random short time, then echoes its order."""

from __future__ import annotations

import random

import trio

from trio_channels import Message, route
from trio_channels.sessions import enforce_ordering


@enforce_ordering
async def receive(message: Message) -> None:
    await trio.sleep(random.random() * 0.003)
    seen = message.channel_session.get("seen", 0)
    message.channel_session["seen"] = seen + 1
    await message.reply_channel.send({"text": f"{message['order']}:{seen + 1}"})


routing = [route("websocket.receive", receive)]
