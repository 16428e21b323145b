"""``SessionMiddleware``: the consumers' sessions for any ASGI-3 HTTP application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .http import ASGIApp, parse_cookies
from .sessions import SESSION_COOKIE_NAME, Session, session_cookie
from .stores import SessionStore, current_session_store

__all__ = ["SessionMiddleware"]

Event = dict[str, Any]
Receive = Callable[[], Awaitable[Event]]
Send = Callable[[Event], Awaitable[None]]


class SessionMiddleware:
    """ASGI-3 middleware: ``scope["session"]`` is the same :class:`~trio_channels.sessions.Session`
    consumers see.

    Any HTTP app (Starlette, Quart-Trio, the ``--http-app`` fallback) can then log a user in
    (``await trio_channels.auth.login(scope["session"], user)``) and the WebSocket that
    follows, decorated with ``channel_session_user_from_http``, knows the user. The session is
    saved, and its cookie set, when the response starts. *store* defaults to the current one
    (:func:`~trio_channels.stores.current_session_store`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: SessionStore | None = None,
        cookie_name: str = SESSION_COOKIE_NAME,
    ) -> None:
        self.app = app
        self.store = store
        self.cookie_name = cookie_name

    async def __call__(self, scope: Event, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        store = self.store or current_session_store()
        key = parse_cookies(scope.get("headers", [])).get(self.cookie_name)
        session = await Session.load(store, key)
        if session.original_key is None:
            session.session_key = None
        scope["session"] = session

        async def send_with_cookie(event: Event) -> None:
            if event["type"] == "http.response.start":
                before = session.original_key
                if session.modified or session.session_key != before:
                    await session.save_if_needed()
                    headers = [
                        *event.get("headers", []),
                        (b"set-cookie", session_cookie(self.cookie_name, session)),
                    ]
                    event = {**event, "headers": headers}
            await send(event)

        await self.app(scope, receive, send_with_cookie)
