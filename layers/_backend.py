"""What every backend shares above the pure contract of :mod:`layers.base`.

Parked receivers
----------------
A receiver that finds nothing waiting in this process parks its task in a :class:`Receivers`
table under each name it asked for; a message arriving for one of those names is handed
straight to the receiver that parked first (``trio.lowlevel.reschedule``) instead of being
queued. Once handed over, the message belongs to that receiver even if it is cancelled a
moment later; a receiver cancelled while parked is simply unparked. So a cancelled receive
never loses a message, on any backend.

The table is keyed by names, not by queues: a receiver may park on a process prefix
(``interface.abc!``, which takes every channel under it) or on one full process-specific name
(``interface.abc!xyz``, which takes only its own); :meth:`Receivers.claim` prefers the
receiver of the full name. The public ``receive()`` only parks on prefixes (the ASGI rule);
the full-name keys are there for in-process hand-off to one connection's own task.

:class:`ParkingLayer` is the receive flow built on it: validate, take fairly from what this
process holds (:meth:`ParkingLayer._take`), else park. The in-memory layer holds everything;
the Redis layer holds what its pollers brought in and what this process sent to its own
prefixes, and starts a poller when a receiver parks (:meth:`ParkingLayer._will_park`).

Waiting for room
----------------
A send with ``wait=True`` to a full channel queues behind the other waiting senders of that
channel in this process (a ``trio.CapacityLimiter`` per channel: FIFO, cancellation-safe).
Only the first of them (the first few, where each try is a round trip to a server:
:meth:`ParkingLayer._room_window`) waits for room, on an event that the backend sets when this
process removes a message of that channel (:meth:`ParkingLayer._room_freed`), or, where the
channel drains elsewhere (another process pops a Redis list), for a backoff pause at most
(:meth:`ParkingLayer._wait_for_room`); then it tries again. Waking one sender per channel,
never all, keeps a crowd of waiting senders cheap, and since each new first sender tries before
it waits, a sender cancelled right after being woken loses nobody else their turn.
"""

from __future__ import annotations

import abc
import random
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from .base import (
    BaseChannelLayer,
    ChannelFull,
    parse_delay_message,
    validate_channel_name,
    validate_receive_channels,
)
from .groups import GroupSendReport

__all__ = [
    "Delivery",
    "ParkingLayer",
    "Receivers",
    "Waiter",
    "fair_order",
    "query_options",
    "single_reader_names",
]

T = TypeVar("T")

#: ``(full channel name, message, expiry as a trio.current_time() deadline)``
Delivery = tuple[str, dict[str, Any], float]


@attrs.define(eq=False, slots=True)
class Waiter:
    """One parked receiver: its task and the names it parked on."""

    task: trio.lowlevel.Task
    names: Sequence[str]

    def wake(self, delivery: Delivery) -> None:
        """Hand *delivery* to the task (it must have been claimed, i.e. unparked, first)."""
        trio.lowlevel.reschedule(self.task, outcome.Value(delivery))


