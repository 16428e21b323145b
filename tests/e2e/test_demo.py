"""The built-in demo, a chat on trio-channels.js, in headless Chromium (issue 16).

Two tabs chatting; presence in the other tab as one joins and leaves; history for a late
joiner; the server restarted (in memory: the page is told it cannot recover, and reloads the
room; on Redis with AOF: it recovers every message it missed, in order, once); a message typed
while the server was down goes out after the reconnect; and the screenshot in the docs.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from ..browser import open_browser
from ..redis_server import RedisServer
from .conftest import StartServer, ws_url
from .demo_helpers import chat, enter, here, messages, next_chat, say, wait_for, wait_for_text
from .processes import ROOT, Running, running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_demo_s_layer_keeps_history_and_tells_presence(start_server: StartServer) -> None:
    """serve() gives a layer it makes for the demo the demo's options, and only to the demo."""
    demo = await start_server(None)
    assert demo.layer.history_options("chat-lobby") is not None
    assert demo.layer.presence_events("chat-lobby") and demo.layer.presence_events("rooms")
    other = await start_server("tests.e2e.client_app:routing")
    assert other.layer.history_options("chat-lobby") is None
    assert not other.layer.presence_events("chat-lobby")


async def test_one_person_s_messages_reach_the_room_in_the_order_typed(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    """Regression: the demo's receive consumers ran side by side, so on Redis a quick typist's
    messages took their offsets (and reached the room) out of order."""
    info = await start_server(None, layer=redis_server.url)
    with trio.fail_after(30):
        async with open_websocket_url(ws_url(info.url, "/chat/lobby/?name=ann")) as ann:
            for n in range(60):
                await ann.send_message(chat(f"message {n}"))
            said = [(await next_chat(ann))["text"] for _ in range(60)]
    assert said == [f"message {n}" for n in range(60)]


async def test_two_tabs_chat_with_names_and_times(start_server: StartServer) -> None:
    """What one tab says the other shows, under the sender's name with the time."""
    info = await start_server(None)
    async with open_browser() as browser:
        ann, bob = await browser.new_tab(), await browser.new_tab()
        await enter(ann, info.url, "Ann")
        await enter(bob, info.url, "Bob")
        await say(bob, "hello Ann")
        await wait_for_text(ann, "log", "hello Ann")
        await say(ann, "hi Bob")
        await wait_for_text(bob, "log", "hi Bob")
        await wait_for(ann, "!document.querySelector('#log .pending')")
        shown = await messages(ann)
        assert [(m["name"], m["text"], m["pending"]) for m in shown] == [
            ("Bob", "hello Ann", False),
            ("Ann", "hi Bob", False),
        ]
        assert all(m["time"].endswith("Z") for m in shown)  # <time datetime="...">
        assert await ann.evaluate("document.querySelector('#log').getAttribute('aria-live')") == "polite"
        assert ann.errors == [] and bob.errors == []


async def test_presence_follows_joins_and_leaves_in_the_other_tab(start_server: StartServer) -> None:
    """Who is here, and the rooms' counts, change in Ann's tab as Bob comes and goes."""
    info = await start_server(None)
    async with open_browser() as browser:
        ann = await browser.new_tab()
        await enter(ann, info.url, "Ann")
        assert await here(ann) == ["Ann"]
        bob = await browser.new_tab()
        await enter(bob, info.url, "Bob")
        await wait_for_text(ann, "log", "Bob joined")
        await wait_for(ann, "document.querySelectorAll('#here li').length === 2")
        assert await here(ann) == ["Ann", "Bob"] and await here(bob) == ["Ann", "Bob"]
        lobby = "document.querySelector('#rooms a[href=\"#lobby\"] .count').textContent"
        await wait_for(ann, f"{lobby} === '2'")
        carol = await browser.new_tab()
        await enter(carol, info.url, "Carol", room="design")  # a new room, in everyone's list
        await wait_for(
            ann, "document.querySelector('#rooms a[href=\"#design\"] .count')?.textContent === '1'"
        )
        await bob.close()
        await wait_for_text(ann, "log", "Bob left")
        await wait_for(ann, "document.querySelectorAll('#here li').length === 1")
        assert await here(ann) == ["Ann"]
        await wait_for(ann, f"{lobby} === '1'")
        assert "Carol" not in await ann.evaluate("document.getElementById('log').innerText")


# Every element with text of its own: its colour against the background it is drawn on
# (opacity included), as WCAG computes contrast; returns those under 4.5:1.
_LOW_CONTRAST = """(() => {
    const rgba = (text) => {
        const [r, g, b, a = 1] = text.match(/[\\d.]+/g).map(Number);
        return [r, g, b, a];
    };
    const over = ([r, g, b, a], [R, G, B]) => [r * a + R * (1 - a), g * a + G * (1 - a), b * a + B * (1 - a)];
    const backdrop = (element) => {
        const layers = [];
        for (let at = element; at; at = at.parentElement) {
            const colour = rgba(getComputedStyle(at).backgroundColor);
            if (colour[3] > 0) layers.push(colour);
            if (colour[3] === 1) break;
        }
        return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255]);
    };
    const luminance = (rgb) => {
        const [r, g, b] = rgb.map((c) => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const low = [];
    for (const element of document.querySelectorAll("body *")) {
        const own = [...element.childNodes].some((node) => node.nodeType === 3 && node.textContent.trim());
        if (!own || !element.getClientRects().length || element.closest(".visually-hidden, .skip")) continue;
        let alpha = 1;
        for (let at = element; at; at = at.parentElement) alpha *= Number(getComputedStyle(at).opacity);
        const background = backdrop(element);
        const [r, g, b, a] = rgba(getComputedStyle(element).color);
        const text = over([r, g, b, a * alpha], background);
        const [light, dark] = [luminance(text), luminance(background)].sort((x, y) => y - x);
        const ratio = (light + 0.05) / (dark + 0.05);
        if (ratio < 4.5) low.push(`${element.tagName}.${element.className} "${element.textContent.trim().slice(0, 30)}": ${ratio.toFixed(2)}`);
    }
    return low;
})()"""

_UNLABELLED = """[...document.querySelectorAll("input, button")]
    .filter((control) => control.tagName === "INPUT" ? !control.labels.length : !control.textContent.trim())
    .map((control) => control.id || control.outerHTML)"""


async def test_the_page_is_accessible_in_light_and_dark(start_server: StartServer) -> None:
    """Every text at least 4.5:1 against its background in both colour schemes, every control
    labelled, live regions for the log and the status, no animation under reduced motion."""
    info = await start_server(None)
    async with open_browser() as browser:
        bob = await browser.new_tab()
        await enter(bob, info.url, "Bob")
        for scheme in ("light", "dark"):
            ann = await browser.new_tab()
            features = [
                {"name": "prefers-color-scheme", "value": scheme},
                {"name": "prefers-reduced-motion", "value": "reduce"},
            ]
            await ann.call("Emulation.setEmulatedMedia", features=features)
            await enter(ann, info.url, f"Ann {scheme}")
            await say(bob, f"hello {scheme}")
            await wait_for_text(ann, "log", f"hello {scheme}")
            await ann.evaluate("document.querySelector('details').open = true")
            assert await ann.evaluate(_LOW_CONTRAST) == [], scheme
            assert await ann.evaluate(_UNLABELLED) == []
            live = "[...document.querySelectorAll('[aria-live], [role=status]')].map((e) => e.id)"
            assert {"log", "status", "echo-result"} <= set(await ann.evaluate(live))
            animation = "getComputedStyle(document.querySelector('#log .msg')).animationName"
            assert await ann.evaluate(animation) == "none"
            await ann.close()


async def test_a_late_joiner_sees_the_history(start_server: StartServer) -> None:
    """A tab that joins after the talk shows it, in order, above its "you joined" line."""
    info = await start_server(None)
    async with open_browser() as browser:
        ann = await browser.new_tab()
        await enter(ann, info.url, "Ann", room="trio")
        for n in range(3):
            await say(ann, f"message {n}")
        await wait_for_text(ann, "log", "message 2")
        late = await browser.new_tab()
        await enter(late, info.url, "Dan", room="trio")
        assert [(m["name"], m["text"]) for m in await messages(late)] == [
            ("Ann", "message 0"),
            ("Ann", "message 1"),
            ("Ann", "message 2"),
        ]
        log = await late.evaluate("document.getElementById('log').innerText")
        assert log.index("message 2") < log.index("You joined #trio: the last 3 messages are above.")


@asynccontextmanager
async def demo_process(port: int, *args: str) -> AsyncIterator[Running]:
    async with running("run", "--bind", f"127.0.0.1:{port}", "--no-access-log", *args) as process:
        yield process


async def stop(process: Running) -> None:
    process.send_signal(signal.SIGTERM)  # its WebSockets are closed with 1001: "going away"
    with trio.fail_after(20):
        await process.wait()


async def test_an_in_memory_restart_is_reported_and_what_was_typed_meanwhile_goes_out() -> None:
    """The server restarts with an in-memory layer: the pages show "reconnecting", queue what is
    typed, heal by themselves, are told the history is gone (recover-failed: "epoch"), reload
    the room, and the queued message is delivered to both."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    async with open_browser() as browser:
        ann, bob = await browser.new_tab(), await browser.new_tab()
        async with demo_process(port) as first:
            await enter(ann, url, "Ann")
            await enter(bob, url, "Bob")
            await say(bob, "before the restart")
            await wait_for_text(ann, "log", "before the restart")
            await stop(first)
            await wait_for_text(ann, "status", "Reconnecting")
            await wait_for(bob, "window.demo.client.state !== 'open'")
            await say(ann, "typed while the server was down")
            await wait_for(ann, "document.querySelector('#log .pending')")
            assert "goes out when it is back" in await ann.evaluate(
                "document.getElementById('composer-hint').innerText"
            )
        async with demo_process(port):
            for tab in (ann, bob):
                await wait_for_text(tab, "status", "Connected", timeout=40)
                await wait_for_text(tab, "log", "could not be replayed")
            notice = "document.querySelector('#log .recover-failed').textContent"
            assert "the server lost its history" in await ann.evaluate(notice)
            await wait_for_text(bob, "log", "typed while the server was down")
            await wait_for(ann, "!document.querySelector('#log .pending')")
            for tab in (ann, bob):
                said = [(m["name"], m["text"]) for m in await messages(tab)]
                assert said == [("Bob", "before the restart"), ("Ann", "typed while the server was down")]
                assert tab.errors == []


async def test_on_redis_a_restarted_server_s_clients_recover_every_message_once() -> None:
    """The demo on Redis with AOF, two server processes. Ann's server stops while Bob's goes on
    (and Redis restarts too: its data survives); Bob says five things; Ann's server comes back
    on the same port, and her page recovers exactly those five, in order, without duplicates."""
    redis = RedisServer(appendonly=True).start()
    try:
        layer = ["--layer", redis.url]
        ports = _free_port(), _free_port()
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        async with open_browser() as browser, demo_process(ports[1], *layer):
            ann, bob = await browser.new_tab(), await browser.new_tab()
            async with demo_process(ports[0], *layer) as first:
                await enter(ann, urls[0], "Ann")
                await enter(bob, urls[1], "Bob")
                await say(bob, "before")
                await wait_for_text(ann, "log", "before")
                await stop(first)
            await wait_for_text(ann, "status", "Reconnecting")
            redis.stop()
            redis.start()
            for n in range(1, 6):
                await say(bob, f"missed {n}")
            await wait_for(bob, "!document.querySelector('#log .pending')", timeout=40)
            await wait_for_text(bob, "log", "missed 5")
            async with demo_process(ports[0], *layer):
                await wait_for_text(ann, "log", "5 messages you missed, recovered", timeout=40)
                said = [m["text"] for m in await messages(ann)]
                assert said == ["before", *(f"missed {n}" for n in range(1, 6))]
                assert "could not be replayed" not in await ann.evaluate(
                    "document.getElementById('log').innerText"
                )
                assert await ann.evaluate("window.demo.client.statistics().reconnects") >= 1
    finally:
        redis.cleanup()


# ----------------------------------------------------------------------------- the screenshot

SCREENSHOT = ROOT / "docs" / "_static" / "demo.png"
VIEWPORT = (1200, 760)
#: The PNG text chunk naming the demo files the screenshot was made from.
SOURCES_KEY = "trio-channels-demo-sources"


def demo_sources_digest() -> str:
    """A digest of the demo page's files: when it changes, the screenshot is out of date."""
    digest = hashlib.sha256()
    static = resources.files("trio_channels.demo").joinpath("static")
    for name in ("index.html", "demo.css", "demo.mjs"):
        digest.update(name.encode() + b"\0" + static.joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, checking its signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        at += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def with_text(data: bytes, key: str, value: str) -> bytes:
    """*data* (a PNG) with a tEXt chunk ``key: value`` after its header."""
    body = key.encode("latin-1") + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    header_end = 8 + 12 + 13  # the signature, then IHDR (13 bytes of data)
    return data[:header_end] + chunk + data[header_end:]


def png_text(data: bytes) -> dict[str, str]:
    found = {}
    for kind, body in png_chunks(data):
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
    return found


async def test_the_screenshot_shows_two_people_chatting(start_server: StartServer, tmp_path: Path) -> None:
    """The screenshot in README.md and docs/index.rst, made here: two tabs in the lobby. The
    page it shows is checked; ``UPDATE_SCREENSHOTS=1`` writes it to docs/_static/demo.png."""
    info = await start_server(None)
    async with open_browser() as browser:
        ann, bob = await browser.new_tab(), await browser.new_tab()
        for tab in (ann, bob):
            await tab.set_viewport(*VIEWPORT)
            await tab.call(
                "Emulation.setEmulatedMedia",
                features=[
                    {"name": "prefers-reduced-motion", "value": "reduce"},
                    {"name": "prefers-color-scheme", "value": "light"},
                ],
            )
        await enter(ann, info.url, "Ann")
        await enter(bob, info.url, "Bob")
        await wait_for_text(ann, "log", "Bob joined")
        conversation = [
            (ann, "Hi Bob! Have you tried the new browser client?"),
            (bob, "Yes: it reconnects by itself and catches up on what it missed."),
            (ann, "Stop the server and start it again: the page heals."),
            (bob, "And the last 50 messages are here when you join. Nice."),
        ]
        for tab, text in conversation:
            await say(tab, text)
            await wait_for_text(ann, "log", text)
        await wait_for(ann, "!document.querySelector('#log .pending')")
        assert [m["text"] for m in await messages(ann)] == [text for _, text in conversation]
        assert await here(ann) == ["Ann", "Bob"]
        assert await ann.evaluate("document.getElementById('status').textContent") == "Connected"
        await ann.evaluate("document.activeElement.blur(); true")  # no focus ring in the picture
        png = with_text(await ann.screenshot(), SOURCES_KEY, demo_sources_digest())
    width, height = struct.unpack(">II", png_chunks(png)[0][1][:8])
    assert (width, height) == VIEWPORT
    (tmp_path / "demo.png").write_bytes(png)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.write_bytes(png)


def test_the_committed_screenshot_is_a_png_of_the_current_demo() -> None:
    """docs/_static/demo.png is a sound PNG of the right size, made from today's demo page: a
    change to the page without a new screenshot fails here."""
    data = SCREENSHOT.read_bytes()
    chunks = png_chunks(data)
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == VIEWPORT
    assert 20_000 < len(data) < 1_000_000
    made_from = png_text(data).get(SOURCES_KEY)
    assert made_from == demo_sources_digest(), (
        "the demo's page changed since docs/_static/demo.png was made: run "
        "UPDATE_SCREENSHOTS=1 pytest tests/e2e/test_demo.py -k screenshot_shows, look at it, commit it"
    )
