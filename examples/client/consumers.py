import json
import time

from trio_channels.generic import WebsocketMultiplexer


# Connected to websocket.receive: the client sends {"stream": "chat", "payload": {"text": ...}}
async def ws_message(message, room, name):
    frame = json.loads(message["text"])
    said = {"name": name, "text": frame["payload"]["text"], "time": time.time()}
    await WebsocketMultiplexer.group_send("room-" + room, "chat", said)
