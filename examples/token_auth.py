"""Token authentication: a chat that knows who you are from a signed JWT, without cookies.

Run the server, then mint a token for a user (your identity provider does that in real life):

    python -m examples.token_auth                 # serves http://127.0.0.1:8000/
    python -m examples.token_auth token alice     # prints a token for alice

Open ``http://127.0.0.1:8000/#token=<the token>``: the page's WebSocket carries the token in a
subprotocol (a browser cannot send headers on a WebSocket), beside the ``chat`` subprotocol the
server accepts. Or use the header, from curl or any WebSocket client:

    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/me

A bad, expired or missing token closes the WebSocket with code 4401 and answers HTTP with 401.
"""

import os
import sys
import time
from functools import partial

import jwt
import trio

from interface import InterfaceConfig
from trio_channels import Group, route
from trio_channels.auth import channel_session_user, channel_session_user_from_token, token_user
from trio_channels.http import Response, send_response
from trio_channels.server import ServerConfig, serve
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


PAGE = r"""<!doctype html>
<title>Token chat</title>
<pre id="log"></pre>
<script>
function connect(token) {
  const b64url = btoa(token).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  const socket = new WebSocket("ws://" + location.host + "/chat/",
                               ["chat", "base64url.bearer.authorization.k8s.io." + b64url]);
  const log = document.getElementById("log");
  socket.onmessage = (event) => { log.textContent += event.data + "\n"; };
  socket.onclose = (event) => { log.textContent += "closed " + event.code + "\n"; };
  return socket;
}
// The token rides in the URL's fragment, which the browser never sends to a server.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
if (token) window.socket = connect(token);
</script>
"""


async def page(message):
    await send_response(message, Response(PAGE))


channel_routing = [
    route("http.request", page, path=r"^/$"),
    route("websocket.connect", ws_connect, path=r"^/chat/$"),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
    route("http.request", me, path=r"^/me$"),
]


async def main(bind):
    # A browser fails a WebSocket whose offered subprotocols the server answers with none of
    # them, so the server accepts "chat" (never the token's subprotocol).
    config = ServerConfig(
        bind=bind, user_loader=load_user, interface_config=InterfaceConfig(ws_protocols=("chat",))
    )
    run = partial(serve, channel_routing, config)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(partial(run, handle_signals=True))
        print(f"token_auth example at {info.url}/", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["token"]:
        print(issue_token(sys.argv[2] if len(sys.argv) > 2 else "alice"))
    else:
        trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000")
