from trio_channels import Group
from trio_channels.sessions import channel_session


# Connected to websocket.connect
@channel_session
async def ws_connect(message):
    # Accept connection
    await message.reply_channel.send({"accept": True})
    # Work out room name from path (ignore slashes)
    room = message.content["path"].strip("/")
    # Save room in session and add us to the group
    message.channel_session["room"] = room
    await Group(f"chat-{room}").add(message.reply_channel)


# Connected to websocket.receive
@channel_session
async def ws_message(message):
    await Group(f"chat-{message.channel_session['room']}").send({"text": message["text"]})


# Connected to websocket.disconnect
@channel_session
async def ws_disconnect(message):
    await Group(f"chat-{message.channel_session['room']}").discard(message.reply_channel)
