"""trio-channels.js in headless Chromium: its in-page suite against a real server (issue 16)."""

from __future__ import annotations

import socket

import httpx
import trio

from ..browser import open_browser
from .conftest import StartServer

#: The in-page tests (tests/js/suite.mjs): listed here so that none can go missing unnoticed.
SUITE = 23


def _dead_port() -> int:
    """A port on which nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_client_in_the_browser(start_server: StartServer) -> None:
    """Backoff with a seeded jitter, queue bounds, dedupe by offset, recovery positions, request
    timeouts, close codes...: every test of tests/js/suite.mjs passes in Chromium."""
    info = await start_server("tests.e2e.client_app:routing")
    async with open_browser() as browser:
        tab = await browser.new_tab(f"{info.url}/suite/suite.html?dead=ws://127.0.0.1:{_dead_port()}/")
        with trio.fail_after(15):
            names = await tab.evaluate(
                "new Promise((resolve) => window.suite ? resolve(window.suite.names)"
                " : window.addEventListener('suite-ready', () => resolve(window.suite.names)))"
            )
        results = []
        for name in names:
            with trio.fail_after(14):
                results.append(await tab.evaluate(f"window.suite.run({name!r})"))
    failed = [f"{result['name']}:\n{result['error']}" for result in results if not result["ok"]]
    assert failed == [], "\n\n".join(failed)
    assert len(results) == SUITE
    unexpected = [error for error in tab.errors if "thrown by a listener, on purpose" not in error]
    assert unexpected == []


async def test_the_files_over_http(start_server: StartServer) -> None:
    """On a real socket: the module loads cross-origin (CORS), revalidates with 304."""
    info = await start_server(None)
    async with httpx.AsyncClient(base_url=info.url) as client:
        module = await client.get("/_trio_channels/client.mjs", headers={"origin": "http://elsewhere"})
        assert module.status_code == 200 and module.headers["access-control-allow-origin"] == "*"
        assert module.text.rstrip().endswith("export default TrioChannels;")
        again = await client.get(
            "/_trio_channels/client.mjs", headers={"if-none-match": module.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        head = await client.head("/_trio_channels/client.d.ts")
        assert head.status_code == 200 and int(head.headers["content-length"]) > 1000
