"""Authentication for consumers: a pluggable user loader, login/logout, user decorators.

Your application owns users. Tell trio_channels how to load one from the id stored in the
session — ``set_user_loader(fn)``, ``serve(user_loader=fn)`` or the settings' dotted
``AUTH_USER_LOADER`` — where ``fn`` is ``async def load_user(user_id) -> user | None``. A user is
any object with an ``id`` attribute (or a mapping with an ``"id"`` key).

``login(session, user)`` stores the user's id and rotates the session key (so a key captured
before login is worthless after it); ``logout(session)`` empties the session. Decorators give
consumers ``message.user``: the loaded user, or :data:`ANONYMOUS`.

Clients without cookies authenticate with a bearer token instead: :func:`token_user` and
:func:`channel_session_user_from_token` (see :mod:`trio_channels.tokens`).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import attrs

from .channel import ContextSetter, Message
from .decorators import GuardDecorator, around_consumer
from .exceptions import DenyConnection
from .http import Response, send_response
from .sessions import Session, channel_and_http_session, channel_session, http_session
from .tokens import BEARER_SUBPROTOCOL_PREFIX, InvalidToken, TokenSource, TokenVerifier, bearer_token

__all__ = [
    "ANONYMOUS",
    "TOKEN_CLOSE_CODE",
    "USER_ID_KEY",
    "AnonymousUser",
    "channel_and_http_session_user_from_http",
    "channel_session_user",
    "channel_session_user_from_http",
    "channel_session_user_from_token",
    "get_user",
    "http_session_user",
    "login",
    "logout",
    "set_user_loader",
    "token_user",
    "transfer_user",
    "use_user_loader",
]

log = logging.getLogger("trio_channels.auth")

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


# ----------------------------------------------------------------------------- bearer tokens

#: The close code for a WebSocket whose token was refused (4000 + HTTP 401, as Phoenix and
#: Centrifugo-style servers do): browsers see it in ``CloseEvent.code``, unlike a 403 handshake.
TOKEN_CLOSE_CODE = 4401


@attrs.frozen
class _TokenAuth:
    verify: TokenVerifier
    name: str
    required: bool
    on_failure: Literal["close", "reject"]
    sources: tuple[TokenSource, ...]
    query_param: str
    subprotocol_prefix: str
    in_channel_session: bool

    def __call__(self, consumer: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R | None]]:
        async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R | None:
            refused = await self._authenticate(message)
            if refused is not None:
                await self._refuse(message, *refused)
                return None
            if self.in_channel_session and message.user is not ANONYMOUS:
                message.channel_session[USER_ID_KEY] = _user_id(message.user)
            return await proceed()

        wrapped = around_consumer(consumer, self.name, around)
        return channel_session(wrapped) if self.in_channel_session else wrapped

    async def _authenticate(self, message: Message) -> tuple[TokenSource | None, str] | None:
        """Set ``message.user``; or return where the refused token was (None: nowhere) and why."""
        try:
            found = bearer_token(
                message,
                sources=self.sources,
                query_param=self.query_param,
                subprotocol_prefix=self.subprotocol_prefix,
            )
        except InvalidToken as exc:
            return "subprotocol", str(exc)
        if found is None:
            if self.required:
                return None, "no bearer token"
            message.user = ANONYMOUS
            return None
        source, token = found
        try:
            user = await self.verify(token)
        except InvalidToken as exc:
            return source, str(exc)
        except Exception as exc:  # a failing verifier denies: it never lets anyone in
            return source, f"the verifier failed: {type(exc).__name__}: {exc}"
        if user is None:
            return source, "the verifier returned None"
        message.user = user
        return None

    async def _refuse(self, message: Message, source: TokenSource | None, reason: str) -> None:
        """Answer a refused or missing token (see token_user), and log it in one line."""
        channel = message.channel.name
        if channel == "http.request":
            challenge = 'Bearer realm="trio_channels"' + ("" if source is None else ', error="invalid_token"')
            body = "401 Unauthorized: " + (
                "a bearer token is required" if source is None else "the token was refused"
            )
            headers = {"WWW-Authenticate": challenge}
            response = Response(body, 401, headers, content_type="text/plain; charset=utf-8")
            outcome = "answered 401"
        elif channel == "websocket.connect" and self.on_failure == "reject":
            outcome = "rejected the handshake (403)"
        elif channel.startswith("websocket."):
            outcome = f"closed with {TOKEN_CLOSE_CODE}"
        else:
            outcome = "dropped the message"
        where = f"{channel} {message.get('path', '')}".rstrip()
        client = message.get("client")
        if client:
            where += " from " + ":".join(str(part) for part in client)
        if source is None:
            log.info("%s: %s on %s; %s", self.name, reason, where, outcome)
        else:
            log.warning(
                "%s: refused the token from the %s on %s: %s; %s", self.name, source, where, reason, outcome
            )
        if not message.has_reply_channel:
            return
        if channel == "http.request":
            await send_response(message, response)
        elif channel == "websocket.connect" and self.on_failure == "reject":
            raise DenyConnection
        elif channel == "websocket.connect":
            await message.reply_channel.send({"accept": True, "close": TOKEN_CLOSE_CODE})
        elif channel.startswith("websocket."):
            await message.reply_channel.send({"close": TOKEN_CLOSE_CODE})


def token_user(
    verify: TokenVerifier,
    *,
    required: bool = True,
    on_failure: Literal["close", "reject"] = "close",
    sources: Sequence[TokenSource] = ("header", "subprotocol", "query"),
    query_param: str = "token",
    subprotocol_prefix: str = BEARER_SUBPROTOCOL_PREFIX,
) -> GuardDecorator:
    """``message.user`` from a bearer token, checked by ``await verify(token)``.

    For ``http.request`` and ``websocket.connect`` (the messages that carry headers, the
    subprotocols and the query string; see :mod:`trio_channels.tokens` for where a token may
    be). *verify* returns the user or raises :exc:`~trio_channels.tokens.InvalidToken`; any
    other exception it raises, or ``None`` returned, refuses the token as well.

    A refused or (when *required*) missing token never runs the consumer and is logged in one
    line (the token itself never is): an HTTP request gets ``401`` with a
    ``WWW-Authenticate: Bearer`` challenge (RFC 6750); a WebSocket is accepted and closed at
    once with code 4401 (``on_failure="close"``, the default: browsers can read that code), or
    refused with HTTP 403 during the handshake (``on_failure="reject"``: nothing is accepted,
    but a browser sees only a failed connection, code 1006). Without *required*, a missing
    token gives :data:`ANONYMOUS`. *sources* limits where a token is looked for.
    """
    return _token_auth(
        verify, "token_user", False, required, on_failure, sources, query_param, subprotocol_prefix
    )


def channel_session_user_from_token(
    verify: TokenVerifier,
    *,
    required: bool = True,
    on_failure: Literal["close", "reject"] = "close",
    sources: Sequence[TokenSource] = ("header", "subprotocol", "query"),
    query_param: str = "token",
    subprotocol_prefix: str = BEARER_SUBPROTOCOL_PREFIX,
) -> GuardDecorator:
    """For ``websocket.connect``: :func:`token_user`, and the user's id kept in the channel session.

    Later messages of the connection carry no token: decorate them with
    :func:`channel_session_user`, which loads the user by that id with the user loader (as
    after a login). The user must have an ``id`` (:class:`~trio_channels.tokens.TokenUser`
    has the ``sub`` claim). The token is checked once, at connect: a connection outlives its
    token's expiry unless you close it.
    """
    return _token_auth(
        verify,
        "channel_session_user_from_token",
        True,
        required,
        on_failure,
        sources,
        query_param,
        subprotocol_prefix,
    )


def _token_auth(
    verify: TokenVerifier,
    name: str,
    in_channel_session: bool,
    required: bool,
    on_failure: Literal["close", "reject"],
    sources: Sequence[TokenSource],
    query_param: str,
    subprotocol_prefix: str,
) -> _TokenAuth:
    if not callable(verify):
        raise TypeError(f"{name} needs an async verifier function, not {verify!r}")
    if on_failure not in ("close", "reject"):
        raise ValueError(f"on_failure must be 'close' or 'reject', not {on_failure!r}")
    unknown = [source for source in sources if source not in ("header", "subprotocol", "query")]
    if unknown or not sources:
        raise ValueError(
            f"sources {list(sources)!r} are invalid: use some of 'header', 'subprotocol', 'query'"
        )
    return _TokenAuth(
        verify,
        name,
        required,
        on_failure,
        tuple(sources),
        query_param,
        subprotocol_prefix,
        in_channel_session,
    )
