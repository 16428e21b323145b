"""Side by side in one run: trio_channels (in memory, on Redis) against bare baselines and a peer.

    python -m benchmarks.compare [--scenarios echo,http,...] [--passes 3] [--seconds 5] [--peers]
    python -m benchmarks.compare --quick            # a smoke run: tiny sizes, one pass

Servers (``--servers`` to select; each runs the scenarios that apply to it):

* ``memory``, ``redis``: ``python -m trio_channels run benchmarks.app.routing`` (interface and
  workers in one process; run through ``benchmarks/ours.py`` so it reports Trio tasks) on
  ``memory://``, or on a redis-server this run starts (``tests/redis_server.py``, unpinned);
* ``redis-2``, ``redis-n`` (only when named in ``--servers``): the same on Redis with
  ``--processes 2`` or ``--processes 0`` (one per core): a supervisor and its children,
  **unpinned** (they may run on every core, the load generator's too); CPU and RSS are the
  whole process tree's;
* ``bare-ws``: ``benchmarks/bare_ws.py``, bare trio-websocket: the WebSocket baseline;
* ``bare-h11``: ``benchmarks/bare_h11.py``, bare Trio + h11: an HTTP baseline;
* ``bare-hypercorn``: ``benchmarks/bare.py``, a bare ASGI app on Hypercorn-Trio: the other HTTP
  baseline (it speaks WebSockets too);
* ``channels-uvicorn`` (only with ``--peers``): Django Channels 4 with its in-memory layer on
  uvicorn (``benchmarks/peers/``); ``pip install``s channels, daphne, uvicorn[standard] and
  django into this interpreter first if they are missing. Never a project dependency.

Every (pass, scenario, server) gets a fresh server process pinned to CPU 0 (but ``redis-2`` and
``redis-n``); the load generator (``benchmarks/loadgen.py``, this process) is pinned to CPU 1. Passes are interleaved: pass 1
runs every scenario on every server, then pass 2 (servers in a rotated order), and so on.
Prints one JSON line per measurement, then one Markdown table per scenario (median of the
passes, min–max in brackets, ratios of medians against the baseline), then a summary table.
Server stderr goes to ``--logs``. Load averages before and after are in the JSON lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from layers.concurrency import leaves
from tests.e2e.processes import Running, started

from ._instrument import TASKS_MARKER, raise_fd_limit
from .loadgen import SCENARIOS, Probe
from .loadgen import run as run_scenario

ROOT = Path(__file__).resolve().parents[1]
WS_SCENARIOS = frozenset({"echo", "fanout", "burst", "idle", "connects", "storm"})
ALL_SCENARIOS = frozenset({"http"}) | WS_SCENARIOS
PEER_PACKAGES = ["channels", "daphne", "uvicorn[standard]", "django"]


@attrs.frozen
class Server:
    key: str
    label: str
    scenarios: frozenset[str]
    command: Callable[[argparse.Namespace], list[str]]
    reports_tasks: bool = True
    #: The CPU its processes are pinned to; ``None``: every CPU.
    pin: int | None = 0
    #: Measured unless ``--servers`` says otherwise.
    default: bool = True
    #: A supervisor of several processes: CPU and RSS are its process tree's.
    tree: bool = False

    @property
    def redis(self) -> bool:
        return self.key.startswith("redis")


def _ours(layer: Callable[[argparse.Namespace], str]) -> Callable[[argparse.Namespace], list[str]]:
    return lambda args: [
        sys.executable, "-m", "benchmarks.ours", "run", "benchmarks.app.routing", "--bind", "127.0.0.1:0",
        "--layer", layer(args), "--no-access-log", "--grace-period", "1",
    ]  # fmt: skip


def _supervised(processes: str) -> Callable[[argparse.Namespace], list[str]]:
    # Plain `python -m trio_channels` (the children are, whatever the supervisor runs as).
    return lambda args: [
        sys.executable, "-m", "trio_channels", "run", "benchmarks.app.routing", "--bind", "127.0.0.1:0",
        "--layer", args.redis_url, "--no-access-log", "--grace-period", "1", "--processes", processes,
    ]  # fmt: skip


def _module(name: str) -> Callable[[argparse.Namespace], list[str]]:
    return lambda args: [sys.executable, "-m", name, "--bind", "127.0.0.1:0"]


SERVERS = [
    Server("memory", "trio_channels memory", ALL_SCENARIOS, _ours(lambda args: "memory://")),
    Server("redis", "trio_channels Redis", ALL_SCENARIOS, _ours(lambda args: args.redis_url)),
    Server(
        "redis-2",
        "trio_channels Redis, 2 processes",
        ALL_SCENARIOS,
        _supervised("2"),
        reports_tasks=False,
        pin=None,
        default=False,
        tree=True,
    ),
    Server(
        "redis-n",
        "trio_channels Redis, one process per core",
        ALL_SCENARIOS,
        _supervised("0"),
        reports_tasks=False,
        pin=None,
        default=False,
        tree=True,
    ),
    Server("bare-ws", "bare trio-websocket", WS_SCENARIOS, _module("benchmarks.bare_ws")),
    Server("bare-h11", "bare trio + h11", frozenset({"http"}), _module("benchmarks.bare_h11")),
    Server("bare-hypercorn", "bare Hypercorn-Trio", ALL_SCENARIOS, _module("benchmarks.bare")),
    Server(
        "channels-uvicorn",
        "Channels 4 on uvicorn",
        ALL_SCENARIOS,
        _module("benchmarks.peers.serve_channels"),
        reports_tasks=False,
        default=False,
    ),
]
BY_KEY = {server.key: server for server in SERVERS}
WS_BASELINE = "bare-ws"
HTTP_BASELINES = ("bare-hypercorn", "bare-h11")


def sizes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-scenario keyword arguments for ``loadgen.run``."""
    quick = args.quick
    seconds = args.seconds
    connections = 4 if quick else args.connections
    members = 5 if quick else args.members
    return {
        "echo": {"connections": connections, "seconds": seconds},
        "http": {"connections": connections, "seconds": seconds},
        "fanout": {"members": members, "seconds": seconds, "window_size": 2 if quick else args.window},
        "burst": {"members": members, "messages": 5 if quick else args.burst_messages,
                  "quiet": 0.3 if quick else 2.0, "timeout": 10.0 if quick else 60.0},
        "idle": {"sockets": 20 if quick else args.idle_sockets, "after": 0.5 if quick else 10.0},
        "connects": {"concurrency": connections, "seconds": seconds},
        "storm": {"sockets": 20 if quick else args.storm_sockets, "wait": 5.0 if quick else 30.0},
    }  # fmt: skip


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


