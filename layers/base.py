"""The channel layer contract every backend shares.

Everything here is pure: name rules, message rules, the capacity map, the errors and the
encoding that gives copy-on-send and the size limit. Backends (:mod:`layers.inmemory`,
:mod:`layers.redis`) are thin Trio shells around these pieces and the receive machinery they
share (:mod:`layers._backend`), so the rules cannot drift between them.

Name rules (ASGI 1.0, reference §2.2):

* a channel name is ASCII letters, digits, ``-``, ``_`` and ``.``, optionally followed by one
  ``!`` (process-specific) or ``?`` (single-reader) and a suffix of the same characters;
* it is shorter than 100 characters;
* a ``?`` name carries its random part (it must not end with ``?``);
* receiving on a ``!`` name is done on the prefix up to and including ``!``;
* a group name is the same alphabet without ``!`` or ``?``.
"""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs
import msgpack
import trio

if TYPE_CHECKING:
    from .groups import GlobMap, GroupHistory, GroupSendReport, HistoryOptions, PresenceOptions, Since
    from .redis.connection import ServerAddress

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "RESERVED_KEY",
    "BaseChannelLayer",
    "CapacityMap",
    "ChannelFull",
    "ChannelLayerError",
    "ChannelLayerUnavailable",
    "LayerStatistics",
    "MembershipLost",
    "MessageTooLarge",
    "append_encoded",
    "check_owned_message",
    "decode_message",
    "encode_message",
    "encode_trusted_message",
    "non_local_name",
    "parse_delay_message",
    "redacted",
    "retry_when_full",
    "send_or_wait",
    "validate_channel_name",
    "validate_group_name",
    "validate_message",
    "validate_process_prefix",
    "validate_receive_channels",
]

#: Key layers use internally to carry the full name of a process-specific channel.
RESERVED_KEY: Final = "__asgi_channel__"
#: Names must be strictly shorter than this.
MAX_NAME_LENGTH: Final = 100
#: Default limit on one encoded message, in bytes (1 MiB).
DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_CHANNEL_RE: Final = re.compile(r"[a-zA-Z0-9\-_.]+([?!][a-zA-Z0-9\-_.]*)?")
_GROUP_RE: Final = re.compile(r"[a-zA-Z0-9\-_.]+")
_ALPHABET_RULE: Final = "only ASCII letters, digits, '-', '_' and '.' are allowed"


class ChannelLayerError(Exception):
    """Base class of the errors a channel layer raises on its own account."""


class ChannelFull(ChannelLayerError):
    """The destination channel is at capacity; the message was not sent.

    Interface servers answer 503 (HTTP) or close 1013 (WebSocket); applications usually wait
    and retry. Group sends never raise it.
    """


class MessageTooLarge(ChannelLayerError, ValueError):
    """The encoded message is larger than the layer's ``max_message_size``."""


class ChannelLayerUnavailable(ChannelLayerError):
    """The layer cannot reach its backing service (a Redis server down, unreachable, loading,
    read-only or out of memory); the operation may or may not have taken effect.

    Worth retrying later: interface servers answer 503, workers back off and retry. Every
    other exception from a layer is a bug or bad input and is not retried. The cause is
    chained (``__cause__``). The in-memory layer never raises it.
    """


# --------------------------------------------------------------------------- names


