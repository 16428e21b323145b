"""The in-memory layer's pure state, driven by plain synchronous calls and made-up times."""

from __future__ import annotations

import math

import pytest

from layers import ChannelFull, LayerStatistics
from layers._inmemory_state import InMemoryState
from layers.base import CapacityMap


def _state(capacity: int = 3, **patterns: int) -> InMemoryState:
    return InMemoryState(expiry=10, group_expiry=100, capacities=CapacityMap.build(capacity, patterns))


def _take(state: InMemoryState, key: str, now: float) -> tuple[str, bytes] | None:
    entry = state.take([key], now)
    return None if entry is None else (entry[1], entry[2])


def test_fifo_with_full_names_under_a_prefix() -> None:
    """A prefix's queue returns its channels' messages in sending order, with full names."""
    state = _state()
    state.put("p!", "p!a", b"1", now=0)
    state.put("p!", "p!b", b"2", now=1)
    state.put("p!", "p!a", b"3", now=2)
    assert [_take(state, "p!", 3) for _ in range(4)] == [("p!a", b"1"), ("p!b", b"2"), ("p!a", b"3"), None]


def test_capacity_is_per_channel_under_a_prefix() -> None:
    """Each process-specific channel holds `capacity` messages; its neighbours are unaffected."""
    state = _state(capacity=2)
    state.put("p!", "p!a", b"", now=0)
    state.put("p!", "p!a", b"", now=0)
    with pytest.raises(ChannelFull, match="channel 'p!a' is full"):
        state.put("p!", "p!a", b"", now=0)
    state.put("p!", "p!b", b"", now=0)
    state.put("p!", "p!b", b"", now=0)
    assert state.take(["p!"], now=1) is not None  # one of p!a's
    state.put("p!", "p!a", b"", now=1)  # room again
    assert state.statistics(now=1).channel_full_count == 1


def test_per_channel_counts_leave_no_trace() -> None:
    """The per-channel counts hold only channels with messages waiting (bounded memory)."""
    state = _state(capacity=1000)
    for index in range(500):
        state.put("p!", f"p!c{index}", b"", now=0)
    assert len(state.queues["p!"].per_channel or {}) == 500
    while state.take(["p!"], now=1) is not None:
        pass
    for index in range(500):
        state.put("p!", f"p!d{index}", b"", now=2)
    state.sweep(now=20)  # all expired
    assert state.queues["p!"].per_channel == {}


def test_ordinary_channel_capacity_and_patterns() -> None:
    """A normal channel's capacity is its queue's length; patterns pick the capacity."""
    state = _state(capacity=1, **{"big*": 2})
    state.put("small", "small", b"", now=0)
    with pytest.raises(ChannelFull):
        state.put("small", "small", b"", now=0)
    state.put("bigger", "bigger", b"", now=0)
    state.put("bigger", "bigger", b"", now=0)
    with pytest.raises(ChannelFull):
        state.put("bigger", "bigger", b"", now=0)


def test_a_full_channel_makes_room_by_dropping_expired() -> None:
    """A send to a full channel first drops what has expired there."""
    state = _state(capacity=1)
    state.put("x", "x", b"old", now=0)
    state.put("x", "x", b"new", now=10)  # the first expired at 10
    assert _take(state, "x", 11) == ("x", b"new")


def test_take_skips_expired_and_evicts_their_channel() -> None:
    """An expired message is never returned; its channel leaves its groups."""
    state = _state()
    state.group_add("g", "p!gone", now=0)
    state.put("p!", "p!gone", b"", now=0)
    assert state.take(["p!"], now=10) is None
    assert state.group_members("g", now=10) == []


def test_take_tries_keys_in_the_order_given() -> None:
    """The caller decides the order (the shell shuffles for fairness)."""
    state = _state()
    state.put("a", "a", b"1", now=0)
    state.put("b", "b", b"2", now=0)
    assert state.take(["b", "a"], now=1) == (10, "b", b"2")


def test_single_reader_queues_vanish_when_empty() -> None:
    """A '?' channel's queue is removed once drained or swept."""
    state = _state()
    state.put("r?x", "r?x", b"", now=0)
    assert state.has_channel("r?x")
    state.take(["r?x"], now=1)
    assert not state.has_channel("r?x")
    state.put("r?y", "r?y", b"", now=0)
    state.sweep(now=11)
    assert state.queues == {}


def test_sweep_returns_the_next_deadline() -> None:
    """sweep answers when something is next due: an expiry or a delayed delivery."""
    state = _state()
    assert state.sweep(now=0) == math.inf
    state.put("x", "x", b"", now=1)
    assert state.sweep(now=2) == 11
    state.schedule("x", b"later", due=5)
    assert state.sweep(now=2) == 5


def test_delayed_messages_come_due_in_order() -> None:
    """pop_due hands back what is due, earliest first, and keeps the rest."""
    state = _state()
    state.schedule("b", b"2", due=5)
    state.schedule("a", b"1", due=3)
    state.schedule("c", b"3", due=9)
    assert state.pop_due(now=2) == []
    assert state.pop_due(now=6) == [("a", b"1"), ("b", b"2")]
    assert state.pop_due(now=9) == [("c", b"3")]


def test_group_membership_lapses() -> None:
    """A membership lapses group_expiry after the last add; re-adding refreshes it."""
    state = _state()
    state.group_add("g", "a", now=0)
    state.group_add("g", "b", now=0)
    state.group_add("g", "b", now=60)
    assert state.group_members("g", now=120) == ["b"]
    state.group_discard("g", "b")
    assert state.group_members("g", now=120) == []


