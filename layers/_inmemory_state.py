"""The in-memory layer's state, pure: queues, groups, delayed messages, expiry, statistics.

Theory of operation
-------------------
Nothing here reads a clock or knows about tasks: every method that needs the time takes
``now`` (seconds on the owner's clock; the shell passes ``trio.current_time()``, so
``MockClock`` drives expiry in tests). The Trio shell, :class:`layers.InMemoryChannelLayer`,
parks receivers and runs the timer; it offers a message to a parked receiver first and asks
this state to queue it only when nobody waits (:meth:`InMemoryState.put`).

Each channel, by its non-local name, has a FIFO of ``(deadline, full_name, payload)`` entries
(the payload is the encoded message, or the message itself when its sender gave it up:
:meth:`layers.BaseChannelLayer.send_owned`), so every ``prefix!local`` channel shares its prefix's FIFO (one receive on the prefix
sees them in sending order). Capacity is still per channel: a prefix's queue counts its
entries per full name (a count leaves the table when it drops to zero, so the table is never
larger than what is waiting), and a send is refused when *its* channel holds ``capacity``
messages. Memory is bounded by ``capacity`` per channel and by ``expiry``.

An *own channel* (a process-specific channel that one task receives through ``receive_own``,
see :mod:`layers._backend`) has a FIFO of its own in :attr:`InMemoryState.own`, by full name,
bounded by the capacity its owner gave; it exists only while something waits in it.

Expiry is the deadline on each entry. Expired entries are dropped when met (by a take, by a
full channel making room, by the owner's periodic :meth:`InMemoryState.sweep`); a channel that
loses a message to expiry is presumed gone and leaves every group it was in.

Groups map each member to the time it was (last) added and, when given, its presence info
(encoded). A member leaves on discard, when its membership lapses (``group_expiry`` after
the last add: noticed by the next operation on the group, or for groups with presence events
by :meth:`InMemoryState.sweep` at that moment) and when its own message expires unread. A
group with presence events queues a join or leave event in :attr:`InMemoryState.events` for
each of these; the owner sends them to the group (no event is ever sent from here).

A group with history keeps a :class:`_History`: its epoch, its latest offset and a deque of
the last ``size`` ``(offset, data)`` pairs. The messages go ``ttl`` seconds after the last
send; the epoch and offset live on for ``max(ttl, group_expiry)`` after the last use (a send,
a read or a recovery), so a quiet group's members can still recover "nothing missed".

The owner learns of every entry that leaves a queue through :attr:`InMemoryState.on_remove`
(taken, expired or dropped): that is when its channel has room again.
"""

from __future__ import annotations

import heapq
import math
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import msgpack

from .base import CapacityMap, ChannelFull, LayerStatistics, non_local_name
from .groups import HistoryOptions, Since, recovery_problem

__all__ = ["Entry", "InMemoryState", "Payload"]

#: An encoded message, or a message its sender gave up (held as it is).
Payload = bytes | dict[str, Any]
#: ``(deadline, full channel name, payload)``
Entry = tuple[float, str, Payload]
#: ``on_remove(channel, payload, taken)``: *taken* is False for an entry that expired or was dropped.
RemoveHook = Callable[[str, Payload, bool], None]


@attrs.define(eq=False, slots=True)
class _Queue:
    capacity: int
    # Waiting entries per full channel name, for a process prefix's queue (None otherwise:
    # there the queue is the channel and its length is the count).
    per_channel: dict[str, int] | None
    entries: deque[Entry] = attrs.field(factory=deque)
    messages_count: int = 0
    channel_full_count: int = 0


@attrs.define(eq=False, slots=True)
class _History:
    epoch: str
    size: int
    #: When the messages go (``ttl`` after the last send) and when the epoch goes.
    messages_until: float
    meta_until: float
    offset: int = 0
    entries: deque[tuple[int, bytes]] = attrs.field(factory=deque)


#: A presence event for the owner to send: ``(group, event, channel to leave out or None)``.
Event = tuple[str, dict[str, Any], str | None]


def _new_epoch() -> str:
    return secrets.token_hex(6)


