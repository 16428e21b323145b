"""``--metrics-bind``: ``GET /metrics`` through the real CLI, scraped with httpx before and
after real HTTP and WebSocket traffic (and against a real Redis)."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from tests.redis_server import RedisServer

from .conftest import ws_url
from .processes import ENV, Running, running

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by ``(name, sorted labels)``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


@asynccontextmanager
async def metrics_server(*args: str, **options: Any) -> AsyncIterator[tuple[Running, str, str]]:
    """The CLI serving ``tests.e2e.cli_app`` with metrics on a free port: (process, url, metrics url)."""
    command = ["run", "--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0"]
    if "--settings" not in args:
        command.append("tests.e2e.cli_app:routing")
    async with running(*command, *args, marker="Prometheus metrics on ", **options) as process:
        found = re.search(r" at (http://\S+)", process.output.text)
        assert found is not None, process.output.text
        yield process, found.group(1), process.found


async def test_counters_move_by_the_traffic_they_saw() -> None:
    """Three HTTP requests and one WebSocket with four frames move every counter by exactly that."""
    with trio.fail_after(60):
        async with metrics_server() as (_, url, metrics), httpx.AsyncClient(timeout=20) as client:
            before = await scrape(client, metrics)
            for _ in range(3):
                assert (await client.get(url + "/who")).status_code == 200
            async with open_websocket_url(ws_url(url, "/echo/")) as ws:
                for index in range(4):
                    await ws.send_message(f"hello {index}")
                    assert await ws.get_message() == f"hello {index}"
                during = await scrape(client, metrics)
            after = await scrape(client, metrics)
            # The WebSocket's close reaches the application a moment after the client sees it.
            while (
                value(after, "trio_channels_channel_messages_received_total", channel="websocket.disconnect")
                < 1
            ):
                await trio.sleep(0.05)
                after = await scrape(client, metrics)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "trio_channels_connections_open", kind="websocket") == 1
    assert value(after, "trio_channels_connections_open", kind="websocket") == 0
    assert value(after, "trio_channels_connections_open", kind="http") == 0
    assert moved("trio_channels_connections_accepted_total", kind="http") == 3
    assert moved("trio_channels_connections_accepted_total", kind="websocket") == 1
    for channel, count in (
        ("http.request", 3),
        ("websocket.connect", 1),
        ("websocket.receive", 4),
        ("websocket.disconnect", 1),
    ):
        assert moved("trio_channels_channel_messages_received_total", channel=channel) == count, channel
        assert moved("trio_channels_channel_messages_sent_total", channel=channel) == count, channel
        assert value(after, "trio_channels_channel_messages_pending", channel=channel) == 0
    histogram = "trio_channels_consumer_duration_seconds_count"
    assert moved(histogram, channel="http.request", consumer="tests.e2e.cli_app.who") == 3
    assert moved(histogram, channel="websocket.receive", consumer="tests.e2e.cli_app.ws_echo") == 4
    inf = value(
        after,
        "trio_channels_consumer_duration_seconds_bucket",
        channel="websocket.receive",
        consumer="tests.e2e.cli_app.ws_echo",
        le="+Inf",
    )
    assert inf == value(after, histogram, channel="websocket.receive", consumer="tests.e2e.cli_app.ws_echo")
    # (the WebSocket's connect and disconnect go to the default consumers)
    assert moved("trio_channels_worker_messages_total", outcome="consumed") == 3 + 1 + 4 + 1
    assert value(after, "trio_channels_layer_up") == 1
    assert moved("trio_channels_layer_messages_total") >= 3 + 1 + 4 + 1  # and the replies
    # Bounded labels: no reply channel name (interface.<random>!<connection>) is a label.
    assert not [key for key in after if any("!" in label for _, label in key[1])]


async def test_channel_full_is_counted_on_its_channel(tmp_path: Path) -> None:
    """A request refused by a full http.request channel is one ChannelFull on that channel."""
    (tmp_path / "metrics_settings.py").write_text(
        "CHANNEL_LAYERS = {'default': {'BACKEND': 'layers.InMemoryChannelLayer', "
        "'CONFIG': {'channel_capacity': {'http.request': 1}}, 'ROUTING': 'tests.e2e.cli_app:routing'}}\n"
    )
    env = {**ENV, "PYTHONPATH": f"{tmp_path}:{ENV['PYTHONPATH']}"}
    with trio.fail_after(60):
        async with metrics_server("--settings", "metrics_settings", "--concurrency", "1", env=env) as (
            _,
            url,
            metrics,
        ):
            async with httpx.AsyncClient(timeout=20) as client:
                before = await scrape(client, metrics)
                async with trio.open_nursery() as nursery:

                    async def slow(name: str) -> None:
                        await client.get(f"{url}/slow/1/{name}")

                    # One consumer runs (the worker takes it), one waits in the channel, the rest are refused.
                    statuses: list[int] = []

                    async def one() -> None:
                        statuses.append((await client.get(url + "/who")).status_code)

                    nursery.start_soon(slow, "s0")
                    await trio.sleep(0.5)
                    nursery.start_soon(slow, "s1")
                    await trio.sleep(0.3)
                    for _ in range(3):
                        nursery.start_soon(one)
                after = await scrape(client, metrics)
    refused = statuses.count(503)
    assert refused >= 1, statuses
    full = "trio_channels_channel_full_total"
    assert value(after, full, channel="http.request") - value(before, full, channel="http.request") == refused
    assert (
        value(after, "trio_channels_layer_channel_full_total")
        - value(before, "trio_channels_layer_channel_full_total")
        == refused
    )


async def test_dropped_work_is_counted_by_what() -> None:
    """Two requests nobody answered within --http-timeout: two http_timeout drops (logged once
    per minute, counted every time)."""
    with trio.fail_after(60):
        async with metrics_server("--http-timeout", "0.5") as (_, url, metrics):
            async with httpx.AsyncClient(timeout=20) as client:
                before = await scrape(client, metrics)
                for _ in range(2):
                    assert (await client.get(url + "/never")).status_code == 503
                after = await scrape(client, metrics)
    name = "trio_channels_interface_dropped_total"
    assert value(after, name, what="http_timeout") - value(before, name, what="http_timeout") == 2


async def test_the_metrics_listener_answers_only_metrics_and_stops_with_the_server() -> None:
    """Another path is a 404, another method a 405; keep-alive serves several scrapes; SIGTERM
    stops the listener with the server (a clean exit, the port closed)."""
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=20) as client:
            async with metrics_server() as (process, _url, metrics):
                base = metrics.removesuffix("/metrics")
                assert (await client.get(base + "/")).status_code == 404
                assert (await client.post(metrics, content=b"x")).status_code == 405
                head = await client.head(metrics)
                assert head.status_code == 200 and head.content == b""
                for _ in range(3):
                    await scrape(client, metrics)
                # A scraper that closes its connection (Prometheus does, after an error) is its own
                # business: regression test for a busy loop on the closed connection that kept
                # the server from stopping.
                async with httpx.AsyncClient(timeout=20) as once:
                    await scrape(once, metrics)
                await scrape(client, metrics)
            assert process.returncode == 0, process.output.text
            with pytest.raises(httpx.ConnectError):
                await client.get(metrics)


async def test_redis_round_trips_and_layer_errors(redis_server: RedisServer) -> None:
    """On Redis: round trips per server grow with traffic; with Redis gone, the scrape still
    answers, with layer_up 0 and the layer's ChannelLayerUnavailable counted."""
    server = f"redis://127.0.0.1:{redis_server.port}/0"
    with trio.fail_after(90):
        async with metrics_server("--layer", redis_server.url + "?prefix=metrics") as (_, url, metrics):
            async with httpx.AsyncClient(timeout=30) as client:
                before = await scrape(client, metrics)
                for _ in range(3):
                    assert (await client.get(url + "/who")).status_code == 200
                after = await scrape(client, metrics)
                rtt = "trio_channels_redis_round_trip_seconds_count"
                assert value(after, rtt, server=server) > value(before, rtt, server=server)
                assert value(after, "trio_channels_layer_errors_total", server=server) == 0
                assert value(after, "trio_channels_layer_up") == 1
                moved = value(
                    after, "trio_channels_channel_messages_sent_total", channel="http.request"
                ) - value(before, "trio_channels_channel_messages_sent_total", channel="http.request")
                assert moved == 3
                redis_server.stop()
                down = await scrape(client, metrics)
                assert value(down, "trio_channels_layer_up") == 0
                assert value(down, "trio_channels_layer_errors_total", server=server) >= 1
                assert value(down, "trio_channels_connections_accepted_total", kind="http") == 3


