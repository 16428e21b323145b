"""The in-memory layer's state, pure: queues, groups, delayed messages, expiry, statistics.

Theory of operation
-------------------
Nothing here reads a clock or knows about tasks: every method that needs the time takes
``now`` (seconds on the owner's clock; the shell passes ``trio.current_time()``, so
``MockClock`` drives expiry in tests). The Trio shell, :class:`layers.InMemoryChannelLayer`,
parks receivers and runs the timer; it offers a message to a parked receiver first and asks
this state to queue it only when nobody waits (:meth:`InMemoryState.put`).

Each channel, by its non-local name, has a FIFO of ``(deadline, full_name, encoded_message)``
entries, so every ``prefix!local`` channel shares its prefix's FIFO (one receive on the prefix
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
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence

import attrs

from .base import CapacityMap, ChannelFull, LayerStatistics, non_local_name

__all__ = ["Entry", "InMemoryState"]

#: ``(deadline, full channel name, encoded message)``
Entry = tuple[float, str, bytes]


@attrs.define(eq=False, slots=True)
class _Queue:
    capacity: int
    # Waiting entries per full channel name, for a process prefix's queue (None otherwise:
    # there the queue is the channel and its length is the count).
    per_channel: dict[str, int] | None
    entries: deque[Entry] = attrs.field(factory=deque)
    messages_count: int = 0
    channel_full_count: int = 0


@attrs.define(eq=False, kw_only=True)
class InMemoryState:
    """All the state of one in-memory layer; see the module docstring.

    *expiry* and *group_expiry* are in seconds; *capacities* gives each channel's capacity.
    """

    expiry: float
    group_expiry: float
    capacities: CapacityMap
    #: The queues by non-local name (read them, do not change them).
    queues: dict[str, _Queue] = attrs.field(factory=dict, init=False)
    #: Own channels' FIFOs by full name, while something waits in them (read them only).
    own: dict[str, deque[Entry]] = attrs.field(factory=dict, init=False)
    _groups: dict[str, dict[str, float]] = attrs.field(factory=dict, init=False)
    _memberships: dict[str, set[str]] = attrs.field(factory=dict, init=False)
    _delayed: list[tuple[float, int, str, bytes]] = attrs.field(factory=list, init=False)
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

    def put(self, key: str, channel: str, data: bytes, now: float) -> None:
        """Queue *data* for *channel* (whose non-local name is *key*) until ``now + expiry``.

        Raises :exc:`ChannelFull` (and counts it) if *channel* holds ``capacity`` live messages.
        """
        queue = self.queues.get(key) or self._queue(key)
        per_channel = queue.per_channel
        waiting = len(queue.entries) if per_channel is None else per_channel.get(channel, 0)
        if waiting >= queue.capacity:
            self._purge(queue, now)
            waiting = len(queue.entries) if per_channel is None else per_channel.get(channel, 0)
            if waiting >= queue.capacity:
                queue.channel_full_count += 1
                self._channel_full_count += 1
                raise ChannelFull(
                    f"channel {channel!r} is full ({queue.capacity} messages waiting); "
                    "the message was not sent"
                )
        queue.entries.append((now + self.expiry, channel, data))
        if per_channel is not None:
            per_channel[channel] = waiting + 1
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
            while entries:
                entry = entries.popleft()
                if queue.per_channel is not None:
                    self._uncount(queue.per_channel, entry[1])
                if entry[0] > now:
                    if not entries and "?" in key:
                        del self.queues[key]
                    return entry
                self._expired(entry[1])
        return None

    # -- own channels ----------------------------------------------------------------------

    def put_own(self, channel: str, data: bytes, now: float, capacity: int) -> None:
        """Queue *data* in the own channel *channel*'s FIFO until ``now + expiry``.

        Raises :exc:`ChannelFull` (and counts it) if *capacity* live messages wait there.
        """
        entries = self.own.get(channel)
        if entries is None:
            entries = self.own[channel] = deque()
        elif len(entries) >= capacity:
            _drop_expired(entries, now)
            if len(entries) >= capacity:
                self._channel_full_count += 1
                raise ChannelFull(
                    f"channel {channel!r} is full ({capacity} messages waiting); the message was not sent"
                )
        entries.append((now + self.expiry, channel, data))
        self._messages_count += 1

    def take_own(self, channel: str, now: float) -> Entry | None:
        """Pop the first live entry of the own channel *channel*, if any."""
        entries = self.own.get(channel)
        if entries is None:
            return None
        found = None
        while entries:
            entry = entries.popleft()
            if entry[0] > now:
                found = entry
                break
        if not entries:
            del self.own[channel]
        return found

    def drop_own(self, channel: str) -> int:
        """Drop the own channel *channel*'s FIFO; return how many entries it held."""
        entries = self.own.pop(channel, None)
        return 0 if entries is None else len(entries)

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
            channel = entries.popleft()[1]
            if queue.per_channel is not None:
                self._uncount(queue.per_channel, channel)
            self._expired(channel)

    def _expired(self, channel: str) -> None:
        # A channel whose message expired unread is presumed gone: it leaves its groups.
        for group in self._memberships.pop(channel, ()):
            members = self._groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    def sweep(self, now: float) -> float:
        """Drop expired messages everywhere; return when something is next due (a message's
        expiry or a delayed message's delivery), ``math.inf`` if nothing is."""
        earliest = self._delayed[0][0] if self._delayed else math.inf
        for key, queue in list(self.queues.items()):
            self._purge(queue, now)
            if queue.entries:
                earliest = min(earliest, queue.entries[0][0])
            elif "?" in key:
                del self.queues[key]
        for channel, entries in list(self.own.items()):
            _drop_expired(entries, now)
            if entries:
                earliest = min(earliest, entries[0][0])
            else:
                del self.own[channel]
        return earliest

    # -- delayed messages ------------------------------------------------------------------

    def schedule(self, channel: str, data: bytes, due: float) -> None:
        """Keep *data* for *channel* until *due*; :meth:`pop_due` hands it back then."""
        self._delayed_seq += 1
        heapq.heappush(self._delayed, (due, self._delayed_seq, channel, data))

    def pop_due(self, now: float) -> list[tuple[str, bytes]]:
        """The delayed messages due at *now*, in due order, as ``(channel, data)``."""
        delayed = self._delayed
        due = []
        while delayed and delayed[0][0] <= now:
            _, _, channel, data = heapq.heappop(delayed)
            due.append((channel, data))
        return due

    # -- groups ----------------------------------------------------------------------------

    def group_add(self, group: str, channel: str, now: float) -> None:
        """Add *channel* to *group*, or refresh its membership, as of *now*."""
        self._groups.setdefault(group, {})[channel] = now
        self._memberships.setdefault(channel, set()).add(group)

    def group_discard(self, group: str, channel: str) -> None:
        """Remove *channel* from *group* (nothing happens if it is not a member)."""
        members = self._groups.get(group)
        if members is not None and members.pop(channel, None) is not None and not members:
            del self._groups[group]
        groups = self._memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._memberships[channel]

    def group_members(self, group: str, now: float) -> list[str]:
        """The members of *group* whose membership has not lapsed (lapsed ones are removed)."""
        members = self._groups.get(group)
        if not members:
            return []
        cutoff = now - self.group_expiry
        for channel in [channel for channel, added in members.items() if added <= cutoff]:
            self.group_discard(group, channel)
        return list(self._groups.get(group, ()))

    def group_targets(self, group: str, now: float) -> list[str]:
        """The members a group send at *now* goes to: live members, less those whose own
        message expired unread (they are evicted from their groups on the way)."""
        targets = []
        for channel in self.group_members(group, now):
            queue = self.queues.get(non_local_name(channel))
            if queue is not None and queue.entries:
                self._purge(queue, now)
                if channel not in self._memberships:
                    continue  # its messages expired unread: it was evicted
            targets.append(channel)
        return targets

    # -- housekeeping ----------------------------------------------------------------------

    def flush(self) -> None:
        """Drop every message, group and delayed message (counters stay)."""
        self.queues.clear()
        self.own.clear()
        self._groups.clear()
        self._memberships.clear()
        self._delayed.clear()

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
                _drop_expired(entries, now)
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


def _drop_expired(entries: deque[Entry], now: float) -> None:
    # An own channel's expired messages go; the channel stays in its groups (it is open).
    while entries and entries[0][0] <= now:
        entries.popleft()