def _server_preexec(pin: int | None) -> Callable[[], None]:
    def preexec() -> None:
        if pin is not None:
            _pin(pin)
        elif hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))  # not the load generator's CPU only
        raise_fd_limit()

    return preexec


class TaskReport:
    """Ask a server started with ``benchmarks._instrument.install`` for its Trio task count."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.asked = 0

    async def __call__(self) -> int | None:
        self.server.send_signal(signal.SIGUSR1)
        self.asked += 1
        marker = TASKS_MARKER + " "
        try:
            await self.server.output.wait_for_count(marker, self.asked, timeout=10)
        except (trio.TooSlowError, AssertionError):
            return None
        last = self.server.output.stdout.decode(errors="replace").rsplit(marker, 1)[1]
        return int(last.split()[0])


async def _flush_redis(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"FLUSHALL\r\n")
        reply = await stream.receive_some()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"redis FLUSHALL answered {reply!r}")


def _describe(exc: BaseException) -> str:
    """What went wrong, out of the exception groups a scenario's nurseries wrap it in."""
    found = [leaf for leaf in leaves(exc) if not isinstance(leaf, trio.Cancelled)] or [exc]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{type(found[0]).__name__}: {found[0]}{more}"


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


async def measure(
    args: argparse.Namespace, server: Server, scenario: str, number: int, logs: Path
) -> dict[str, Any]:
    """One measurement: a fresh server, one scenario, one JSON-able dict."""
    if server.redis:
        await _flush_redis(args.redis_port)
    log_path = logs / f"pass{number}-{scenario}-{server.key}.log"
    record: dict[str, Any] = {
        "pass": number,
        "server": server.key,
        "label": server.label,
        "scenario": scenario,
    }
    record["load_before"] = _load()
    async with started(server.command(args), " at ", preexec_fn=_server_preexec(server.pin)) as running:
        url = running.found
        others = {"redis": args.redis_pid} if server.redis else {}
        tasks = TaskReport(running) if server.reports_tasks else None
        probe = Probe(running.pid, tasks, others, tree=server.tree)
        try:
            with trio.fail_after(args.scenario_timeout):
                record.update(await run_scenario(url, scenario, probe, **sizes(args)[scenario]))
        except Exception as exc:  # a failed measurement is reported, and the run goes on
            record["error"] = _describe(exc)
        output = running.output
    log_path.write_bytes(bytes(output.stderr))
    record["load_after"] = _load()
    record["server_log_lines"] = len(output.stderr.splitlines())
    return record