@attrs.define(eq=False, kw_only=True)
class InMemoryState:
    """All the state of one in-memory layer; see the module docstring.

    *expiry* and *group_expiry* are in seconds; *capacities* gives each channel's capacity.
    """

    expiry: float
    group_expiry: float
    capacities: CapacityMap
    #: The history a group keeps (``None``: none), and whether it sends presence events.
    history: Callable[[str], HistoryOptions | None] = lambda group: None
    presence_events: Callable[[str], bool] = lambda group: False
    #: Makes a fresh epoch (random; a test may pass something predictable).
    new_epoch: Callable[[], str] = _new_epoch
    #: Called for every entry that leaves a queue (see the module docstring); must not call back
    #: into the state.
    on_remove: RemoveHook | None = None
    #: The queues by non-local name (read them, do not change them).
    queues: dict[str, _Queue] = attrs.field(factory=dict, init=False)
    #: Own channels' FIFOs by full name, while something waits in them (read them only).
    own: dict[str, deque[Entry]] = attrs.field(factory=dict, init=False)
    #: Presence events waiting for the owner to send them, oldest first (it pops them).
    events: deque[Event] = attrs.field(factory=deque, init=False)
    _groups: dict[str, dict[str, float]] = attrs.field(factory=dict, init=False)
    _infos: dict[str, dict[str, bytes]] = attrs.field(factory=dict, init=False)
    _histories: dict[str, _History] = attrs.field(factory=dict, init=False)
    # (lapse time, group, channel) of members of groups with presence events, for sweep()
    _lapses: list[tuple[float, str, str]] = attrs.field(factory=list, init=False)
    _memberships: dict[str, set[str]] = attrs.field(factory=dict, init=False)
    _delayed: list[tuple[float, int, str, Payload]] = attrs.field(factory=list, init=False)
    _delayed_seq: int = attrs.field(default=0, init=False)
    _messages_count: int = attrs.field(default=0, init=False)
    _channel_full_count: int = attrs.field(default=0, init=False)

    # -- queues ----------------------------------------------------------------------------

    def _queue(self, key: str) -> _Queue:
        queue = self.queues.get(key)
        if queue is None:
            per_channel: dict[str, int] | None = {} if key.endswith("!") else None
            queue = self.queues[key] = _Queue(self.capacities.get(key), per_channel)
        return queue

    def put(
        self,
        key: str,
        channel: str,
        data: Payload,
        now: float,
        *,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> None:
        """Queue *data* for *channel* (whose non-local name is *key*) until ``now + expiry``
        (or *deadline*).

        Raises :exc:`ChannelFull` (and counts it) if *channel* holds ``capacity`` live messages.
        With *admitted*, the message was accepted (and counted) elsewhere already, e.g. by a
        server the owner popped it from: it is queued without a capacity check or a count.
        """
        queue = self.queues.get(key) or self._queue(key)
        per_channel = queue.per_channel
        waiting = len(queue.entries) if per_channel is None else per_channel.get(channel, 0)
        if waiting >= queue.capacity and not admitted:
            self._purge(queue, now)
            waiting = len(queue.entries) if per_channel is None else per_channel.get(channel, 0)
            if waiting >= queue.capacity:
                queue.channel_full_count += 1
                self._channel_full_count += 1
                raise ChannelFull(
                    f"channel {channel!r} is full ({queue.capacity} messages waiting); "
                    "the message was not sent"
                )
        queue.entries.append((now + self.expiry if deadline is None else deadline, channel, data))
        if per_channel is not None:
            per_channel[channel] = waiting + 1
        if not admitted:
            queue.messages_count += 1
            self._messages_count += 1

    def count_handed_over(self, key: str) -> None:
        """Count a message the owner handed straight to a parked receiver as sent."""
        if "?" not in key:  # single-reader channels are too many to keep counters for
            self._queue(key).messages_count += 1
        self._messages_count += 1

    def take(self, keys: Sequence[str], now: float) -> Entry | None:
        """Pop the first live entry of the first of *keys* (non-local names) that has one."""
        for key in keys:
            queue = self.queues.get(key)
            if queue is None:
                continue
            entries = queue.entries
            on_remove = self.on_remove
            while entries:
                entry = entries.popleft()
                if queue.per_channel is not None:
                    self._uncount(queue.per_channel, entry[1])
                if entry[0] > now:
                    if not entries and "?" in key:
                        del self.queues[key]
                    if on_remove is not None:
                        on_remove(entry[1], entry[2], True)
                    return entry
                if on_remove is not None:
                    on_remove(entry[1], entry[2], False)
                self._expired(entry[1])
        return None

    # -- own channels ----------------------------------------------------------------------

    def put_own(
        self,
        channel: str,
        data: Payload,
        now: float,
        capacity: int,
        *,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> None:
        """Queue *data* in the own channel *channel*'s FIFO until ``now + expiry`` (or
        *deadline*).

        Raises :exc:`ChannelFull` if *capacity* live messages wait there (counted, unless
        *admitted*: as for :meth:`put`, the message was accepted and counted elsewhere).
        """
        entries = self.own.get(channel)
        if entries is None:
            entries = self.own[channel] = deque()
        elif len(entries) >= capacity:
            self._drop_expired(entries, now)
            if len(entries) >= capacity:
                if not admitted:
                    self._channel_full_count += 1
                raise ChannelFull(
                    f"channel {channel!r} is full ({capacity} messages waiting); the message was not sent"
                )
        entries.append((now + self.expiry if deadline is None else deadline, channel, data))
        if not admitted:
            self._messages_count += 1

    def take_own(self, channel: str, now: float) -> Entry | None:
        """Pop the first live entry of the own channel *channel*, if any."""
        entries = self.own.get(channel)
        if entries is None:
            return None
        found = None
        on_remove = self.on_remove
        while entries:
            entry = entries.popleft()
            if entry[0] > now:
                found = entry
                if on_remove is not None:
                    on_remove(channel, entry[2], True)
                break
            if on_remove is not None:
                on_remove(channel, entry[2], False)
        if not entries:
            del self.own[channel]
        return found

    def drop_own(self, channel: str) -> int:
        """Drop the own channel *channel*'s FIFO; return how many entries it held."""
        entries = self.own.pop(channel, None)
        if entries is None:
            return 0
        if self.on_remove is not None:
            for _, _, data in entries:
                self.on_remove(channel, data, False)
        return len(entries)

    def _drop_expired(self, entries: deque[Entry], now: float) -> None:
        # An own channel's expired messages go; the channel stays in its groups (it is open).
        while entries and entries[0][0] <= now:
            _, channel, data = entries.popleft()
            if self.on_remove is not None:
                self.on_remove(channel, data, False)

    def has_channel(self, name: str) -> bool:
        """Whether a queue exists for *name* (so a fresh single-reader name must not be it)."""
        return name in self.queues

    @staticmethod
    def _uncount(per_channel: dict[str, int], channel: str) -> None:
        left = per_channel[channel] - 1
        if left:
            per_channel[channel] = left
        else:
            del per_channel[channel]

    # -- expiry ----------------------------------------------------------------------------

    def _purge(self, queue: _Queue, now: float) -> None:
        entries = queue.entries
        while entries and entries[0][0] <= now:
            _, channel, data = entries.popleft()
            if queue.per_channel is not None:
                self._uncount(queue.per_channel, channel)
            if self.on_remove is not None:
                self.on_remove(channel, data, False)
            self._expired(channel)

    def _expired(self, channel: str) -> None:
        # A channel whose message expired unread is presumed gone: it leaves its groups.
        for group in list(self._memberships.get(channel, ())):
            self._leave(group, channel)

    def sweep(self, now: float) -> float:
        """Drop expired messages everywhere, and lapsed members of groups with presence events
        (queueing their leave events); return when something is next due (a message's expiry,
        a delayed message's delivery, such a lapse), ``math.inf`` if nothing is."""
        lapses = self._lapses
        while lapses and lapses[0][0] <= now:
            _, group, channel = heapq.heappop(lapses)
            added = self._groups.get(group, {}).get(channel)
            if added is None:
                continue  # it left meanwhile
            if added + self.group_expiry <= now:
                self._leave(group, channel)
            else:  # re-added meanwhile: look again at its new lapse
                heapq.heappush(lapses, (added + self.group_expiry, group, channel))
        earliest = self._delayed[0][0] if self._delayed else math.inf
        if lapses:
            earliest = min(earliest, lapses[0][0])
        for key, queue in list(self.queues.items()):
            self._purge(queue, now)
            if queue.entries:
                earliest = min(earliest, queue.entries[0][0])
            elif "?" in key:
                del self.queues[key]
        for channel, entries in list(self.own.items()):
            self._drop_expired(entries, now)
            if entries:
                earliest = min(earliest, entries[0][0])
            else:
                del self.own[channel]
        return earliest

    # -- delayed messages ------------------------------------------------------------------

    def schedule(self, channel: str, data: Payload, due: float) -> None:
        """Keep *data* for *channel* until *due*; :meth:`pop_due` hands it back then."""
        self._delayed_seq += 1
        heapq.heappush(self._delayed, (due, self._delayed_seq, channel, data))

    def pop_due(self, now: float) -> list[tuple[str, Payload]]:
        """The delayed messages due at *now*, in due order, as ``(channel, data)``."""
        delayed = self._delayed
        due = []
        while delayed and delayed[0][0] <= now:
            _, _, channel, data = heapq.heappop(delayed)
            due.append((channel, data))
        return due

    # -- groups ----------------------------------------------------------------------------

    def group_add(self, group: str, channel: str, now: float, info: bytes | None = None) -> bool:
        """Add *channel* to *group*, or refresh its membership and replace its info, as of
        *now*; return whether it is a new member (a group with presence events then queues a
        join event for the other members)."""
        members = self._groups.setdefault(group, {})
        new = channel not in members
        members[channel] = now
        self._memberships.setdefault(channel, set()).add(group)
        if info is None:
            infos = self._infos.get(group)
            if infos is not None:
                infos.pop(channel, None)
        else:
            self._infos.setdefault(group, {})[channel] = info
        if new and self.presence_events(group):
            heapq.heappush(self._lapses, (now + self.group_expiry, group, channel))
            self.events.append((group, self._event("join", group, channel, info), channel))
        return new

    @staticmethod
    def _event(kind: str, group: str, channel: str, info: bytes | None) -> dict[str, Any]:
        decoded = None if info is None else msgpack.unpackb(info, raw=False)
        return {"presence": kind, "group": group, "channel": channel, "info": decoded}

    def _leave(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is None or members.pop(channel, None) is None:
            return
        if not members:
            del self._groups[group]
        infos = self._infos.get(group)
        info = None
        if infos is not None:
            info = infos.pop(channel, None)
            if not infos:
                del self._infos[group]
        groups = self._memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._memberships[channel]
        if self.presence_events(group):
            self.events.append((group, self._event("leave", group, channel, info), None))

    def group_discard(self, group: str, channel: str) -> None:
        """Remove *channel* from *group* (nothing happens if it is not a member)."""
        self._leave(group, channel)

    def _lapse(self, group: str, now: float) -> int:
        """Remove the members of *group* whose membership lapsed; return how many."""
        members = self._groups.get(group)
        if not members:
            return 0
        cutoff = now - self.group_expiry
        lapsed = [channel for channel, added in members.items() if added <= cutoff]
        for channel in lapsed:
            self._leave(group, channel)
        return len(lapsed)

    def group_members(self, group: str, now: float) -> list[str]:
        """The members of *group* whose membership has not lapsed (lapsed ones are removed)."""
        self._lapse(group, now)
        return list(self._groups.get(group, ()))

    def group_presence(self, group: str, now: float) -> dict[str, bytes | None]:
        """The live members of *group* with their encoded info (``None`` without)."""
        self._lapse(group, now)
        infos = self._infos.get(group, {})
        return {channel: infos.get(channel) for channel in self._groups.get(group, ())}

    def group_targets(self, group: str, now: float) -> tuple[list[str], int]:
        """The members a group send at *now* goes to, and how many members were found gone
        on the way: lapsed, or evicted because their own message expired unread."""
        gone = self._lapse(group, now)
        targets = []
        for channel in list(self._groups.get(group, ())):
            queue = self.queues.get(non_local_name(channel))
            if queue is not None and queue.entries:
                self._purge(queue, now)
                if channel not in self._memberships:
                    gone += 1
                    continue  # its messages expired unread: it was evicted
            targets.append(channel)
        return targets, gone

    def room(self, channel: str, now: float) -> int:
        """How many more messages *channel* can take now."""
        key = non_local_name(channel)
        queue = self.queues.get(key)
        if queue is None:
            return self.capacities.get(key)
        self._purge(queue, now)
        waiting = len(queue.entries) if queue.per_channel is None else queue.per_channel.get(channel, 0)
        return max(0, queue.capacity - waiting)

    # -- history ---------------------------------------------------------------------------

    def _history(self, group: str, now: float, *, create: bool) -> _History | None:
        options = self.history(group)
        if options is None:
            return None
        history = self._histories.get(group)
        if history is not None and history.meta_until <= now:
            del self._histories[group]  # lost: the next one starts a new epoch
            history = None
        if history is None:
            if not create:
                return None
            history = self._histories[group] = _History(
                epoch=self.new_epoch(), size=options.size, messages_until=now, meta_until=now
            )
        if history.messages_until <= now:
            history.entries.clear()
        history.meta_until = max(history.meta_until, now + max(options.ttl, self.group_expiry))
        return history

    def history_append(self, group: str, data: bytes, now: float) -> tuple[str, int] | None:
        """Store *data* in *group*'s history; return its ``(epoch, offset)``, or ``None`` if
        the group keeps no history."""
        history = self._history(group, now, create=True)
        if history is None:
            return None
        options = self.history(group)
        assert options is not None
        history.offset += 1
        history.entries.append((history.offset, data))
        if len(history.entries) > history.size:
            history.entries.popleft()
        history.messages_until = now + options.ttl
        return history.epoch, history.offset

    def history_read(
        self, group: str, since: int | None, limit: int | None, now: float
    ) -> tuple[list[tuple[int, bytes]], str | None, int | None]:
        """*group*'s messages after *since* (the first *limit*), or without *since* the last
        *limit*; with the group's epoch and latest offset (``None`` without history)."""
        history = self._history(group, now, create=True)
        if history is None:
            return [], None, None
        entries = list(history.entries)
        if since is not None:
            entries = [entry for entry in entries if entry[0] > since]
            if limit is not None:
                entries = entries[:limit]
        elif limit is not None:
            entries = entries[len(entries) - limit :] if limit else []
        return entries, history.epoch, history.offset

    def recover(
        self, group: str, since: Since, now: float
    ) -> tuple[list[tuple[int, bytes]] | str, str | None, int | None]:
        """What a member at *since* missed (a position, or a number of latest messages), or
        the reason it cannot recover (see :func:`layers.groups.recovery_problem`); with the
        group's epoch and latest offset."""
        history = self._history(group, now, create=True)
        if history is None:
            return "no history", None, None
        entries = list(history.entries)
        if isinstance(since, int):
            return (entries[len(entries) - since :] if since else []), history.epoch, history.offset
        first = entries[0][0] if entries else history.offset + 1
        problem = recovery_problem(since[0], since[1], history.epoch, history.offset, first, history.size)
        if problem is not None:
            return problem, history.epoch, history.offset
        return [entry for entry in entries if entry[0] > since[1]], history.epoch, history.offset

    # -- housekeeping ----------------------------------------------------------------------

    def drop(self, key: str) -> None:
        """Drop every message queued under the non-local name *key* (its queue goes too)."""
        queue = self.queues.pop(key, None)
        if queue is not None and self.on_remove is not None:
            for _, channel, data in queue.entries:
                self.on_remove(channel, data, False)

    def flush(self) -> None:
        """Drop every message, group, history and delayed message (counters stay; no
        ``on_remove``)."""
        self.queues.clear()
        self.own.clear()
        self._groups.clear()
        self._infos.clear()
        self._memberships.clear()
        self._delayed.clear()
        self._histories.clear()
        self._lapses.clear()
        self.events.clear()

    def statistics(self, now: float, channel: str | None = None) -> LayerStatistics:
        """Counters of *channel* (counted by its non-local name), or of the whole layer."""
        if channel is not None:
            queue = self.queues.get(non_local_name(channel))
            queues = [] if queue is None else [queue]
        else:
            queues = list(self.queues.values())
        pending = 0
        max_age = 0.0
        for queue in queues:
            self._purge(queue, now)
            pending += len(queue.entries)
            if queue.entries:
                max_age = max(max_age, now - (queue.entries[0][0] - self.expiry))
        key = None if channel is None else non_local_name(channel)
        for name, entries in self.own.items():
            if key is None or non_local_name(name) == key:
                self._drop_expired(entries, now)
                pending += len(entries)
                if entries:
                    max_age = max(max_age, now - (entries[0][0] - self.expiry))
        if channel is not None:
            return LayerStatistics(
                channel=channel,
                messages_count=queues[0].messages_count if queues else 0,
                messages_pending=pending,
                messages_max_age=max_age,
                channel_full_count=queues[0].channel_full_count if queues else 0,
            )
        return LayerStatistics(
            channel=None,
            messages_count=self._messages_count,
            messages_pending=pending,
            messages_max_age=max_age,
            channel_full_count=self._channel_full_count,
        )
