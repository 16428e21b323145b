"""``--metrics-bind``: ``GET /metrics`` in the Prometheus text format (the ``metrics`` extra).

Theory of operation
-------------------
Nothing polls in the background. A scrape reads what the running parts count already --
:meth:`~interface.InterfaceServer.statistics`, ``Worker.statistics()``, the
layer's :meth:`~layers.BaseChannelLayer.statistics` (global and per channel, for a bounded set
of channels: those this process's workers and interface use) and, on Redis, the round trips
and errors per server -- into a :class:`Snapshot` (:func:`take_snapshot`, the one awaiting
step: a shared layer answers over the network), then a custom prometheus_client collector
turns that snapshot into metric families (:func:`render`). Labels are bounded: kinds,
channel names from the routing (process-specific names by their prefix, never a full reply
channel name), consumer names, Redis servers.

The listener (:func:`serve_metrics`) is a task of ``serve()``'s nursery: a few lines of h11
per connection, keep-alive included, no thread (prometheus_client's ``start_http_server``
would start one). :doc:`/metrics` lists every metric.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
import h11
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from interface import InterfaceServer
from interface.counters import KINDS, InterfaceStatistics
from layers import BaseChannelLayer, ChannelLayerUnavailable, LayerStatistics
from layers.base import non_local_name
from layers.histograms import HistogramSnapshot

from .worker import Worker, WorkerStatistics

__all__ = [
    "INTERFACE_CHANNELS",
    "LAYER_TIMEOUT",
    "MAX_CHANNELS",
    "Snapshot",
    "render",
    "serve_metrics",
    "take_snapshot",
]

log = logging.getLogger("trio_channels.metrics")

#: The channels an interface sends to (its per-channel statistics are in every scrape).
INTERFACE_CHANNELS: Final = (
    "http.request",
    "http.disconnect",
    "websocket.connect",
    "websocket.receive",
    "websocket.disconnect",
)
#: At most this many channels get per-channel series (a routing with more: the first, sorted).
MAX_CHANNELS: Final = 50
#: Seconds a scrape waits for the layer's statistics before it answers without them.
LAYER_TIMEOUT: Final = 5.0
#: Seconds a metrics connection may take to send a request, and the largest head it may send.
REQUEST_TIMEOUT: Final = 10.0
MAX_REQUEST_HEAD: Final = 16 * 1024

P: Final = "trio_channels_"


@attrs.frozen(kw_only=True)
class Snapshot:
    """Everything one scrape shows, read at one moment (see the module docstring)."""

    interface: InterfaceStatistics | None
    workers: list[WorkerStatistics]
    #: ``None`` when the layer did not answer (down, or slower than :data:`LAYER_TIMEOUT`).
    layer: LayerStatistics | None
    channels: dict[str, LayerStatistics]
    #: ``(server, round trips, ChannelLayerUnavailable count)`` per Redis server.
    redis: list[tuple[str, HistogramSnapshot, int]]


def channels_of(interface: InterfaceServer | None, workers: Sequence[Worker]) -> list[str]:
    """The channels that get per-channel series: what the workers listen on and the interface
    sends to, process-specific names by their prefix, :data:`MAX_CHANNELS` at most."""
    names = {non_local_name(name) for worker in workers for name in worker.channels}
    if interface is not None:
        names.update(INTERFACE_CHANNELS)
    return sorted(name for name in names if "?" not in name)[:MAX_CHANNELS]


async def take_snapshot(
    layer: BaseChannelLayer, interface: InterfaceServer | None, workers: Sequence[Worker]
) -> Snapshot:
    """Read the counters of *layer*, *interface* and *workers* now.

    The layer's statistics get :data:`LAYER_TIMEOUT` seconds; if it is unavailable or slower,
    the snapshot has none (``layer`` is ``None``) and the rest is still there.
    """
    total: LayerStatistics | None = None
    channels: dict[str, LayerStatistics] = {}
    with trio.move_on_after(LAYER_TIMEOUT) as scope:
        try:
            total = await layer.statistics()
            for name in channels_of(interface, workers):
                channels[name] = await layer.statistics(name)
        except ChannelLayerUnavailable as exc:
            log.warning("metrics: the channel layer did not answer for its statistics (%s)", exc)
            total, channels = None, {}
    if scope.cancelled_caught:
        log.warning("metrics: the channel layer took over %g s for its statistics", LAYER_TIMEOUT)
        total, channels = None, {}
    servers = getattr(layer, "server_statistics", None)
    redis = [(s.server, s.round_trips, s.unavailable) for s in servers()] if servers is not None else []
    return Snapshot(
        interface=interface.statistics() if interface is not None else None,
        workers=[worker.statistics() for worker in workers],
        layer=total,
        channels=channels,
        redis=redis,
    )


# ----------------------------------------------------------------------------- the collector


def _histogram(family: HistogramMetricFamily, labels: list[str], snapshot: HistogramSnapshot) -> None:
    buckets = [
        (repr(float(bound)), count)
        for bound, count in zip(snapshot.buckets, snapshot.cumulative, strict=False)
    ]
    buckets.append(("+Inf", snapshot.count))
    family.add_metric(labels, buckets, snapshot.total)


def _summed(stats: Iterable[Mapping[Any, int]]) -> dict[Any, int]:
    total: dict[Any, int] = {}
    for counts in stats:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


@attrs.define(eq=False)
class _SnapshotCollector(Collector):
    """A prometheus_client collector for one :class:`Snapshot` (a registry per scrape)."""

    snapshot: Snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._interface()
        yield from self._workers()
        yield from self._layer()
        yield from self._redis()

    def _interface(self) -> Iterator[Metric]:
        stats = self.snapshot.interface
        if stats is None:
            return
        open_ = GaugeMetricFamily(
            P + "connections_open",
            "Connections open now: HTTP requests in flight, WebSockets open (from the handshake).",
            labels=["kind"],
        )
        accepted = CounterMetricFamily(
            P + "connections_accepted",
            "Connections taken on: HTTP requests, WebSocket handshakes (denied ones too).",
            labels=["kind"],
        )
        for kind in KINDS:
            open_.add_metric([kind], stats.open.get(kind, 0))
            accepted.add_metric([kind], stats.accepted.get(kind, 0))
        dropped = CounterMetricFamily(
            P + "interface_dropped",
            "What the interface dropped (and logged as a WARNING), by what: reply, frame, "
            "websocket.disconnect, http.disconnect, http_timeout, bad reply.",
            labels=["what"],
        )
        for what, count in sorted(stats.dropped.items()):
            dropped.add_metric([what], count)
        yield from (open_, accepted, dropped)

    def _workers(self) -> Iterator[Metric]:
        workers = self.snapshot.workers
        if not workers:
            return
        received = CounterMetricFamily(
            P + "channel_messages_received",
            "Messages this process's workers took from the layer, by channel.",
            labels=["channel"],
        )
        for channel, count in sorted(_summed(w.received for w in workers).items()):
            received.add_metric([channel], count)
        outcomes = CounterMetricFamily(
            P + "worker_messages",
            "Messages this process's workers handled, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("consumed", "failed", "timed_out", "expired", "requeued", "unrouted"):
            outcomes.add_metric([outcome], sum(getattr(w, outcome) for w in workers))
        running = GaugeMetricFamily(
            P + "consumers_running", "Consumers running now in this process's workers."
        )
        running.add_metric([], sum(w.running for w in workers))
        durations = HistogramMetricFamily(
            P + "consumer_duration_seconds",
            "How long consumers ran, by channel and consumer (the route that took the message).",
            labels=["channel", "consumer"],
        )
        merged: dict[tuple[str, str], HistogramSnapshot] = {}
        for worker in workers:
            for key, snapshot in worker.durations.items():
                known = merged.get(key)
                merged[key] = (
                    snapshot
                    if known is None
                    else HistogramSnapshot(
                        buckets=snapshot.buckets,
                        cumulative=tuple(
                            a + b for a, b in zip(known.cumulative, snapshot.cumulative, strict=True)
                        ),
                        total=known.total + snapshot.total,
                    )
                )
        for (channel, consumer), snapshot in sorted(merged.items()):
            _histogram(durations, [channel, consumer], snapshot)
        yield from (received, outcomes, running, durations)

    def _layer(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        up = GaugeMetricFamily(
            P + "layer_up", "1 if the channel layer answered this scrape's statistics, else 0."
        )
        up.add_metric([], 0 if snapshot.layer is None else 1)
        yield up
        total = snapshot.layer
        if total is None:
            return
        scope = " (on a shared layer: every process's, the same from each)"
        for name, help_, value, family in (
            ("layer_messages", "Messages the layer accepted", total.messages_count, CounterMetricFamily),
            (
                "layer_channel_full",
                "Sends the layer refused with ChannelFull",
                total.channel_full_count,
                CounterMetricFamily,
            ),
            (
                "layer_messages_pending",
                "Messages waiting in the layer now",
                total.messages_pending,
                GaugeMetricFamily,
            ),
            (
                "layer_oldest_message_age_seconds",
                "Age of the oldest waiting message",
                total.messages_max_age,
                GaugeMetricFamily,
            ),
        ):
            metric = family(P + name, help_ + scope + ".")
            metric.add_metric([], value)
            yield metric
        sent = CounterMetricFamily(
            P + "channel_messages_sent",
            "Messages the layer accepted for a channel, by channel" + scope + ".",
            labels=["channel"],
        )
        full = CounterMetricFamily(
            P + "channel_full", "Sends refused with ChannelFull, by channel" + scope + ".", labels=["channel"]
        )
        pending = GaugeMetricFamily(
            P + "channel_messages_pending",
            "Messages waiting now (queue depth), by channel.",
            labels=["channel"],
        )
        age = GaugeMetricFamily(
            P + "channel_oldest_message_age_seconds",
            "Age of the oldest waiting message, by channel.",
            labels=["channel"],
        )
        for channel, stats in snapshot.channels.items():
            sent.add_metric([channel], stats.messages_count)
            full.add_metric([channel], stats.channel_full_count)
            pending.add_metric([channel], stats.messages_pending)
            age.add_metric([channel], stats.messages_max_age)
        yield from (sent, full, pending, age)

    def _redis(self) -> Iterator[Metric]:
        if not self.snapshot.redis:
            return
        round_trips = HistogramMetricFamily(
            P + "redis_round_trip_seconds",
            "Round trips of this process's Redis commands (pipelined, not blocking ones), by server.",
            labels=["server"],
        )
        errors = CounterMetricFamily(
            P + "layer_errors",
            "ChannelLayerUnavailable raised by the layer's commands in this process, by server.",
            labels=["server"],
        )
        for server, snapshot, unavailable in self.snapshot.redis:
            _histogram(round_trips, [server], snapshot)
            errors.add_metric([server], unavailable)
        yield from (round_trips, errors)


def render(snapshot: Snapshot) -> bytes:
    """*snapshot* in the Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


