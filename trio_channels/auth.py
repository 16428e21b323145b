"""Authentication for consumers: a pluggable user loader, login/logout, user decorators.

Your application owns users. Tell trio_channels how to load one from the id stored in the
session — ``set_user_loader(fn)``, ``serve(user_loader=fn)`` or the settings' dotted
``AUTH_USER_LOADER`` — where ``fn`` is ``async def load_user(user_id) -> user | None``. A user is
any object with an ``id`` attribute (or a mapping with an ``"id"`` key).

``login(session, user)`` stores the user's id and rotates the session key (so a key captured
before login is worthless after it); ``logout(session)`` empties the session. Decorators give
consumers ``message.user``: the loaded user, or :data:`ANONYMOUS`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import attrs

from .channel import ContextSetter, Message
from .decorators import around_consumer
from .sessions import Session, channel_and_http_session, channel_session, http_session

__all__ = [
    "ANONYMOUS",
    "USER_ID_KEY",
    "AnonymousUser",
    "channel_and_http_session_user_from_http",
    "channel_session_user",
    "channel_session_user_from_http",
    "get_user",
    "http_session_user",
    "login",
    "logout",
    "set_user_loader",
    "transfer_user",
    "use_user_loader",
]

#: The session key holding the logged-in user's id.
USER_ID_KEY = "_auth_user_id"

P = ParamSpec("P")
R = TypeVar("R")

#: ``async def load_user(user_id) -> user | None``.
UserLoader = Callable[[Any], Awaitable[Any]]


@attrs.frozen
class AnonymousUser:
    """Who ``message.user`` is when nobody is logged in."""

    id: None = None
    username: str = ""
    is_authenticated: bool = False
    is_anonymous: bool = True


#: The one anonymous user.
ANONYMOUS = AnonymousUser()

_loader: contextvars.ContextVar[UserLoader | None] = contextvars.ContextVar(
    "trio_channels.user_loader", default=None
)


class use_user_loader(ContextSetter[UserLoader]):
    """``with use_user_loader(fn):`` sets the loader for this task and its children (serve() uses it)."""

    variable = _loader


def set_user_loader(loader: UserLoader | None) -> None:
    """Set the user loader for the current context (``None`` to clear it).

    Like every ambient setting this is a context variable: set it before ``trio.run()`` or in
    the task that then starts ``serve()`` or the test clients, and the tasks started from there
    see it. Inside a running server prefer ``serve(user_loader=...)`` or :class:`use_user_loader`.
    """
    _loader.set(loader)


def _user_id(user: Any) -> Any:
    if isinstance(user, dict):
        return user["id"]
    try:
        return user.id
    except AttributeError:
        raise TypeError(f"cannot log in {user!r}: a user needs an 'id' attribute (or an 'id' key)") from None


async def login(session: Session, user: Any) -> None:
    """Log *user* in on *session*: store its id and rotate the session key."""
    if session is None:
        raise ValueError(
            "login() needs a session; on a WebSocket without an HTTP session, use the channel session"
        )
    session[USER_ID_KEY] = _user_id(user)
    await session.cycle_key()


async def logout(session: Session | None) -> None:
    """Log out: empty the session and delete it."""
    if session is not None:
        await session.flush()


async def get_user(session: Session | None) -> Any:
    """The user logged in on *session*, or :data:`ANONYMOUS`.

    Raises :exc:`RuntimeError` if a user id is stored but no user loader is configured.
    """
    if session is None or USER_ID_KEY not in session:
        return ANONYMOUS
    loader = _loader.get()
    if loader is None:
        raise RuntimeError(
            "a user is logged in but no user loader is configured: call "
            "trio_channels.auth.set_user_loader(async_fn), pass serve(user_loader=...), or set AUTH_USER_LOADER"
        )
    user = await loader(session[USER_ID_KEY])
    return ANONYMOUS if user is None else user


def transfer_user(from_session: Session | None, to_session: Session) -> None:
    """Copy the logged-in user (if any) from one session to another."""
    if from_session is not None and USER_ID_KEY in from_session:
        to_session[USER_ID_KEY] = from_session[USER_ID_KEY]


def http_session_user(consumer: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``http_session`` + ``message.user`` from the HTTP session."""

    async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
        message.user = await get_user(message.http_session)
        return await proceed()

    return http_session(around_consumer(consumer, "http_session_user", around))


def channel_session_user(consumer: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``channel_session`` + ``message.user`` from the channel session."""

    async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
        message.user = await get_user(message.channel_session)
        return await proceed()

    return channel_session(around_consumer(consumer, "channel_session_user", around))


async def _user_from_http(message: Message, proceed: Callable[[], Awaitable[R]]) -> R:
    if message.http_session is not None:
        transfer_user(message.http_session, message.channel_session)
    message.user = await get_user(message.channel_session)
    return await proceed()


def channel_session_user_from_http(consumer: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """For ``websocket.connect``: the user from the HTTP session (cookie or ``?session_key=``),
    copied into the channel session, so later messages' ``channel_session_user`` finds it."""
    wrapped = around_consumer(consumer, "channel_session_user_from_http", _user_from_http)
    return channel_session(http_session(wrapped))


def channel_and_http_session_user_from_http(consumer: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The same with ``channel_and_http_session``: later messages also get ``message.http_session``."""
    wrapped = around_consumer(consumer, "channel_and_http_session_user_from_http", _user_from_http)
    return channel_and_http_session(wrapped)
