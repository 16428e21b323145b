import time

from trio_channels import Group
from trio_channels.generic import WebsocketMultiplexer, join_stream


# Connected to websocket.connect, at /<room>/<name>/
async def ws_connect(message, room, name):
    await message.reply_channel.send({"accept": True})
    # Join the room under our name. A client that was here before says where it stopped
    # (?recover=chat:<epoch>:<offset>) and gets what it missed; a new one gets the last 20.
    await join_stream(message, "chat", "room-" + room, info={"name": name}, last=20)
    # Who is here now (the others learn that we came from a presence event)
    here = await Group("room-" + room).presence()
    names = {channel: info["name"] for channel, info in here.items() if info}
    await message.reply_channel.send(WebsocketMultiplexer.encode("who", names))


# Connected to websocket.receive
async def ws_message(message, room, name):
    await WebsocketMultiplexer.group_send(
        "room-" + room, "chat", {"name": name, "text": message["text"], "time": time.time()}
    )


# Connected to websocket.disconnect
async def ws_disconnect(message, room, name):
    await Group("room-" + room).discard(message.reply_channel)
