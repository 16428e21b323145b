from trio_channels import Group
from trio_channels.http import Response, send_response


async def poll_consumer(message):
    await send_response(message, Response("polled %s" % message["method"], content_type="text/plain"))  # noqa: UP031


# Connected to websocket.connect
async def chat_connect(message, room):
    # Add them to the right group
    await Group("chat-%s" % room).add(message.reply_channel)  # noqa: UP031
    # Accept the connection request
    await message.reply_channel.send({"accept": True})


# Connected to websocket.receive
async def chat_message(message, room):
    await Group("chat-%s" % room).send({"text": "%s: %s" % (room, message["text"])})  # noqa: UP031


# Connected to websocket.disconnect
async def chat_disconnect(message, room):
    await Group("chat-%s" % room).discard(message.reply_channel)  # noqa: UP031
