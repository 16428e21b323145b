"""Token authentication: a chat that knows who you are from a signed JWT, without cookies.

Run the server, then mint a token for a user (your identity provider does that in real life):

    python -m trio_channels run --settings examples.token_auth
    python -m examples.token_auth alice

Use the token from a browser (a WebSocket cannot send headers there, so it rides in a
subprotocol; ``?token=`` works too), from curl, or from any WebSocket client with a header:

    const b64url = btoa(token).replace(/=+$/, "").replace(/\\+/g, "-").replace(/\\//g, "_");
    const socket = new WebSocket("ws://" + location.host + "/chat/",
                                 ["base64url.bearer.authorization.k8s.io." + b64url]);

    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/me

A bad, expired or missing token closes the WebSocket with code 4401 and answers HTTP with 401.
"""

import os
import sys
import time

import jwt

from trio_channels import Group, route
from trio_channels.auth import channel_session_user, channel_session_user_from_token, token_user
from trio_channels.http import Response, send_response
from trio_channels.tokens import JWTVerifier, TokenUser

# The key your identity provider signs with (for RS256, its public key and algorithms=["RS256"]).
SECRET = os.environ.get("TOKEN_SECRET", "a development secret: set TOKEN_SECRET in production")
ISSUER = "https://auth.example.test"
AUDIENCE = "chat"

verify = JWTVerifier(key=SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER, leeway=10)


def issue_token(username, lifetime=3600):
    """A token for *username*, as an identity provider would sign it."""
    now = int(time.time())
    claims = {"sub": username, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def load_user(user_id):
    # Later messages carry no token: the user's id is in the channel session. In a real
    # application, look the user up in your database here.
    return TokenUser(user_id)


@channel_session_user_from_token(verify)
async def ws_connect(message):
    await message.reply_channel.send({"accept": True})
    await Group("chat").add(message.reply_channel)


@channel_session_user
async def ws_message(message):
    await Group("chat").send({"text": f"{message.user.username}: {message['text']}"})


@channel_session_user
async def ws_disconnect(message):
    await Group("chat").discard(message.reply_channel)


@token_user(verify)
async def me(message):
    await send_response(
        message, Response.json({"user": message.user.id, "expires": message.user.claims["exp"]})
    )


channel_routing = [
    route("websocket.connect", ws_connect, path=r"^/chat/$"),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", me, path=r"^/me$"),
]

# This module is also the settings module: python -m trio_channels run --settings examples.token_auth
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "asgiref.inmemory.ChannelLayer",
        "ROUTING": "examples.token_auth.channel_routing",
    },
}
AUTH_USER_LOADER = "examples.token_auth.load_user"

if __name__ == "__main__":
    print(issue_token(sys.argv[1] if len(sys.argv) > 1 else "alice"))
