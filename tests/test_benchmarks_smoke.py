"""The measuring instrument itself works: ``python -m benchmarks.compare`` on tiny sizes.

Real processes on real ports (our server on both layers, the bare baselines), one short pass.
Nothing here asserts a speed: only that every server answered and the output is well formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from typing import Any

import trio

from benchmarks import compare

from .e2e.processes import ENV, ROOT

SMOKE = ["--quick", "--scenarios", "echo,http,burst", "--passes", "1", "--seconds", "0.2"]


async def test_compare_quick_run_measures_every_server() -> None:
    """One quick pass: a JSON line per (scenario, server) that applies, no errors, every server answered."""
    with trio.fail_after(180):
        done = await trio.run_process(
            [sys.executable, "-m", "benchmarks.compare", *SMOKE],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV,
            cwd=ROOT,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    found = {(record["scenario"], record["server"]) for record in records}
    ws = {"memory", "redis", "bare-ws", "bare-hypercorn"}
    assert found == {("echo", s) for s in ws} | {("burst", s) for s in ws} | {
        ("http", s) for s in ("memory", "redis", "bare-h11", "bare-hypercorn")
    }
    for record in records:
        assert "error" not in record, record
        assert len(record["load_before"]) == 3 and len(record["load_after"]) == 3
        if record["scenario"] == "echo":
            assert record["messages"] > 0 and record["p99_ms"] >= record["p50_ms"] > 0, record
        elif record["scenario"] == "http":
            assert record["requests"] > 0, record
        else:  # burst: 5 receivers x 5 messages, and the baselines lose nothing at this size
            assert record["expected"] == 25 and record["delivered"] + record["lost"] == 25, record
            if record["server"].startswith("bare-"):
                assert record["lost"] == 0, record
    for heading in ("#### WebSocket echo", "#### HTTP `GET /hello`", "#### fan-out burst", "#### Summary"):
        assert heading in out
    assert "| bare trio + h11 |" in out and "× bare Hypercorn-Trio" in out and "× bare trio-websocket" in out


def _run(server: str, value: float, **extra: Any) -> dict[str, Any]:
    return {
        "server": server,
        "scenario": "echo",
        "messages_per_s": value,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        **extra,
    }


def test_tables_report_medians_ranges_and_ratios() -> None:
    """Medians of the passes, min–max beside them, ratios of medians against the baseline."""
    args = compare.parse(["--scenarios", "echo", "--servers", "memory,bare-ws", "--passes", "3"])
    results = {
        ("echo", "memory"): [_run("memory", v) for v in (900.0, 1000.0, 1500.0)],
        ("echo", "bare-ws"): [_run("bare-ws", v) for v in (1900.0, 2000.0, 2100.0)],
    }
    text = compare.tables(results, args)
    assert "| trio_channels memory | 1,000 (900–1,500) | 0.50x |" in text
    assert "| bare trio-websocket | 2,000 (1,900–2,100) | 1.00x |" in text
    assert "| WebSocket echo, 50 conns, msgs/s | 1,000 | 2,000 |" in text


def test_failed_measurement_shows_as_error_not_as_a_number() -> None:
    """A pass that failed is reported as failed; the other passes still give the median."""
    args = compare.parse(["--scenarios", "echo", "--servers", "memory,bare-ws", "--passes", "2"])
    results = {
        ("echo", "memory"): [
            _run("memory", 1000.0),
            {"server": "memory", "scenario": "echo", "error": "boom"},
        ],
        ("echo", "bare-ws"): [{"server": "bare-ws", "scenario": "echo", "error": "boom"}] * 2,
    }
    text = compare.tables(results, args)
    assert "| trio_channels memory | 1,000 | — |" in text
    assert "| bare trio-websocket | error |" in text


def test_unknown_scenario_is_a_usage_error() -> None:
    """A misspelt scenario fails at once, naming it, before any server starts."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--scenarios", "echo,ehco"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert "scenario 'ehco' is unknown" in done.stderr


def test_multi_process_servers_are_opt_in() -> None:
    """redis-2 and redis-n are measured only when named (the default run stays as it was)."""
    assert not {"redis-2", "redis-n", "channels-uvicorn"} & set(compare.parse([]).servers)
    assert compare.parse(["--servers", "redis,redis-2"]).servers == ["redis", "redis-2"]
    assert compare.BY_KEY["redis-2"].pin is None and compare.BY_KEY["redis"].pin == 0


async def test_a_tree_probe_counts_the_children_too() -> None:
    """A supervisor's CPU and RSS are its process tree's: the probe finds the children."""
    from benchmarks.loadgen import Probe

    async with trio.open_nursery() as nursery:
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        child = await nursery.start(partial(trio.run_process, sleeper, check=False))
        alone, tree = Probe(os.getpid()), Probe(os.getpid(), tree=True)
        assert child.pid in tree._pids() and child.pid not in alone._pids()
        rss_alone, rss_tree = alone.rss_kib(), tree.rss_kib()
        assert rss_alone is not None and rss_tree is not None and rss_tree > rss_alone
        nursery.cancel_scope.cancel()
