"""Routing: channels, regex filters, named groups, includes, dotted paths and defaults."""

from __future__ import annotations

from typing import Any

import pytest

from layers import InMemoryChannelLayer
from trio_channels import Channel, Message, Router, include, route, route_class
from trio_channels._defaults import accept_connection, ignore, not_found

from . import sample_app

LAYER = InMemoryChannelLayer()


def msg(channel: str, **content: Any) -> Message:
    return Message(content, Channel(channel, layer=LAYER), LAYER)


async def consumer_a(message: Message, **kwargs: Any) -> None: ...


async def consumer_b(message: Message, **kwargs: Any) -> None: ...


def test_route_matches_channel_and_filters() -> None:
    """A route needs its channel and every filter to match; named groups become kwargs."""
    router = Router(
        [route("http.request", consumer_a, path=r"^/poll/(?P<id>\d+)/$", method=r"^POST$")], defaults=False
    )
    assert router.match(msg("http.request", path="/poll/42/", method="POST")) == (consumer_a, {"id": "42"})
    assert router.match(msg("http.request", path="/poll/42/", method="GET")) is None
    assert router.match(msg("http.request", method="POST")) is None  # missing key
    assert router.match(msg("websocket.connect", path="/poll/42/", method="POST")) is None


def test_bytes_values_and_patterns_are_decoded() -> None:
    """Bytes message values (and bytes patterns) are matched as ASCII text."""
    router = Router([route("x", consumer_a, query=b"^a=(?P<a>\\d)")], defaults=False)
    assert router.match(msg("x", query=b"a=1&b=2")) == (consumer_a, {"a": "1"})
    assert router.match(msg("x", query=b"\xff")) is None


def test_positional_groups_are_rejected_at_definition() -> None:
    """A positional group is a ValueError that names the pattern."""
    with pytest.raises(ValueError, match=r"path='\^/\(\[a-z\]\+\)/\$' has a positional group"):
        route("http.request", consumer_a, path=r"^/([a-z]+)/$")
    route("http.request", consumer_a, path=r"^/(?:[a-z]+)/$")  # non-capturing is fine


def test_a_bad_regex_is_a_value_error_naming_the_route_and_the_pattern() -> None:
    """A filter that does not compile: ValueError naming the route, the filter and the pattern."""
    with pytest.raises(ValueError) as bad:
        route("http.request", consumer_a, path=r"^/rooms/(?P<room>[a-z+/$")
    assert str(bad.value).startswith(
        "route('http.request', tests.core.test_routing.consumer_a): filter path='^/rooms/(?P<room>[a-z+/$' "
        "is not a valid regular expression: unterminated character set"
    )
    with pytest.raises(ValueError, match=r"^include\('x.y'\): filter path='\(' is not a valid"):
        include("x.y", path="(")


def test_first_match_wins() -> None:
    """Routes resolve in list order."""
    router = Router([route("x", consumer_a), route("x", consumer_b)], defaults=False)
    assert router.match(msg("x"))[0] is consumer_a  # type: ignore[index]


def test_seed_include_example() -> None:
    """The seed's chat routing: include chops '/chat' and the inner pattern yields room=."""
    chat_routing = [
        route("websocket.connect", consumer_a, path=r"^/(?P<room>[a-zA-Z0-9_]+)/$"),
        route("websocket.disconnect", consumer_b),
    ]
    http_routing = [route("http.request", consumer_b, path=r"^/poll/$", method=r"^POST$")]
    router = Router([include(chat_routing, path=r"^/chat"), include(http_routing)], defaults=False)
    assert router.match(msg("websocket.connect", path="/chat/lobby/")) == (consumer_a, {"room": "lobby"})
    assert router.match(msg("websocket.connect", path="/other/lobby/")) is None
    assert router.match(msg("http.request", path="/poll/", method="POST")) == (consumer_b, {})


def test_include_merges_kwargs_inner_wins() -> None:
    """Include kwargs reach the consumer; on a clash the inner route's value wins."""
    inner = [route("x", consumer_a, path=r"^/(?P<room>[a-z]+)/(?P<version>v\d)$")]
    router = Router([include(inner, path=r"^/(?P<version>api)(?P<site>/s\d)")], defaults=False)
    assert router.match(msg("x", path="/api/s1/lobby/v2")) == (
        consumer_a,
        {"version": "v2", "site": "/s1", "room": "lobby"},
    )


def test_include_does_not_alter_the_message() -> None:
    """Chopping happens on a copy: the consumer sees the full path."""
    message = msg("x", path="/chat/lobby/")
    Router([include([route("x", consumer_a, path=r"^/lobby/$")], path=r"^/chat")], defaults=False).match(
        message
    )
    assert message["path"] == "/chat/lobby/"


def test_same_routing_under_two_prefixes() -> None:
    """One routing list can be included under several prefixes."""
    inner = [route("x", consumer_a, path=r"^/stream/$")]
    router = Router([include(inner, path=r"^/liveblog"), include(inner, path=r"^/news")], defaults=False)
    assert router.match(msg("x", path="/liveblog/stream/")) is not None
    assert router.match(msg("x", path="/news/stream/")) is not None


