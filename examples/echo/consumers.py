async def ws_message(message):
    # ASGI WebSocket packet-received and send-packet message types
    # both have a "text" key for their textual data.
    await message.reply_channel.send({"text": message.content["text"]})
