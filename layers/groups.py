"""Groups beyond ASGI 1: presence, history with recovery, delivery reports (the pure parts).

Everything here is pure and shared by every backend, so the rules cannot drift between them:
the values the contract returns (:class:`GroupSendReport`, :class:`GroupHistory`), the
per-glob options (``history=``, ``presence=``), the checks on ``info`` and ``exclude``, and
the one rule that decides whether a client can recover (:func:`recovery_problem`).

Positions
---------
A group with history numbers its messages: ``offset`` is an integer, 1 for the first message,
strictly increasing by one per group message; ``epoch`` is a string naming one unbroken run
of offsets. When the history is lost (its server restarted without persistence, the layer
was flushed, the history's metadata lapsed), the next message starts a new epoch at offset 1,
so a position ``(epoch, offset)`` from before can never be mistaken for one after.

Every message a member receives from such a group carries its position under the reserved
key :data:`HISTORY_KEY`: ``{"group": name, "epoch": epoch, "offset": offset}``. Interface
servers turn it into the ``"offset"`` and ``"epoch"`` keys of a demultiplexer frame
(``docs/presence-history.rst`` has the wire format).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Collection, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs
import msgpack

from .base import ChannelLayerError, validate_channel_name, validate_message

__all__ = [
    "FULL_CHANNELS_LIMIT",
    "HISTORY_KEY",
    "MAX_INFO_SIZE",
    "CannotRecover",
    "GlobMap",
    "GroupHistory",
    "GroupSendReport",
    "HistoryOptions",
    "PresenceOptions",
    "history_map",
    "presence_map",
    "recovery_problem",
    "refuse_position",
    "validate_exclude",
    "validate_history_range",
    "validate_info",
    "validate_since",
    "with_position",
]

#: The key a group message with history carries its position under (see the module docstring).
HISTORY_KEY: Final = "__history__"
#: The largest presence ``info``, in bytes encoded (msgpack).
MAX_INFO_SIZE: Final = 2048
#: How many of the channels a group send skipped as full its report names.
FULL_CHANNELS_LIMIT: Final = 16

T = TypeVar("T")


class CannotRecover(ChannelLayerError):
    """A client's position cannot be recovered: the group's epoch changed, the messages after
    the position were trimmed from (or expired out of) the history, the position is ahead of
    the group, the group keeps no history, or the replay does not fit in the channel.

    The channel **was added to the group all the same** (it receives the group's messages from
    now on). ``epoch`` and ``offset`` are the group's position at the add (``None`` for a group
    without history): what the client should remember once the application has sent it a
    fresh state. ``reason`` is one of ``"epoch"``, ``"trimmed"``, ``"ahead"``,
    ``"no history"``, ``"no room"``.
    """

    def __init__(self, message: str, *, group: str, reason: str, epoch: str | None, offset: int | None):
        super().__init__(message)
        self.group = group
        self.reason = reason
        self.epoch = epoch
        self.offset = offset


@attrs.frozen(kw_only=True)
class GroupSendReport:
    """What one ``send_group`` did.

    ``delivered`` members got the message queued (or handed over), ``full`` members were
    skipped because their channel was full (the first ``FULL_CHANNELS_LIMIT`` (16) of them are
    named in ``full_channels``), and ``expired`` members were found gone on the way (their
    membership lapsed, their own message expired unread, or their process stopped
    heartbeating) and left the group instead. Excluded members count nowhere. ``offset`` and
    ``epoch`` are the message's position in the group's history, ``None`` without history.
    """

    delivered: int
    full: int = 0
    expired: int = 0
    offset: int | None = None
    epoch: str | None = None
    full_channels: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class GroupHistory:
    """Messages of a group's history, oldest first, and the group's position.

    ``messages`` are ``(offset, message)`` pairs (the message as it was sent, without
    :data:`HISTORY_KEY`); ``epoch`` and ``offset`` are the group's current epoch and latest
    offset (0 before the first message), both ``None`` for a group without history.
    """

    messages: list[tuple[int, dict[str, Any]]]
    epoch: str | None
    offset: int | None


# --------------------------------------------------------------------------- per-glob options


@attrs.define(eq=False)
class GlobMap(Generic[T]):
    """The first pattern (a glob string or a compiled regex) matching a group name wins."""

    patterns: tuple[tuple[re.Pattern[str], T], ...] = ()
    _cache: dict[str, T | None] = attrs.field(factory=dict, init=False, repr=False)

    def get(self, name: str) -> T | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        value = next((option for pattern, option in self.patterns if pattern.match(name)), None)
        if len(self._cache) < 10_000:
            self._cache[name] = value
        return value

    def __bool__(self) -> bool:
        return bool(self.patterns)


def _compile(option: str, pattern: object) -> re.Pattern[str]:
    if isinstance(pattern, str):
        return re.compile(fnmatch.translate(pattern))
    if isinstance(pattern, re.Pattern):
        return pattern
    raise TypeError(f"{option} key {pattern!r} is invalid: use a glob string or a compiled regex")


@attrs.frozen(kw_only=True)
class HistoryOptions:
    """The history of the groups one ``history=`` pattern matches: the last ``size`` messages,
    kept until ``ttl`` seconds after the last one was sent."""

    size: int
    ttl: float


@attrs.frozen(kw_only=True)
class PresenceOptions:
    """What the groups one ``presence=`` pattern matches do: ``events`` sends join/leave events."""

    events: bool = False


def _options(option: str, pattern: object, value: object, allowed: Collection[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{option}[{pattern!r}] is invalid: {value!r}; it must be a dict like {{{', '.join(allowed)}}}"
        )
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(
            f"{option}[{pattern!r}] is invalid: unknown key(s) {unknown}; use {', '.join(allowed)}"
        )
    return value


def history_map(history: Mapping[Any, Mapping[str, Any]] | None) -> GlobMap[HistoryOptions]:
    """Build the map of a layer's ``history=`` option; :exc:`ValueError`/:exc:`TypeError`
    naming the pattern for a bad entry."""
    patterns = []
    for pattern, value in (history or {}).items():
        compiled = _compile("history", pattern)
        options = _options("history", pattern, value, ("size", "ttl"))
        size, ttl = options.get("size"), options.get("ttl")
        if type(size) is not int or size < 1:
            raise ValueError(f"history[{pattern!r}]['size'] is invalid: {size!r}; it must be an int >= 1")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
            raise ValueError(
                f"history[{pattern!r}]['ttl'] is invalid: {ttl!r}; it must be a positive number of seconds"
            )
        patterns.append((compiled, HistoryOptions(size=size, ttl=float(ttl))))
    return GlobMap(tuple(patterns))


def presence_map(presence: Mapping[Any, Mapping[str, Any]] | None) -> GlobMap[PresenceOptions]:
    """Build the map of a layer's ``presence=`` option (see :func:`history_map`)."""
    patterns = []
    for pattern, value in (presence or {}).items():
        compiled = _compile("presence", pattern)
        options = _options("presence", pattern, value, ("events",))
        events = options.get("events", False)
        if type(events) is not bool:
            raise ValueError(
                f"presence[{pattern!r}]['events'] is invalid: {events!r}; it must be True or False"
            )
        patterns.append((compiled, PresenceOptions(events=events)))
    return GlobMap(tuple(patterns))


