"""Start-up errors and shutdown of ``python -m trio_channels run``, as a user meets them.

Start-up: anything wrong (an address, a routing module, a settings module, a layer URL, an
ASGI app) is one line on stderr naming the bad value, exit status 2, and nothing said it was
listening. Shutdown: Ctrl+C cancels connections that wait for a request at once, lets requests
in flight finish within the grace period, and a second Ctrl+C stops at once with status 130.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from trio_channels.server import BindError, ServerConfig, serve

from ..browser import open_browser
from .demo_helpers import enter, wait_for_text
from .processes import ENV, ROOT, running, started

#: The issue's bar for Ctrl+C with idle connections open (old code: HEAD_TIMEOUT, 10 s).
PROMPT_EXIT = 1.0


def run_cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(ENV)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(pythonpath)])
    return subprocess.run(
        [sys.executable, "-m", "trio_channels", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a start-up error prints (a usage line from argparse is allowed above it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", "nothing may say it is serving"
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


# -- bind errors ----------------------------------------------------------------------------

BAD_BINDS = [
    ("nonsense", "write it as host:port"),
    ("127.0.0.1:99999", "the port must be between 0 and 65535"),
    ("203.0.113.1:8000", "cannot assign requested address"),
    ("unix:/nonexistent/dir/x.sock", "no such file or directory"),
    ("fd://99", "bad file descriptor"),
    ("no-such-host.invalid:8000", "host not found"),
]


@pytest.mark.parametrize("option", ["--bind", "--ws-bind"])
@pytest.mark.parametrize(("address", "reason"), [*BAD_BINDS, ("BUSY", "address already in use")])
def test_a_bind_failure_is_one_line_naming_the_address_and_exit_2(
    option: str, address: str, reason: str, busy_port: int
) -> None:
    """Every bind failure: one line naming the address and the reason, status 2, no 'listening'."""
    address = address.replace("BUSY", f"127.0.0.1:{busy_port}")
    args = ["run", option, address] + (["--bind", "127.0.0.1:0"] if option == "--ws-bind" else [])
    result = run_cli(*args, "-v", "2")  # -v 2: the worker's "listening" log would show
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert repr(address) in line
    assert reason in line


async def test_serve_raises_a_plain_bind_error_for_library_users(busy_port: int) -> None:
    """serve() raises BindError (an OSError) or ValueError naming the address, never a group."""
    with trio.fail_after(10):
        with pytest.raises(BindError) as failed:
            await serve(None, ServerConfig(bind=[f"127.0.0.1:{busy_port}"]))
        with pytest.raises(BindError) as unavailable:
            await serve(None, ServerConfig(bind=["127.0.0.1:0"], ws_bind=["203.0.113.1:8000"]))
    with pytest.raises(ValueError, match=r"bind '127.0.0.1:99999' is invalid"):
        ServerConfig(bind=["127.0.0.1:99999"])  # a spelling that cannot work fails when the config is made
    assert isinstance(failed.value, OSError)
    assert str(failed.value) == f"cannot listen on '127.0.0.1:{busy_port}': address already in use"
    assert failed.value.bind == f"127.0.0.1:{busy_port}"
    assert "'203.0.113.1:8000'" in str(unavailable.value)


async def test_serve_stops_when_its_shutdown_event_is_set() -> None:
    """serve(..., shutdown=event): the library's graceful stop (old code: Trio's Event has no
    truth value, so passing one raised NotImplementedError)."""
    shutdown = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(
                partial(serve, None, ServerConfig(bind=["127.0.0.1:0"]), shutdown=shutdown)
            )
            async with httpx.AsyncClient() as client:
                assert (await client.get(info.url + "/")).status_code == 200
            assert info.shutdown is shutdown
            shutdown.set()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*address_of(info.url))  # it stopped listening


# -- configuration errors -------------------------------------------------------------------

MODULES = {
    "broken_routing.py": "from trio_channels import route\n\nchannel_routing = [\n    route('http.request' consumer),\n]\n",
    "regex_routing.py": (
        "from trio_channels import route\n\n\nasync def consumer(message):\n    pass\n\n\n"
        "channel_routing = [\n    route('http.request', consumer, path=r'^/rooms/(?P<room>[a-z+/$'),\n]\n"
    ),
    "raising_routing.py": "import json\n\nchannel_routing = json.loads('not json')\n",
    "broken_settings.py": "CHANNEL_LAYERS = {'default': {'BACKEND': 'memory://',}\n",
    "config_settings.py": (
        "CHANNEL_LAYERS = {'default': {'BACKEND': 'layers.InMemoryChannelLayer', 'CONFIG': {'capacty': 5}}}\n"
    ),
    "broken_app.py": "async def app(scope, receive, send)\n    pass\n",
}

CONFIGURATION_ERRORS = [
    # (args, what the line must name); "{dir}" is where MODULES are
    (
        ["run", "broken_routing.channel_routing"],
        ["routing 'broken_routing.channel_routing'", "{dir}/broken_routing.py, line 4", "SyntaxError"],
    ),
    (
        ["run", "regex_routing.channel_routing"],
        [
            "route('http.request', regex_routing.consumer)",
            "path='^/rooms/(?P<room>[a-z+/$'",
            "not a valid regular expression",
            "{dir}/regex_routing.py, line 9",
        ],
    ),
    (
        ["run", "raising_routing.channel_routing"],
        ["routing 'raising_routing.channel_routing'", "JSONDecodeError", "{dir}/raising_routing.py, line 3"],
    ),
    (
        ["run", "myproject.nowhere.routing"],
        ["routing 'myproject.nowhere.routing' could not be imported: No module named 'myproject'"],
    ),
    (
        ["run", "--settings", "broken_settings"],
        ["settings module 'broken_settings'", "SyntaxError", "{dir}/broken_settings.py, line 1"],
    ),
    (["run", "--settings", "nowhere_settings"], ["settings module 'nowhere_settings' could not be imported"]),
    (["run", "--settings", "config_settings"], ["settings module 'config_settings'", "'capacty'"]),
    (["run", "--layer", "carrier-pigeon://x"], ["'carrier-pigeon://x'", "unknown scheme 'carrier-pigeon'"]),
    (["run", "--layer", "redis://localhost:99999/0"], ["'redis://localhost:99999/0'", "Port out of range"]),
    (
        ["run", "--layer", "redis://localhost:6379/abc"],
        ["'redis://localhost:6379/abc'", "the database 'abc' must be a number"],
    ),
    (["run", "--layer", "memory://?capacty=10"], ["'memory://?capacty=10'", "unknown option 'capacty'"]),
    (
        ["run", "--http-app", "nowhere.app:app"],
        ["ASGI app 'nowhere.app:app' could not be imported: No module named 'nowhere'"],
    ),
    (
        ["run", "--http-app", "tests.e2e.sample_app:nothing"],
        [
            "ASGI app 'tests.e2e.sample_app:nothing' could not be imported: 'tests.e2e.sample_app' has no 'nothing'"
        ],
    ),
    (
        ["run", "--http-app", "broken_app:app"],
        ["ASGI app 'broken_app:app'", "SyntaxError", "{dir}/broken_app.py, line 1"],
    ),
    (["run", "--http-app", "nodots"], ["ASGI app 'nodots' is not an import path like"]),
    (["run", "--certfile", "cert.pem"], ["certfile='cert.pem'", "keyfile=None"]),
    (
        ["run", "--certfile", "/nonexistent/cert.pem", "--keyfile", "/nonexistent/key.pem"],
        ["TLS certificate '/nonexistent/cert.pem'", "could not be loaded"],
    ),
]


@pytest.mark.parametrize(("args", "expected"), CONFIGURATION_ERRORS, ids=lambda value: " ".join(value)[:60])
def test_a_configuration_error_is_one_line_naming_the_value_and_exit_2(
    args: list[str], expected: list[str], tmp_path: Path
) -> None:
    """A bad routing/settings module, layer URL, ASGI app or TLS file: one line, where and why, status 2."""
    for name, source in MODULES.items():
        (tmp_path / name).write_text(source)
    result = run_cli(*args, "--bind", "127.0.0.1:0", pythonpath=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    for part in expected:
        assert part.format(dir=tmp_path) in line
    value = next((arg for arg in reversed(args) if not arg.startswith("-") and arg != "run"), None)
    assert value is not None and line.count(repr(value)) <= 1 and (value in line), "names the value once"


# -- shutdown -------------------------------------------------------------------------------


async def exit_time(process: trio.Process, signum: int = signal.SIGINT) -> float:
    """Send *signum*; seconds until the process exited (capped at 30 s)."""
    start = trio.current_time()
    process.send_signal(signum)
    with trio.fail_after(30):
        await process.wait()
    return trio.current_time() - start


async def request(address: tuple[str, int]) -> trio.SocketStream:
    """A connection that made one HTTP/1.1 request and read the whole response: it stays open."""
    client = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(client.send(h11.Request(method="GET", target="/", headers=[("host", "x")])))
    await stream.send_all(client.send(h11.EndOfMessage()))
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some())
        elif isinstance(event, h11.EndOfMessage):
            assert client.our_state is h11.DONE and client.their_state is h11.DONE  # keep-alive
            return stream


def address_of(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


@pytest.mark.parametrize("idle", ["silent", "half a head", "keep-alive", "websocket", "ws-bind silent"])
async def test_ctrl_c_does_not_wait_for_connections_without_a_request(idle: str) -> None:
    """Ctrl+C exits within 1 s with an idle connection open (old code: 10 s for the silent ones)."""
    ws_bind = idle.startswith("ws-bind")
    args = ["run", "--bind", "127.0.0.1:0"] + (["--ws-bind", "127.0.0.1:0"] if ws_bind else [])
    async with running(*args, marker="ws://" if ws_bind else " at ") as (process, where):
        url = f"ws://{where}" if ws_bind else where
        address = address_of(url)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(20):
                if idle == "websocket":
                    websocket = await nursery.start(
                        _hold_websocket, url.replace("http://", "ws://") + "/chat/lobby/"
                    )
                elif idle == "keep-alive":
                    held = await request(address)
                else:
                    held = await trio.open_tcp_stream(*address)
                    if idle == "half a head":
                        await held.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
                    # The listener accepts in order: once a later connection got its answer, the held
                    # one is being served (its handler is reading the head).
                    later = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                    stream = await trio.open_tcp_stream(*address)
                    await stream.send_all(later)
                    while await stream.receive_some():
                        pass
                    await stream.aclose()
            elapsed = await exit_time(process)
            nursery.cancel_scope.cancel()
        assert process.returncode == 0
        assert elapsed < PROMPT_EXIT, f"exited {elapsed:.2f} s after SIGINT"
        if idle == "websocket":
            assert websocket.closed.code == 1001
        else:
            await held.aclose()


async def _hold_websocket(url: str, *, task_status: trio.TaskStatus[object]) -> None:
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass


def established(port: int) -> int:
    """How many ESTABLISHED TCP connections have *port* at one end (from /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, remote, state = row.split()[1:4]
                if state == "01" and port in (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)):
                    count += 1
    return count


