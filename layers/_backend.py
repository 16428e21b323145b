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
the full-name keys serve *own channels*.

Own channels
------------
A process may hand each of its process-specific channels to one task of its own (an interface
server: one per connection): :meth:`ParkingLayer.open_own` registers the full name, and
:meth:`ParkingLayer.receive_own` / :meth:`ParkingLayer.receive_own_nowait` receive its messages
in sending order, parking on the full name, so a message reaches that task straight from its
sender (or the Redis poller) with no relay task in between. While no receiver is parked, the
messages wait in a FIFO of the channel's own, bounded by the capacity given to ``open_own``
(default: the channel's capacity); one that does not fit is refused (:exc:`ChannelFull` to a
plain send, a miss for a group send) and reported to ``on_overflow``. The prefix of an own
channel is *owned* from then on: its only reader said which of its channels live, so a message
for one that is not open (any more) is dropped on arrival, as a reply poller drops replies for
connections that are gone. :meth:`ParkingLayer.close_own` drops what is held and unregisters.
Messages of an own channel are received only through ``receive_own``, never by a receive on
the prefix.

An own channel's prefix is also an *own prefix* in the sense of
:meth:`~layers.BaseChannelLayer.own_prefix` (locality): opening the first own channel under a
prefix declares it, for the layer's life, unless an ``own_prefix`` block declared it already.
So a message this process sends to one of its own channels is handed over (or held, or refused
as full) here and never leaves the process, and on Redis the own prefix's one poller brings in
what other processes send (receive_own itself never starts a poller).

:meth:`ParkingLayer.deliver_own_directly` lets the receiver of an own channel take a message in
the sender's task while it is parked and nothing is queued (an interface's writer writing a
frame the socket takes at once), saving the wake-up of its task.

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
import itertools
import random
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import outcome
import trio

from .base import (
    BaseChannelLayer,
    ChannelFull,
    non_local_name,
    parse_delay_message,
    redacted,
    validate_channel_name,
    validate_receive_channels,
)
from .groups import GroupSendReport

if TYPE_CHECKING:
    from ._inmemory_state import InMemoryState, Payload

