from trio_channels import Group
from trio_channels.http import Response, send_response


# Connected to http.request, POST /poll/ only
async def poll_consumer(message):
    await send_response(message, Response(f"polled {message['method']}\n", content_type="text/plain"))


# Connected to websocket.connect, /chat/<room>/
async def chat_connect(message, room):
    # Add them to the right group
    await Group(f"chat-{room}").add(message.reply_channel)
    # Accept the connection request
    await message.reply_channel.send({"accept": True})


# Connected to websocket.receive
async def chat_message(message, room):
    await Group(f"chat-{room}").send({"text": f"{room}: {message['text']}"})


# Connected to websocket.disconnect
async def chat_disconnect(message, room):
    await Group(f"chat-{room}").discard(message.reply_channel)
