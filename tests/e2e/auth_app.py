"""The seed's authentication chat ("first letter of the username"), for the e2e tests."""

from __future__ import annotations

from typing import Any

import attrs

from trio_channels import DenyConnection, Group, Message, route
from trio_channels.auth import channel_session_user, channel_session_user_from_http, login, logout
from trio_channels.http import Request, Response, send_response
from trio_channels.security import allowed_hosts_only
from trio_channels.sessions import SessionMiddleware, http_session


@attrs.frozen
class User:
    id: int
    username: str
    is_authenticated: bool = True


USERS = {user.id: user for user in (User(1, "alice"), User(2, "albert"), User(3, "bob"))}
BY_NAME = {user.username: user for user in USERS.values()}


async def load_user(user_id: Any) -> User | None:
    return USERS.get(user_id)


@http_session
async def login_view(message: Message) -> None:
    request = await Request.from_message(message)
    name = request.query("user") or ""
    if name not in BY_NAME:
        await send_response(message, Response("no such user", 403))
        return
    await login(message.http_session, BY_NAME[name])
    await send_response(message, Response(f"logged in as {name}; key {message.http_session.session_key}"))


@http_session
async def logout_view(message: Message) -> None:
    await logout(message.http_session)
    await send_response(message, Response("logged out"))


@channel_session_user_from_http
async def ws_add(message: Message) -> None:
    if not message.user.is_authenticated:
        raise DenyConnection
    await message.reply_channel.send({"accept": True})
    await Group(f"chat-{message.user.username[0]}").add(message.reply_channel)


@channel_session_user
async def ws_message(message: Message) -> None:
    await Group(f"chat-{message.user.username[0]}").send(
        {"text": f"{message.user.username}: {message['text']}"}
    )


@channel_session_user
async def ws_disconnect(message: Message) -> None:
    if message.user.is_authenticated:
        await Group(f"chat-{message.user.username[0]}").discard(message.reply_channel)


@allowed_hosts_only
async def origin_checked(message: Message) -> None:
    await message.reply_channel.send({"accept": True})


routing = [
    route("http.request", login_view, path=r"^/login$"),
    route("http.request", logout_view, path=r"^/logout$"),
    route("websocket.connect", origin_checked, path=r"^/origin/$"),
    route("websocket.connect", ws_add),
    route("websocket.receive", ws_message),
    route("websocket.disconnect", ws_disconnect),
]


async def _asgi_login(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app logging users in through the session middleware (not a consumer)."""
    await receive()
    name = dict(pair.split("=") for pair in scope["query_string"].decode().split("&") if "=" in pair).get(
        "user", ""
    )
    status, body = 403, b"no such user"
    if scope["path"] == "/mw-login" and name in BY_NAME:
        await login(scope["session"], BY_NAME[name])
        status, body = 200, f"middleware logged in {name}".encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


asgi_app = SessionMiddleware(_asgi_login)