def test_dotted_paths_resolve_when_the_router_is_built() -> None:
    """Consumers and routing lists can be dotted paths, resolved at Router construction."""
    router = Router(
        [include("tests.core.sample_app.inner_routing"), route("y", "tests.core.sample_app.http_consumer")],
        defaults=False,
    )
    assert router.match(msg("http.request", path="/inner/")) == (sample_app.http_consumer, {})
    assert router.match(msg("y")) == (sample_app.http_consumer, {})


@pytest.mark.parametrize(
    ("routing", "error"),
    [
        (
            [route("y", "tests.core.sample_app.missing")],
            r"consumer 'tests.core.sample_app.missing'.*has no 'missing'",
        ),
        (
            [route("y", "tests.core.nowhere.consumer")],
            r"consumer 'tests.core.nowhere.consumer' could not be imported",
        ),
        ([include("tests.core.sample_app.nope")], r"routing 'tests.core.sample_app.nope'"),
        ("no_dots", r"'no_dots' is not an import path"),
    ],
)
def test_bad_dotted_paths_fail_at_startup(routing: Any, error: str) -> None:
    """A bad path is an ImportError naming it, raised when the Router is built."""
    with pytest.raises(ImportError, match=error):
        Router(routing)


def test_plain_def_consumers_are_refused() -> None:
    """Routing a plain def is a TypeError that says how to fix it."""
    with pytest.raises(
        TypeError, match=r"sync_consumer is a plain function.*async def.*trio.to_thread.run_sync"
    ):
        route("x", sample_app.sync_consumer)
    with pytest.raises(TypeError, match="plain function"):
        Router([route("x", "tests.core.sample_app.sync_consumer")])


def test_dict_routing() -> None:
    """A dict maps channel names to consumers."""
    router = Router({"a": consumer_a, "b": consumer_b}, defaults=False)
    assert router.match(msg("b")) == (consumer_b, {})
    assert router.channels() == {"a", "b"}


def test_bad_routing_entries() -> None:
    """Something that is not a route is refused with its repr."""
    with pytest.raises(TypeError, match="routing entry 42"):
        Router([42])
    with pytest.raises(TypeError, match="routing must be a list"):
        Router(42)


def test_default_routes_come_last() -> None:
    """Defaults are appended after user routes; unmatched HTTP falls through to the fallback."""
    router = Router([route("http.request", consumer_a, path=r"^/mine/$")])
    assert router.match(msg("http.request", path="/mine/"))[0] is consumer_a  # type: ignore[index]
    assert router.match(msg("http.request", path="/other/"))[0] is not_found  # type: ignore[index]
    assert router.match(msg("websocket.connect", path="/"))[0] is accept_connection  # type: ignore[index]
    for channel in ("websocket.receive", "websocket.disconnect", "http.disconnect"):
        assert router.match(msg(channel))[0] is ignore  # type: ignore[index]
    assert router.channels() == {
        "http.request",
        "http.disconnect",
        "websocket.connect",
        "websocket.receive",
        "websocket.disconnect",
    }


def test_http_fallback_replaces_the_404() -> None:
    """A given http_fallback consumer gets the un-routed HTTP requests."""
    router = Router([], http_fallback=consumer_b)
    assert router.match(msg("http.request", path="/x"))[0] is consumer_b  # type: ignore[index]


class Counter:
    """A minimal class consumer: the class names its channels and dispatches per message."""

    seen: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, message: Message, **kwargs: Any) -> None:
        self.message, self.kwargs = message, kwargs

    @classmethod
    def channel_names(cls) -> list[str]:
        return ["count.me", "count.too"]

    async def dispatch(self) -> None:
        self.seen.append((self.message.channel.name, self.kwargs))


async def test_route_class() -> None:
    """route_class takes the channels from the class and runs one instance per message."""
    router = Router([route_class(Counter, name=r"^(?P<who>\w+)$")], defaults=False)
    assert router.channels() == {"count.me", "count.too"}
    consumer, kwargs = router.match(msg("count.too", name="ann"))  # type: ignore[misc]
    await consumer(msg("count.too", name="ann"), **kwargs)
    assert Counter.seen == [("count.too", {"who": "ann"})]
    with pytest.raises(ValueError, match="channel_names"):
        route_class(object)


def test_routed_channels_leave_out_the_default_routes() -> None:
    """Router.routed names the channels the application's own routes listen on, includes
    too; the default routes (no-op http.disconnect and the rest) are not among them."""

    async def consumer(message: Message) -> None:
        pass

    router = Router(
        [
            route("http.request", consumer),
            include([route(["websocket.receive", "chat"], consumer)], path="^/x"),
        ]
    )
    assert router.routed == {"http.request", "websocket.receive", "chat"}
    assert {"http.disconnect", "websocket.connect", "websocket.disconnect"} <= router.channels()
