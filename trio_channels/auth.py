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
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from .channel import ContextSetter, Message
from .sessions import Session, _find_message, channel_and_http_session, channel_session, http_session

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
_global_loader: list[UserLoader] = []


def set_user_loader(loader: UserLoader | None) -> None:
    """Set the process-wide user loader (``None`` to clear it)."""
    _global_loader[:] = [loader] if loader is not None else []


class use_user_loader(ContextSetter[UserLoader]):
    """``with use_user_loader(fn):`` sets the loader for this task and its children (serve() uses it)."""

    variable = _loader


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
    loader = _loader.get() or (_global_loader[0] if _global_loader else None)
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


def http_session_user(consumer: Callable[..., Any]) -> Callable[..., Any]:
    """``http_session`` + ``message.user`` from the HTTP session."""

    @http_session
    @functools.wraps(consumer)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        message = _find_message(args, "http_session_user")
        message.user = await get_user(message.http_session)
        return await consumer(*args, **kwargs)

    return wrapper


def channel_session_user(consumer: Callable[..., Any]) -> Callable[..., Any]:
    """``channel_session`` + ``message.user`` from the channel session."""

    @channel_session
    @functools.wraps(consumer)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        message = _find_message(args, "channel_session_user")
        message.user = await get_user(message.channel_session)
        return await consumer(*args, **kwargs)

    return wrapper


def _from_http(
    session_decorator: Callable[..., Any], name: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(consumer: Callable[..., Any]) -> Callable[..., Any]:
        @session_decorator
        @functools.wraps(consumer)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            message: Message = _find_message(args, name)
            if message.http_session is not None:
                transfer_user(message.http_session, message.channel_session)
            message.user = await get_user(message.channel_session)
            return await consumer(*args, **kwargs)

        return wrapper

    return decorator


def _channel_and_http(consumer: Callable[..., Any]) -> Callable[..., Any]:
    return channel_session(http_session(consumer))


#: For ``websocket.connect``: the user from the HTTP session (cookie or ``?session_key=``),
#: copied into the channel session, so later messages' ``channel_session_user`` finds it.
channel_session_user_from_http = _from_http(_channel_and_http, "channel_session_user_from_http")

#: The same with ``channel_and_http_session``: later messages also get ``message.http_session``.
channel_and_http_session_user_from_http = _from_http(
    channel_and_http_session, "channel_and_http_session_user_from_http"
)
