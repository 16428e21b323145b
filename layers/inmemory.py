"""The in-memory channel layer: one process, no setup, the embedded default.

Theory of operation
-------------------
All the state (queues, groups, delayed messages, expiry, statistics) is the pure
:class:`~layers._inmemory_state.InMemoryState`; this module is its thin Trio shell. A receiver
that finds nothing parks (:mod:`layers._backend`); a sender offers its message to a parked
receiver first and hands it over without queueing, else the state queues it. One timer task
delivers delayed messages and sweeps expired ones: it sleeps until the state's next deadline
and is woken, not polled, when earlier work arrives.

Presence events are queued by the state (:attr:`InMemoryState.events`) and sent here, as
group sends without history, right after the operation that caused them: a discard, an add,
a send or receive that found a member gone, the timer finding a membership lapsed.

Capacity is per channel, also under a process prefix (``interface.abc!x`` and
``interface.abc!y`` each hold ``capacity`` messages, in one FIFO that a receive on
``interface.abc!`` reads in sending order). A sender that waits for room (``wait=True``) is
woken when a message of its channel leaves the state (``InMemoryState.on_remove``). The layer
lives and dies with its process, so it never raises :exc:`~layers.ChannelLayerUnavailable`.

Copies: a user's ``send`` stores the message encoded (copy-on-send) and every receiver gets a
decoded copy; an owned send (``send_owned``, the interface's messages) is handed over or
queued as it is, so its receiver gets the very dict, with no encoding and no validation walk.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Collection, Iterator
from typing import Any

import attrs
import outcome
import trio

from . import groups
from ._backend import Delivery, ParkingLayer, single_reader_names
from ._inmemory_state import InMemoryState, Payload
from .base import (
    ChannelFull,
    LayerStatistics,
    check_owned_message,
    decode_message,
    encode_message,
    non_local_name,
    parse_delay_message,
    validate_channel_name,
    validate_group_name,
)
from .concurrency import open_service_nursery
from .groups import FULL_CHANNELS_LIMIT, GroupHistory, GroupSendReport, Since

__all__ = ["InMemoryChannelLayer"]

log = logging.getLogger("layers.inmemory")


@attrs.define(eq=False, kw_only=True)
class InMemoryChannelLayer(ParkingLayer):
    """A channel layer living in this process's memory.

    Use it as ``async with InMemoryChannelLayer() as layer:``; entering starts the timer task
    that sweeps expired messages and delivers delayed ones. Plain sends and receives also work
    on a layer that was never entered (expired messages are then skipped lazily), but delayed
    sends need the timer.
    """

    extensions = ("groups", "flush", "statistics", "delay", "presence", "history", "own")

    _state: InMemoryState = attrs.field(init=False, repr=False)
    _flushing_events: bool = attrs.field(default=False, init=False, repr=False)
    _timer_running: bool = attrs.field(default=False, init=False, repr=False)
    _timer_deadline: float = attrs.field(default=math.inf, init=False, repr=False)
    _timer_wakeup: trio.Event | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._state = InMemoryState(
            expiry=self.expiry,
            group_expiry=self.group_expiry,
            capacities=self._capacities,
            on_remove=self._removed,
            history=self.history_options,
            presence_events=self.presence_events,
        )

    def _removed(self, channel: str, payload: Payload, taken: bool) -> None:
        self._room_freed(channel)

    @property
    def state(self) -> InMemoryState:
        """The layer's pure state; its synchronous ``statistics(now)`` needs no checkpoint."""
        return self._state

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
                for channel, data in self._state.pop_due(now):
                    try:
                        self._deliver(channel, data, now)
                    except ChannelFull:
                        log.warning("dropped a delayed message: channel %r is full", channel)
                self._timer_deadline = deadline = self._state.sweep(now)
                self._flush_events(now)
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

    async def send(
        self, channel: str, message: dict[str, Any], *, delay: float = 0, wait: bool = False
    ) -> None:
        """See :meth:`layers.BaseChannelLayer.send`. Blocks only with ``wait=True``.

        Always a cancellation point; a schedule point every 16th call (a send that never
        blocks gains nothing from yielding each time, and each yield costs a scheduler pass),
        so even a tight loop of sends lets other tasks run.
        """
        if wait and not delay and channel != "asgi.delay":
            await self._waiting_send(self.send, channel, message)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self._send(channel, message, delay)
        await self._maybe_yield()

    async def send_nowait(self, channel: str, message: dict[str, Any], *, delay: float = 0) -> None:
        """See :meth:`layers.BaseChannelLayer.send_nowait`: here no checkpoint at all."""
        self._send(channel, message, delay)

    async def send_owned(self, channel: str, message: dict[str, Any], *, wait: bool = False) -> None:
        """See :meth:`layers.BaseChannelLayer.send_owned`: the receiver gets *message* itself."""
        if wait and channel != "asgi.delay":
            await self._waiting_send(self.send_owned, channel, message)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        if channel == "asgi.delay":
            self._send(channel, message, 0)
        else:
            validate_channel_name(channel)
            check_owned_message(message, self.max_message_size)
            self._deliver(channel, message, trio.current_time())
        await self._maybe_yield()

    def _send(self, channel: str, message: dict[str, Any], delay: float) -> None:
        if channel == "asgi.delay":
            channel, message, delay = parse_delay_message(message)
        validate_channel_name(channel)
        data = self._encode(message)
        if delay:
            self._schedule(channel, data, delay)
        else:
            self._deliver(channel, data, trio.current_time())

    async def send_encoded(self, channel: str, data: bytes, *, delay: float = 0, wait: bool = False) -> None:
        if wait and not delay:
            await self._waiting_send(self.send_encoded, channel, data)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_channel_name(channel)
        if delay:
            self._schedule(channel, data, delay)
        else:
            self._deliver(channel, data, trio.current_time())
        await self._maybe_yield()

    def _schedule(self, channel: str, data: Payload, delay: float) -> None:
        if not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        if not self._timer_running:
            raise RuntimeError(
                "delayed sends need the layer's timer task: use the layer as "
                "'async with InMemoryChannelLayer() as layer:'"
            )
        due = trio.current_time() + delay
        self._state.schedule(channel, data, due)
        if due < self._timer_deadline:
            self._wake_timer()

    def _deliver(self, channel: str, data: Payload, now: float) -> None:
        key = non_local_name(channel)
        if channel is not key and key in self._owned_prefixes:
            self._deliver_own(channel, key, data, now)
            return
        waiter = self._receivers.claim(channel, key)
        if waiter is not None:
            self._hand_over(waiter.task, channel, key, data, now)
            return
        try:
            self._state.put(key, channel, data, now)
        finally:
            if self._state.events:
                self._flush_events(now)
        if self._timer_deadline == math.inf:
            self._wake_timer()

    def _hand_over(self, task: trio.lowlevel.Task, channel: str, key: str, data: Payload, now: float) -> None:
        """Wake *task*, a parked receiver, with the message (waiter.wake() inlined: the hot path)."""
        self._state.count_handed_over(key)
        message = decode_message(data) if isinstance(data, bytes) else data
        trio.lowlevel.reschedule(task, outcome.Value((channel, message, now + self.expiry)))

    def _deliver_own(self, channel: str, key: str, data: Payload, now: float) -> None:
        own = self._own_open.get(channel)
        if own is None:
            return  # under an owned prefix but not open: its connection is gone
        if own.deliver is not None and self._receivers.parked_own(channel):
            # Its receiver waits, so nothing is queued before this message: offer it directly.
            data = decode_message(data) if isinstance(data, bytes) else data
            if own.deliver(data):
                self._state.count_handed_over(key)
                return
        waiter = self._receivers.claim_own(channel)
        if waiter is not None:
            self._hand_over(waiter.task, channel, key, data, now)
            return
        own.put(self._state, channel, data, now)
        if self._timer_deadline == math.inf:
            self._wake_timer()

    def _flush_events(self, now: float) -> None:
        """Send the presence events the state queued (and those sending them caused)."""
        if self._flushing_events:
            return  # the outer call sends them
        self._flushing_events = True
        try:
            events = self._state.events
            while events:
                group, event, leave_out = events.popleft()
                self._fan_out(group, encode_message(event), frozenset((leave_out,)) if leave_out else (), now)
        finally:
            self._flushing_events = False

    def _fan_out(self, group: str, data: bytes, excluded: Collection[str], now: float) -> GroupSendReport:
        targets, gone = self._state.group_targets(group, now)
        delivered = full = 0
        full_channels: list[str] = []
        for channel in targets:
            if channel in excluded:
                continue
            try:
                self._deliver(channel, data, now)
                delivered += 1
            except ChannelFull:  # at-most-once: a full member misses this message
                full += 1
                if len(full_channels) < FULL_CHANNELS_LIMIT:
                    full_channels.append(channel)
        return GroupSendReport(
            delivered=delivered, full=full, expired=gone, full_channels=tuple(full_channels)
        )

    # -- receiving -------------------------------------------------------------------------

    def _take(self, names: list[str]) -> Delivery | None:
        now = trio.current_time()
        if len(names) == 1 and names[0] in self._own_open:  # receive_own
            entry = self._state.take_own(names[0], now)
        else:
            entry = self._state.take(names, now)
            if self._state.events:
                self._flush_events(now)
        if entry is None:
            return None
        deadline, channel, data = entry
        return channel, decode_message(data) if isinstance(data, bytes) else data, deadline

    @contextlib.contextmanager
    def own_prefix(self, prefix: str) -> Iterator[None]:
        """See :meth:`layers.BaseChannelLayer.own_prefix`; here it only drops, on leaving, what
        is still queued under *prefix* (everything is in this process anyway)."""
        with super().own_prefix(prefix):
            try:
                yield
            finally:
                self._state.drop(prefix)

    def _drop_own(self, channel: str) -> int:
        return self._state.drop_own(channel)

    # -- channels --------------------------------------------------------------------------

    async def new_channel(self, pattern: str) -> str:
        await trio.lowlevel.checkpoint()
        return next(name for name in single_reader_names(pattern) if not self._state.has_channel(name))

    # -- groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str, *, info: dict[str, Any] | None = None) -> None:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        validate_channel_name(channel)
        encoded = groups.validate_info(info)
        now = trio.current_time()
        self._state.group_add(group, channel, now, encoded)
        self._flush_events(now)

    async def group_recover(
        self, group: str, channel: str, since: Since, *, info: dict[str, Any] | None = None
    ) -> GroupHistory:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        validate_channel_name(channel)
        since = groups.validate_since(since)
        encoded = groups.validate_info(info)
        now = trio.current_time()
        # No checkpoint from here on: the add, the replay and later group sends are ordered.
        self._state.group_add(group, channel, now, encoded)
        found, current_epoch, latest = self._state.recover(group, since, now)
        if not isinstance(found, str) and len(found) > self._state.room(channel, now):
            found = "no room"
        if isinstance(found, str):
            self._flush_events(now)
            raise groups.cannot_recover(group, found, since, current_epoch, latest)
        assert current_epoch is not None
        for entry_offset, data in found:
            self._deliver(channel, groups.with_position(data, group, current_epoch, entry_offset), now)
        self._flush_events(now)
        return GroupHistory(
            messages=[(entry_offset, decode_message(data)) for entry_offset, data in found],
            epoch=current_epoch,
            offset=latest,
        )

    async def group_discard(self, group: str, channel: str) -> None:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        validate_channel_name(channel)
        self._state.group_discard(group, channel)
        self._flush_events(trio.current_time())

    async def group_channels(self, group: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        now = trio.current_time()
        members = self._state.group_members(group, now)
        self._flush_events(now)
        return members

    async def group_presence(self, group: str) -> dict[str, dict[str, Any] | None]:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        now = trio.current_time()
        members = self._state.group_presence(group, now)
        self._flush_events(now)
        return {channel: None if info is None else decode_message(info) for channel, info in members.items()}

    async def group_history(
        self, group: str, *, since: int | None = None, limit: int | None = None
    ) -> GroupHistory:
        await trio.lowlevel.checkpoint()
        validate_group_name(group)
        groups.validate_history_range(since, limit)
        entries, epoch, offset = self._state.history_read(group, since, limit, trio.current_time())
        return GroupHistory(
            messages=[(entry_offset, decode_message(data)) for entry_offset, data in entries],
            epoch=epoch,
            offset=offset,
        )

    async def send_group_encoded(
        self, group: str, data: bytes, *, exclude: str | Collection[str] | None = None
    ) -> GroupSendReport:
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_group_name(group)
        excluded = groups.validate_exclude(exclude)
        groups.refuse_position(data)
        now = trio.current_time()
        position = self._state.history_append(group, data, now)
        if position is not None:
            data = groups.with_position(data, group, *position)
        report = self._fan_out(group, data, excluded, now)
        self._flush_events(now)
        await trio.lowlevel.cancel_shielded_checkpoint()
        if position is None:
            return report
        return attrs.evolve(report, epoch=position[0], offset=position[1])

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()
        self._state.flush()
        self._all_room_freed()

    async def statistics(self, channel: str | None = None) -> LayerStatistics:
        await trio.lowlevel.checkpoint()
        if channel is not None:
            validate_channel_name(channel)
        return self._state.statistics(trio.current_time(), channel)