# --------------------------------------------------------------------------- checks


def _json_problem(value: Any, path: str) -> str | None:
    kind = type(value)
    if kind is bytes:
        return f"{path} is bytes; presence info is shown to browsers as JSON, so use str"
    if kind is float and not math.isfinite(value):
        return f"{path} is {value!r}, which JSON cannot carry"
    if kind is dict:
        for key, item in value.items():
            problem = _json_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{index}]")
            if problem:
                return problem
    return None


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def validate_info(info: object) -> bytes | None:
    """Check a presence *info* and return it encoded (``None`` stays ``None``).

    It must be a dict of JSON values (str keys; str, int, float, bool, None, list, dict), at
    most :data:`MAX_INFO_SIZE` bytes encoded. Raises :exc:`TypeError`/:exc:`ValueError`
    naming the bad value.
    """
    if info is None:
        return None
    if type(info) is not dict:
        raise TypeError(f"presence info must be a dict or None, not {type(info).__name__}: {info!r:.80}")
    try:
        validate_message(info)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("message", "info", 1)) from None
    problem = _json_problem(info, "info")
    if problem:
        raise TypeError(f"presence info is invalid: {problem}")
    data: bytes = _packer.pack(info)
    if len(data) > MAX_INFO_SIZE:
        raise ValueError(
            f"presence info is {len(data)} bytes encoded, over the limit of {MAX_INFO_SIZE}; "
            "keep it to what a member list shows (an id, a name, a device) and look the rest up"
        )
    return data


