"""A load generator for any server speaking the benchmark app's protocol (see benchmarks/app.py).

    python -m benchmarks.loadgen http://127.0.0.1:8000 --scenario echo [--pid SERVER_PID]

Scenarios (each returns one dict, printed as one JSON line):

* ``http``: keep-alive ``GET /hello`` loops on N connections -> requests/s;
* ``echo``: N WebSockets on ``/echo/``, each sending and awaiting its echo -> messages/s and
  p50/p99 round trip;
* ``fanout``: N WebSockets in one ``/chat/<room>/``; one of them broadcasts while at most
  ``window`` broadcasts are not yet delivered to every member -> deliveries/s;
* ``burst``: N members; one sends K broadcasts as fast as it can; every member counts what it
  got until quiescence -> lost deliveries (of N x K) and deliveries/s;
* ``idle``: open N idle WebSockets -> server RSS per socket, RSS 10 s after they all closed,
  Trio tasks per socket (servers that report them);
* ``connects``: N concurrent open + close-handshake loops -> connects/s;
* ``storm``: open N WebSockets, then every one sends one frame at the same moment -> how many
  were answered, closed by the server (by code) or left unanswered within a bounded wait.

The WebSocket client is ``benchmarks/wsclient.py`` (wsproto, no task of its own). Server-side
figures (CPU share, RSS, tasks) need the server's pid (a :class:`Probe`); CPU shares are of one
core over the measured window. Traffic goes only to the URL given, meant to be a loopback
address; every loop is bounded in time and count and the run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from wsproto.utilities import ProtocolError

from ._instrument import raise_fd_limit
from .wsclient import Client, Closed, Rejected

REQUEST = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
OPEN_CONCURRENCY = 100  # handshakes in flight while opening many sockets (listen backlogs are ~100)


@attrs.define
class Probe:
    """The server process seen from outside: CPU, RSS and (if it reports them) Trio tasks."""

    pid: int | None = None
    tasks: Callable[[], Awaitable[int | None]] | None = None
    others: dict[str, int] = attrs.Factory(dict)  # helper processes (redis-server) whose CPU to report
    #: The server is a supervisor (``--processes N``): its CPU and RSS are those of its whole
    #: process tree (the supervisor and its children).
    tree: bool = False

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rpartition(")")[2].split()
        except FileNotFoundError:  # a child that exited in the meantime
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def _pids(self) -> list[int]:
        """The server's pid, and with ``tree`` its descendants' (from the parents in /proc)."""
        assert self.pid
        if not self.tree:
            return [self.pid]
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as file:
                        parents[int(entry)] = int(file.read().rpartition(")")[2].split()[1])
                except (FileNotFoundError, ProcessLookupError):
                    continue
        found = [self.pid]
        for pid in found:  # grows while it is walked: breadth first
            found.extend(child for child, parent in parents.items() if parent == pid)
        return found

    def cpu_s(self) -> dict[str, float]:
        found = {"server": sum(self._cpu(pid) for pid in self._pids())} if self.pid else {}
        found.update((name, self._cpu(pid)) for name, pid in self.others.items())
        return found

    def rss_kib(self) -> int | None:
        if not self.pid:
            return None
        total = None
        for pid in self._pids():
            try:
                with open(f"/proc/{pid}/status") as file:
                    for line in file:
                        if line.startswith("VmRSS:"):
                            total = (total or 0) + int(line.split()[1])
            except FileNotFoundError:
                continue
        return total

    async def task_count(self) -> int | None:
        return await self.tasks() if self.tasks is not None else None


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@attrs.define
class Window:
    """A measured interval: wall time, and the CPU share the server and this process used in it."""

    probe: Probe
    started: float = 0.0
    cpu: dict[str, float] = attrs.Factory(dict)
    own: float = 0.0

    def begin(self) -> None:
        self.started, self.cpu, self.own = time.perf_counter(), self.probe.cpu_s(), _own_cpu_s()

    def end(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        cpu = self.probe.cpu_s()
        result: dict[str, Any] = {"elapsed_s": round(elapsed, 3)}
        short = elapsed < 0.25  # CPU time comes in 10 ms ticks: a share over less means nothing
        for name, value in cpu.items():
            result[f"{name}_cpu"] = None if short else round((value - self.cpu[name]) / elapsed, 2)
        result["loadgen_cpu"] = None if short else round((_own_cpu_s() - self.own) / elapsed, 2)
        return result


def _split(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port, f"url {url!r} needs a host and a port"
    return parts.hostname, parts.port


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * fraction) - 1))]


class Barrier:
    """*n* tasks wait until all have arrived (a Trio ``Event`` woken by the last)."""

    def __init__(self, n: int) -> None:
        self.n, self.arrived, self.event = n, 0, trio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self.event.set()
        await self.event.wait()


# --- HTTP ---------------------------------------------------------------------------------------


async def _http_loop(host: str, port: int, ready: Barrier, stop: trio.Event, counts: list[int]) -> None:
    """Keep-alive requests until *stop*; reconnect when the server ends a connection (Hypercorn
    closes one after 1,000 requests), counting reconnects in ``counts[1]``."""
    stream = await trio.open_tcp_stream(host, port)
    buffer = b""
    try:
        await ready.arrive()
        while not stop.is_set():
            await stream.send_all(REQUEST)
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError("server closed the connection before answering")
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"unexpected response {head[:40]!r}")
            length, close = -1, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length < 0:
                raise ConnectionError(
                    f"response without content-length (this client reads no other framing): {head!r}"
                )
            while len(buffer) < length:
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError("server closed the connection mid-body")
                buffer += data
            if not buffer.startswith(b"Hello world! You asked for /hello"):
                raise ConnectionError(f"unexpected body {buffer[:40]!r}")
            buffer = buffer[length:]
            counts[0] += 1
            if close:
                await stream.aclose()
                stream, buffer = await trio.open_tcp_stream(host, port), b""
                counts[1] += 1
    finally:
        await stream.aclose()


async def scenario_http(url: str, probe: Probe, *, connections: int, seconds: float) -> dict[str, Any]:
    host, port = _split(url)
    counts, ready, stop, window = [0, 0], Barrier(connections + 1), trio.Event(), Window(probe)
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_http_loop, host, port, ready, stop, counts)
        await ready.arrive()
        window.begin()
        await trio.sleep(seconds)
        stop.set()
    measured = window.end()
    return {"requests_per_s": round(counts[0] / measured["elapsed_s"], 1), "requests": counts[0],
            "reconnects": counts[1], "connections": connections, **measured}  # fmt: skip


# --- WebSocket ----------------------------------------------------------------------------------


async def scenario_echo(url: str, probe: Probe, *, connections: int, seconds: float) -> dict[str, Any]:
    host, port = _split(url)
    latencies: list[float] = []
    ready, stop, window = Barrier(connections + 1), trio.Event(), Window(probe)

    async def client() -> None:
        socket = await Client.connect(host, port, "/echo/")
        try:
            await ready.arrive()
            while not stop.is_set():
                sent = time.perf_counter()
                await socket.send("hello")
                if await socket.receive() != "hello":
                    raise AssertionError("echo answered something else")
                latencies.append(time.perf_counter() - sent)
        finally:
            await socket.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(client)
        await ready.arrive()
        window.begin()
        await trio.sleep(seconds)
        stop.set()
    measured = window.end()
    ordered = sorted(latencies)
    return {
        "messages_per_s": round(len(latencies) / measured["elapsed_s"], 1),
        "p50_ms": round(_percentile(ordered, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(ordered, 0.99) * 1000, 2),
        "messages": len(latencies),
        "connections": connections,
        **measured,
    }


def _room() -> str:
    return f"/chat/bench{time.monotonic_ns() % 10**9}/"


async def _open_room(
    nursery: trio.Nursery, host: str, port: int, members: int, on_message: Callable[[int, str], None]
) -> tuple[list[Client], Counter[int]]:
    """Open *members* sockets in one new room; each one's messages go to *on_message(index, text)*.

    The readers run in *nursery*: cancel it, then :func:`_close_all` the clients. Returns the
    clients (index order) and a counter of the close codes of members the server closed.
    Membership is in place once every handshake completed plus a short settle: our server
    adds to the group before it accepts, the bare servers just after.
    """
    room, clients, closed = _room(), [None] * members, Counter[int]()
    limiter, opened = trio.CapacityLimiter(OPEN_CONCURRENCY), Barrier(members + 1)

    async def member(index: int) -> None:
        async with limiter:
            socket = await Client.connect(host, port, room)
        clients[index] = socket
        await opened.arrive()
        try:
            while True:
                on_message(index, await socket.receive())
        except Closed as why:
            closed[why.code] += 1

    for index in range(members):
        nursery.start_soon(member, index)
    await opened.arrive()
    await trio.sleep(0.2)
    return clients, closed  # type: ignore[return-value]


async def _close_all(clients: list[Client]) -> None:
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.aclose, 2.0)


async def scenario_fanout(
    url: str, probe: Probe, *, members: int, seconds: float, window_size: int
) -> dict[str, Any]:
    host, port = _split(url)
    counts: Counter[int] = Counter()
    complete: set[int] = set()
    state = {"delivered": 0, "prefix": 0}  # prefix: broadcasts 0..prefix-1 reached every member
    progress = [trio.Event()]
    window = Window(probe)

    def on_message(index: int, text: str) -> None:
        number = int(text[1:])
        counts[number] += 1
        state["delivered"] += 1
        if counts[number] == members:
            complete.add(number)
            while state["prefix"] in complete:
                complete.discard(state["prefix"])
                state["prefix"] += 1
            progress[0].set()
            progress[0] = trio.Event()

    async with trio.open_nursery() as nursery:
        clients, closed = await _open_room(nursery, host, port, members, on_message)
        sender, sent = clients[0], 0
        window.begin()
        stop_at = trio.current_time() + seconds
        while trio.current_time() < stop_at:  # never cancel a send halfway through a frame
            if sent - state["prefix"] >= window_size:
                with trio.move_on_at(stop_at):
                    await progress[0].wait()
                continue
            await sender.send(f"m{sent}")
            sent += 1
        delivered_in_window = state["delivered"]
        measured = window.end()
        with trio.move_on_after(5) as drain:  # let what is in flight arrive, to count losses
            while state["prefix"] < sent:
                await progress[0].wait()
        stalled = drain.cancelled_caught
        nursery.cancel_scope.cancel()
    await _close_all(clients)
    return {
        "deliveries_per_s": round(delivered_in_window / measured["elapsed_s"], 1),
        "broadcasts": sent,
        "lost": sent * members - state["delivered"],
        "stalled": stalled,
        "closed_by_server": sum(closed.values()),
        "members": members,
        "window": window_size,
        **measured,
    }


async def scenario_burst(
    url: str, probe: Probe, *, members: int, messages: int, quiet: float, timeout: float
) -> dict[str, Any]:
    host, port = _split(url)
    received = [0] * members
    state = {"total": 0, "last": 0.0}
    progress = [trio.Event()]
    expected = members * messages
    window = Window(probe)

    def on_message(index: int, text: str) -> None:
        received[index] += 1
        state["total"] += 1
        state["last"] = time.perf_counter()
        progress[0].set()
        progress[0] = trio.Event()

    send_s: float | None = None
    async with trio.open_nursery() as nursery:
        clients, closed = await _open_room(nursery, host, port, members, on_message)
        window.begin()
        with trio.move_on_after(timeout) as bounded:
            for number in range(messages):
                await clients[0].send(f"m{number}")
            send_s = time.perf_counter() - window.started
            # Quiescence: everything arrived, or nothing more for `quiet` seconds.
            while state["total"] < expected:
                with trio.move_on_after(quiet) as silence:
                    await progress[0].wait()
                if silence.cancelled_caught:
                    break
        measured = window.end()
        nursery.cancel_scope.cancel()
    await _close_all(clients)
    busy = (state["last"] - window.started) if state["total"] else measured["elapsed_s"]
    return {
        "lost": expected - state["total"],
        "delivered": state["total"],
        "expected": expected,
        "deliveries_per_s": round(state["total"] / busy, 1) if busy > 0 else 0.0,
        "send_s": round(send_s, 3) if send_s is not None else None,
        "timed_out": bounded.cancelled_caught,
        "members_short": sum(1 for count in received if count < messages),
        "closed_by_server": sum(closed.values()),
        "members": members,
        "messages": messages,
        **measured,
    }


async def _open_many(
    nursery: trio.Nursery, host: str, port: int, n: int, body: Callable[[Client], Awaitable[None]]
) -> dict[str, Any]:
    """Open *n* sockets on ``/echo/`` (``OPEN_CONCURRENCY`` handshakes at a time), then run
    *body(client)* in each one's task. Returns once every open succeeded or failed."""
    limiter, done = trio.CapacityLimiter(OPEN_CONCURRENCY), Barrier(n + 1)
    failures: Counter[str] = Counter()
    opened = [0]

    async def one() -> None:
        try:
            async with limiter:
                client = await Client.connect(host, port, "/echo/")
        except (OSError, Closed, Rejected, ProtocolError) as exc:
            failures[type(exc).__name__ + (f" {exc.status}" if isinstance(exc, Rejected) else "")] += 1
            await done.arrive()
            return
        opened[0] += 1
        try:
            await done.arrive()
            await body(client)
        finally:
            await client.aclose()

    started = time.perf_counter()
    for _ in range(n):
        nursery.start_soon(one)
    await done.arrive()
    return {
        "opened": opened[0],
        "open_failed": dict(failures),
        "open_s": round(time.perf_counter() - started, 2),
    }


