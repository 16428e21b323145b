"""``@enforce_ordering``: a connection's messages run strictly in their ``order``.

The next expected order lives in the channel session, so it holds across any number of worker
processes sharing a session store. A message that arrives early waits — without polling — for
a wake-up message on a per-connection, per-order channel of the layer, sent by its predecessor
after that one's replies went out and its session was saved.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, overload

import trio

from .channel import Channel, Message, current_outbox
from .decorators import around_consumer
from .sessions import Session, channel_session

__all__ = ["NEXT_ORDER_KEY", "enforce_ordering"]

log = logging.getLogger("trio_channels.sessions")

P = ParamSpec("P")
R = TypeVar("R")

#: The channel-session key holding the next order to run.
NEXT_ORDER_KEY = "__channels_next_order"


def _wake_channel(reply_channel: str, order: int) -> str:
    digest = hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()[:24]
    return f"ordering.{digest}?{order}"


@overload
def enforce_ordering(
    consumer: Callable[P, Awaitable[R]], *, slight: bool = False
) -> Callable[P, Awaitable[R | None]]: ...
@overload
def enforce_ordering(
    consumer: None = None, *, slight: bool = False
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R | None]]]: ...
def enforce_ordering(
    consumer: Callable[P, Awaitable[R]] | None = None, *, slight: bool = False
) -> (
    Callable[P, Awaitable[R | None]] | Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R | None]]]
):
    """Run a connection's messages strictly by their ``order`` key (implies ``channel_session``).

    A message whose predecessor has not finished waits — without polling — for a wake-up on a
    per-connection, per-order channel of the layer, so it works across any number of worker
    processes (with a shared session store). Unlike Channels 1, a lost message never stalls a
    connection forever: when a waiting message reaches its expiry, the gap is skipped with a
    warning and it runs. A message without ``order`` is a :exc:`ValueError` naming the consumer.
    A message whose order already ran is dropped with a warning (the call returns ``None``).

    Waiting messages hold their worker slot; size ``concurrency`` for the connections that
    may be waiting at once.
    """
    if slight:
        raise ValueError("enforce_ordering(slight=True) was removed in Channels 1.0; use enforce_ordering")
    if consumer is None:
        return _ordered
    return _ordered(consumer)


def _ordered(consumer: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R | None]]:
    name = getattr(consumer, "__qualname__", repr(consumer))

    async def around(message: Message, proceed: Callable[[], Awaitable[R]]) -> R | None:
        order = message.get("order")
        if type(order) is not int:
            raise ValueError(
                f"enforce_ordering on {name}: the message on {message.channel.name!r} has no integer 'order'"
            )
        reply = message.reply_channel
        session: Session = message.channel_session
        layer = message.channel_layer
        # Receives exist only after the connect consumer finished (the interface waits for
        # the accept), so an undecorated connect counts as done: the seed's example.
        expected = session.get(NEXT_ORDER_KEY, 0 if message.channel.name == "websocket.connect" else 1)
        if order < expected:
            log.warning(
                "enforce_ordering on %s: dropped order %d on %s, already past it (next is %d)",
                name, order, reply.name, expected,
            )  # fmt: skip
            return None
        if order > expected:
            # Give up waiting a little before the message expires (its consumer is cancelled
            # at the expiry), leaving the consumer time to run. Waiters further from the gap
            # give up later, so the nearest one skips it and wakes the rest in order.
            now = trio.current_time()
            margin = min(1.0, (message.deadline - now) * 0.25) / (order - expected)
            give_up = message.deadline - margin
            with trio.move_on_at(give_up) as waiting:
                while True:
                    await layer.receive([_wake_channel(reply.name, order)])
                    fresh = await Session.load(session.store, session.session_key)
                    if fresh.get(NEXT_ORDER_KEY, 1) >= order:
                        break
            if waiting.cancelled_caught:
                fresh = await Session.load(session.store, session.session_key)
                if fresh.get(NEXT_ORDER_KEY, 1) < order:
                    log.warning(
                        "enforce_ordering on %s: %s waited for order %d until its message was about "
                        "to expire; skipping the gap and running order %d",
                        name, reply.name, fresh.get(NEXT_ORDER_KEY, 1), order,
                    )  # fmt: skip
            # Continue from what the predecessors stored.
            message.channel_session = session = fresh
        try:
            return await proceed()
        finally:
            with trio.CancelScope(shield=True):
                # Our replies go out before anyone can see it is the successor's turn, so the
                # client gets replies in order too; the successor reads our session.
                outbox = current_outbox()
                if outbox is not None:
                    await outbox.flush()
                session[NEXT_ORDER_KEY] = order + 1
                await session.save()
                try:
                    await Channel(_wake_channel(reply.name, order + 1), layer=layer).send(
                        {}, immediately=True
                    )
                except Exception as exc:  # a full or unreachable layer: the successor waits out its expiry
                    log.warning(
                        "enforce_ordering: could not wake order %d on %s (%s)", order + 1, reply.name, exc
                    )

    return channel_session(around_consumer(consumer, "enforce_ordering", around))