# --- tables -------------------------------------------------------------------------------------

RATES = {"echo": "messages_per_s", "http": "requests_per_s", "fanout": "deliveries_per_s",
         "connects": "connects_per_s"}  # fmt: skip


def derive(record: dict[str, Any]) -> dict[str, Any]:
    """Add ``cpu_us_per_op``: server CPU microseconds per message, request, delivery or connect.

    The cost per operation, which other load on the machine disturbs much less than the rate:
    a server that gets half a core does half the rate at the same cost. On Redis the
    redis-server's CPU counts too (it does part of the work).
    """
    cpu = record.get("server_cpu")
    if cpu is None or "error" in record:
        return record
    cpu += record.get("redis_cpu") or 0.0
    scenario = record.get("scenario")
    if scenario in RATES and record.get(RATES[scenario]):
        record["cpu_us_per_op"] = round(cpu / record[RATES[scenario]] * 1e6, 1)
    elif scenario == "burst" and record.get("delivered"):
        record["cpu_us_per_op"] = round(cpu * record["elapsed_s"] / record["delivered"] * 1e6, 1)
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not value.is_integer() and abs(value) < 100:
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{round(value):,}"


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [run[key] for run in runs if isinstance(run.get(key), (int, float)) and "error" not in run]


def _cell(runs: list[dict[str, Any]], key: str, how: str = "median") -> str:
    values = _values(runs, key)
    if not values:
        errors = [run["error"] for run in runs if "error" in run]
        return "error" if errors else "—"
    pick = {"median": statistics.median, "max": max, "min": min}[how](values)
    if len(values) > 1 and min(values) != max(values):
        return f"{_fmt(pick)} ({_fmt(min(values))}–{_fmt(max(values))})"
    return _fmt(pick)