async def test_ctrl_c_with_a_browser_on_the_demo_exits_at_once() -> None:
    """The issue's case: Chromium on the demo, with an idle pre-connection: Ctrl+C exits within 1 s."""
    async with running("run", "--bind", "127.0.0.1:0") as (process, url):
        port = address_of(url)[1]
        async with open_browser() as browser:
            tab = await browser.new_tab()
            await enter(tab, url, "Ann")  # the page's socket is open
            with trio.fail_after(15):
                # A preconnect to the same server by another name: Chromium opens a connection and
                # sends nothing on it, as it does for the pages it expects the user to open.
                before = established(port)
                await tab.evaluate(
                    "(() => { const link = document.createElement('link'); link.rel = 'preconnect';"
                    f" link.href = '{url.replace('127.0.0.1', 'localhost')}/'; document.head.appendChild(link);"
                    " return true; })()"
                )
                while established(port) <= before:  # noqa: ASYNC110 - another process: no event to wait on
                    await trio.sleep(0.05)
            await tab.evaluate(
                "window.codes = []; window.demo.client.on('close', (event) => { window.codes.push(event.code); });"
                " true"
            )
            elapsed = await exit_time(process)
            # The server said "going away": the page says it is reconnecting (to a server now gone).
            await wait_for_text(tab, "status", "Reconnecting")
            codes = await tab.evaluate("window.codes")
        assert process.returncode == 0
        assert elapsed < PROMPT_EXIT, f"exited {elapsed:.2f} s after SIGINT"
        # The first close is the server's "going away"; the page then retries soon (1001 is a
        # "soon" code), and each retry against the stopped server closes with 1006.
        assert codes[:1] == [1001], codes
        assert set(codes[1:]) <= {1006}, codes


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_channels", *args]