async def scenario_idle(url: str, probe: Probe, *, sockets: int, after: float) -> dict[str, Any]:
    host, port = _split(url)
    raise_fd_limit()
    warm = trio.Event()
    async with trio.open_nursery() as nursery:  # warm-up: first-use allocations out of the delta
        await _open_many(nursery, host, port, 20, lambda client: warm.wait())
        warm.set()
    await trio.sleep(1)
    before_kib, before_tasks = probe.rss_kib(), await probe.task_count()
    release = trio.Event()
    closes: Counter[int] = Counter()

    async def hold(client: Client) -> None:
        # Read while idle (answering pings) until released; a server close ends it early.
        async with trio.open_nursery() as inner:

            async def reader() -> None:
                closes[(await client.hold()).code] += 1
                inner.cancel_scope.cancel()

            inner.start_soon(reader)
            await release.wait()
            inner.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        opening = await _open_many(nursery, host, port, sockets, hold)
        await trio.sleep(1)  # let the server finish what each accept started
        open_kib, open_tasks = probe.rss_kib(), await probe.task_count()
        closed_before = sum(closes.values())
        release.set()
        closing = time.perf_counter()
    close_s = time.perf_counter() - closing
    await trio.sleep(after)
    after_kib, after_tasks = probe.rss_kib(), await probe.task_count()
    # Sockets the server closed before the measurement (a ping unanswered in time on a
    # starved machine, a limit) are not in the open figure: count per socket still open.
    still_open = opening["opened"] - closed_before
    result: dict[str, Any] = {"sockets": sockets, **opening, "still_open": still_open,
                              "closed_by_server_while_idle": dict(closes)}  # fmt: skip
    if before_kib is not None and open_kib is not None and after_kib is not None and still_open:
        result.update(
            kib_per_socket=round((open_kib - before_kib) / still_open, 2),
            rss_before_mib=round(before_kib / 1024, 1),
            rss_open_mib=round(open_kib / 1024, 1),
            rss_after_close_mib=round(after_kib / 1024, 1),
            kept_after_close_kib_per_socket=round((after_kib - before_kib) / opening["opened"], 2),
        )
    if before_tasks is not None and open_tasks is not None and after_tasks is not None and still_open:
        result.update(
            tasks_before=before_tasks,
            tasks_open=open_tasks,
            tasks_after_close=after_tasks,
            tasks_per_socket=round((open_tasks - before_tasks) / still_open, 2),
        )
    result.update(close_s=round(close_s, 2), after_close_wait_s=after)
    return result


