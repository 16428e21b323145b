from trio_channels.http import Response


async def http_consumer(message):
    # Make standard HTTP response - access ASGI path attribute directly
    response = Response(f"Hello world! You asked for {message.content['path']}")
    # Encode that response into message format (ASGI)
    for chunk in response.encode():
        await message.reply_channel.send(chunk)
