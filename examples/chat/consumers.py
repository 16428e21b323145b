from trio_channels import Group


# Connected to websocket.connect
async def ws_add(message):
    # Accept the connection
    await message.reply_channel.send({"accept": True})
    # Add to the chat group
    await Group("chat").add(message.reply_channel)


# Connected to websocket.receive
async def ws_message(message):
    await Group("chat").send({"text": f"[user] {message.content['text']}"})


# Connected to websocket.disconnect
async def ws_disconnect(message):
    await Group("chat").discard(message.reply_channel)