def validate_exclude(exclude: str | Collection[str] | None) -> frozenset[str]:
    """The channel names of a ``send_group(..., exclude=)``: one name or a collection of them."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str):
        return frozenset((validate_channel_name(exclude),))
    if isinstance(exclude, (bytes, Mapping)) or not isinstance(exclude, Collection):
        raise TypeError(f"exclude must be a channel name or a collection of names, not {exclude!r:.80}")
    return frozenset(validate_channel_name(name) for name in exclude)


#: Where a recovery starts: a position ``(epoch, offset)``, or how many of the latest messages
#: to replay (for a channel that has no position yet).
Since = tuple[str, int] | int


def validate_since(since: object) -> Since:
    """Check a recovery's starting point; :exc:`TypeError`/:exc:`ValueError` naming it."""
    if type(since) is int:
        if since < 0:
            raise ValueError(f"recover={since!r} is invalid: a number of messages must be >= 0")
        return since
    if not isinstance(since, (tuple, list)) or len(since) != 2:
        raise TypeError(
            f"recover={since!r:.80} is invalid: use (epoch, offset) from a message's position, or an "
            "int: how many of the latest messages to replay"
        )
    epoch, offset = since
    if not isinstance(epoch, str) or not epoch or len(epoch) > 64 or "," in epoch or "|" in epoch:
        raise TypeError(
            f"recover epoch {epoch!r} is invalid: it must be the epoch str of a message's position"
        )
    if type(offset) is not int or offset < 0:
        raise ValueError(f"recover offset {offset!r} is invalid: it must be an int >= 0")
    return epoch, offset


def validate_history_range(since: object, limit: object) -> None:
    """Check ``group_history``'s *since* and *limit*; :exc:`ValueError` naming the bad one."""
    if since is not None and (type(since) is not int or since < 0):
        raise ValueError(f"since {since!r} is invalid: it must be an offset (an int >= 0) or None")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"limit {limit!r} is invalid: it must be an int >= 0 or None")


def recovery_problem(
    since_epoch: str, since: int, epoch: str, latest: int, first_available: int, size: int
) -> str | None:
    """Why a client at ``(since_epoch, since)`` cannot recover, or ``None`` if it can.

    The group is at ``(epoch, latest)`` and holds the messages from ``first_available`` to
    ``latest`` (``latest + 1`` when it holds none). Only the last ``size`` offsets count as
    held, whatever a backend keeps beyond them, so every backend answers alike. The same rule
    is written in Lua in ``layers/redis/scripts.py`` (``_RECOVERY``).
    """
    if since_epoch != epoch:
        return "epoch"
    if since > latest:
        return "ahead"
    if since == latest:
        return None
    if since < latest - size or first_available > since + 1:
        return "trimmed"
    return None


RECOVERY_REASONS: Final = {
    "epoch": "the group's epoch changed (its history was lost) since that position",
    "ahead": "the position is ahead of the group's latest offset",
    "trimmed": "messages after that position are no longer in the history (trimmed or expired)",
    "no history": "the group keeps no history (configure history= for it on the layer)",
    "no room": "the replay does not fit in the channel (it is too full)",
}


def cannot_recover(
    group: str, reason: str, since: Since, epoch: str | None, offset: int | None
) -> CannotRecover:
    """The :exc:`CannotRecover` for *reason*, with a message naming the group and positions."""
    now = "no history" if epoch is None else f"({epoch!r}, {offset})"
    start = f"the last {since} messages" if isinstance(since, int) else f"({since[0]!r}, {since[1]})"
    return CannotRecover(
        f"cannot recover group {group!r} from {start}: {RECOVERY_REASONS[reason]}; "
        f"the channel was added at {now}",
        group=group,
        reason=reason,
        epoch=epoch,
        offset=offset,
    )


def position(group: str, epoch: str, offset: int) -> dict[str, Any]:
    """The value of :data:`HISTORY_KEY` in a delivered message."""
    return {"group": group, "epoch": epoch, "offset": offset}


def with_position(data: bytes, group: str, epoch: str, offset: int) -> bytes:
    """An encoded message (a msgpack map) with :data:`HISTORY_KEY` added, without decoding it."""
    extra: bytes = _packer.pack(HISTORY_KEY) + _packer.pack(position(group, epoch, offset))
    head = data[0]
    if 0x80 <= head <= 0x8E:  # fixmap with room for one more key
        return bytes((head + 1,)) + data[1:] + extra
    if head == 0x8F:  # 15 keys: the 16th needs a map16 header
        return b"\xde\x00\x10" + data[1:] + extra
    if head == 0xDE:
        count = int.from_bytes(data[1:3], "big") + 1
        if count < 1 << 16:
            return b"\xde" + count.to_bytes(2, "big") + data[3:] + extra
        return b"\xdf" + count.to_bytes(4, "big") + data[3:] + extra
    if head == 0xDF:
        count = int.from_bytes(data[1:5], "big") + 1
        return b"\xdf" + count.to_bytes(4, "big") + data[5:] + extra
    raise ValueError("an encoded message must be a msgpack map")


_HISTORY_KEY_BYTES: Final = HISTORY_KEY.encode()


def refuse_position(data: bytes) -> None:
    """Refuse a group message that already carries :data:`HISTORY_KEY` (the layer sets it)."""
    if _HISTORY_KEY_BYTES in data and HISTORY_KEY in msgpack.unpackb(data, raw=False):
        raise ValueError(
            f"message['{HISTORY_KEY}'] is set by the layer on group messages; remove it before "
            "sending to a group (a forwarded message still carries the old one)"
        )
