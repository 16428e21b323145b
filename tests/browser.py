"""Headless Chromium driven over the Chrome DevTools Protocol (via trio-websocket).

The browser is Debian's ``chromium`` (the nox ``tests`` session installs it when missing; see
noxfile.py). If none can be found the browser tests fail with a message saying how to get
one: they never skip.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no Chromium found for the browser tests: run them through 'nox -s tests' (which installs "
        "Debian's chromium when it is missing), or 'apt-get install chromium'"
    )


@attrs.define(eq=False)
class Tab:
    """One page: navigate, evaluate JavaScript, and read the alerts it shows."""

    browser: Browser
    session_id: str
    target_id: str
    dialogs: trio.MemoryReceiveChannel[str]
    #: Uncaught JavaScript exceptions and console errors of the page, as text.
    errors: list[str] = attrs.Factory(list)
    _loaded: trio.Event = attrs.Factory(trio.Event)

    async def call(self, method: str, **params: Any) -> Any:
        return await self.browser.call(method, session_id=self.session_id, **params)

    async def goto(self, url: str) -> None:
        self._loaded = trio.Event()
        await self.call("Page.navigate", url=url)
        with trio.fail_after(15):
            await self._loaded.wait()

    async def wait_for_load(self) -> None:
        with trio.fail_after(15):
            await self._loaded.wait()

    def expect_load(self) -> None:
        """Call before an action that navigates (a form submit); then ``wait_for_load()``."""
        self._loaded = trio.Event()

    async def evaluate(self, expression: str) -> Any:
        """Evaluate *expression* (awaiting a promise) and return its value; JS errors raise."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def next_alert(self, timeout: float = 10) -> str:
        with trio.fail_after(timeout):
            return await self.dialogs.receive()

    async def set_viewport(self, width: int, height: int, *, scale: float = 1) -> None:
        """Lay the page out at *width* x *height* CSS pixels (for screenshots)."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=scale,
            mobile=False,
        )

    async def screenshot(self) -> bytes:
        """A PNG of the viewport (``Page.captureScreenshot``; the tab is brought to the front
        first, since a tab in the background may never draw a frame to capture)."""
        await self.call("Page.bringToFront")
        result = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        """Close the tab, as a user does (its WebSockets go away)."""
        self.browser._tabs.pop(self.session_id, None)
        await self.browser.call("Target.closeTarget", targetId=self.target_id)


@attrs.define(eq=False)
class Browser:
    connection: WebSocketConnection
    nursery: trio.Nursery
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    _pending: dict[int, Any] = attrs.Factory(dict)
    _tabs: dict[str, tuple[trio.MemorySendChannel[str], Tab]] = attrs.Factory(dict)

    async def call(self, method: str, *, session_id: str | None = None, **params: Any) -> Any:
        request_id = next(self._ids)
        request: dict[str, Any] = {"id": request_id, "method": method, "params": params}
        if session_id:
            request["sessionId"] = session_id
        done = trio.Event()
        self._pending[request_id] = done
        await self.connection.send_message(json.dumps(request))
        with trio.fail_after(15):
            await done.wait()
        reply = self._pending.pop(request_id)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    async def read_events(self) -> None:
        while True:
            try:
                message = json.loads(await self.connection.get_message())
            except ConnectionClosed:
                return
            if "id" in message:
                waiter = self._pending.get(message["id"])
                self._pending[message["id"]] = message
                if isinstance(waiter, trio.Event):
                    waiter.set()
                continue
            method, session = message.get("method"), message.get("sessionId")
            if session not in self._tabs:
                continue
            sender, tab = self._tabs[session]
            if method == "Page.javascriptDialogOpening":
                sender.send_nowait(message["params"]["message"])
                self.spawn(tab.call, "Page.handleJavaScriptDialog", accept=True)
            elif method == "Page.loadEventFired":
                tab._loaded.set()
            elif method == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                tab.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Runtime.consoleAPICalled" and message["params"].get("type") == "error":
                tab.errors.append(
                    " ".join(
                        str(arg.get("value", arg.get("description", ""))) for arg in message["params"]["args"]
                    )
                )

    def spawn(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run a call in the background; one still in flight when the browser closes is moot."""

        async def call() -> None:
            with contextlib.suppress(ConnectionClosed):
                await fn(*args, **kwargs)

        self.nursery.start_soon(call)

    async def new_tab(self, url: str | None = None) -> Tab:
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        sender, receiver = trio.open_memory_channel[str](100)
        tab = Tab(self, attached["sessionId"], target["targetId"], receiver)
        self._tabs[tab.session_id] = (sender, tab)
        await tab.call("Page.enable")
        await tab.call("Runtime.enable")
        if url:
            await tab.goto(url)
        return tab


@asynccontextmanager
async def open_browser() -> AsyncIterator[Browser]:
    """A headless Chromium for the duration of the block (killed afterwards)."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="trio-channels-chromium-", ignore_cleanup_errors=True) as profile:
        process = await trio.lowlevel.open_process(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: renderers die with it
        )
        assert process.stderr is not None
        try:
            buffer = b""
            with trio.fail_after(30):
                while b"DevTools listening on " not in buffer or not buffer.split(b"DevTools listening on ")[
                    1
                ].count(b"\n"):
                    chunk = await process.stderr.receive_some()
                    if not chunk:
                        raise RuntimeError(f"Chromium exited: {buffer.decode(errors='replace')[-2000:]}")
                    buffer += chunk
            url = buffer.split(b"DevTools listening on ")[1].split(b"\n")[0].decode().strip()
            async with trio.open_nursery() as nursery:

                async def drain_stderr() -> None:
                    assert process.stderr is not None
                    while await process.stderr.receive_some():
                        pass

                nursery.start_soon(drain_stderr)
                connection = await connect_websocket_url(nursery, url, max_message_size=64 * 1024 * 1024)
                browser = Browser(connection, nursery)
                nursery.start_soon(browser.read_events)
                try:
                    yield browser
                finally:
                    with trio.move_on_after(5, shield=True):
                        await connection.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with trio.move_on_after(10):
                await process.wait()
            await process.stderr.aclose()