async def scenario_connects(url: str, probe: Probe, *, concurrency: int, seconds: float) -> dict[str, Any]:
    host, port = _split(url)
    counts, failures, stop, window = [0], Counter[str](), trio.Event(), Window(probe)

    async def loop() -> None:
        while not stop.is_set():
            try:
                client = await Client.connect(host, port, "/echo/")
            except (OSError, Closed, Rejected, ProtocolError) as exc:
                failures[type(exc).__name__] += 1
                continue
            await client.aclose()
            counts[0] += 1

    window.begin()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(loop)
        await trio.sleep(seconds)
        stop.set()
    measured = window.end()
    return {"connects_per_s": round(counts[0] / measured["elapsed_s"], 1), "connects": counts[0],
            "failed": dict(failures), "concurrency": concurrency, **measured}  # fmt: skip


async def scenario_storm(url: str, probe: Probe, *, sockets: int, wait: float) -> dict[str, Any]:
    host, port = _split(url)
    raise_fd_limit()
    answered, late = [0], [0]
    closed: Counter[int] = Counter()
    times: list[float] = []
    peak = [probe.rss_kib() or 0]
    fired, sent = [0.0], [0.0]
    clients: list[Client] = []
    waiting: list[trio.CancelScope] = []
    leftovers: dict[int, bytes] = {}
    early: Counter[int] = Counter()
    reasons: Counter[str] = Counter()

    async def one(client: Client) -> None:
        clients.append(client)
        # Until the storm, read: the server's pings get their pongs (a socket that did not read
        # would be closed for a missed pong, not for the storm). Cancelling a read is safe: a
        # pong is written whole or not at all, and nothing else comes before the storm.
        with trio.CancelScope() as scope:
            waiting.append(scope)
            try:
                await client.receive()
                raise AssertionError("a message arrived before the storm")
            except Closed as why:
                early[why.code] += 1
                return
        try:
            if rest := leftovers.get(id(client)):
                await client.send_encoded(rest)
            with trio.move_on_at(deadline) as waited:
                await client.receive()
                answered[0] += 1
                times.append(time.perf_counter() - fired[0])
            if waited.cancelled_caught:
                late[0] += 1
        except Closed as why:
            closed[why.code] += 1
            reasons[f"{why.code} {why.reason}".strip()] += 1

    async def sample_rss() -> None:
        while True:  # a measurement, not a wait: the server's RSS peak during the storm
            peak[0] = max(peak[0], probe.rss_kib() or 0)
            await trio.sleep(0.1)

    deadline = math.inf
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        async with trio.open_nursery() as storm:
            opening = await _open_many(storm, host, port, sockets, one)
            await trio.sleep(0.5)
            before_kib = probe.rss_kib()
            deadline = trio.current_time() + wait
            fired[0] = time.perf_counter()
            for client in clients:  # every frame on the wire before any task runs again
                if client.closed is not None:  # closed before the storm (counted by its task)
                    continue
                if rest := client.send_now(client.encode("storm")):
                    leftovers[id(client)] = rest
            sent[0] = time.perf_counter() - fired[0]
            for scope in waiting:  # no task ran since the first frame left: none saw an answer
                scope.cancel()
        nursery.cancel_scope.cancel()
    times.sort()
    return {
        "sockets": sockets,
        **opening,
        "answered": answered[0],
        "closed_by_server": sum(closed.values()),
        "close_codes": {str(code): count for code, count in sorted(closed.items())},
        "close_reasons": dict(reasons.most_common(3)),
        "unanswered": late[0],
        "closed_before_the_storm": dict(early),
        "fire_spread_s": round(sent[0], 3),  # from the first to the last frame handed to the kernel
        "sent_late": len(leftovers),  # frames the kernel did not take at once (sent from their tasks)
        "last_answer_s": round(times[-1], 2) if times else None,
        "p50_answer_s": round(statistics.median(times), 3) if times else None,
        "rss_before_mib": round((before_kib or 0) / 1024, 1),
        "rss_peak_mib": round(peak[0] / 1024, 1),
        "wait_s": wait,
    }


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "echo": scenario_echo,
    "http": scenario_http,
    "fanout": scenario_fanout,
    "burst": scenario_burst,
    "idle": scenario_idle,
    "connects": scenario_connects,
    "storm": scenario_storm,
}


