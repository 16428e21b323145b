"""Session decorators in process: methods, nesting, channel_and_http_session, http_session_user;
the stores, the module split and the ambient settings."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from layers import InMemoryChannelLayer
from trio_channels import Channel, Message
from trio_channels.auth import (
    ANONYMOUS,
    channel_and_http_session_user_from_http,
    channel_session_user,
    channel_session_user_from_http,
    get_user,
    http_session_user,
    login,
)
from trio_channels.auth import use_user_loader as with_loader
from trio_channels.security import allowed_hosts_only, current_allowed_hosts, use_allowed_hosts
from trio_channels.sessions import (
    InMemorySessionStore,
    Session,
    channel_and_http_session,
    channel_session,
    current_session_store,
    enforce_ordering,
    http_session,
    session_for_reply_channel,
    use_session_store,
)


@pytest.fixture
def store() -> AsyncIterator[InMemorySessionStore]:
    store = InMemorySessionStore()
    with use_session_store(store):
        yield store  # type: ignore[misc]


def message(channel: str = "websocket.receive", **content: Any) -> Message:
    layer = InMemoryChannelLayer()
    return Message({"reply_channel": "interface.t!c1", "path": "/", **content}, Channel(channel), layer)


class Consumers:
    """Decorators work on methods: the Message is the second positional argument."""

    @channel_session
    async def remember(self, message: Message, value: str) -> None:
        message.channel_session["value"] = value

    @channel_session
    async def recall(self, message: Message) -> str:
        return str(message.channel_session.get("value"))


async def test_channel_session_on_methods_and_across_messages(store: InMemorySessionStore) -> None:
    """A value stored by one message's consumer is there for the next message of the connection."""
    consumers = Consumers()
    await consumers.remember(message(), "kept")
    assert await consumers.recall(message()) == "kept"
    assert await store.load(session_for_reply_channel("interface.t!c1")) == {"value": "kept"}


async def test_empty_sessions_are_not_saved(store: InMemorySessionStore) -> None:
    """A session left empty is not stored (and an emptied one is deleted)."""

    @channel_session
    async def touch(message: Message) -> None:
        message.channel_session["x"] = 1
        del message.channel_session["x"]

    await touch(message())
    assert await store.load(session_for_reply_channel("interface.t!c1")) is None


async def test_channel_session_needs_a_reply_channel(store: InMemorySessionStore) -> None:
    @channel_session
    async def consumer(message: Message) -> None: ...

    layer = InMemoryChannelLayer()
    with pytest.raises(ValueError, match="needs a message with a reply_channel"):
        await consumer(Message({}, Channel("x"), layer))
    with pytest.raises(ValueError, match="without a Message"):
        await consumer("not a message")  # type: ignore[arg-type]


async def test_channel_and_http_session_remembers_the_http_key(store: InMemorySessionStore) -> None:
    """The connect message's cookie key is remembered; later messages get the HTTP session."""
    http = Session(store)
    http["cart"] = ["apple"]
    await http.save()
    seen: list[Any] = []

    @channel_and_http_session
    async def consumer(message: Message) -> None:
        seen.append(None if message.http_session is None else dict(message.http_session))

    cookie = [[b"cookie", f"sessionid={http.session_key}".encode()]]
    await consumer(message("websocket.connect", headers=cookie, order=0))
    await consumer(message("websocket.receive", text="no cookies here", order=1))
    assert seen == [{"cart": ["apple"]}, {"cart": ["apple"]}]


async def test_users_from_http_and_channel_sessions(store: InMemorySessionStore) -> None:
    """http_session_user and channel_and_http_session_user_from_http set message.user."""
    users = {7: {"id": 7, "username": "grace"}}

    async def loader(user_id: Any) -> Any:
        return users.get(user_id)

    http = Session(store)
    await login(http, users[7])
    cookie = [[b"cookie", f"sessionid={http.session_key}".encode()]]
    found: list[Any] = []

    @http_session_user
    async def page(message: Message) -> None:
        found.append(message.user)

    @channel_and_http_session_user_from_http
    async def connect(message: Message) -> None:
        found.append(message.user)

    with with_loader(loader):
        await page(message("http.request", headers=cookie, method="GET"))
        await page(message("http.request", headers=[], method="GET"))
        await connect(message("websocket.connect", headers=cookie, order=0))
    assert found == [users[7], ANONYMOUS, users[7]]


