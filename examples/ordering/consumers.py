from trio_channels import Group
from trio_channels.sessions import channel_session, enforce_ordering


# Connected to websocket.connect
@channel_session
async def ws_add(message):
    # This doesn't need a decorator - it always runs separately
    message.channel_session["sent"] = 0
    # Add them to the right group
    await Group("chat").add(message.reply_channel)
    # Accept the socket
    await message.reply_channel.send({"accept": True})


# Connected to websocket.receive
@enforce_ordering
async def ws_message(message):
    # Without enforce_ordering this wouldn't work right
    message.channel_session["sent"] = message.channel_session["sent"] + 1
    await Group("chat").send({"text": f"{message.channel_session['sent']}: {message['text']}"})


# Connected to websocket.disconnect
@channel_session
async def ws_disconnect(message):
    await Group("chat").discard(message.reply_channel)