def _check_text_and_length(name: object, kind: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name {name!r} is invalid: it must be str, not {type(name).__name__}")
    if len(name) >= MAX_NAME_LENGTH:
        raise TypeError(
            f"{kind} name {name[:20]!r}... is invalid: it is {len(name)} characters long and "
            f"must be shorter than {MAX_NAME_LENGTH}"
        )
    return name


# Names seen valid before (bounded): hot paths validate the same few names over and over.
_VALID_SEND_NAMES: set[str] = set()
_VALID_CACHE_LIMIT: Final = 4096


def validate_channel_name(name: object, *, receive: bool = False) -> str:
    """Return *name* if it is a valid channel name, else raise :exc:`TypeError`.

    With ``receive=True`` a process-specific name must be the bare prefix (ending in ``!``).
    The error message quotes the name and states the rule it broke.
    """
    if type(name) is str and name in _VALID_SEND_NAMES and (not receive or "!" not in name):
        return name
    name = _check_text_and_length(name, "channel")
    if _CHANNEL_RE.fullmatch(name) is None:
        if name.count("!") + name.count("?") > 1:
            rule = "it may contain at most one '!' or '?'"
        elif name[:1] in ("!", "?") or not name:
            rule = "it must start with at least one letter, digit, '-', '_' or '.'"
        else:
            rule = _ALPHABET_RULE + ", with one '!' or '?' before an optional suffix"
        raise TypeError(f"channel name {name!r} is invalid: {rule}")
    if name.endswith("?"):
        raise TypeError(
            f"channel name {name!r} is invalid: a single-reader name needs its random part "
            "after '?'; get one from layer.new_channel()"
        )
    if receive and "!" in name and not name.endswith("!"):
        raise TypeError(
            f"channel name {name!r} is invalid for receive: receive on the process prefix "
            f"{non_local_name(name)!r}, which returns messages of every channel under it"
        )
    if "?" not in name:  # single-reader names are one-offs: not worth remembering
        if len(_VALID_SEND_NAMES) >= _VALID_CACHE_LIMIT:
            _VALID_SEND_NAMES.clear()
        _VALID_SEND_NAMES.add(name)
    return name


def redacted(url: str) -> str:
    """*url* with its password, if any, shown as ``***`` (for error messages and logs)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.partition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{after}"


def validate_group_name(name: object) -> str:
    """Return *name* if it is a valid group name, else raise :exc:`TypeError`."""
    name = _check_text_and_length(name, "group")
    if _GROUP_RE.fullmatch(name) is None:
        raise TypeError(f"group name {name!r} is invalid: {_ALPHABET_RULE}")
    return name


def validate_process_prefix(prefix: object) -> str:
    """Return *prefix* if it is a valid process prefix (a channel name ending in ``!``), else
    raise :exc:`TypeError`."""
    if not isinstance(prefix, str) or not prefix.endswith("!"):
        raise TypeError(f"process prefix {prefix!r} is invalid: it must be a str ending in '!'")
    return validate_channel_name(prefix)


def non_local_name(name: str) -> str:
    """The part of a process-specific name up to and including ``!``; other names unchanged."""
    bang = name.find("!")
    return name if bang < 0 else name[: bang + 1]


# --------------------------------------------------------------------------- messages


def _path(parent: str, key: object) -> str:
    return f"{parent}[{key!r}]"


_SCALARS: Final = frozenset({str, bytes, bool, float, type(None)})


def _valid(value: Any) -> bool:
    # The fast check: no paths built while everything is fine.
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is int:
        return _INT64_MIN <= value <= _INT64_MAX
    if kind is dict:
        return all(type(key) is str and _valid(item) for key, item in value.items())
    if kind is list or kind is tuple:
        return all(_valid(item) for item in value)
    return False


def _check_value(value: Any, path: str) -> None:
    # The slow walk, only for an invalid message: finds the first bad value and names its path.
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{path} is invalid: {value!r} does not fit in a signed 64-bit integer")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{path} is invalid: dict keys must be str, got {type(key).__name__} {key!r}")
            _check_value(item, _path(path, key))
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check_value(item, _path(path, index))
        return
    # Subclasses (an IntEnum close code, an OrderedDict) are refused too, not converted: a
    # layer hands messages over as they are where it can, so the receiver would otherwise get
    # a different type on one backend than on another. The error says how to convert.
    base = next((t for t in (int, float, str, bytes, dict, list, tuple) if isinstance(value, t)), None)
    hint = f" (a subclass of {base.__name__}: convert it with {base.__name__}(...))" if base else ""
    raise TypeError(
        f"{path} is invalid: {kind.__name__} values are not allowed{hint}; use str, bytes, int, "
        "float, bool, None, list or dict"
    )


def validate_message(message: object) -> dict[str, Any]:
    """Check *message* against the ASGI message rules and return it.

    Raises :exc:`TypeError` for a disallowed type (the message names the path of the bad value,
    e.g. ``message['payload'][3]``) and :exc:`ValueError` for an out-of-range integer or the
    reserved key.
    """
    if type(message) is not dict:
        raise TypeError(f"message must be a dict, not {type(message).__name__}: {message!r:.80}")
    if RESERVED_KEY in message:
        raise ValueError(f"message['{RESERVED_KEY}'] is reserved for the channel layer's own use")
    if not _valid(message):
        _check_value(message, "message")
    return message


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode_message(message: object, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Validate and encode *message* to msgpack bytes (the stored, copied form).

    Raises what :func:`validate_message` raises, and :exc:`MessageTooLarge` if the encoding is
    longer than *max_size* bytes.
    """
    validate_message(message)
    data: bytes = _packer.pack(message)
    if len(data) > max_size:
        raise _too_large(len(data), max_size)
    return data


def _too_large(size: int, max_size: int) -> MessageTooLarge:
    return MessageTooLarge(
        f"message is {size} bytes encoded, over the layer's limit of {max_size} bytes; "
        "split large payloads into chunks"
    )


#: Whether owned sends (:meth:`BaseChannelLayer.send_owned`) check their messages in full, as
#: user sends do. Off by default: the interface builds its messages of plain types, so the
#: walk would find nothing. On under ``python -X dev`` or with ``TRIO_CHANNELS_CHECK_OWNED=1``
#: in the environment (the test suite sets it), where a bad message then fails its sender.
CHECK_OWNED: bool = sys.flags.dev_mode or os.environ.get("TRIO_CHANNELS_CHECK_OWNED", "") not in ("", "0")


def check_owned_message(message: dict[str, Any], max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
    """What an owned send checks of *message* before handing it over as it is.

    A dict whose top-level ``str``/``bytes`` values (the payload an interface puts in a
    message: a frame, a body chunk) add up to at most *max_size*; the exact encoded size is
    checked wherever the message is encoded (when it leaves the process). With
    ``CHECK_OWNED``, everything ``encode_message`` checks.
    """
    if type(message) is not dict:
        raise TypeError(f"message must be a dict, not {type(message).__name__}: {message!r:.80}")
    if CHECK_OWNED:
        encode_message(message, max_size)
        return
    size = 0
    for value in message.values():
        kind = type(value)
        if kind is bytes or kind is str:
            size += len(value)
    if size > max_size:
        raise _too_large(size, max_size)


def encode_trusted_message(message: dict[str, Any], max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Encode an owned message (see :func:`check_owned_message`): no validation walk, only the
    exact size limit (:exc:`MessageTooLarge`)."""
    data: bytes = _packer.pack(message)
    if len(data) > max_size:
        raise _too_large(len(data), max_size)
    return data


def decode_message(data: bytes) -> dict[str, Any]:
    """Decode bytes made by :func:`encode_message` (bytes and text stay distinct)."""
    result: dict[str, Any] = msgpack.unpackb(data, raw=False, use_list=True)
    return result


def _container_header(kind: int, count: int) -> bytes:
    # msgpack's array (kind 0x90) or map (kind 0x80) header for *count* items.
    if count < 16:
        return bytes((kind | count,))
    small, large = (b"\xdc", b"\xdd") if kind == 0x90 else (b"\xde", b"\xdf")
    return small + count.to_bytes(2, "big") if count < 65536 else large + count.to_bytes(4, "big")


def append_encoded(
    data: bytes,
    key: str,
    item: object,
    *,
    require: str | None = None,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> bytes | None:
    """*data* (a message made by :func:`encode_message`) with *item* appended to the list under
    *key* (made if absent), without decoding or re-encoding the rest: the rest is copied once,
    as bytes (``http_session`` adds a ``Set-Cookie`` header to a buffered response this way,
    whatever the size of its body).

    Returns ``None`` if *data* has no *require* key, or *key* holds something that is not a
    list. Raises what :func:`validate_message` raises for a bad *item*, and
    :exc:`MessageTooLarge` if the result is over *max_size*.
    """
    if not _valid(item):
        _check_value(item, f"message[{key!r}][-1]")
    unpacker = msgpack.Unpacker(raw=False, use_list=True)
    unpacker.feed(data)
    try:
        count = unpacker.read_map_header()
        body_start = unpacker.tell()
        found = None  # (where the list's header starts, where its items start, its length, its end)
        required = require is None
        for _ in range(count):
            name = unpacker.unpack()
            value_start = unpacker.tell()
            if name == key:
                length = unpacker.read_array_header()
                items_start = unpacker.tell()
                for _ in range(length):
                    unpacker.skip()
                found = (value_start, items_start, length, unpacker.tell())
            else:
                unpacker.skip()
            required = required or name == require
    except (ValueError, msgpack.UnpackException):
        return None  # not a map, or the key's value is not a list
    if not required:
        return None
    packed = _packer.pack(item)
    if found is None:
        result = b"".join(
            [_container_header(0x80, count + 1), data[body_start:], _packer.pack(key), b"\x91", packed]
        )
    else:
        value_start, items_start, length, end = found
        result = b"".join(
            [
                data[:value_start],
                _container_header(0x90, length + 1),
                data[items_start:end],
                packed,
                data[end:],
            ]
        )
    if len(result) > max_size:
        raise MessageTooLarge(
            f"message is {len(result)} bytes encoded, over the layer's limit of {max_size} bytes"
        )
    return result


def parse_delay_message(message: Mapping[str, Any]) -> tuple[str, dict[str, Any], float]:
    """Read an ASGI-1 ``asgi.delay`` message into ``(channel, content, delay_seconds)``.

    The format is ``{"channel": str, "content": dict, "delay": milliseconds}``.
    """
    for key in ("channel", "content", "delay"):
        if key not in message:
            raise ValueError(f"asgi.delay message is missing message[{key!r}]")
    channel = validate_channel_name(message["channel"])
    content = message["content"]
    if type(content) is not dict:
        raise TypeError(f"asgi.delay message['content'] must be a dict, not {type(content).__name__}")
    delay = message["delay"]
    if type(delay) is not int or delay < 0:
        raise ValueError(
            f"asgi.delay message['delay'] is invalid: {delay!r}; it must be a non-negative "
            "number of milliseconds"
        )
    return channel, content, delay / 1000


# --------------------------------------------------------------------------- capacity


@attrs.define(eq=False)
class CapacityMap:
    """Per-channel capacity: the first matching pattern of *channel_capacity* wins.

    String keys are globs (``fnmatch``), compiled regexes are used as they are. A
    process-specific channel is looked up by its prefix (``prefix!``), so every channel under
    one prefix gets the same capacity; each still counts on its own.
    """

    default: int
    patterns: tuple[tuple[re.Pattern[str], int], ...] = ()
    _cache: dict[str, int] = attrs.field(factory=dict, init=False, repr=False)

    @classmethod
    def build(cls, default: int, channel_capacity: Mapping[Any, int] | None) -> CapacityMap:
        patterns: list[tuple[re.Pattern[str], int]] = []
        for pattern, value in (channel_capacity or {}).items():
            if isinstance(pattern, str):
                compiled = re.compile(fnmatch.translate(pattern))
            elif isinstance(pattern, re.Pattern):
                compiled = pattern
            else:
                raise TypeError(
                    f"channel_capacity key {pattern!r} is invalid: use a glob string or a compiled regex"
                )
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"channel_capacity[{pattern!r}] is invalid: {value!r}; it must be an int >= 1"
                )
            patterns.append((compiled, value))
        return cls(default, tuple(patterns))

    def get(self, channel: str) -> int:
        """Capacity of *channel* (a full or non-local name)."""
        name = non_local_name(channel)
        try:
            return self._cache[name]
        except KeyError:
            pass
        value = next((limit for pattern, limit in self.patterns if pattern.match(name)), self.default)
        if len(self._cache) < 10_000:
            self._cache[name] = value
        return value


# --------------------------------------------------------------------------- the layer ABC


@attrs.frozen(kw_only=True)
class LayerStatistics:
    """Counters of one channel, or of the whole layer when ``channel`` is ``None``.

    ``messages_count`` counts messages accepted since the layer (or the counter) started,
    ``messages_pending`` those waiting now, ``messages_max_age`` the age in seconds of the
    oldest waiting one, ``channel_full_count`` the sends refused with :exc:`ChannelFull`.
    """

    channel: str | None
    messages_count: int
    messages_pending: int
    messages_max_age: float
    channel_full_count: int

    def asdict(self) -> dict[str, Any]:
        """The ASGI-1 ``*_statistics()`` dict form (without ``channel``)."""
        result = attrs.asdict(self)
        del result["channel"]
        return result


@attrs.frozen(kw_only=True)
class MembershipLost:
    """What :attr:`BaseChannelLayer.membership_lost` reports: a server of the layer lost the
    group memberships (and queued messages) it held, e.g. Redis restarted without persistence.

    ``server`` names the server (``redis://host:6379/0``), ``reason`` says what was seen.
    """

    server: str
    reason: str

    def __str__(self) -> str:
        return f"{self.server}: {self.reason}"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


@attrs.define(eq=False, kw_only=True)
class BaseChannelLayer(abc.ABC):
    """What every channel layer offers; see ``docs/concepts.rst`` for the semantics.

    A layer is an async context manager: entering it starts its background tasks (timers,
    pollers) in its own nursery and leaving it stops them.
    """

    ChannelFull: ClassVar[type[ChannelFull]] = ChannelFull
    MessageTooLarge: ClassVar[type[MessageTooLarge]] = MessageTooLarge
    ChannelLayerUnavailable: ClassVar[type[ChannelLayerUnavailable]] = ChannelLayerUnavailable
    extensions: ClassVar[tuple[str, ...]] = ()

    expiry: float = attrs.field(default=60, validator=_positive)
    group_expiry: float = attrs.field(default=86400, validator=_positive)
    capacity: int = attrs.field(default=100, validator=_positive_int)
    channel_capacity: Mapping[Any, int] | None = None
    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive_int)
    #: Per group-name glob: ``{"chat-*": {"size": 100, "ttl": 300}}`` keeps the last 100
    #: messages of every matching group until 300 s after the last one (see ``layers.groups``).
    history: Mapping[Any, Mapping[str, Any]] | None = None
    #: Per group-name glob: ``{"chat-*": {"events": True}}`` sends join/leave events to members.
    presence: Mapping[Any, Mapping[str, Any]] | None = None
    _capacities: CapacityMap = attrs.field(init=False, repr=False)
    _history_map: GlobMap[HistoryOptions] = attrs.field(init=False, repr=False)
    _presence_map: GlobMap[PresenceOptions] = attrs.field(init=False, repr=False)
    _exit_stack: contextlib.AsyncExitStack | None = attrs.field(default=None, init=False, repr=False)
    _membership_lost: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _last_membership_lost: MembershipLost | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        from .groups import history_map, presence_map  # it builds on this module

        self._capacities = CapacityMap.build(self.capacity, self.channel_capacity)
        self._history_map = history_map(self.history)
        self._presence_map = presence_map(self.presence)

    # -- lost memberships --------------------------------------------------------------

    @property
    def membership_lost(self) -> trio.Event:
        """An event set the next time the layer sees group memberships lost behind its back.

        One event per loss: once set, this property returns a fresh one, so a watcher waits
        without polling::

            while True:
                await layer.membership_lost.wait()
                print(layer.last_membership_lost)  # a MembershipLost

        Members re-added afterwards are kept. Losses arriving while a watcher is busy come to
        it as one. The in-memory layer never loses memberships; the Redis layer reports a server
        that came back without its data (see ``docs/redis.rst``).
        """
        return self._membership_lost

    @property
    def last_membership_lost(self) -> MembershipLost | None:
        """The most recent loss reported through :attr:`membership_lost`, if any."""
        return self._last_membership_lost

    def _report_membership_lost(self, loss: MembershipLost) -> None:
        """For backends: record *loss* and wake everyone waiting on :attr:`membership_lost`."""
        event, self._membership_lost = self._membership_lost, trio.Event()
        self._last_membership_lost = loss
        event.set()

    def get_capacity(self, channel: str) -> int:
        """The capacity that applies to *channel*."""
        return self._capacities.get(channel)

    def history_options(self, group: str) -> HistoryOptions | None:
        """The history *group* keeps (the first matching ``history=`` pattern), or ``None``."""
        return self._history_map.get(group)

    def presence_events(self, group: str) -> bool:
        """Whether *group* sends join/leave events (the first matching ``presence=`` pattern)."""
        options = self._presence_map.get(group)
        return options is not None and options.events

    def _encode(self, message: object) -> bytes:
        return encode_message(message, self.max_message_size)

    # -- lifetime ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the layer has been entered (and not left)."""
        return self._exit_stack is not None

    async def __aenter__(self) -> Self:
        if self._exit_stack is not None:
            raise RuntimeError(f"{self!r} is already open; a layer is entered once")
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._lifetime())
        self._exit_stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        assert stack is not None
        return await stack.__aexit__(*exc_info)

    @abc.abstractmethod
    def _lifetime(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The layer's background tasks, running while the layer is open."""

    # -- the async contract ------------------------------------------------------------

    @abc.abstractmethod
    async def send(
        self, channel: str, message: dict[str, Any], *, delay: float = 0, wait: bool = False
    ) -> None:
        """Send *message* to *channel*; with ``delay`` (seconds) deliver it that much later.

        The layer stores a copy: changing *message* afterwards changes nothing. A full channel
        raises :exc:`ChannelFull` at once; with ``wait=True`` the send waits for room instead,
        for as long as the caller's cancel scope allows (``with trio.fail_after(5): await
        layer.send(c, m, wait=True)``; or see :func:`send_or_wait`). Senders waiting on one
        channel in one process get room in the order they started waiting; where the channel's
        receivers are in this process a receive wakes the first of them, elsewhere (another
        process drains a Redis list) the first 16 retry with backoff, so their order is only
        roughly kept there. Delayed sends never wait.

        Raises :exc:`ChannelFull`, :exc:`MessageTooLarge`, :exc:`TypeError` /
        :exc:`ValueError` for a bad name or message, and :exc:`ChannelLayerUnavailable`. If
        cancelled, the message was either sent or not, never half-sent.
        """

    @abc.abstractmethod
    async def send_nowait(self, channel: str, message: dict[str, Any], *, delay: float = 0) -> None:
        """:meth:`send` without yielding to other tasks, like Trio's ``send_nowait``.

        It never waits for room (a full channel raises :exc:`ChannelFull` at once), so the
        twins differ only in scheduling: in memory this one is no checkpoint at all; a
        backend that must talk to a server still awaits that round trip.
        """

    async def send_owned(self, channel: str, message: dict[str, Any], *, wait: bool = False) -> None:
        """:meth:`send` for a message the caller gives up: no copy, no validation walk.

        For messages built of plain types by code that keeps no reference to them, like the
        interface's ``websocket.receive`` and ``http.request`` (the dict and everything in it
        must not be used by the caller afterwards). A receiver in this process gets this very
        object; where the message leaves the process (to Redis) it is encoded once. Only a
        cheap check runs (:func:`layers.base.check_owned_message`; all of
        :func:`~layers.validate_message` under ``python -X dev``). ``wait`` as for
        :meth:`send`; there is no ``delay``. The default implementation is :meth:`send`,
        with its copy.
        """
        await self.send(channel, message, wait=wait)

    async def send_encoded(self, channel: str, data: bytes, *, delay: float = 0, wait: bool = False) -> None:
        """Send a message already made by ``encode_message`` (validated, copied, sized).

        Saves a second encoding where a caller buffered the message itself (consumer outboxes).
        Backends override it to store *data* as it is. ``delay`` and ``wait`` as for :meth:`send`.
        """
        await self.send(channel, decode_message(data), delay=delay, wait=wait)

    async def send_group_encoded(
        self, group: str, data: bytes, *, exclude: str | Collection[str] | None = None
    ) -> GroupSendReport:
        """:meth:`send_group` for a message already made by :func:`encode_message`."""
        return await self.send_group(group, decode_message(data), exclude=exclude)

    @contextlib.contextmanager
    def own_prefix(self, prefix: str) -> Iterator[None]:
        """``with layer.own_prefix("interface.abc!"):`` this process alone receives on the
        process prefix *prefix* (the ASGI rule for ``!`` names), until the block ends.

        An interface server declares its prefix so: then a message that a task of this
        process sends to a channel under it is handed over (or held) in this process and never
        leaves it, while messages from other processes still arrive through the layer. What is
        held for a channel counts against that channel's capacity. On leaving the block, what
        is still held under *prefix* here is dropped (nobody is left to receive it). In memory
        everything is in one process anyway: there the declaration only does that. Raises
        :exc:`TypeError` unless *prefix* is a valid name ending in ``!``.
        """
        validate_process_prefix(prefix)
        yield

    async def receive(self, channels: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """Wait for the next message on any of *channels*; return ``(channel, message)``.

        A process-specific prefix (``"name!"``) receives from every channel under it and
        returns the full name. Time limits come from the caller's cancel scope; a cancelled
        receive loses no message. While a server-backed layer's server is down, a receive
        waits (the layer retries) rather than raising.
        """
        channel, message, _ = await self.receive_with_deadline(channels)
        return channel, message

    @abc.abstractmethod
    async def receive_with_deadline(self, channels: Sequence[str]) -> tuple[str, dict[str, Any], float]:
        """Like :meth:`receive`, plus the message's expiry as a ``trio.current_time()`` deadline.

        Workers run each consumer under a cancel scope with this deadline.
        """

    @abc.abstractmethod
    async def receive_nowait(self, channels: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """The next message already waiting on any of *channels*, like :meth:`receive`;
        raise :exc:`trio.WouldBlock` at once if there is none.

        In memory this is no checkpoint at all; on Redis it is one non-blocking pop. Raises
        :exc:`ChannelLayerUnavailable` if the backing service cannot be reached.
        """

    @abc.abstractmethod
    async def new_channel(self, pattern: str) -> str:
        """Return a new single-reader channel name: *pattern* (ending in ``?``) + a random part."""

    @abc.abstractmethod
    async def group_add(self, group: str, channel: str, *, info: dict[str, Any] | None = None) -> None:
        """Add *channel* to *group* (again: refresh its membership and replace its info).

        *info* is what :meth:`group_presence` shows for the member: a small dict of JSON
        values (``layers.groups.validate_info`` says exactly what is allowed). A new member of
        a group with presence events makes the other members receive
        ``{"presence": "join", "group": ..., "channel": ..., "info": ...}``.
        """

    @abc.abstractmethod
    async def group_recover(
        self, group: str, channel: str, since: Since, *, info: dict[str, Any] | None = None
    ) -> GroupHistory:
        """:meth:`group_add`, and queue for *channel* the messages of *group*'s history it
        missed, in order, ahead of any message the group sends after the add.

        *since* is a position ``(epoch, offset)`` (every message after it), or an int *n* for a
        channel without one (the latest *n* messages there are). Returns what was queued
        (``messages``, with offsets) and the group's position at the add. Raises
        :exc:`~layers.groups.CannotRecover` if the history does not cover the position, the
        group keeps none, or the replay does not fit in the channel; the channel is a member
        all the same, and nothing was queued. Atomic with respect to group sends: each
        message reaches the channel once, from the replay or live, in offset order.
        """

    @abc.abstractmethod
    async def group_discard(self, group: str, channel: str) -> None:
        """Remove *channel* from *group*; no error if it is not a member. In a group with
        presence events, the remaining members receive a ``"leave"`` event."""

    @abc.abstractmethod
    async def group_channels(self, group: str) -> list[str]:
        """The current members of *group*."""

    @abc.abstractmethod
    async def group_presence(self, group: str) -> dict[str, dict[str, Any] | None]:
        """The current members of *group*, each with the info it was last added with."""

    @abc.abstractmethod
    async def group_history(
        self, group: str, *, since: int | None = None, limit: int | None = None
    ) -> GroupHistory:
        """Messages of *group*'s history, oldest first: those after offset *since* (at most
        *limit*, the earliest), or without *since* the latest *limit* (all if ``None``).

        A group without history returns no messages and ``epoch``/``offset`` ``None``. A group
        with history that has none yet gets its epoch now (offset 0), so a client told that
        position can recover from it.
        """

    @abc.abstractmethod
    async def send_group(
        self, group: str, message: dict[str, Any], *, exclude: str | Collection[str] | None = None
    ) -> GroupSendReport:
        """Send *message* to every member of *group* but those in *exclude*; return the report.

        Never raises :exc:`ChannelFull` (full members are counted in the report). In a group
        with history the message is stored and numbered first; every member receives it with
        its position under ``layers.groups.HISTORY_KEY``.
        """

    @abc.abstractmethod
    async def flush(self) -> None:
        """Drop every message, group and delayed message."""

    @abc.abstractmethod
    async def statistics(self, channel: str | None = None) -> LayerStatistics:
        """Counters for *channel*, or for the whole layer.

        Asynchronous in the contract because a shared layer keeps its counters on its server
        (one or more round trips). Where the state is local and pure, it answers
        synchronously as well: ``InMemoryChannelLayer.state.statistics(now)``.
        """

    # -- own channels (the "own" extension; see layers._backend) -------------------------

    def open_own(
        self, channel: str, *, capacity: int | None = None, on_overflow: Callable[[str], None] | None = None
    ) -> None:
        """Register the full process-specific name *channel* for :meth:`receive_own` (the
        ``own`` extension). Layers without it raise :exc:`NotImplementedError`."""
        raise NotImplementedError(
            f"{type(self).__name__} has no own channels (the 'own' extension): receive on the process prefix"
        )

    def close_own(self, channel: str) -> int:
        """Unregister an own channel and drop what waits for it; return how many messages."""
        raise NotImplementedError(f"{type(self).__name__} has no own channels (the 'own' extension)")

    async def receive_own(self, channel: str) -> dict[str, Any]:
        """The next message of the own channel *channel*, in sending order (the ``own`` extension)."""
        raise NotImplementedError(f"{type(self).__name__} has no own channels (the 'own' extension)")

    def deliver_own_directly(self, channel: str, deliver: Callable[[dict[str, Any]], bool] | None) -> None:
        """Offer the messages of the open own channel *channel* to *deliver*, in the sender's
        task, while its receiver waits with nothing queued (``None``: stop); see
        :meth:`layers._backend.ParkingLayer.deliver_own_directly`. An optimisation only: this
        default does nothing, and every message then reaches :meth:`receive_own` as usual."""
        return None  # a deliberate no-op default (B027), not an abstract method

    async def receive_own_nowait(self, channel: str) -> dict[str, Any]:
        """The next message waiting for the own channel *channel*, else :exc:`trio.WouldBlock`."""
        raise NotImplementedError(f"{type(self).__name__} has no own channels (the 'own' extension)")

    def shared_store_address(self) -> tuple[ServerAddress, str] | None:
        """A Redis server and key prefix that every process on this layer shares, or ``None``.

        ``serve()`` keeps sessions there unless told otherwise, so sessions are as shared as
        the layer. ``None`` (the default) for a layer that is not cross-process.
        """
        return None

    # -- ASGI-1 spellings ---------------------------------------------------------------

    async def global_statistics(self) -> dict[str, Any]:
        """ASGI-1 ``global_statistics()``."""
        return (await self.statistics()).asdict()

    async def channel_statistics(self, channel: str) -> dict[str, Any]:
        """ASGI-1 ``channel_statistics(channel)``."""
        return (await self.statistics(channel)).asdict()


_RECEIVE_LISTS: dict[tuple[str, ...], list[str]] = {}


def validate_receive_channels(channels: Iterable[str]) -> list[str]:
    """Validate names for receive; return them mapped to their non-local form, de-duplicated.

    The result is cached per list of names (pollers pass the same list on every call), so it
    must not be mutated.
    """
    key = tuple(channels) if isinstance(channels, (list, tuple)) else None
    if key is not None:
        cached = _RECEIVE_LISTS.get(key)
        if cached is not None:
            return cached
    if isinstance(channels, str):
        raise TypeError(f"channels must be a list of names, not the str {channels!r}; write [{channels!r}]")
    names = list(dict.fromkeys(non_local_name(validate_channel_name(c, receive=True)) for c in channels))
    if not names:
        raise ValueError("receive() needs at least one channel name")
    if key is not None and "?" not in "".join(key):
        if len(_RECEIVE_LISTS) >= 1024:
            _RECEIVE_LISTS.clear()
        _RECEIVE_LISTS[key] = names
    return names


async def retry_when_full(send: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Call *send* until it does not raise :exc:`ChannelFull`; :exc:`trio.TooSlowError` after
    *timeout* seconds.

    The first attempt is made at once, with no cancel scope (the common case costs nothing).
    Retries back off: 5 ms, doubling, at most 200 ms apart. For any *send* (a consumer's
    ``Channel.send``, say); a layer's own send methods wait better: :func:`send_or_wait`.
    """
    try:
        await send()
        return
    except ChannelFull:
        pass
    deadline = trio.current_time() + timeout
    pause = 0.005
    while True:
        if trio.current_time() + pause > deadline:
            raise trio.TooSlowError(f"the channel stayed full for {timeout:.1f} s")
        await trio.sleep(pause)
        pause = min(pause * 2, 0.2)
        try:
            await send()
            return
        except ChannelFull:
            pass


async def send_or_wait(send: Callable[..., Awaitable[None]], timeout: float) -> None:
    """``await send()``, and if the channel is full, ``await send(wait=True)`` for up to
    *timeout* seconds (then :exc:`trio.TooSlowError`; the message was not sent).

    *send* is a layer's ``send``, ``send_owned`` or ``send_encoded`` with its arguments bound
    (``functools.partial``). The first attempt runs with no cancel scope, so the common case
    costs nothing; waiting is the layer's (see :meth:`BaseChannelLayer.send`), not a loop of
    sleeps.
    """
    try:
        await send()
        return
    except ChannelFull:
        pass
    with trio.fail_after(timeout):
        await send(wait=True)