def _ratio(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> str:
    mine, theirs = _values(runs, key), _values(base, key)
    if not mine or not theirs or statistics.median(theirs) == 0:
        return "—"
    return f"{statistics.median(mine) / statistics.median(theirs):.2f}x"


# (key, heading, how to aggregate, ratio against the baseline?)
COLUMNS: dict[str, list[tuple[str, str, str, bool]]] = {
    "echo": [("messages_per_s", "messages/s", "median", True), ("p50_ms", "p50 ms", "median", False),
             ("p99_ms", "p99 ms", "median", True), ("cpu_us_per_op", "CPU µs per message", "median", True),
             ("server_cpu", "server CPU", "median", False),
             ("loadgen_cpu", "loadgen CPU", "median", False)],
    "http": [("requests_per_s", "requests/s", "median", True),
             ("cpu_us_per_op", "CPU µs per request", "median", True), ("server_cpu", "server CPU", "median", False),
             ("loadgen_cpu", "loadgen CPU", "median", False)],
    "fanout": [("deliveries_per_s", "deliveries/s", "median", True), ("lost", "lost", "max", False),
               ("cpu_us_per_op", "CPU µs per delivery", "median", True),
               ("server_cpu", "server CPU", "median", False), ("loadgen_cpu", "loadgen CPU", "median", False)],
    "burst": [("lost", "lost (worst)", "max", False), ("deliveries_per_s", "deliveries/s", "median", True),
              ("members_short", "members short (worst)", "max", False),
              ("cpu_us_per_op", "CPU µs per delivery", "median", True), ("server_cpu", "server CPU", "median", False)],
    "idle": [("kib_per_socket", "KiB per socket", "median", True),
             ("tasks_per_socket", "Trio tasks per socket", "median", False),
             ("rss_before_mib", "RSS before, MiB", "median", False),
             ("rss_open_mib", "RSS open, MiB", "median", False),
             ("rss_after_close_mib", "RSS after close, MiB", "median", False),
             ("kept_after_close_kib_per_socket", "kept after close, KiB per socket", "median", False),
             ("open_s", "open all, s", "median", False)],
    "connects": [("connects_per_s", "connects/s", "median", True),
                 ("cpu_us_per_op", "CPU µs per connect", "median", True), ("server_cpu", "server CPU", "median", False),
                 ("loadgen_cpu", "loadgen CPU", "median", False)],
    "storm": [("closed_by_server", "closed by server (worst)", "max", False),
              ("answered", "answered (worst)", "min", False), ("unanswered", "unanswered (worst)", "max", False),
              ("fire_spread_s", "all sent within, s", "median", False),
              ("last_answer_s", "last answer, s", "median", False), ("rss_peak_mib", "RSS peak, MiB", "median", False)],
}  # fmt: skip


def _title(scenario: str, args: argparse.Namespace) -> str:
    size = sizes(args)[scenario]
    if scenario == "echo":
        return f"WebSocket echo, {size['connections']} connections, {size['seconds']:g} s"
    if scenario == "http":
        return f"HTTP `GET /hello` keep-alive, {size['connections']} connections, {size['seconds']:g} s"
    if scenario == "fanout":
        return (f"fan-out, {size['members']} receivers in one room, window {size['window_size']}, "
                f"{size['seconds']:g} s")  # fmt: skip
    if scenario == "burst":
        total = size["members"] * size["messages"]
        return (
            f"fan-out burst, {size['members']} receivers × {size['messages']} messages = {total:,} deliveries"
        )
    if scenario == "idle":
        return f"{size['sockets']:,} idle WebSockets"
    if scenario == "connects":
        return f"WebSocket connects (open + close handshake), {size['concurrency']} concurrent, {size['seconds']:g} s"
    return f"{size['sockets']:,} WebSockets each send one frame at once (wait ≤ {size['wait']:g} s)"


def tables(results: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace) -> str:
    servers = [server for server in SERVERS if server.key in args.servers]
    passes = f"median of {args.passes} passes (min–max)" if args.passes > 1 else "one pass"
    out: list[str] = []
    for scenario in args.scenarios:
        rows = [server for server in servers if (scenario, server.key) in results]
        if not rows:
            continue
        baselines = HTTP_BASELINES if scenario == "http" else (WS_BASELINE,)
        baselines = tuple(base for base in baselines if (scenario, base) in results)
        head = ["server"]
        for _key, heading, _, ratio in COLUMNS[scenario]:
            head.append(heading)
            if ratio:
                head.extend(f"× {BY_KEY[base].label}" for base in baselines)
        out.append(f"\n#### {_title(scenario, args)} — {passes}\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + " --- |" * len(head))
        for server in rows:
            runs = results[(scenario, server.key)]
            cells = [server.label]
            for key, _, how, ratio in COLUMNS[scenario]:
                cells.append(_cell(runs, key, how))
                if ratio:
                    cells.extend(_ratio(runs, results[(scenario, base)], key) for base in baselines)
            out.append("| " + " | ".join(cells) + " |")
        loads = [run["load_before"][0] for server in rows for run in results[(scenario, server.key)]
                 if run.get("load_before")]  # fmt: skip
        if loads:
            out.append(
                f"\nLoad average (1 min) at the start of these measurements: {min(loads):.2f}–{max(loads):.2f}."
            )
        if scenario == "storm":
            codes = {
                server.label: [run.get("close_codes") for run in results[(scenario, server.key)]]
                for server in rows
            }
            out.append(f"\nClose codes per pass: {json.dumps(codes)}")
    out.append(summary(results, args, servers))
    return "\n".join(out)


def summary(
    results: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace, servers: list[Server]
) -> str:
    size = sizes(args)
    rows = [
        ("echo", "messages_per_s", "median", f"WebSocket echo, {size['echo']['connections']} conns, msgs/s"),
        ("echo", "p99_ms", "median", "echo p99 round trip, ms"),
        ("echo", "cpu_us_per_op", "median", "echo: server CPU µs per message"),
        ("http", "requests_per_s", "median", "HTTP `GET /hello`, req/s"),
        ("http", "cpu_us_per_op", "median", "HTTP: server CPU µs per request"),
        ("fanout", "deliveries_per_s", "median",
         f"fan-out, {size['fanout']['members']} receivers, window {size['fanout']['window_size']}, deliveries/s"),
        ("fanout", "cpu_us_per_op", "median", "fan-out: server CPU µs per delivery"),
        ("burst", "lost", "max", f"fan-out burst, {size['burst']['members']} × {size['burst']['messages']} = "
         f"{size['burst']['members'] * size['burst']['messages']:,} deliveries: lost (worst run)"),
        ("burst", "deliveries_per_s", "median", "burst deliveries/s"),
        ("idle", "kib_per_socket", "median", f"RSS per idle WebSocket ({size['idle']['sockets']:,} open), KiB"),
        ("idle", "tasks_per_socket", "median", "Trio tasks per idle WebSocket"),
        ("idle", "kept_after_close_kib_per_socket", "median",
         f"RSS kept {size['idle']['after']:g} s after they closed, KiB per socket"),
        ("connects", "connects_per_s", "median", "WebSocket connects/s"),
        ("connects", "cpu_us_per_op", "median", "connects: server CPU µs per connect"),
        ("storm", "closed_by_server", "max",
         f"{size['storm']['sockets']:,} sockets each send one frame at once: closed by the server (worst run)"),
        ("storm", "answered", "min", "… frames answered (worst run)"),
    ]  # fmt: skip
    columns = [server for server in servers if any(key == server.key for _, key in results)]
    out = ["\n#### Summary (medians; worst run where marked)\n"]
    out.append("| scenario | " + " | ".join(server.label for server in columns) + " |")
    out.append("|" + " --- |" * (len(columns) + 1))
    for scenario, key, how, label in rows:
        if scenario not in args.scenarios:
            continue
        cells = []
        for server in columns:
            runs = results.get((scenario, server.key))
            cells.append(_cell(runs, key, how).split(" (")[0] if runs else "—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[tuple[str, str], list[dict[str, Any]]]:
    _pin(1)
    raise_fd_limit()
    logs = Path(args.logs)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    servers = [server for server in SERVERS if server.key in args.servers]
    for number in range(1, args.passes + 1):
        shift = (number - 1) % len(servers)
        order = servers[shift:] + servers[:shift]  # rotate, so no server always runs first
        for scenario in args.scenarios:
            for server in order:
                if scenario not in server.scenarios:
                    continue
                record = derive(await measure(args, server, scenario, number, logs))
                print(json.dumps(record), flush=True)
                results.setdefault((scenario, server.key), []).append(record)
    return results


def _ensure_peers() -> None:
    missing = [name for name in ("channels", "daphne", "uvicorn", "django", "websockets")
               if importlib.util.find_spec(name) is None]  # fmt: skip
    if missing:
        print(
            f"installing the peer's packages ({', '.join(PEER_PACKAGES)}): {missing} missing", file=sys.stderr
        )
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--servers",
        default=None,
        help=f"comma-separated, from {','.join(BY_KEY)} (default: all but the peer, which --peers adds, "
        "and redis-2 and redis-n)",
    )
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes; medians are reported (3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed scenario (5)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny sizes, 0.5 s scenarios, one pass unless --passes is given",
    )
    parser.add_argument(
        "--peers", action="store_true", help="add Django Channels 4 on uvicorn (installs it if missing)"
    )
    parser.add_argument("--connections", type=int, default=50, help="echo, http, connects (50)")
    parser.add_argument("--members", type=int, default=200, help="fanout and burst receivers (200)")
    parser.add_argument("--window", type=int, default=10, help="fanout broadcasts in flight (10)")
    parser.add_argument("--burst-messages", type=int, default=200, help="burst broadcasts (200)")
    parser.add_argument("--idle-sockets", type=int, default=10_000, help="idle WebSockets (10,000)")
    parser.add_argument("--storm-sockets", type=int, default=10_000, help="storm WebSockets (10,000)")
    parser.add_argument(
        "--scenario-timeout", type=float, default=600.0, help="give up on one measurement after this"
    )
    parser.add_argument(
        "--logs", default=None, help="directory for the servers' stderr (default: a new temp dir)"
    )
    parser.add_argument(
        "--tables-from",
        metavar="FILE",
        help="measure nothing: print the tables for the JSON lines of an earlier run (same size options)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if "--passes" not in (argv if argv is not None else sys.argv[1:]):
            args.passes = 1
        if "--seconds" not in (argv if argv is not None else sys.argv[1:]):
            args.seconds = 0.5
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"scenario {name!r} is unknown: choose from {', '.join(SCENARIOS)}")
    if args.servers is None:
        args.servers = [
            server.key
            for server in SERVERS
            if server.default or (args.peers and server.key == "channels-uvicorn")
        ]
    else:
        args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
        if args.peers and "channels-uvicorn" not in args.servers:
            args.servers.append("channels-uvicorn")
    for name in args.servers:
        if name not in BY_KEY:
            parser.error(f"server {name!r} is unknown: choose from {', '.join(BY_KEY)}")
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, not {args.passes}")
    args.logs = args.logs or tempfile.mkdtemp(prefix="trio-channels-bench-")
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    return args


def load_results(path: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The JSON lines of an earlier run (other lines are skipped), keyed like a live run's."""
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("{"):
            record = derive(json.loads(line))
            results.setdefault((record["scenario"], record["server"]), []).append(record)
    return results


def cli(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.tables_from:
        results = load_results(args.tables_from)
        args.servers = [key for key in BY_KEY if any(server == key for _, server in results)]
        args.scenarios = [name for name in SCENARIOS if any(scenario == name for scenario, _ in results)]
        args.passes = max(run["pass"] for runs in results.values() for run in runs)
        print(tables(results, args))
        return 0
    if "channels-uvicorn" in args.servers:
        _ensure_peers()
    redis = None
    if any(BY_KEY[key].redis for key in args.servers):
        from tests.redis_server import RedisServer

        redis = RedisServer().start()
        assert redis.process is not None
        args.redis_url, args.redis_port, args.redis_pid = redis.url, redis.port, redis.process.pid
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = _load()
    try:
        results = trio.run(main, args)
    finally:
        if redis is not None:
            redis.cleanup()
    print(tables(results, args))
    print(f"\nRun {started_at}; load average before {load_before}, after {_load()}; "
          f"commit {_commit()}; server logs in {args.logs}")  # fmt: skip
    return 1 if any("error" in run for runs in results.values() for run in runs) else 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(cli())