@attrs.define(eq=False, slots=True)
class Receivers:
    """The parked receivers of one layer, by the names they wait on (first come, first served)."""

    _parked: dict[str, dict[Waiter, None]] = attrs.field(factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self._parked

    def __bool__(self) -> bool:
        return bool(self._parked)

    def count(self, names: Sequence[str]) -> int:
        """How many distinct receivers wait on any of *names*."""
        parked = self._parked
        if len(names) == 1:
            return len(parked.get(names[0], ()))
        return len({waiter for name in names for waiter in parked.get(name, ())})

    def claim(self, channel: str, key: str) -> Waiter | None:
        """Unpark and return the receiver a message on *channel* goes to, or ``None``.

        *key* is ``non_local_name(channel)``. A receiver parked on the full name of a
        process-specific channel comes before those parked on its prefix.
        """
        parked = self._parked
        if not parked:
            return None
        waiters = parked.get(channel) if channel is not key else None
        if not waiters:
            waiters = parked.get(key)
            if not waiters:
                return None
        waiter = next(iter(waiters))
        self._unpark(waiter)
        return waiter

    def park(self, names: Sequence[str]) -> Awaitable[Delivery]:
        """Park this task on *names* now; awaiting the result waits until a sender hands it a
        delivery for one of them.

        Cancellation unparks the task; a delivery handed over before the cancellation is
        returned (it belongs to this task), never lost. (Not a coroutine itself, to save a
        frame on the hot path: the task parks when this is called.)
        """
        waiter = Waiter(trio.lowlevel.current_task(), names)
        for name in names:
            self._parked.setdefault(name, {})[waiter] = None

        def abort(_: object) -> trio.lowlevel.Abort:
            self._unpark(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        delivery: Awaitable[Delivery] = trio.lowlevel.wait_task_rescheduled(abort)  # noqa: ASYNC105
        return delivery

    def _unpark(self, waiter: Waiter) -> None:
        for name in waiter.names:
            parked = self._parked[name]
            del parked[waiter]
            if not parked:
                del self._parked[name]


def fair_order(items: list[T]) -> list[T]:
    """*items* (names, shards) in random order when there are several, so none starves another."""
    return random.sample(items, len(items)) if len(items) > 1 else items


@attrs.define(eq=False, kw_only=True)
class ParkingLayer(BaseChannelLayer):
    """A layer whose receivers park in this process (see the module docstring).

    Subclasses store (``send_encoded``, ``send_group_encoded``) and say how to take what this
    process holds (:meth:`_take`), what to do when a receiver parks (:meth:`_will_park`) and
    how to pop without waiting from elsewhere (:meth:`_fetch_nowait`).
    """

    _receivers: Receivers = attrs.field(factory=Receivers, init=False, repr=False)
    _calls: int = attrs.field(default=0, init=False, repr=False)
    #: Per full channel name, while senders wait for room there (see the module docstring).
    _room_queues: dict[str, trio.CapacityLimiter] = attrs.field(factory=dict, init=False, repr=False)
    _room_events: dict[str, trio.Event] = attrs.field(factory=dict, init=False, repr=False)

    def _require_open(self) -> None:
        """Raise :exc:`RuntimeError` if the layer must be entered first (default: it need not)."""

    @abc.abstractmethod
    def _take(self, names: list[str]) -> Delivery | None:
        """The first live delivery this process holds for *names* (tried in the order given)."""

    def _will_park(self, names: list[str]) -> None:
        """Called when a receiver is about to park on *names* (default: nothing)."""

    async def _fetch_nowait(self, names: list[str]) -> Delivery | None:
        """A delivery from outside this process, without waiting (default: there is no outside)."""
        return None

    async def _maybe_yield(self) -> None:
        # Operations that did not block yield every 16th time: yielding on each costs a
        # scheduler pass and gains nothing, yet a tight loop must still let others run.
        self._calls += 1
        if not self._calls & 15:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send(
        self, channel: str, message: dict[str, Any], *, delay: float = 0, wait: bool = False
    ) -> None:
        if channel == "asgi.delay":
            channel, message, delay = parse_delay_message(message)
        await self.send_encoded(channel, self._encode(message), delay=delay, wait=wait)

    async def send_nowait(self, channel: str, message: dict[str, Any], *, delay: float = 0) -> None:
        """The same as :meth:`send` where that is one round trip to a server (it never waits
        for room); a backend that can do without a checkpoint overrides it."""
        await self.send(channel, message, delay=delay)

    @abc.abstractmethod
    async def send_encoded(
        self, channel: str, data: bytes, *, delay: float = 0, wait: bool = False
    ) -> None: ...

    @abc.abstractmethod
    async def send_owned(self, channel: str, message: dict[str, Any], *, wait: bool = False) -> None: ...

    async def send_group(
        self, group: str, message: dict[str, Any], *, exclude: str | Collection[str] | None = None
    ) -> GroupSendReport:
        return await self.send_group_encoded(group, self._encode(message), exclude=exclude)

    @abc.abstractmethod
    async def send_group_encoded(
        self, group: str, data: bytes, *, exclude: str | Collection[str] | None = None
    ) -> GroupSendReport: ...

    # -- waiting for room ------------------------------------------------------------------

    async def _send_waiting(self, channel: str, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run *attempt* (one send to *channel*) until it does not raise :exc:`ChannelFull`,
        queued behind the other senders waiting on *channel* (see the module docstring)."""
        queue = self._room_queues.get(channel)
        if queue is None:
            try:
                await attempt()
                return
            except ChannelFull:
                pass
            queue = self._room_queues.get(channel) or self._room_queues.setdefault(
                channel, trio.CapacityLimiter(self._room_window(channel))
            )
        try:
            async with queue:
                failures = 0
                while True:
                    try:
                        await attempt()
                        return
                    except ChannelFull:
                        failures += 1
                    # No checkpoint since the attempt failed, so no removal can slip by
                    # before the event is in place.
                    await self._wait_for_room(channel, failures)
        finally:
            if not queue.borrowed_tokens and not queue.statistics().tasks_waiting:
                if self._room_queues.get(channel) is queue:
                    del self._room_queues[channel]
                    self._room_events.pop(channel, None)

    def _room_window(self, channel: str) -> int:
        """How many waiting senders of *channel* may try at once: one where a try costs
        nothing (the exact wake-up of :meth:`_room_freed` lets them in one by one, in order);
        backends where each try is a server round trip let a few try at once, so that a queue
        of senders drains at more than one per round trip."""
        return 1

    async def _wait_for_room(self, channel: str, failures: int) -> None:
        """Wait until *channel* may have room: by default, until this process removes one of
        its messages (:meth:`_room_freed`). Backends whose channels also drain elsewhere
        bound the wait with a backoff pause (*failures* attempts failed so far)."""
        event = self._room_events.get(channel)
        if event is None:
            event = self._room_events[channel] = trio.Event()
        await event.wait()

    def _room_freed(self, channel: str) -> None:
        """For backends: a message of *channel* left this process's queues (taken, expired or
        dropped), so the first sender waiting for room there tries again."""
        if self._room_events:
            event = self._room_events.pop(channel, None)
            if event is not None:
                event.set()

    def _all_room_freed(self) -> None:
        events, self._room_events = self._room_events, {}
        for event in events.values():
            event.set()

    def _waiting_send(
        self, method: Callable[..., Awaitable[None]], channel: str, *args: Any, **kwargs: Any
    ) -> Awaitable[None]:
        """``method(channel, *args, **kwargs)`` as :meth:`_send_waiting` runs it (for ``wait=True``)."""
        return self._send_waiting(channel, partial(method, channel, *args, **kwargs))

    async def receive_with_deadline(self, channels: Sequence[str]) -> Delivery:
        names = validate_receive_channels(channels)
        self._require_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        # fair_order, inlined: this is the hot path
        found = self._take(random.sample(names, len(names)) if len(names) > 1 else names)
        if found is not None:
            await self._maybe_yield()
            return found
        self._will_park(names)
        return await self._receivers.park(names)

    async def receive_nowait(self, channels: Sequence[str]) -> tuple[str, dict[str, Any]]:
        names = validate_receive_channels(channels)
        self._require_open()
        found = self._take(fair_order(names))
        if found is None:
            found = await self._fetch_nowait(names)
            if found is None:
                raise trio.WouldBlock
        return found[0], found[1]


def single_reader_names(pattern: str) -> Iterator[str]:
    """Check a ``new_channel`` *pattern*, then yield fresh names for it (the caller picks an unused one).

    Raises :exc:`TypeError` naming the pattern unless it is a valid name ending in ``?``.
    """
    if not isinstance(pattern, str) or not pattern.endswith("?"):
        raise TypeError(
            f"new_channel pattern {pattern!r} is invalid: it must be a str ending in '?' "
            "(process-specific '!' names are made by their process, not the layer)"
        )
    validate_channel_name(pattern + "x")
    while True:
        yield pattern + secrets.token_urlsafe(9)


_NUMBER_OPTIONS: Final = {"expiry": float, "group_expiry": float, "capacity": int, "max_message_size": int}


def query_options(
    url: str,
    query: str,
    text: Sequence[str] = (),
    *,
    strict: bool = False,
    numbers: Mapping[str, Callable[[str], Any]] | None = None,
) -> dict[str, Any]:
    """The layer options in a URL's *query*: the numbers every layer takes (and the layer's own
    *numbers*), and the *text* ones.

    Unknown keys are ignored, or with *strict* refused. Raises :exc:`ValueError` naming *url*
    for a number that is not one, or an unknown key when *strict*.
    """
    known_numbers: dict[str, Callable[[str], Any]] = {**_NUMBER_OPTIONS, **(numbers or {})}
    options: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key in text:
            options[key] = value
            continue
        convert = known_numbers.get(key)
        if convert is None:
            if strict:
                known = ", ".join([*known_numbers, *text])
                raise ValueError(f"layer URL {url!r} is invalid: unknown option {key!r}; use {known}")
            continue
        try:
            options[key] = convert(value)
        except ValueError:
            raise ValueError(
                f"layer URL {url!r} is invalid: option {key}={value!r} must be a number"
            ) from None
    return options