async def run(url: str, scenario: str, probe: Probe, **sizes: Any) -> dict[str, Any]:
    """Run one scenario against *url*; ``{"scenario": name, ...figures}``."""
    return {"scenario": scenario, **await SCENARIOS[scenario](url, probe, **sizes)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default="echo")
    parser.add_argument("--pid", type=int, help="the server's pid, for its CPU share and RSS")
    parser.add_argument(
        "--connections", type=int, default=50, help="echo, http, connects; fanout/burst members"
    )
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--window", type=int, default=10, help="fanout: broadcasts in flight")
    parser.add_argument("--messages", type=int, default=200, help="burst: broadcasts")
    parser.add_argument("--sockets", type=int, default=10_000, help="idle, storm: sockets")
    args = parser.parse_args()
    sizes: dict[str, dict[str, Any]] = {
        "echo": {"connections": args.connections, "seconds": args.seconds},
        "http": {"connections": args.connections, "seconds": args.seconds},
        "fanout": {"members": args.connections, "seconds": args.seconds, "window_size": args.window},
        "burst": {"members": args.connections, "messages": args.messages, "quiet": 2.0, "timeout": 60.0},
        "idle": {"sockets": args.sockets, "after": 10.0},
        "connects": {"concurrency": args.connections, "seconds": args.seconds},
        "storm": {"sockets": args.sockets, "wait": 30.0},
    }
    outcome = trio.run(lambda: run(args.url, args.scenario, Probe(args.pid), **sizes[args.scenario]))
    print(json.dumps(outcome), flush=True)