async def test_logged_in_without_a_loader_says_how_to_fix_it(store: InMemorySessionStore) -> None:
    session = Session(store)
    await login(session, {"id": 1})
    with pytest.raises(RuntimeError, match="no user loader is configured"):
        await get_user(session)
    with pytest.raises(TypeError, match="needs an 'id'"):
        await login(session, object())


# ----------------------------------------------------------------------------- stores and modules


async def test_in_memory_session_ttl_follows_the_trio_clock(autojump: trio.testing.MockClock) -> None:
    """Session TTLs run on Trio's clock, so a MockClock expires them (they used time.monotonic)."""
    store = InMemorySessionStore()
    await store.save("k", {"a": 1}, ttl=3600)
    await trio.sleep(3599)
    assert await store.load("k") == {"a": 1}
    await trio.sleep(2)
    assert await store.load("k") is None
    key = await store.create({"b": 2}, ttl=60)
    await trio.sleep(61)
    assert await store.load(key) is None


async def test_without_a_store_every_task_of_the_run_shares_one() -> None:
    """The fallback store belongs to the trio.run: a session saved in one task is seen in another."""
    seen: list[Any] = []

    @channel_session
    async def remember(message: Message) -> None:
        message.channel_session["kept"] = True

    @channel_session
    async def recall(message: Message) -> None:
        seen.append(message.channel_session.get("kept"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(remember, message())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recall, message())
    assert seen == [True]
    assert current_session_store() is current_session_store()


def test_decorators_keep_the_consumers_name_and_signature() -> None:
    """Every decorator of the family wraps the same way: name, docstring and signature survive."""

    async def chat(message: Message, room: str) -> None:
        """Say something."""

    for decorate in (
        channel_session,
        http_session,
        http_session(cookie_name="other"),
        channel_and_http_session,
        enforce_ordering,
        channel_session_user,
        channel_session_user_from_http,
        channel_and_http_session_user_from_http,
        http_session_user,
        allowed_hosts_only,
    ):
        wrapped = decorate(chat)
        assert (wrapped.__name__, wrapped.__doc__) == ("chat", "Say something."), decorate
        assert inspect.signature(wrapped) == inspect.signature(chat), decorate


def test_the_old_import_path_finds_everything() -> None:
    """trio_channels.sessions still exports what moved to stores, ordering and middleware."""
    from trio_channels import middleware, ordering, sessions, stores

    for name in sessions.__all__:
        assert getattr(sessions, name) is not None
    assert sessions.enforce_ordering is ordering.enforce_ordering
    assert sessions.SessionMiddleware is middleware.SessionMiddleware
    assert sessions.RedisSessionStore is stores.RedisSessionStore
    assert sessions.use_session_store is stores.use_session_store
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        sessions.nope  # noqa: B018


@pytest.mark.parametrize("module", ["ordering", "middleware", "stores", "sessions", "auth", "security"])
def test_each_module_imports_first(module: str) -> None:
    """No import cycle: each module of the family can be the first one a program imports."""
    subprocess.run([sys.executable, "-c", f"import trio_channels.{module}"], check=True, timeout=60)


async def test_allowed_hosts_are_a_context_setting() -> None:
    """use_allowed_hosts sets ALLOWED_HOSTS for its block only; a str is refused naming it."""
    assert current_allowed_hosts() == ()
    with use_allowed_hosts(["Example.com"]):
        assert current_allowed_hosts() == ("example.com",)
    assert current_allowed_hosts() == ()
    with pytest.raises(TypeError, match=r"not the str 'example\.com'"):
        use_allowed_hosts("example.com")