def _free_port_pair() -> int:
    """A port P with P and P + 1 both free now (for --processes 2)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no two consecutive free ports")


async def test_with_processes_each_child_serves_its_own_metrics_on_the_next_port(
    redis_server: RedisServer,
) -> None:
    """--processes 2 --metrics-bind HOST:P: child 1 on P, child 2 on P + 1, both named in the
    banner; each counts only its own connections, so their sum is every request."""
    port = _free_port_pair()
    layer = redis_server.url + "?prefix=metricsprocs"
    args = ("run", "tests.e2e.processes_app:routing", "--bind", "127.0.0.1:0", "--layer", layer)
    args += ("--processes", "2", "--metrics-bind", f"127.0.0.1:{port}")
    with trio.fail_after(90):
        async with running(*args) as (process, url), httpx.AsyncClient(timeout=30) as client:
            await process.output.wait_for_count("Prometheus metrics on ", 2)
            urls = re.findall(r"Prometheus metrics on (\S+)", process.output.text)
            assert urls == [f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{port + 1}/metrics"]
            before = [await scrape(client, metrics) for metrics in urls]
            prefixes = set()
            for _ in range(6):
                async with httpx.AsyncClient(timeout=30) as fresh:  # a new connection each time
                    response = await fresh.get(url + "/who")
                    prefixes.add(response.json()["prefix"])
            after = [await scrape(client, metrics) for metrics in urls]
    name = "trio_channels_connections_accepted_total"
    moved = [
        value(late, name, kind="http") - value(early, name, kind="http")
        for early, late in zip(before, after, strict=True)
    ]
    assert sum(moved) == 6, moved
    if len(prefixes) == 2:  # the kernel gave both children some (it usually does, not always)
        assert all(count > 0 for count in moved), moved


async def test_without_the_extra_metrics_bind_is_one_clear_error(tmp_path: Path) -> None:
    """Without prometheus_client, --metrics-bind is one line naming the extra, and exit status 2."""
    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'prometheus_client'\")\n")
    env = {**ENV, "PYTHONPATH": f"{tmp_path}:{ENV['PYTHONPATH']}"}
    command = [sys.executable, "-m", "trio_channels", "run", "--metrics-bind", "127.0.0.1:0"]
    with trio.fail_after(60):
        result = await trio.run_process(
            command, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "metrics_bind '127.0.0.1:0' needs prometheus_client" in lines[0]
    assert "pip install 'trio-channels[metrics]'" in lines[0]


async def test_a_bad_metrics_address_names_it() -> None:
    """--metrics-bind takes host:port only: a unix: path is refused, naming it (exit 2)."""
    command = [sys.executable, "-m", "trio_channels", "run", "--metrics-bind", "unix:/tmp/m.sock"]
    with trio.fail_after(60):
        result = await trio.run_process(
            command, env=ENV, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 2
    assert "metrics_bind 'unix:/tmp/m.sock' is invalid: write it as host:port" in result.stderr.decode()
