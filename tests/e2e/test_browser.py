"""The tutorial's JavaScript in headless Chromium against the running examples."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from examples.authentication.users import load_user
from layers import InMemoryChannelLayer

from ..browser import open_browser
from .conftest import StartServer

pytestmark = pytest.mark.usefixtures("in_examples")


async def test_echo_alert_in_the_browser(start_server: StartServer) -> None:
    """The seed's snippet: new WebSocket(...), send "hello world", the alert shows the echo."""
    info = await start_server("examples.echo.routing.channel_routing")
    async with open_browser() as browser:
        tab = await browser.new_tab(info.url + "/")
        assert await tab.next_alert() == "hello world"


async def test_two_tabs_in_the_chat_both_receive(start_server: StartServer) -> None:
    """Two tabs in the group chat: the second tab's message reaches both."""
    info = await start_server("examples.chat.routing.channel_routing")
    async with open_browser() as browser:
        first = await browser.new_tab(info.url + "/")
        assert await first.next_alert() == "[user] hello world"  # its own hello
        second = await browser.new_tab(info.url + "/")
        assert await second.next_alert() == "[user] hello world"
        assert await first.next_alert() == "[user] hello world"  # the second tab's hello


async def test_login_page_then_a_websocket_that_knows_the_user(start_server: StartServer) -> None:
    """Log in through the HTML form; the page's WebSocket carries the cookie; chat shows the name."""
    info = await start_server(
        "examples.authentication.routing.channel_routing",
        user_loader=load_user,
        allowed_hosts=["127.0.0.1", "localhost"],
    )
    async with open_browser() as browser:
        tab = await browser.new_tab(info.url + "/")
        tab.expect_load()
        await tab.evaluate(
            "document.getElementById('username').value = 'alice'; document.forms[0].submit(); true"
        )
        await tab.wait_for_load()
        assert await tab.evaluate("document.getElementById('me').textContent") == "alice"
        said = await tab.evaluate(
            """new Promise((resolve) => {
                const send = () => {
                    new MutationObserver(() => resolve(document.getElementById('log').textContent))
                        .observe(document.getElementById('log'), {childList: true});
                    socket.send('hi from the browser');
                };
                if (socket.readyState === WebSocket.OPEN) send(); else socket.addEventListener('open', send);
            })"""
        )
        assert said == "alice: hi from the browser"


async def test_token_in_a_subprotocol_from_the_browser(start_server: StartServer) -> None:
    """examples/token_auth.py's page: Chromium sends the token in a subprotocol beside "chat"
    (Chromium fails a handshake answered with none of its subprotocols); a good token chats, a
    forged one is closed with 4401, which the page can read."""
    from examples import token_auth
    from interface import InterfaceConfig

    info = await start_server(
        token_auth.channel_routing,
        user_loader=token_auth.load_user,
        interface_config=InterfaceConfig(ws_protocols=("chat",)),
    )
    token = token_auth.issue_token("alice")
    read_log = """new Promise((resolve) => {
        const log = document.getElementById('log');
        const done = () => { if (log.textContent.includes(WANT)) resolve(log.textContent); };
        new MutationObserver(done).observe(log, {childList: true, characterData: true, subtree: true});
        done();
        SEND
    })"""
    send = """const say = () => window.socket.send('hi from the browser');
        if (window.socket.readyState === WebSocket.OPEN) say(); else window.socket.addEventListener('open', say);"""
    async with open_browser() as browser:
        tab = await browser.new_tab(f"{info.url}/#token={token}")
        said = await tab.evaluate(read_log.replace("WANT", "'alice: hi'").replace("SEND", send))
        assert said == "alice: hi from the browser\n"
        forged = await browser.new_tab(f"{info.url}/#token={token[:-2]}")
        assert (
            await forged.evaluate(read_log.replace("WANT", "'closed'").replace("SEND", "")) == "closed 4401\n"
        )


_WAIT_FOR_TEXT = """new Promise((resolve) => {
    const element = document.getElementById(ID);
    const done = () => { if (element.textContent.includes(WANT)) resolve(element.textContent); };
    new MutationObserver(done).observe(element, {childList: true, characterData: true, subtree: true});
    done();
})"""


async def _wait_for_text(tab: Any, element: str, text: str) -> str:
    with trio.fail_after(10):
        found: str = await tab.evaluate(
            _WAIT_FOR_TEXT.replace("ID", json.dumps(element)).replace("WANT", json.dumps(text))
        )
    return found


async def test_presence_page_shows_who_is_here_and_catches_up(start_server: StartServer) -> None:
    """The "who is here" page: each tab lists both names and sees joins and messages; a tab
    whose socket dropped reconnects with its position and shows what it missed, once."""
    from examples.presence import settings

    info = await start_server(
        "examples.presence.routing.channel_routing",
        layer=InMemoryChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"]),
    )
    async with open_browser() as browser:
        ann = await browser.new_tab(info.url + "/?room=lobby&name=ann")
        await _wait_for_text(ann, "here", "ann")
        bob = await browser.new_tab(info.url + "/?room=lobby&name=bob")
        assert await _wait_for_text(bob, "here", "ann, bob") == "ann, bob"
        await _wait_for_text(ann, "log", "bob joined")
        await bob.evaluate("socket.send('hello ann'); true")
        await _wait_for_text(ann, "log", "bob: hello ann")
        # The socket drops; the page's reconnect (a second later) waits until bob has spoken.
        await ann.evaluate("window.resume = connect; window.connect = () => {}; socket.close(); true")
        await _wait_for_text(bob, "log", "ann left")
        await bob.evaluate("socket.send('while you were away'); true")
        await _wait_for_text(bob, "log", "bob: while you were away")
        await ann.evaluate("window.connect = window.resume; connect(); true")
        assert "?recover=chat:" in await ann.evaluate("socket.url")
        log = await _wait_for_text(ann, "log", "bob: while you were away")
        assert log.count("while you were away") == 1 and log.count("hello ann") == 1
        assert await _wait_for_text(ann, "here", "ann, bob") == "ann, bob"