# ----------------------------------------------------------------------------- the listener


async def _respond(
    connection: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    content_type: str,
    head: bool,
) -> None:
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    if body and not head:
        data += connection.send(h11.Data(data=body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _next_event(connection: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(bytes(await stream.receive_some(65536)))


@attrs.define(eq=False)
class _Handler:
    layer: BaseChannelLayer
    interface: InterfaceServer | None
    workers: Sequence[Worker]

    async def __call__(self, stream: trio.abc.Stream) -> None:
        try:
            async with stream:
                await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass  # the scraper left, or did not speak HTTP/1.1: its connection only
        except Exception:
            log.exception("metrics: a scrape failed; closed its connection")

    async def _serve(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        while True:
            request = None
            with trio.move_on_after(REQUEST_TIMEOUT):
                request = await _next_event(connection, stream)
                if isinstance(request, h11.Request):
                    # Read to the end of a body (not for us); once the client closed, every
                    # next event is ConnectionClosed again: stop there, do not spin on it.
                    while not isinstance(
                        await _next_event(connection, stream), (h11.EndOfMessage, h11.ConnectionClosed)
                    ):
                        pass
            if not isinstance(request, h11.Request) or connection.their_state is not h11.DONE:
                return  # timed out, or the client closed
            target = request.target.split(b"?", 1)[0]
            text = "text/plain; charset=utf-8"
            if request.method not in (b"GET", b"HEAD"):
                await _respond(connection, stream, 405, b"only GET and HEAD\n", text, False)
            elif target != b"/metrics":
                await _respond(connection, stream, 404, b"metrics are at /metrics\n", text, False)
            else:
                body = render(await take_snapshot(self.layer, self.interface, self.workers))
                await _respond(connection, stream, 200, body, CONTENT_TYPE_LATEST, request.method == b"HEAD")
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()


async def serve_metrics(
    sock: socket.socket,
    layer: BaseChannelLayer,
    interface: InterfaceServer | None,
    workers: Sequence[Worker],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on the bound, listening *sock* until cancelled.

    ``task_status.started()`` hands back the URL (``http://host:port/metrics``). The socket is
    closed on the way out. A connection that breaks or speaks no HTTP/1.1 is closed, nothing else.
    """
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    handler = _Handler(layer, interface, workers)
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [listener])
        task_status.started(url)
