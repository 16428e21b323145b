import trio

from trio_channels import Channel, Group
from trio_channels.http import Request, Response, send_response
from trio_channels.sessions import channel_session

from .models import save_message


# Connected to chat-messages
async def msg_consumer(message):
    # Save to model (sqlite3 blocks, so it runs in a worker thread)
    room = message.content["room"]
    await trio.to_thread.run_sync(save_message, room, message.content["message"])
    # Broadcast to listening sockets
    await Group(f"chat-{room}").send({"text": message.content["message"]})


# Connected to websocket.connect
@channel_session
async def ws_connect(message):
    # Work out room name from path (ignore slashes)
    room = message.content["path"].strip("/")
    # Save room in session and add us to the group
    message.channel_session["room"] = room
    await Group(f"chat-{room}").add(message.reply_channel)
    # Accept the connection request
    await message.reply_channel.send({"accept": True})


# Connected to websocket.receive
@channel_session
async def ws_message(message):
    # Stick the message onto the processing queue
    await Channel("chat-messages").send({"room": message.channel_session["room"], "message": message["text"]})


# Connected to websocket.disconnect
@channel_session
async def ws_disconnect(message):
    await Group(f"chat-{message.channel_session['room']}").discard(message.reply_channel)


# Connected to http.request, POST /announce/<room>/: not a WebSocket, and it still reaches the room
async def announce(message, room):
    request = await Request.from_message(message)
    text = request.body.decode()
    await Channel("chat-messages").send({"room": room, "message": f"[announcement] {text}"})
    await send_response(message, Response("announced\n", 202, content_type="text/plain"))
