from trio_channels import DenyConnection, Group
from trio_channels.auth import channel_session_user, channel_session_user_from_http
from trio_channels.security import allowed_hosts_only


# Connected to websocket.connect
@allowed_hosts_only
@channel_session_user_from_http
async def ws_add(message):
    if not message.user.is_authenticated:
        raise DenyConnection  # anonymous users may not chat
    # Accept connection
    await message.reply_channel.send({"accept": True})
    # Add them to the right group
    await Group(f"chat-{message.user.username[0]}").add(message.reply_channel)


# Connected to websocket.receive
@channel_session_user
async def ws_message(message):
    user = message.user
    await Group(f"chat-{user.username[0]}").send({"text": f"{user.username}: {message['text']}"})


# Connected to websocket.disconnect
@channel_session_user
async def ws_disconnect(message):
    if message.user.is_authenticated:
        await Group(f"chat-{message.user.username[0]}").discard(message.reply_channel)