def test_group_targets_leave_out_members_whose_messages_expired() -> None:
    """A member whose own message expired unread is evicted before the group send."""
    state = _state()
    for member in ("p!a", "p!b"):
        state.group_add("g", member, now=0)
    state.put("p!", "p!a", b"unread", now=0)
    assert state.group_targets("g", now=5) == (["p!a", "p!b"], 0)
    assert state.group_targets("g", now=10) == (["p!b"], 1)
    assert state.group_members("g", now=10) == ["p!b"]


def test_statistics() -> None:
    """Counters globally and per channel (by its non-local name); ages from the send time."""
    state = _state(capacity=1)
    state.put("x", "x", b"", now=0)
    state.count_handed_over("x")
    with pytest.raises(ChannelFull):
        state.put("x", "x", b"", now=1)
    assert state.statistics(now=4, channel="x") == LayerStatistics(
        channel="x", messages_count=2, messages_pending=1, messages_max_age=4, channel_full_count=1
    )
    assert state.statistics(now=4) == LayerStatistics(
        channel=None, messages_count=2, messages_pending=1, messages_max_age=4, channel_full_count=1
    )
    assert state.statistics(now=4, channel="never").messages_count == 0


def test_flush_drops_everything_but_counters() -> None:
    """flush empties queues, groups and delayed messages."""
    state = _state()
    state.put("x", "x", b"", now=0)
    state.group_add("g", "x", now=0)
    state.schedule("x", b"", due=1)
    state.flush()
    assert state.queues == {} and state.group_members("g", now=0) == [] and state.pop_due(now=5) == []
    assert state.statistics(now=0).messages_count == 1


def test_own_channel_fifos_are_apart_from_their_prefix() -> None:
    """Own channels queue in FIFOs of their own, by full name, bounded by the capacity given,
    and leave no trace once empty; a prefix's queue never sees them."""
    state = _state(capacity=100)
    state.put_own("p!a", b"1", now=0, capacity=2)
    state.put_own("p!b", b"2", now=0, capacity=2)
    state.put_own("p!a", b"3", now=1, capacity=2)
    with pytest.raises(ChannelFull, match="channel 'p!a' is full"):
        state.put_own("p!a", b"4", now=1, capacity=2)
    assert state.take(["p!"], now=2) is None
    own = [state.take_own("p!a", now=2) for _ in range(3)]
    assert [entry and entry[2] for entry in own] == [b"1", b"3", None]
    assert "p!a" not in state.own and "p!b" in state.own
    assert state.drop_own("p!b") == 1 and state.drop_own("p!b") == 0
    assert state.own == {}


def test_own_channel_expiry_keeps_its_groups() -> None:
    """An own channel's expired messages are dropped (by take, by a full FIFO, by sweep), but
    the channel stays in its groups: it is open, unlike a channel whose message expired unread."""
    state = _state()
    state.group_add("g", "p!a", now=0)
    state.put_own("p!a", b"old", now=0, capacity=1)
    state.put_own("p!a", b"new", now=10, capacity=1)  # the old one expired at 10: room
    assert state.sweep(now=15) == 20
    entry = state.take_own("p!a", now=15)
    assert entry is not None and entry[2] == b"new"
    state.put_own("p!a", b"late", now=20, capacity=1)
    assert state.take_own("p!a", now=31) is None and state.own == {}
    assert state.group_members("g", now=31) == ["p!a"]


def test_own_channels_in_statistics_and_flush() -> None:
    """What waits in own channels counts as pending, for the layer and for their prefix."""
    state = _state()
    state.put_own("p!a", b"", now=0, capacity=5)
    state.put_own("p!a", b"", now=2, capacity=5)
    assert state.statistics(now=4).messages_pending == 2
    prefix = state.statistics(now=4, channel="p!")
    assert (prefix.messages_pending, prefix.messages_max_age) == (2, 4)
    assert state.statistics(now=4, channel="q!").messages_pending == 0
    state.flush()
    assert state.own == {}


def test_on_remove_hears_of_every_entry_that_leaves() -> None:
    """Taken, expired (by take, purge or sweep) or dropped: each entry leaving a queue is
    reported once, with its payload and whether it was taken (waiting senders are woken so)."""
    removed: list[tuple[str, object, bool]] = []
    state = _state(capacity=2)
    state.on_remove = lambda channel, payload, taken: removed.append((channel, payload, taken))
    owned = {"n": 1}
    state.put("p!", "p!a", owned, now=0)
    state.put("p!", "p!a", b"2", now=5)
    state.put("q", "q", b"3", now=0)
    state.put("r", "r", b"4", now=0)
    assert state.take(["p!"], now=1) == (10, "p!a", owned)
    assert state.take(["q"], now=11) is None  # expired on the way
    state.put("p!", "p!a", b"5", now=6)
    state.sweep(now=15.5)  # b"2" (due at 15) goes
    state.drop("p!")
    state.drop("nothing-here")
    assert removed == [
        ("p!a", owned, True),
        ("q", b"3", False),
        ("p!a", b"2", False),
        ("r", b"4", False),
        ("p!a", b"5", False),
    ]


def test_admitted_entries_skip_capacity_and_counts() -> None:
    """An entry accepted elsewhere (a Redis server's pop) is queued past capacity, with its
    own deadline, and counted neither as sent nor as refused."""
    state = _state(capacity=1)
    state.put("p!", "p!a", b"1", now=0)
    with pytest.raises(ChannelFull):
        state.put("p!", "p!a", b"2", now=0)
    state.put("p!", "p!a", b"3", now=0, deadline=4, admitted=True)
    stats = state.statistics(1, "p!a")
    assert (stats.messages_count, stats.messages_pending, stats.channel_full_count) == (1, 2, 1)
    assert _take(state, "p!", 1) == ("p!a", b"1")
    assert _take(state, "p!", 5) is None  # b"3" died at its own deadline
