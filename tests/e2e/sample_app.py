"""The seed's first consumer and settings, for the CLI tests."""

from __future__ import annotations

from trio_channels import Message, route
from trio_channels.http import Response, send_response


async def http_consumer(message: Message) -> None:
    # Make standard HTTP response - access ASGI path attribute directly
    response = Response("Hello world! You asked for %s" % message.content["path"])  # noqa: UP031 - the seed's line
    await send_response(message, response)


channel_routing = [route("http.request", http_consumer)]

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "asgiref.inmemory.ChannelLayer",
        "ROUTING": "tests.e2e.sample_app.channel_routing",
    }
}