SLOW_APP = ["run", "tests.e2e.lifecycle_app.channel_routing", "--bind", "127.0.0.1:0"]


async def test_ctrl_c_lets_a_request_in_flight_finish_within_the_grace_period() -> None:
    """A request in flight at Ctrl+C still gets its answer, new connections are refused, exit 0."""
    command = cli(*SLOW_APP, "--grace-period", "30")
    async with started(command, " at ") as (process, url):
        async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
            responses: list[httpx.Response] = []

            async def slow() -> None:
                responses.append(await client.get(url + "/slow/3"))

            nursery.start_soon(slow)
            await process.output.wait_for("slow request started")
            process.send_signal(signal.SIGINT)
            await process.output.wait_for("stopped listening")
            with pytest.raises(OSError):
                await trio.open_tcp_stream(*address_of(url))  # no longer accepting
        assert responses[0].status_code == 200 and responses[0].text == "done"
        with trio.fail_after(20):
            await process.wait()
        assert process.returncode == 0
        await process.output.ended()
        assert "Traceback" not in process.output.text


async def test_a_second_ctrl_c_stops_at_once_with_status_130() -> None:
    """While a 60 s request drains, a second Ctrl+C exits 130 at once, without a traceback."""
    command = cli(*SLOW_APP, "--grace-period", "60")
    async with started(command, " at ") as (process, url):
        async with httpx.AsyncClient(timeout=90) as client, trio.open_nursery() as nursery:

            async def slow() -> None:
                with pytest.raises(httpx.HTTPError):  # cut off: no answer
                    await client.get(url + "/slow/60")

            nursery.start_soon(slow)
            await process.output.wait_for("slow request started")
            process.send_signal(signal.SIGINT)
            # Signals do not queue: send the second only once the first was handled.
            await process.output.wait_for("shutting down gracefully")
            elapsed = await exit_time(process)
        assert process.returncode == 130
        assert elapsed < 10, f"exited {elapsed:.2f} s after the second SIGINT (grace period: 60 s)"
        await process.output.ended()
        assert "Traceback" not in process.output.text
