"""A rule of your own for WebSocket origins: subclass BaseOriginValidator."""

from urllib.parse import urlsplit

from trio_channels import route
from trio_channels.security import BaseOriginValidator


class SecureOriginValidator(BaseOriginValidator):
    """Accept pages served over https, and any page of localhost (for development)."""

    def validate_origin(self, message, origin):
        parts = urlsplit(origin)
        return parts.scheme == "https" or parts.hostname == "localhost"


@SecureOriginValidator
async def ws_connect(message):
    await message.reply_channel.send({"accept": True})


channel_routing = [
    route("websocket.connect", ws_connect),
]
