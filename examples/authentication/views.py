"""The HTTP side: a login form, and the chat page it leads to."""

import html
import re
from pathlib import Path

from trio_channels.auth import login
from trio_channels.http import Request, Response, send_response
from trio_channels.sessions import http_session

from .users import User

LOGIN_PAGE = Path("authentication/login.html").read_text()
CHAT_PAGE = Path("authentication/chat.html").read_text()


async def login_page(message):
    await send_response(message, Response(LOGIN_PAGE))


@http_session
async def login_view(message):
    request = await Request.from_message(message)
    username = (request.form().get("username") or [""])[0]
    if not re.fullmatch(r"[a-zA-Z]{1,30}", username):
        page = LOGIN_PAGE.replace("<!--error-->", "Letters only, please.")
        await send_response(message, Response(page, 400))
        return
    # Log the user into the HTTP session: its cookie goes out with this response
    await login(message.http_session, User(id=username, username=username))
    page = CHAT_PAGE.replace("{{ username }}", html.escape(username))
    page = page.replace("{{ session_key }}", message.http_session.session_key)
    await send_response(message, Response(page))
