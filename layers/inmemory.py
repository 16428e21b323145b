"""The in-memory channel layer: one process, no setup, the embedded default.

Theory of operation
-------------------
Each channel (by its non-local name, so every ``prefix!local`` channel shares the ``prefix!``
queue) has a FIFO of ``(deadline, full_name, encoded_message)`` entries. A receiver that
finds nothing parks its task on every channel it asked for; a sender that finds a parked
receiver hands the message straight to it (``trio.lowlevel.reschedule``) instead of queueing.
Once handed over, the message belongs to that receiver even if it is cancelled a moment
later, and a receiver cancelled while parked is simply unparked, so a cancelled receive never
loses a message.

Expiry is a deadline on each entry, read from ``trio.current_time()`` (``MockClock`` drives it
in tests). Expired entries are skipped by receivers and swept by one timer task, which also
delivers delayed messages; the timer sleeps until the next deadline and is woken, not polled,
when new work arrives. A channel that loses a message to expiry leaves every group it was in.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import outcome
import trio

from .base import (
    BaseChannelLayer,
    ChannelFull,
    LayerStatistics,
    decode_message,
    non_local_name,
    parse_delay_message,
    validate_channel_name,
    validate_group_name,
    validate_receive_channels,
)
from .concurrency import open_service_nursery

__all__ = ["InMemoryChannelLayer"]

log = logging.getLogger("layers.inmemory")

_Entry = tuple[float, str, bytes]  # (deadline, full channel name, encoded message)


@attrs.define(eq=False, slots=True)
class _Queue:
    capacity: int
    entries: deque[_Entry] = attrs.field(factory=deque)
    messages_count: int = 0
    channel_full_count: int = 0


@attrs.define(eq=False, slots=True)
class _Waiter:
    task: trio.lowlevel.Task
    names: list[str]


@attrs.define(eq=False, kw_only=True)
class InMemoryChannelLayer(BaseChannelLayer):
    """A channel layer living in this process's memory.

    Use it as ``async with InMemoryChannelLayer() as layer:``; entering starts the timer task
    that sweeps expired messages and delivers delayed ones. Plain sends and receives also work
    on a layer that was never entered (expired messages are then skipped lazily), but delayed
    sends need the timer.
    """

    extensions = ("groups", "flush", "statistics", "delay")

    _queues: dict[str, _Queue] = attrs.field(factory=dict, init=False, repr=False)
    _waiters: dict[str, dict[_Waiter, None]] = attrs.field(factory=dict, init=False, repr=False)
    _groups: dict[str, dict[str, float]] = attrs.field(factory=dict, init=False, repr=False)
    _memberships: dict[str, set[str]] = attrs.field(factory=dict, init=False, repr=False)
    _delayed: list[tuple[float, int, str, bytes]] = attrs.field(factory=list, init=False, repr=False)
    _delayed_seq: int = attrs.field(default=0, init=False, repr=False)
    _messages_count: int = attrs.field(default=0, init=False, repr=False)
    _channel_full_count: int = attrs.field(default=0, init=False, repr=False)
    _sends: int = attrs.field(default=0, init=False, repr=False)
    _timer_running: bool = attrs.field(default=False, init=False, repr=False)
    _timer_deadline: float = attrs.field(default=math.inf, init=False, repr=False)
    _timer_wakeup: trio.Event | None = attrs.field(default=None, init=False, repr=False)

    # -- lifetime --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        async with open_service_nursery() as nursery:
            await nursery.start(self._run_timer)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _run_timer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._timer_running = True
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                self._deliver_due(now)
                deadline = self._sweep(now)
                if self._delayed:
                    deadline = min(deadline, self._delayed[0][0])
                self._timer_deadline = deadline
                self._timer_wakeup = wakeup = trio.Event()
                with trio.move_on_at(deadline):
                    await wakeup.wait()
        finally:
            self._timer_running = False
            self._timer_deadline = math.inf

    def _wake_timer(self) -> None:
        if self._timer_wakeup is not None:
            self._timer_wakeup.set()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any], *, delay: float = 0) -> None:
        """See :meth:`layers.BaseChannelLayer.send`. Never blocks.

        Always a cancellation point; a schedule point every 16th call (a send that never
        blocks gains nothing from yielding each time, and each yield costs a scheduler pass),
        so even a tight loop of sends lets other tasks run.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self.send_nowait(channel, message, delay=delay)
        await self._maybe_yield()

    async def _maybe_yield(self) -> None:
        # Sends, and receives that find a message waiting, never block: yield every 16th time.
        self._sends += 1
        if not self._sends & 15:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, channel: str, message: dict[str, Any], *, delay: float = 0) -> None:
        """Like :meth:`~layers.BaseChannelLayer.send`, without a checkpoint (the in-memory layer never blocks)."""
        if channel == "asgi.delay":
            channel, message, delay = parse_delay_message(message)
        validate_channel_name(channel)
        data = self._encode(message)
        if delay:
            self._schedule(channel, data, delay)
        else:
            self._deliver(channel, data, trio.current_time())

    async def send_encoded(self, channel: str, data: bytes, *, delay: float = 0) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_channel_name(channel)
        if delay:
            self._schedule(channel, data, delay)
        else:
            self._deliver(channel, data, trio.current_time())
        await self._maybe_yield()

    def _schedule(self, channel: str, data: bytes, delay: float) -> None:
        if not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        if not self._timer_running:
            raise RuntimeError(
                "delayed sends need the layer's timer task: use the layer as "
                "'async with InMemoryChannelLayer() as layer:'"
            )
        due = trio.current_time() + delay
        self._delayed_seq += 1
        heapq.heappush(self._delayed, (due, self._delayed_seq, channel, data))
        if due < self._timer_deadline:
            self._wake_timer()

    def _deliver_due(self, now: float) -> None:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, channel, data = heapq.heappop(delayed)
            try:
                self._deliver(channel, data, now)
            except ChannelFull:
                log.warning("dropped a delayed message: channel %r is full", channel)

    def _queue(self, key: str) -> _Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(self.get_capacity(key))
        return queue

    def _deliver(self, channel: str, data: bytes, now: float) -> None:
        key = non_local_name(channel)
        waiters = self._waiters.get(key)
        if waiters:
            waiter = next(iter(waiters))
            self._unpark(waiter)
            if "?" not in key:  # single-reader channels are too many to keep counters for
                self._queue(key).messages_count += 1
            self._messages_count += 1
            message = decode_message(data)
            trio.lowlevel.reschedule(waiter.task, outcome.Value((channel, message, now + self.expiry)))
            return
        queue = self._queue(key)
        entries = queue.entries
        if len(entries) >= queue.capacity:
            self._purge(entries, now)
            if len(entries) >= queue.capacity:
                queue.channel_full_count += 1
                self._channel_full_count += 1
                raise ChannelFull(
                    f"channel {channel!r} is full ({queue.capacity} messages waiting); "
                    "the message was not sent"
                )
        entries.append((now + self.expiry, channel, data))
        queue.messages_count += 1
        self._messages_count += 1
        if self._timer_deadline == math.inf:
            self._wake_timer()

    # -- receiving -------------------------------------------------------------------------

    async def receive(self, channels: Sequence[str]) -> tuple[str, dict[str, Any]]:
        channel, message, _ = await self.receive_with_deadline(channels)
        return channel, message

    async def receive_with_deadline(self, channels: Sequence[str]) -> tuple[str, dict[str, Any], float]:
        names = validate_receive_channels(channels)
        await trio.lowlevel.checkpoint_if_cancelled()
        found = self._take(names)
        if found is not None:
            await self._maybe_yield()
            return found
        waiter = _Waiter(trio.lowlevel.current_task(), names)
        for name in names:
            self._waiters.setdefault(name, {})[waiter] = None

        def abort(_: object) -> trio.lowlevel.Abort:
            self._unpark(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        result: tuple[str, dict[str, Any], float] = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def receive_nowait(self, channels: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """Like :meth:`~layers.BaseChannelLayer.receive`, but raise :exc:`trio.WouldBlock` if nothing is waiting."""
        found = self._take(validate_receive_channels(channels))
        if found is None:
            raise trio.WouldBlock
        return found[0], found[1]

    def _take(self, names: list[str]) -> tuple[str, dict[str, Any], float] | None:
        if len(names) > 1:
            names = random.sample(names, len(names))  # fairness: no channel starves another
        now = trio.current_time()
        for key in names:
            queue = self._queues.get(key)
            if queue is None:
                continue
            entries = queue.entries
            while entries:
                deadline, channel, data = entries.popleft()
                if deadline > now:
                    if not entries and "?" in key:
                        del self._queues[key]
                    return channel, decode_message(data), deadline
                self._expired(channel)
        return None

    def _unpark(self, waiter: _Waiter) -> None:
        for name in waiter.names:
            parked = self._waiters[name]
            del parked[waiter]
            if not parked:
                del self._waiters[name]

    # -- expiry ----------------------------------------------------------------------------

    def _purge(self, entries: deque[_Entry], now: float) -> None:
        while entries and entries[0][0] <= now:
            self._expired(entries.popleft()[1])

    def _expired(self, channel: str) -> None:
        # A channel whose message expired unread is presumed gone: it leaves its groups.
        for group in self._memberships.pop(channel, ()):
            members = self._groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    def _sweep(self, now: float) -> float:
        """Drop expired messages everywhere; return the earliest remaining deadline."""
        earliest = math.inf
        for key, queue in list(self._queues.items()):
            entries = queue.entries
            self._purge(entries, now)
            if entries:
                earliest = min(earliest, entries[0][0])
            elif "?" in key:
                del self._queues[key]
        return earliest

    # -- channels --------------------------------------------------------------------------

    async def new_channel(self, pattern: str) -> str:
        await trio.lowlevel.checkpoint()
        if not isinstance(pattern, str) or not pattern.endswith("?"):
            raise TypeError(
                f"new_channel pattern {pattern!r} is invalid: it must be a str ending in '?' "
                "(process-specific '!' names are made by their process, not the layer)"
            )
        validate_channel_name(pattern + "x")
        while True:
            name = pattern + secrets.token_urlsafe(9)
            if name not in self._queues:
                return name

    # -- groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        validate_channel_name(channel)
        self._groups.setdefault(group, {})[channel] = trio.current_time()
        self._memberships.setdefault(channel, set()).add(group)

    async def group_discard(self, group: str, channel: str) -> None:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        validate_channel_name(channel)
        self._remove_member(group, channel)

    def _remove_member(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is not None and members.pop(channel, None) is not None and not members:
            del self._groups[group]
        groups = self._memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._memberships[channel]

    def _live_members(self, group: str, now: float) -> list[str]:
        members = self._groups.get(group)
        if not members:
            return []
        cutoff = now - self.group_expiry
        stale = [channel for channel, added in members.items() if added <= cutoff]
        for channel in stale:
            self._remove_member(group, channel)
        return list(self._groups.get(group, ()))

    async def group_channels(self, group: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        return self._live_members(group, trio.current_time())

    async def send_group(self, group: str, message: dict[str, Any]) -> None:
        await self.send_group_encoded(group, self._encode(message))

    async def send_group_encoded(self, group: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_group_name(group)
        now = trio.current_time()
        for channel in self._live_members(group, now):
            queue = self._queues.get(non_local_name(channel))
            if queue is not None and queue.entries:
                self._purge(queue.entries, now)
                if channel not in self._memberships:
                    continue  # its messages expired unread: it was evicted
            try:
                self._deliver(channel, data, now)
            except ChannelFull:
                pass  # at-most-once: a full member misses this message
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()
        self._queues.clear()
        self._groups.clear()
        self._memberships.clear()
        self._delayed.clear()

    async def statistics(self, channel: str | None = None) -> LayerStatistics:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        if channel is not None:
            key = non_local_name(validate_channel_name(channel))
            queue = self._queues.get(key)
            queues = [] if queue is None else [queue]
        else:
            queues = list(self._queues.values())
        pending = 0
        max_age = 0.0
        for queue in queues:
            self._purge(queue.entries, now)
            pending += len(queue.entries)
            if queue.entries:
                max_age = max(max_age, now - (queue.entries[0][0] - self.expiry))
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
