"""``python -m trio_channels`` as a user runs it: a real process on a real port."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .demo_helpers import chat, next_chat
from .processes import ENV, ROOT, running


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_channels", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
    )


async def test_demo_chat_between_rooms() -> None:
    """The README's first command: the page and the client it imports load, two clients in one
    room chat (under their names), another room hears nothing."""
    async with running("run", "--bind", "127.0.0.1:0") as (process, url):
        async with httpx.AsyncClient() as client:
            page = await client.get(url + "/")
            script = await client.get(url + "/demo/demo.mjs")
            library = await client.get(url + "/_trio_channels/client.mjs")
        assert page.status_code == 200 and "trio_channels demo" in page.text
        assert '<script type="module" src="/demo/demo.mjs">' in page.text
        assert 'import { Client } from "/_trio_channels/client.mjs";' in script.text
        assert library.status_code == 200 and "export default TrioChannels;" in library.text
        ws = url.replace("http://", "ws://")
        with trio.fail_after(20):
            async with (
                open_websocket_url(ws + "/chat/lobby/?name=alice") as alice,
                open_websocket_url(ws + "/chat/lobby/?name=bob") as bob,
                open_websocket_url(ws + "/chat/other/?name=carol") as carol,
            ):
                await alice.send_message(chat("hello lobby"))
                for member in (alice, bob):
                    said = await next_chat(member)
                    assert (said["name"], said["text"]) == ("alice", "hello lobby")
                await carol.send_message(chat("carol here"))
                assert (await next_chat(carol))["text"] == "carol here"
                with trio.move_on_after(0.5):
                    overheard = await next_chat(bob)
                    pytest.fail(f"bob heard another room: {overheard!r}")
            async with open_websocket_url(ws + "/echo/") as echo:
                await echo.send_message("hello world")
                assert await echo.get_message() == "hello world"
        assert process.returncode is None


async def test_sigterm_closes_websockets_with_1001_and_exits_0() -> None:
    """SIGTERM: open WebSockets are closed with 1001 and the process exits cleanly."""
    async with running("run", "--bind", "127.0.0.1:0") as (process, url):
        with trio.fail_after(20):
            async with open_websocket_url(url.replace("http://", "ws://") + "/chat/lobby/") as ws:
                process.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:  # the demo's join frames come first
                        await ws.get_message()
                assert closed.value.reason.code == 1001
            await process.wait()
        assert process.returncode == 0


async def test_settings_module_like_the_seed() -> None:
    """--settings reads CHANNEL_LAYERS (the seed's asgiref backend name works) and its ROUTING."""
    async with running("run", "--settings", "tests.e2e.sample_app", "--bind", "127.0.0.1:0") as (_, url):
        async with httpx.AsyncClient() as client:
            response = await client.get(url + "/any/path")
    assert response.text == "Hello world! You asked for /any/path"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "myproject.nowhere.routing"],
            "routing 'myproject.nowhere.routing' could not be imported: No module named 'myproject'",
        ),
        (
            ["run", "--settings", "nowhere_settings"],
            "settings module 'nowhere_settings' could not be imported",
        ),
        (["run", "--layer", "carrier-pigeon://x"], "unknown scheme 'carrier-pigeon'"),
        (["run", "--noworker"], "'run --noworker' needs a cross-process channel layer"),
        (["worker"], "'worker' needs a cross-process channel layer"),
    ],
)
def test_configuration_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """Bad routing, settings, layer URL, or in-memory without workers: one clear line, status 2."""
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_help_reads_well() -> None:
    """--help lists the commands and the main options."""
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for option in (
        "--layer",
        "--bind",
        "--ws-bind",
        "--noworker",
        "--http-timeout",
        "--proxy-headers",
        "--http-app",
        "--static-root",
    ):
        assert option in result.stdout
    top = run_cli("--help")
    assert "run" in top.stdout and "worker" in top.stdout
