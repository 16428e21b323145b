"""A custom origin rule: subclass BaseOriginValidator and implement validate_origin."""

from trio_channels.security import BaseOriginValidator


class SameSchemeOriginValidator(BaseOriginValidator):
    """Accept only https:// pages (and plain http:// on localhost, for development)."""

    def validate_origin(self, message, origin):
        return origin.startswith("https://") or origin.startswith("http://localhost")


@SameSchemeOriginValidator
async def ws_connect(message):
    await message.reply_channel.send({"accept": True})
