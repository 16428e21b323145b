"""``Channel``, ``Group`` and ``Message``: what consumers touch, and consumer atomicity.

Sends made while a consumer runs go to that consumer's :class:`Outbox` and are flushed, in
order, when it finishes (also when it raised), unless ``immediately=True``. This is the
Channels 1 atomicity that makes "accept, then store the room in the session" race-free: the
accept reaches the client only after the session was saved.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable, Collection
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar, overload

import attrs
import trio

from interface.messages import Reply
from layers import BaseChannelLayer, ChannelLayerUnavailable
from layers.base import (
    ChannelFull,
    append_encoded,
    decode_message,
    encode_message,
    validate_channel_name,
    validate_group_name,
)
from layers.groups import GroupHistory, GroupSendReport, refuse_position, validate_exclude

__all__ = [
    "Channel",
    "ContextSetter",
    "Group",
    "Message",
    "NoReplyChannel",
    "Outbox",
    "current_layer",
    "current_outbox",
    "use_layer",
    "use_outbox",
]

log = logging.getLogger("trio_channels")
T = TypeVar("T")

_current_layer: contextvars.ContextVar[BaseChannelLayer | None] = contextvars.ContextVar(
    "trio_channels.current_layer", default=None
)
_current_outbox: contextvars.ContextVar[Outbox | None] = contextvars.ContextVar(
    "trio_channels.current_outbox", default=None
)


def current_layer() -> BaseChannelLayer:
    """The channel layer of the running worker or server.

    Raises :exc:`RuntimeError` with the fix when there is none.
    """
    layer = _current_layer.get()
    if layer is None:
        raise RuntimeError(
            "no current channel layer: this runs outside a worker and outside serve(); pass "
            "layer=... to Channel/Group, or wrap the code in 'with trio_channels.use_layer(layer):'"
        )
    return layer


class ContextSetter(Generic[T]):
    """``with setter(value):`` sets a context variable for this task and the tasks it starts
    (each task gets a copy of its parent's context), and restores it on exit."""

    variable: ClassVar[contextvars.ContextVar[Any]]

    def __init__(self, value: T) -> None:
        self._value = value
        self._token: contextvars.Token[Any] | None = None

    def __enter__(self) -> T:
        self._token = self.variable.set(self._value)
        return self._value

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        self.variable.reset(self._token)


class use_layer(ContextSetter[BaseChannelLayer]):
    """``with use_layer(layer):`` makes *layer* the current one for this task and its children."""

    variable = _current_layer


def current_outbox() -> Outbox | None:
    """The outbox of the consumer running in this task, or ``None`` outside a consumer."""
    return _current_outbox.get()


class use_outbox(ContextSetter["Outbox"]):
    """``with use_outbox(outbox):`` buffers this task's sends in *outbox* (the worker does it)."""

    variable = _current_outbox


# ----------------------------------------------------------------------------- the outbox


@attrs.define(eq=False, slots=True)
class _Pending:
    group: bool
    name: str
    data: bytes
    delay: float
    exclude: frozenset[str] = frozenset()


@attrs.define(eq=False)
class Outbox:
    """The sends one consumer made, delivered in order when it finishes.

    Messages are validated and copied when they are buffered, so a bad message fails the
    ``send`` call that made it and later mutation of the dict changes nothing.
    """

    layer: BaseChannelLayer
    _pending: list[_Pending] = attrs.field(factory=list)
    #: Called with ``(channel, content)`` after each ``immediately=True`` channel send made while
    #: this outbox is current (the worker follows an HTTP response this way).
    watcher: Callable[[str, dict[str, Any]], None] | None = None

    def add(
        self,
        *,
        group: bool,
        name: str,
        content: dict[str, Any],
        delay: float = 0,
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        data = encode_message(content, self.layer.max_message_size)
        if group:
            refuse_position(data)
        self._pending.append(_Pending(group, name, data, delay, exclude))

    def __len__(self) -> int:
        return len(self._pending)

    def buffered(self, channel: str) -> list[dict[str, Any]]:
        """The messages buffered for *channel* (not group sends), oldest first, as copies."""
        return [
            decode_message(item.data) for item in self._pending if not item.group and item.name == channel
        ]

    def discard(self, channel: str) -> None:
        """Drop the buffered sends to *channel* (not group sends)."""
        self._pending = [item for item in self._pending if item.group or item.name != channel]

    def amend(self, channel: str, change: Callable[[dict[str, Any]], bool]) -> bool:
        """Apply *change* to the first buffered message for *channel* it accepts (returns True).

        Used by ``http_session`` to add a ``Set-Cookie`` header to a buffered response.
        """
        for item in self._pending:
            if not item.group and item.name == channel:
                content = decode_message(item.data)
                if change(content):
                    item.data = encode_message(content, self.layer.max_message_size)
                    return True
        return False

    def append_header(self, channel: str, header: list[bytes]) -> bool:
        """Add *header* to the first buffered HTTP response start for *channel* (returns True).

        The buffered message is not decoded and re-encoded: the header is spliced into its
        encoded form (:func:`layers.base.append_encoded`), so a large body is not copied twice.
        Used by ``http_session`` to add a ``Set-Cookie`` header.
        """
        for item in self._pending:
            if not item.group and item.name == channel:
                amended = append_encoded(
                    item.data, "headers", header, require="status", max_size=self.layer.max_message_size
                )
                if amended is not None:
                    item.data = amended
                    return True
        return False

    async def flush(self, *, timeout: float = 2.0) -> None:
        """Deliver everything, in order; retry a full channel until *timeout*, then log it.

        Shielded from outside cancellation (within *timeout*) when a deadline is already
        running, so a graceful shutdown does not lose the replies of a finished consumer.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        deadline = trio.current_time() + timeout
        if trio.current_effective_deadline() == math.inf:
            await self._deliver(pending, deadline)  # the common case: no scope needed
        else:
            with trio.CancelScope(shield=True):
                await self._deliver(pending, deadline)

    async def _deliver(self, pending: list[_Pending], deadline: float) -> None:
        for index, item in enumerate(pending):
            try:
                if item.group:  # never full
                    await self._send_group(item)
                    continue
                send = partial(self.layer.send_encoded, item.name, item.data, delay=item.delay)
                try:
                    await send()  # the common case, with no cancel scope
                except ChannelFull:
                    # Wait for room (woken by the receive that makes it, where the layer can).
                    with trio.fail_at(deadline):
                        await send(wait=True)
            except trio.TooSlowError:
                log.error(
                    "gave up delivering %d buffered message(s): channel %r stayed full",
                    len(pending) - index,
                    item.name,
                )
                return
            except ChannelLayerUnavailable as exc:
                log.error("gave up delivering %d buffered message(s): %s", len(pending) - index, exc)
                return

    async def _send_group(self, item: _Pending) -> None:
        await self.layer.send_group_encoded(item.name, item.data, exclude=item.exclude)


# ----------------------------------------------------------------------------- channels


def _ascii_name(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _content(content: object, what: str) -> dict[str, Any]:
    if type(content) is not dict:
        raise TypeError(f"{what} needs a dict message, not {type(content).__name__}: {content!r:.80}")
    return content  # a TypedDict reply is a plain dict at run time


@attrs.define(eq=False, repr=False)
class Channel:
    """A named channel on a layer (the current one unless ``layer=`` is given)."""

    name: str = attrs.field(converter=_ascii_name)
    _layer: BaseChannelLayer | None = attrs.field(default=None, alias="layer")

    def __attrs_post_init__(self) -> None:
        validate_channel_name(self.name)

    @property
    def layer(self) -> BaseChannelLayer:
        return self._layer if self._layer is not None else current_layer()

    async def send(
        self, content: dict[str, Any] | Reply, *, immediately: bool = False, delay: float | None = None
    ) -> None:
        """Send *content* (a dict; replies may be typed as :mod:`interface.messages` says) to
        this channel.

        Inside a consumer the send is buffered until the consumer finishes, unless
        ``immediately=True``; ``delay`` (seconds) asks the layer to deliver it later. Raises
        :exc:`TypeError`/:exc:`ValueError` for a bad message (also when buffering), and
        :exc:`layers.ChannelFull` for an immediate send to a full channel.
        """
        message = _content(content, f"Channel({self.name!r}).send()")
        outbox = _current_outbox.get()
        if outbox is not None and not immediately:
            outbox.add(group=False, name=self.name, content=message, delay=delay or 0)
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        await self.layer.send(self.name, message, delay=delay or 0)
        if outbox is not None and outbox.watcher is not None:
            outbox.watcher(self.name, message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Channel) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"


def _channel_name(channel: Channel | str) -> str:
    return channel.name if isinstance(channel, Channel) else validate_channel_name(channel)


@attrs.define(eq=False, repr=False)
class Group:
    """A named group of channels on a layer (the current one unless ``layer=`` is given)."""

    name: str = attrs.field(converter=_ascii_name)
    _layer: BaseChannelLayer | None = attrs.field(default=None, alias="layer")

    def __attrs_post_init__(self) -> None:
        validate_group_name(self.name)

    @property
    def layer(self) -> BaseChannelLayer:
        return self._layer if self._layer is not None else current_layer()

    @overload
    async def add(
        self, channel: Channel | str, *, info: dict[str, Any] | None = None, recover: None = None
    ) -> None: ...

    @overload
    async def add(
        self, channel: Channel | str, *, info: dict[str, Any] | None = None, recover: tuple[str, int] | int
    ) -> GroupHistory: ...

    async def add(
        self,
        channel: Channel | str,
        *,
        info: dict[str, Any] | None = None,
        recover: tuple[str, int] | int | None = None,
    ) -> GroupHistory | None:
        """Add *channel* (a :class:`Channel` or a name); re-adding refreshes its membership.

        *info* (a small dict of JSON values: a user id, a name) is what :meth:`presence` shows
        for it. With *recover* (a client's last position ``(epoch, offset)``, or an int *n*: the
        latest *n* messages), the messages it missed are queued for it first, in order, and
        returned (:class:`~layers.groups.GroupHistory`); :exc:`~layers.groups.CannotRecover`
        if the history does not cover them (the channel is added all the same: reload the
        client's state). Not buffered inside a consumer: the add takes effect at once.
        """
        name = _channel_name(channel)
        if recover is None:
            await self.layer.group_add(self.name, name, info=info)
            return None
        return await self.layer.group_recover(self.name, name, recover, info=info)

    async def discard(self, channel: Channel | str) -> None:
        """Remove *channel*; no error if it is not a member."""
        await self.layer.group_discard(self.name, _channel_name(channel))

    async def channels(self) -> list[str]:
        """The names of the current members."""
        return await self.layer.group_channels(self.name)

    async def presence(self) -> dict[str, dict[str, Any] | None]:
        """Who is here: each member's channel name with the info it was added with."""
        return await self.layer.group_presence(self.name)

    async def history(self, *, since: int | None = None, limit: int | None = None) -> GroupHistory:
        """The group's stored messages after offset *since* (or the latest *limit*), oldest
        first, with its epoch and latest offset (see ``BaseChannelLayer.group_history``)."""
        return await self.layer.group_history(self.name, since=since, limit=limit)

    async def send(
        self,
        content: dict[str, Any] | Reply,
        *,
        immediately: bool = False,
        exclude: Channel | str | Collection[Channel | str] | None = None,
    ) -> GroupSendReport | None:
        """Send *content* to every member but *exclude* (a channel or several: the sender,
        say); return the layer's :class:`~layers.groups.GroupSendReport`.

        Inside a consumer the send is buffered until the consumer finishes, unless
        ``immediately=True``, and returns ``None`` (there is no report yet).
        """
        content = _content(content, f"Group({self.name!r}).send()")
        if exclude is None:
            excluded: frozenset[str] = frozenset()
        elif isinstance(exclude, (Channel, str)):
            excluded = frozenset((_channel_name(exclude),))
        else:
            excluded = validate_exclude([_channel_name(item) for item in exclude])
        outbox = _current_outbox.get()
        if outbox is not None and not immediately:
            outbox.add(group=True, name=self.name, content=content, exclude=excluded)
            await trio.lowlevel.checkpoint_if_cancelled()
            return None
        return await self.layer.send_group(self.name, content, exclude=excluded)

    def __repr__(self) -> str:
        return f"Group({self.name!r})"


# ----------------------------------------------------------------------------- messages


class NoReplyChannel(AttributeError):
    """The message has no ``reply_channel``: only connection messages (``http.request``,
    ``websocket.*``) carry one.

    An :exc:`AttributeError`, so ``getattr(message, "reply_channel", None)`` and ``hasattr``
    work as they did in Channels 1, where the attribute was ``None``.
    """


@attrs.define(eq=False)
class Message:
    """One message being consumed: its content, where it came from and where to reply.

    Behaves like a read/write mapping over ``content`` (``message["text"]``,
    ``message.get("bytes")``). Decorators add ``channel_session``, ``http_session`` and
    ``user``.
    """

    content: dict[str, Any]
    channel: Channel
    channel_layer: BaseChannelLayer
    deadline: float = math.inf
    _reply_channel: Channel | None = attrs.field(init=False)
    channel_session: Any = attrs.field(default=None, init=False)
    http_session: Any = attrs.field(default=None, init=False)
    user: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        reply = self.content.get("reply_channel")
        self._reply_channel = Channel(reply, layer=self.channel_layer) if reply else None

    @property
    def reply_channel(self) -> Channel:
        """The connection's reply channel.

        Raises :exc:`NoReplyChannel` (an :exc:`AttributeError`) naming the channel when the
        message has none; :attr:`has_reply_channel` tells beforehand.
        """
        if self._reply_channel is None:
            raise NoReplyChannel(
                f"the message on {self.channel.name!r} has no reply_channel: only connection messages "
                "(http.request, websocket.*) carry one"
            )
        return self._reply_channel

    @property
    def has_reply_channel(self) -> bool:
        """Whether the message carries a ``reply_channel`` (connection messages do)."""
        return self._reply_channel is not None

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.content[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.content

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)

    def keys(self) -> Any:
        return self.content.keys()

    def values(self) -> Any:
        return self.content.values()

    def items(self) -> Any:
        return self.content.items()

    def copy(self) -> Message:
        """A new message with a deep copy of the content."""
        return Message(
            decode_message(encode_message(self.content)), self.channel, self.channel_layer, self.deadline
        )