__all__ = [
    "Delivery",
    "OwnChannel",
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

    def parked_own(self, channel: str) -> bool:
        """Whether a receiver is parked on the full name *channel* (nothing is unparked)."""
        return channel in self._parked

    def claim_own(self, channel: str) -> Waiter | None:
        """Unpark and return the receiver parked on the full name *channel*, or ``None``
        (a receiver parked on its prefix does not count: an own channel is never its)."""
        waiters = self._parked.get(channel)
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


@attrs.define(eq=False, slots=True)
class OwnChannel:
    """The registration of one own channel (see "Own channels" above)."""

    #: How many messages may wait for it.
    capacity: int
    #: Called with the channel's name for each message refused because it was full.
    on_overflow: Callable[[str], None] | None = None
    #: Messages refused so far.
    refused: int = 0
    #: Set by :meth:`ParkingLayer.deliver_own_directly`: offered each message that would wake
    #: the channel's parked receiver; True when it took the message (the receiver stays parked).
    deliver: Callable[[dict[str, Any]], bool] | None = None

    def overflowed(self, channel: str) -> None:
        self.refused += 1
        if self.on_overflow is not None:
            self.on_overflow(channel)

    def put(self, state: InMemoryState, channel: str, data: Payload, now: float, **options: Any) -> None:
        """Queue a message for *channel* in *state* (``InMemoryState.put_own`` with this
        channel's capacity and *options*); if it is full, count the refusal, tell
        ``on_overflow``, and raise :exc:`ChannelFull`."""
        try:
            state.put_own(channel, data, now, self.capacity, **options)
        except ChannelFull:
            self.overflowed(channel)
            raise


def _own_channel_name(channel: object) -> str:
    name = validate_channel_name(channel)
    bang = name.find("!")
    if bang < 0 or bang == len(name) - 1:
        raise TypeError(
            f"own channel {name!r} is invalid: it must be a full process-specific name, "
            "like 'interface.abc!xyz' (a prefix, then '!', then the channel's own part)"
        )
    return name


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
    # A counter object, not an int field: setting an attribute of a layer runs its attrs
    # validators (one more function call per operation on the hot path).
    _calls: Iterator[int] = attrs.field(factory=itertools.count, init=False, repr=False)
    #: Open own channels by full name, and the prefixes that have had one.
    _own_open: dict[str, OwnChannel] = attrs.field(factory=dict, init=False, repr=False)
    _owned_prefixes: set[str] = attrs.field(factory=set, init=False, repr=False)
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
        if not next(self._calls) & 15:
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
        if len(names) > 1:
            # Fair enough, and cheaper than fair_order's shuffle on the hot path: start at a
            # random one, so each name is as likely to be tried first.
            start = int(random.random() * len(names))
            found = self._take(names[start:] + names[:start] if start else names)
        else:
            found = self._take(names)
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

    # -- own channels (see the module docstring) -----------------------------------------

    def open_own(
        self, channel: str, *, capacity: int | None = None, on_overflow: Callable[[str], None] | None = None
    ) -> None:
        """Register *channel*, a full process-specific name, as received by one task of this
        process through :meth:`receive_own`.

        At most *capacity* messages (default: the channel's capacity) wait for it; each one
        refused because it is full calls ``on_overflow(channel)`` in the sender's task (it
        must not block: note it, wake someone). Raises :exc:`TypeError` for a name that is
        not a full process-specific one, :exc:`ValueError` if it is open already.
        """
        name = _own_channel_name(channel)
        if name in self._own_open:
            raise ValueError(f"own channel {name!r} is already open")
        if capacity is not None and (type(capacity) is not int or capacity < 1):
            raise ValueError(f"own channel capacity must be an int >= 1, got {capacity!r}")
        prefix = non_local_name(name)
        self._own_channel_prefix(prefix)
        self._own_open[name] = OwnChannel(
            self.get_capacity(name) if capacity is None else capacity, on_overflow
        )
        self._owned_prefixes.add(prefix)

    def _own_channel_prefix(self, prefix: str) -> None:
        """For backends: an own channel opens under *prefix*, so this process owns *prefix*
        from now on (as :meth:`~layers.BaseChannelLayer.own_prefix` declares it, for the
        layer's life if no such block does already): its messages from other processes must
        be brought in without anyone parking on the prefix. Nothing to do in memory."""

    def close_own(self, channel: str) -> int:
        """Unregister *channel* and drop what waits for it; return how many messages that was.

        Later messages for it are dropped on arrival. Closing a channel that is not open does
        nothing (returns 0).
        """
        if self._own_open.pop(channel, None) is None:
            return 0
        return self._drop_own(channel)

    def deliver_own_directly(self, channel: str, deliver: Callable[[dict[str, Any]], bool] | None) -> None:
        """Offer the messages of the open own channel *channel* to *deliver* (``None``: stop).

        A message is offered only when the channel's receiver is parked in :meth:`receive_own`
        and nothing waits in the channel's FIFO, so it is the next message that receiver would
        get: ``deliver(message)`` is called in the sender's task, synchronously (it must not
        block, and must not raise), and returns True if it took the message (the receiver stays
        parked, nothing is queued) or False to have it handed to the receiver as usual. This
        saves a task switch per message where the receiver only writes the message out (an
        interface's writer whose socket takes a frame at once). Does nothing if *channel* is
        not open.
        """
        own = self._own_open.get(channel)
        if own is not None:
            own.deliver = deliver

    def own_statistics(self, channel: str) -> OwnChannel | None:
        """The registration of the open own channel *channel* (its ``refused`` count), or ``None``."""
        return self._own_open.get(channel)

    async def receive_own(self, channel: str) -> dict[str, Any]:
        """The next message of the own channel *channel*, in sending order; waits for one.

        Cancellation loses nothing: a message handed over before the cancel is returned.
        Raises :exc:`ValueError` if *channel* is not open (:meth:`open_own`).
        """
        self._check_own(channel)
        await trio.lowlevel.checkpoint_if_cancelled()
        found = self._take([channel])
        if found is not None:
            await self._maybe_yield()
            return found[1]
        # No _will_park: the backend brings in its own prefixes' messages (see open_own).
        delivery = await self._receivers.park((channel,))
        return delivery[1]

    async def receive_own_nowait(self, channel: str) -> dict[str, Any]:
        """The next message waiting for the own channel *channel* in this process;
        :exc:`trio.WouldBlock` if there is none. No checkpoint, no round trip to a server."""
        self._check_own(channel)
        found = self._take([channel])
        if found is None:
            raise trio.WouldBlock
        return found[1]

    def _check_own(self, channel: str) -> None:
        if channel not in self._own_open:
            raise ValueError(f"own channel {channel!r} is not open: call open_own({channel!r}) first")
        self._require_open()

    def _own_target(self, channel: str, key: str) -> OwnChannel | bool:
        """How a message for *channel* (non-local name *key*) is delivered: its
        :class:`OwnChannel` if it is an open own channel (to its own receiver, else its own
        FIFO), ``False`` to drop it (its prefix is owned but it is not open: its connection is
        gone), ``True`` for the usual way (any receiver of the name or prefix, else the queue)."""
        if channel is key or key not in self._owned_prefixes:
            return True
        return self._own_open.get(channel) or False

    def _drop_own(self, channel: str) -> int:
        """Drop what this process holds for the own channel *channel*; return how many."""
        return 0


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
                raise ValueError(
                    f"layer URL {redacted(url)!r} is invalid: unknown option {key!r}; use {known}"
                )
            continue
        try:
            options[key] = convert(value)
        except ValueError:
            raise ValueError(
                f"layer URL {redacted(url)!r} is invalid: option {key}={value!r} must be a number"
            ) from None
    return options
