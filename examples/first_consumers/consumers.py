from trio_channels.http import Response


async def http_consumer(message):
    # Make standard HTTP response - access ASGI path attribute directly
    response = Response("Hello world! You asked for %s" % message.content["path"])  # noqa: UP031 - the seed's line
    # Encode that response into message format (ASGI)
    for chunk in response.encode():
        await message.reply_channel.send(chunk)
