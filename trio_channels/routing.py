"""Routing: which consumer handles a message, by channel name and regexes on its fields.

* ``route(channel, consumer, **filters)``: each filter ``key=regex`` must ``re.match`` the
  message's value for ``key``; named groups become the consumer's keyword arguments.
* ``route_class(ConsumerClass, **filters)``: the class says which channels it handles.
* ``include(routing, **filters)``: the filters match a prefix of the values, which is chopped
  off before the inner routes see them; kwargs merge, the inner ones winning.

Resolution is in list order and the first match wins. Consumers and routing lists may be
dotted import paths; they are all resolved when a :class:`Router` is built, so a typo fails
at start-up, naming the path.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import attrs

from .channel import Message

__all__ = [
    "Consumer",
    "Include",
    "Route",
    "RouteClass",
    "Router",
    "include",
    "route",
    "route_class",
]

log = logging.getLogger("trio_channels.routing")

Consumer: TypeAlias = Callable[..., Awaitable[None]]
Match: TypeAlias = "tuple[Consumer, dict[str, Any]]"


class Routing(Protocol):
    """What a routing entry offers: ``match`` and ``channel_names``."""

    def match(self, message: Message) -> Match | None: ...

    def channel_names(self) -> set[str]: ...

    def resolve(self) -> None: ...


def import_by_path(path: str, what: str) -> Any:
    """Import ``package.module:attribute`` (uvicorn's form; ``attribute`` may be dotted) or
    ``package.module.attribute``; an :exc:`ImportError` names the path on failure."""
    if ":" in path:
        module_path, _, attribute = path.partition(":")
        if not module_path or not attribute or ":" in attribute:
            raise ImportError(f"{what} {path!r} must be written 'package.module:name'")
    else:
        module_path, _, attribute = path.rpartition(".")
        if not module_path:
            raise ImportError(
                f"{what} {path!r} is not an import path like 'myapp.consumers:ws_message' "
                "or 'myapp.consumers.ws_message'"
            )
    try:
        found: Any = importlib.import_module(module_path)
    except ImportError as exc:
        raise ImportError(f"{what} {path!r} could not be imported: {exc}") from exc
    for depth, name in enumerate(attribute.split(".")):
        try:
            found = getattr(found, name)
        except AttributeError:
            owner = module_path if depth == 0 else f"{module_path}:{'.'.join(attribute.split('.')[:depth])}"
            raise ImportError(f"{what} {path!r} could not be imported: {owner!r} has no {name!r}") from None
    return found


def _is_async_callable(consumer: object) -> bool:
    while hasattr(consumer, "func") and not inspect.isfunction(consumer):  # functools.partial
        consumer = consumer.func
    if inspect.iscoroutinefunction(consumer):
        return True
    call = getattr(consumer, "__call__", None)  # noqa: B004 - we want the method itself
    return inspect.iscoroutinefunction(call)


def _class_consumer(cls: type) -> Consumer:
    async def consume(message: Message, **kwargs: Any) -> None:
        await cls(message, **kwargs).dispatch()

    consume.__module__ = cls.__module__
    consume.__qualname__ = cls.__qualname__
    consume.__name__ = cls.__name__
    consume.consumer_class = cls  # type: ignore[attr-defined]
    return consume


def check_consumer(consumer: object) -> Consumer:
    """Return *consumer* as an async callable, or raise a clear :exc:`TypeError`.

    A class consumer is constructed per message with ``(message, **kwargs)`` and its async
    ``dispatch()`` is awaited.
    """
    if not callable(consumer):
        raise TypeError(f"consumer {consumer!r} is not callable")
    if inspect.isclass(consumer):
        if not inspect.iscoroutinefunction(getattr(consumer, "dispatch", None)):
            raise TypeError(
                f"consumer class {consumer.__qualname__} needs an 'async def dispatch(self)' method "
                "(subclass trio_channels.generic.BaseConsumer)"
            )
        return _class_consumer(consumer)
    if _is_async_callable(consumer):
        return consumer
    name = getattr(consumer, "__qualname__", repr(consumer))
    raise TypeError(
        f"consumer {name} is a plain function; consumers must be 'async def'. Make it async, "
        "and run blocking work inside it with 'await trio.to_thread.run_sync(...)'"
    )


def _compile_filters(
    filters: Mapping[str, str | bytes | re.Pattern[str]], owner: str
) -> dict[str, re.Pattern[str]]:
    compiled: dict[str, re.Pattern[str]] = {}
    for key, pattern in filters.items():
        if isinstance(pattern, bytes):
            pattern = pattern.decode("ascii")
        try:
            regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"{owner}: filter {key}={pattern!r} is not a valid regular expression: {exc}"
            ) from None
        if regex.groups != len(regex.groupindex):
            raise ValueError(
                f"{owner}: filter {key}={regex.pattern!r} has a positional group; routing only uses named "
                "groups, like (?P<room>[a-z]+), or non-capturing ones (?:...)"
            )
        compiled[key] = regex
    return compiled


def _match_value(regex: re.Pattern[str], value: object) -> tuple[re.Match[str], str] | None:
    """``re.match`` on a message value (bytes decoded as ASCII); ``None`` if it does not match."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    found = regex.match(value)
    return None if found is None else (found, value)


def _match_filters(filters: dict[str, re.Pattern[str]], content: Mapping[str, Any]) -> dict[str, Any] | None:
    kwargs: dict[str, Any] = {}
    for key, regex in filters.items():
        matched = _match_value(regex, content.get(key))
        if matched is None:
            return None
        kwargs.update(matched[0].groupdict())
    return kwargs


def _channel_list(channels: str | bytes | Iterable[str]) -> tuple[str, ...]:
    if isinstance(channels, bytes):
        channels = channels.decode("ascii")
    if isinstance(channels, str):
        return (channels,)
    return tuple(channels)


@attrs.define(eq=False, init=False)
class Route:
    """``route(channel, consumer, **filters)``; see the module docstring."""

    channels: tuple[str, ...]
    consumer: Consumer | str
    filters: dict[str, re.Pattern[str]]

    def __init__(self, channels: str | Iterable[str], consumer: Consumer | str, **filters: Any) -> None:
        self.channels = _channel_list(channels)
        if not self.channels:
            raise ValueError("route() needs at least one channel name")
        self.consumer = consumer if isinstance(consumer, str) else check_consumer(consumer)
        spelled = self.channels[0] if len(self.channels) == 1 else list(self.channels)
        self.filters = _compile_filters(filters, f"route({spelled!r}, {_consumer_name(self.consumer)})")

    def resolve(self) -> None:
        if isinstance(self.consumer, str):
            self.consumer = check_consumer(import_by_path(self.consumer, "consumer"))

    def channel_names(self) -> set[str]:
        return set(self.channels)

    def match(self, message: Message) -> Match | None:
        if message.channel.name not in self.channels:
            return None
        kwargs = _match_filters(self.filters, message.content)
        if kwargs is None:
            return None
        if isinstance(self.consumer, str):
            self.resolve()
        return self.consumer, kwargs  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"route({list(self.channels)!r}, {_consumer_name(self.consumer)})"


@attrs.define(eq=False, init=False)
class RouteClass(Route):
    """``route_class(ConsumerClass, **filters)``: channels come from ``channel_names()``."""

    def __init__(self, consumer: Any, **filters: Any) -> None:
        if isinstance(consumer, str):
            consumer = import_by_path(consumer, "consumer class")
        names = getattr(consumer, "channel_names", None)
        if names is None:
            raise ValueError(f"route_class({consumer!r}) needs a class with a channel_names() classmethod")
        super().__init__(list(names()), consumer, **filters)


@attrs.define(eq=False, init=False)
class Include:
    """``include(routing, **filters)``; see the module docstring."""

    routing: Sequence[Routing] | str
    filters: dict[str, re.Pattern[str]]

    def __init__(self, routing: Any, **filters: Any) -> None:
        self.routing = routing if isinstance(routing, str) else _as_routing_list(routing)
        self.filters = _compile_filters(
            filters, f"include({routing!r})" if isinstance(routing, str) else "include()"
        )

    def resolve(self) -> None:
        if isinstance(self.routing, str):
            self.routing = _as_routing_list(import_by_path(self.routing, "routing"))
        for entry in self.routing:
            entry.resolve()

    def _entries(self) -> Sequence[Routing]:
        if isinstance(self.routing, str):
            self.resolve()
        return self.routing  # type: ignore[return-value]

    def channel_names(self) -> set[str]:
        names: set[str] = set()
        for entry in self._entries():
            names |= entry.channel_names()
        return names

    def match(self, message: Message) -> Match | None:
        entries = self._entries()
        if not self.filters:
            for entry in entries:
                found = entry.match(message)
                if found is not None:
                    return found
            return None
        kwargs: dict[str, Any] = {}
        content = dict(message.content)
        for key, regex in self.filters.items():
            matched = _match_value(regex, content.get(key))
            if matched is None:
                return None
            found_prefix, value = matched
            kwargs.update(found_prefix.groupdict())
            content[key] = value[found_prefix.end() :]
        inner_message = _with_content(message, content)
        for entry in entries:
            found = entry.match(inner_message)
            if found is not None:
                consumer, inner_kwargs = found
                return consumer, {**kwargs, **inner_kwargs}
        return None

    def __repr__(self) -> str:
        return f"include({self.routing!r})"


def _with_content(message: Message, content: dict[str, Any]) -> Message:
    # A shallow view with chopped values, used only for matching.
    view = Message.__new__(Message)
    view.content = content
    view.channel = message.channel
    return view


def _consumer_name(consumer: object) -> str:
    if isinstance(consumer, str):
        return consumer
    module = getattr(consumer, "__module__", None)
    name = getattr(consumer, "__qualname__", None) or repr(consumer)
    return f"{module}.{name}" if module else name


def _as_routing_list(routing: Any) -> list[Routing]:
    if isinstance(routing, str):
        return [Include(routing)]
    if isinstance(routing, Mapping):
        return [Route(channel, consumer) for channel, consumer in routing.items()]
    if isinstance(routing, (list, tuple)):
        entries: list[Routing] = []
        for entry in routing:
            if not hasattr(entry, "match") or not hasattr(entry, "channel_names"):
                raise TypeError(f"routing entry {entry!r} is not a route(), route_class() or include()")
            entries.append(entry)
        return entries
    raise TypeError(
        f"routing must be a list, a dict or a dotted path, not {type(routing).__name__}: {routing!r}"
    )


route = Route
route_class = RouteClass
include = Include


@attrs.define(eq=False, init=False)
class Router:
    """The root of a routing: resolves everything up front and adds the default routes.

    Default routes come last: ``websocket.connect`` accepts, ``websocket.receive``,
    ``websocket.disconnect`` and ``http.disconnect`` do nothing, and ``http.request`` goes to
    the HTTP fallback (by default a 404 response). One comes first: the browser client's files
    (:func:`trio_channels.http.client_route`), unless the routing places that route itself.
    With ``defaults=False`` the routing is used as it is.
    """

    root: Include
    #: The channels the application's own routes listen on (the default routes left out).
    routed: frozenset[str]

    def __init__(
        self,
        routing: Any,
        *,
        defaults: bool = True,
        http_fallback: Consumer | None = None,
    ) -> None:
        self.root = Include(list(_as_routing_list(routing)))
        self.root.resolve()
        # What the user's routing itself routes (the defaults do nothing with what they add).
        self.routed = frozenset(self.root.channel_names())
        if defaults:
            from . import _defaults

            first = _defaults.first_routes(self.root)
            self.root = Include([*first, self.root, *_defaults.default_routes(http_fallback)])
            self.root.resolve()

    def channels(self) -> set[str]:
        """Every channel some route listens on: what a worker must receive from."""
        return self.root.channel_names()

    def match(self, message: Message) -> Match | None:
        """``(consumer, kwargs)`` for *message*, or ``None`` if no route matches."""
        return self.root.match(message)

    def consumer_name(self, consumer: object) -> str:
        return _consumer_name(consumer)
