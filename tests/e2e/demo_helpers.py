"""Driving the built-in demo from tests: its page in Chromium, or its protocol on a raw socket."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from ..browser import Tab

# Resolves true once CONDITION holds (checked on every DOM change), false after 10 s: a wait
# longer than one DevTools call is a loop of these.
_WAIT = """new Promise((resolve) => {
    const check = () => { try { return Boolean(CONDITION); } catch (error) { return false; } };
    if (check()) { resolve(true); return; }
    const observer = new MutationObserver(() => {
        if (check()) { observer.disconnect(); clearTimeout(timer); resolve(true); }
    });
    observer.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
    const timer = setTimeout(() => { observer.disconnect(); resolve(check()); }, 10000);
})"""


async def wait_for(tab: Tab, condition: str, *, timeout: float = 20) -> None:
    """Wait until the JavaScript *condition* holds in *tab* (it is re-checked as the DOM changes)."""
    with trio.fail_after(timeout):
        while not await tab.evaluate(_WAIT.replace("CONDITION", condition)):
            pass


def text_of(element_id: str) -> str:
    return f"document.getElementById({json.dumps(element_id)}).innerText"


async def wait_for_text(tab: Tab, element_id: str, text: str, *, timeout: float = 20) -> str:
    """Wait until the element's text holds *text*; return its text."""
    await wait_for(tab, f"{text_of(element_id)}.includes({json.dumps(text)})", timeout=timeout)
    found: str = await tab.evaluate(text_of(element_id))
    return found


async def enter(tab: Tab, url: str, name: str, room: str = "lobby") -> None:
    """Open the demo in *room* and answer its name prompt as a person would; wait until joined."""
    await tab.goto(f"{url}/#{room}")
    await wait_for(tab, "document.getElementById('name-dialog').open")
    await tab.evaluate(
        f"document.getElementById('name-input').value = {json.dumps(name)};"
        " document.getElementById('name-form').requestSubmit(); true"
    )
    await wait_for_text(tab, "log", f"You joined #{room}")
    await wait_for(tab, "window.demo.client.state === 'open'")


async def say(tab: Tab, text: str) -> None:
    """Type *text* in the message box and press Send."""
    await tab.evaluate(
        f"document.getElementById('composer-input').value = {json.dumps(text)};"
        " document.getElementById('composer').requestSubmit(); true"
    )


async def messages(tab: Tab) -> list[dict[str, Any]]:
    """The messages in the log: sender, text, whether still pending, and the time's datetime."""
    found: list[dict[str, Any]] = await tab.evaluate(
        """[...document.querySelectorAll('#log .msg')].map((item) => ({
            name: item.querySelector('.who').textContent,
            text: item.querySelector('.text').textContent,
            pending: item.classList.contains('pending'),
            time: item.querySelector('time').dateTime,
        }))"""
    )
    return found


async def here(tab: Tab) -> list[str]:
    """The names in "Here now", as shown."""
    found: list[str] = await tab.evaluate(
        "[...document.querySelectorAll('#here li')].map((item) => item.firstChild.textContent)"
    )
    return found


async def next_chat(ws: WebSocketConnection) -> dict[str, Any]:
    """The payload of the next chat message on a raw demo socket (joins, snapshots and presence
    events are skipped)."""
    while True:
        frame = json.loads(await ws.get_message())
        if frame.get("stream") == "chat" and "payload" in frame and "reply" not in frame:
            payload: dict[str, Any] = frame["payload"]
            return payload


def chat(text: str) -> str:
    """A chat frame in the demo's protocol."""
    return json.dumps({"stream": "chat", "payload": {"text": text}})
