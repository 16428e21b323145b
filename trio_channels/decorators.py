"""The one wrapper behind every consumer decorator: sessions, users, tokens, origin checks.

A consumer decorator needs the :class:`~trio_channels.Message` its consumer is called with
(the first positional argument of a function, the second of a method) and runs code around
the call. :func:`around_consumer` finds the message and wraps the consumer once for all of
them, keeping the consumer's name (for routing and logs) and its signature (``ParamSpec``, so a
type checker sees a decorated consumer as the function it wraps).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

from .channel import Message

__all__ = ["ConsumerDecorator", "GuardDecorator", "around_consumer", "find_message"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


def find_message(args: tuple[object, ...], decorator: str) -> Message:
    """The :class:`~trio_channels.Message` among the first two positional *args*.

    Raises :exc:`ValueError` naming *decorator* when there is none.
    """
    for candidate in args[:2]:
        if isinstance(candidate, Message):
            return candidate
    raise ValueError(f"{decorator} called without a Message among the first two positional arguments")


def around_consumer(
    consumer: Callable[P, Awaitable[R]],
    decorator: str,
    around: Callable[[Message, Callable[[], Awaitable[R]]], Awaitable[S]],
) -> Callable[P, Awaitable[S]]:
    """Wrap *consumer* so each call runs ``around(message, proceed)``.

    ``proceed()`` calls the consumer with the original arguments; *around* decides what runs
    before and after it (or whether it runs at all) and what the call returns. *decorator* is
    the name errors use (see :func:`find_message`).
    """

    @functools.wraps(consumer)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> S:
        message = find_message(args, decorator)
        return await around(message, functools.partial(consumer, *args, **kwargs))

    return wrapper


class ConsumerDecorator(Protocol):
    """What a decorator factory returns (``@http_session(cookie_name=...)``, ``@token_user(verify)``)."""

    def __call__(self, consumer: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...


class GuardDecorator(Protocol):
    """A decorator that may answer for the consumer and not run it (its call then returns None)."""

    def __call__(self, consumer: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R | None]]: ...
