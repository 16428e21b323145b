"""Session decorators in process: methods, nesting, channel_and_http_session, http_session_user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from layers import InMemoryChannelLayer
from trio_channels import Channel, Message
from trio_channels.auth import (
    ANONYMOUS,
    channel_and_http_session_user_from_http,
    get_user,
    http_session_user,
    login,
)
from trio_channels.auth import use_user_loader as with_loader
from trio_channels.sessions import (
    InMemorySessionStore,
    Session,
    channel_and_http_session,
    channel_session,
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
