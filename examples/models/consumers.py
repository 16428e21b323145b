import trio

from examples.models.models import save_message
from trio_channels import Channel, Group
from trio_channels.sessions import channel_session


# Connected to chat-messages
async def msg_consumer(message):
    # Save to model (sqlite3 blocks, so it runs in a worker thread)
    room = message.content["room"]
    await trio.to_thread.run_sync(save_message, room, message.content["message"])
    # Broadcast to listening sockets
    await Group("chat-%s" % room).send({  # noqa: UP031
        "text": message.content["message"],
    })  # fmt: skip


# Connected to websocket.connect
@channel_session
async def ws_connect(message):
    # Work out room name from path (ignore slashes)
    room = message.content["path"].strip("/")
    # Save room in session and add us to the group
    message.channel_session["room"] = room
    await Group("chat-%s" % room).add(message.reply_channel)  # noqa: UP031
    # Accept the connection request
    await message.reply_channel.send({"accept": True})


# Connected to websocket.receive
@channel_session
async def ws_message(message):
    # Stick the message onto the processing queue
    await Channel("chat-messages").send({
        "room": message.channel_session["room"],
        "message": message["text"],
    })  # fmt: skip


# Connected to websocket.disconnect
@channel_session
async def ws_disconnect(message):
    await Group("chat-%s" % message.channel_session["room"]).discard(message.reply_channel)  # noqa: UP031
