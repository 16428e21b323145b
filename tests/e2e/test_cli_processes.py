"""``--processes N``: a supervisor of N real server processes on one port, on a real Redis (issue 14 §1).

Which process holds a connection is told by its reply channel's process prefix
(``interface.<random>!``, one per process), which ``tests.e2e.processes_app`` reports. The
kernel's spreading of connections over the processes is not round robin, so the tests open
connections until they see what they need (within a cap), rather than expecting an exact split.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from ..redis_server import RedisServer
from .conftest import ws_url
from .processes import ENV, ROOT, Output, running

APP = "tests.e2e.processes_app:routing"
FREE = ("--bind", "127.0.0.1:0")
#: How many WebSockets a test may open while it waits for the kernel to pick every process.
MAX_MEMBERS = 300


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_channels", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=ROOT,
        timeout=60,
    )


def started_pids(output: Output) -> dict[int, int]:
    """The latest pid of each child, from the supervisor's "started process N (pid P)" lines."""
    text = output.stderr.decode(errors="replace")
    return {int(index): int(pid) for index, pid in re.findall(r"started process (\d+) \(pid (\d+)\)", text)}


def address_of(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


@attrs.frozen
class Member:
    ws: WebSocketConnection
    prefix: str


async def join(nursery: trio.Nursery, url: str, *, count: int = 0, processes: int = 1) -> list[Member]:
    """Open WebSockets to the chat room, one after another, until at least *count* are open and
    they are held by at least *processes* processes (each says which in its first frame).

    One at a time, as independent clients arrive: a burst opened all at once tends to land on
    one process (the one awake first accepts what is queued; see docs/deployment.rst).
    """
    members: list[Member] = []
    while len(members) < count or len({member.prefix for member in members}) < processes:
        assert len(members) < MAX_MEMBERS, Counter(member.prefix for member in members)
        ws = await connect_websocket_url(nursery, ws_url(url, "/chat/lobby/"))
        members.append(Member(ws, json.loads(await ws.get_message())["prefix"]))
    return members


async def leave(members: list[Member]) -> None:
    """Close the members' WebSockets (a closing handshake each, all at once)."""
    async with trio.open_nursery() as closers:
        for member in members:
            closers.start_soon(member.ws.aclose)


async def test_three_processes_share_one_port_and_a_chat_spans_them(redis_server: RedisServer) -> None:
    """--processes 3: one banner for one port; WebSockets opened one after another land on every
    process; a message to the room reaches the members on all three."""
    args = ("run", APP, *FREE, "--layer", redis_server.url, "--processes", "3")
    async with running(*args) as (process, url):
        output = process.output
        assert output.text.count(" serving ") == 1, "one banner for all the processes"
        assert f"at {url} (RedisChannelLayer, 3 processes); press Ctrl+C to stop" in output.text
        assert len(set(started_pids(output).values())) == 3
        async with httpx.AsyncClient(timeout=30, headers={"connection": "close"}) as client:
            for _ in range(5):
                assert (await client.get(url + "/who")).json()["prefix"].startswith("interface.")
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                members = await join(nursery, url, count=30, processes=3)
                await members[0].ws.send_message("hello, every process")
                for member in members:
                    assert await member.ws.get_message() == "hello, every process"
                await leave(members)
        assert process.returncode is None


async def test_a_killed_process_is_restarted_and_new_connections_succeed(redis_server: RedisServer) -> None:
    """kill -9 one child: the supervisor logs it and starts another (logged again once ready);
    connections keep succeeding, and the new process serves the chat too."""
    args = ("run", APP, *FREE, "--layer", redis_server.url, "--processes", "3")
    async with running(*args) as (process, url):
        output = process.output
        victim = started_pids(output)[2]
        os.kill(victim, signal.SIGKILL)
        await output.wait_for(f"process 2 (pid {victim}) was killed by SIGKILL; restarting it in 0.5 s")
        await output.wait_for(" is ready again")
        replacement = started_pids(output)[2]
        assert replacement != victim
        assert f"process 2 (pid {replacement}) is ready again" in output.text
        async with httpx.AsyncClient(timeout=30, headers={"connection": "close"}) as client:
            for _ in range(20):
                assert (await client.get(url + "/who")).status_code == 200
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                members = await join(nursery, url, count=10, processes=3)
                await members[-1].ws.send_message("still one chat")
                for member in members:
                    assert await member.ws.get_message() == "still one chat"
                await leave(members)
        assert process.returncode is None


async def test_sigterm_drains_every_process(redis_server: RedisServer) -> None:
    """SIGTERM to the supervisor: every process closes its WebSockets with 1001, a request in
    flight still gets its answer, new connections are refused, and the supervisor exits 0."""
    args = ("run", APP, *FREE, "--layer", redis_server.url, "--processes", "3", "--grace-period", "30")
    async with running(*args) as (process, url):
        output = process.output
        with trio.fail_after(90):
            async with httpx.AsyncClient(timeout=60) as client, trio.open_nursery() as nursery:
                members = await join(nursery, url, count=20, processes=3)
                responses: list[httpx.Response] = []

                async def slow() -> None:
                    responses.append(await client.get(url + "/slow/3"))

                nursery.start_soon(slow)
                await output.wait_for("slow request started")
                process.send_signal(signal.SIGTERM)
                codes = Counter()
                for member in members:
                    with pytest.raises(ConnectionClosed) as closed:
                        await member.ws.get_message()
                    codes[closed.value.reason.code] += 1
                assert codes == Counter({1001: len(members)})
                await output.wait_for_count("stopped listening", 3)
                with pytest.raises(OSError):
                    await trio.open_tcp_stream(*address_of(url))
                await leave(members)
        assert [(response.status_code, response.text) for response in responses] == [(200, "done")]
        with trio.fail_after(30):
            await process.wait()
        assert process.returncode == 0
        await output.ended()
        assert "Traceback" not in output.text
        assert output.text.count("received SIGTERM: shutting down gracefully") == 3


async def test_a_second_ctrl_c_stops_every_process_at_once_with_status_130(redis_server: RedisServer) -> None:
    """While a 60 s request drains, a second SIGINT to the supervisor stops them all: status 130."""
    args = ("run", APP, *FREE, "--layer", redis_server.url, "--processes", "2", "--grace-period", "60")
    async with running(*args) as (process, url):
        output = process.output
        async with httpx.AsyncClient(timeout=90) as client, trio.open_nursery() as nursery:

            async def slow() -> None:
                with pytest.raises(httpx.HTTPError):  # cut off: no answer
                    await client.get(url + "/slow/60")

            nursery.start_soon(slow)
            await output.wait_for("slow request started")
            process.send_signal(signal.SIGINT)
            # Signals do not queue: send the second once every child handled the first.
            await output.wait_for_count("received SIGINT: shutting down gracefully", 2)
            process.send_signal(signal.SIGINT)
            with trio.fail_after(20):
                await process.wait()
        assert process.returncode == 130
        await output.ended()
        assert "Traceback" not in output.text


async def test_a_crash_loop_gives_up_with_one_line_and_status_1(redis_server: RedisServer) -> None:
    """Five exits within 10 s (all three children killed, then two of their replacements): the
    supervisor stops the rest and exits 1 with one error line, the last thing it prints."""
    args = ("run", APP, *FREE, "--layer", redis_server.url, "--processes", "3")
    async with running(*args) as (process, _):
        output = process.output
        first = started_pids(output)
        for pid in first.values():
            os.kill(pid, signal.SIGKILL)
        await output.wait_for_count("started process", 6)
        replacements = [pid for pid in started_pids(output).values() if pid not in first.values()]
        for pid in replacements[:2]:
            os.kill(pid, signal.SIGKILL)
        with trio.fail_after(30):
            await process.wait()
        assert process.returncode == 1
        await output.ended()
    lines = output.stderr.decode().strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert errors == [lines[-1]], output.text
    assert re.fullmatch(
        r"python -m trio_channels run: error: process \d \(pid \d+\) was killed by SIGKILL: "
        r"5 exits within 10 s, a crash loop; giving up",
        errors[0],
    )
    assert "Traceback" not in output.text


def test_a_process_failing_at_start_up_gives_up_with_status_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The supervisor checked the routing, but its children cannot import it: one line from the
    supervisor, the last; status 2; nothing said it was serving."""
    imports = tmp_path / "imports"
    env = {"PROCESSES_APP_IMPORTS": str(imports)}
    result = run_cli("run", APP, *FREE, "--layer", redis_server.url, "--processes", "2", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert re.fullmatch(
        r"python -m trio_channels run: error: process \d \(pid \d+\) exited with status 2 before it "
        r"was ready; giving up",
        lines[-1],
    ), result.stderr
    assert len([line for line in lines if "giving up" in line]) == 1
    assert " serving " not in result.stderr and "Traceback" not in result.stderr
    assert len(imports.read_text().splitlines()) >= 2, "the supervisor imported it, then a child"


@pytest.fixture
def busy_port() -> int:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--processes", "3"], {}, "--processes 3 needs a cross-process channel layer: the in-memory layer "
         "lives in one process, so groups would not span the processes"),
        (["--processes", "0"], {}, "--processes 0 (one per core) needs a cross-process channel layer"),
        ([], {"TRIO_CHANNELS_PROCESSES": "2"}, "--processes 2 needs a cross-process channel layer"),
        ([], {"TRIO_CHANNELS_PROCESSES": "many"},
         "environment variable TRIO_CHANNELS_PROCESSES='many' is invalid for --processes"),
        (["--processes", "-1"], {}, "--processes must be 0 (one per core) or more, got -1"),
        (["--processes", "2", "--reload"], {}, "--reload runs one process: it cannot be combined with --processes 2"),
        (["nowhere.routing", "--processes", "2", "--layer", "redis://127.0.0.1:1/0"], {},
         "routing 'nowhere.routing' could not be imported"),
        (["--processes", "2", "--layer", "redis://127.0.0.1:1/0", "--bind", "127.0.0.1:BUSY"], {},
         "cannot listen on '127.0.0.1:BUSY': address already in use"),
    ],
)  # fmt: skip
def test_start_up_errors_are_one_line_and_status_2(
    args: list[str], env: dict[str, str], message: str, busy_port: int
) -> None:
    """In memory, a bad N, --reload, a bad routing, a taken port: one line, exit 2, no child started."""
    args = [arg.replace("BUSY", str(busy_port)) for arg in args]
    result = run_cli("run", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, result.stderr
    assert message.replace("BUSY", str(busy_port)) in lines[0]
    assert "started process" not in result.stderr


async def test_processes_0_is_one_per_core(redis_server: RedisServer) -> None:
    """--processes 0 starts one process per core this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    async with running("run", APP, *FREE, "--layer", redis_server.url, "--processes", "0") as (process, url):
        assert (await httpx.AsyncClient().get(url + "/who")).status_code == 200
        if cores > 1:
            assert f"(RedisChannelLayer, {cores} processes)" in process.output.text
            assert len(started_pids(process.output)) == cores
        else:
            assert "started process" not in process.output.text  # one process: it serves itself


async def test_worker_processes(redis_server: RedisServer) -> None:
    """worker --processes 2: one banner; the interface's requests are answered by those workers;
    SIGTERM stops both, status 0."""
    layer = ("--layer", redis_server.url)
    async with (
        running("run", APP, "--noworker", *FREE, *layer) as (_, url),
        running("worker", APP, *layer, "--processes", "2", marker="press Ctrl+C") as (workers, _),
    ):
        output = workers.output
        assert "(RedisChannelLayer, 2 processes); press Ctrl+C to stop" in output.text
        assert output.text.count("press Ctrl+C") == 1
        pids = set(started_pids(output).values())
        assert len(pids) == 2
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(10):
                assert (await client.get(url + "/who")).json()["pid"] in pids
        workers.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await workers.wait()
        assert workers.returncode == 0


async def test_unix_and_websocket_only_sockets_are_shared_and_removed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """--bind unix:PATH and --ws-bind are bound once too; the socket file goes when the supervisor does."""
    path = tmp_path / "app.sock"
    args = ("run", APP, "--bind", f"unix:{path}", "--ws-bind", "127.0.0.1:0", "--layer", redis_server.url)
    async with running(*args, "--processes", "2") as (process, where):
        assert where == f"http://unix:{path}"
        ws = re.findall(r" at (ws://\S+) ", process.output.text)
        assert len(ws) == 1, process.output.text
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            assert (await client.get("http://localhost/who")).status_code == 200
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                members = await join(nursery, ws[0], count=1)
                await members[0].ws.send_message("on the ws-bind socket")
                assert await members[0].ws.get_message() == "on the ws-bind socket"
                await leave(members)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        assert process.returncode == 0
    assert not path.exists()


async def test_processes_stop_when_the_supervisor_is_killed(redis_server: RedisServer) -> None:
    """kill -9 the supervisor: each child sees its control socket close and shuts down
    gracefully, so no orphan keeps the port."""
    args = ("run", APP, *FREE, "--layer", redis_server.url, "--processes", "2")
    async with running(*args) as (process, url):
        output = process.output
        process.process.kill()
        await output.wait_for_count("the supervisor is gone; shutting down gracefully", 2)
        await output.ended()  # every child exited: they held its output pipes
        with pytest.raises(OSError):
            await trio.open_tcp_stream(*address_of(url))
