"""The worker: ``concurrency`` long-lived consumer tasks, each pulling from the layer while free.

Theory of operation
-------------------
A worker runs ``concurrency`` long-lived consumer tasks. Each one receives from the layer
only while it is free, so while every task is busy the worker stops pulling and leaves
messages on the layer for other workers (the layer's receive is the capacity limit; no task
is spawned per message). Each message is consumed under a cancel scope whose deadline is the
message's expiry (or ``consumer_timeout``); a message already past its expiry is never
started. The consumer's sends are buffered in an :class:`~trio_channels.channel.Outbox`
and flushed when it finishes, whatever way it finished.

Nothing a consumer does stops the worker: exceptions (any ``BaseException`` but cancellation
and ``KeyboardInterrupt``) are logged with their traceback and the message is dropped.
An ``http.request`` consumer that fails (raises, or is cancelled) still gets its client an
answer at once, through the reply channel like any reply: a 500 (503 when the worker is
stopping) if no part of the response reached the client, else the response is aborted.
``ConsumeLater`` re-queues the message (10 times at most); ``DenyConnection`` on
``websocket.connect`` sends ``{"close": True}``. Layer errors (Redis down) are retried with
backoff. Shutdown (the ``shutdown`` event) stops the consumer tasks pulling, gives running consumers
``grace_period`` seconds, then cancels them.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import sys
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import attrs
import trio

from interface.protocol import HttpResponseProtocol
from layers import BaseChannelLayer, ChannelLayerUnavailable
from layers.base import non_local_name, send_or_wait, validate_channel_name
from layers.concurrency import leaves
from layers.histograms import Histogram, HistogramSnapshot

from .channel import Channel, Message, Outbox, use_layer, use_outbox
from .exceptions import ConsumeLater, DenyConnection, RequestAborted
from .routing import Consumer, Router

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Worker", "WorkerStatistics", "run_consumer", "run_worker", "select_channels"]

log = logging.getLogger("trio_channels.worker")

MESSAGE_RETRIES = 10


@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """What a worker has done so far.

    ``received`` counts the messages taken from the layer by channel; ``durations`` how long
    consumers ran, by ``(channel, consumer name)``.
    """

    consumed: int
    failed: int
    timed_out: int
    expired: int
    requeued: int
    unrouted: int
    running: int
    received: Mapping[str, int] = attrs.Factory(dict)
    durations: Mapping[tuple[str, str], HistogramSnapshot] = attrs.Factory(dict)


def select_channels(
    channels: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[str]:
    """Filter *channels* by ``--only-channels`` then ``--exclude-channels`` globs."""
    only, exclude = list(only), list(exclude)
    selected = sorted(channels)
    if only:
        selected = [name for name in selected if any(fnmatch.fnmatchcase(name, glob) for glob in only)]
    if exclude:
        selected = [name for name in selected if not any(fnmatch.fnmatchcase(name, glob) for glob in exclude)]
    return selected


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(isinstance(leaf, (trio.Cancelled, KeyboardInterrupt)) for leaf in leaves(exc))
    return isinstance(exc, (trio.Cancelled, KeyboardInterrupt))


class _Puller:
    """One consumer task of a worker: its cancel scope, and whether it waits for a message."""

    __slots__ = ("scope", "waiting")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.waiting = False


@attrs.define(eq=False)
class Worker:
    """Consumes messages from *layer* on the channels *router* handles.

    Build it with :func:`run_worker` (or construct and ``await worker.run()``).
    """

    layer: BaseChannelLayer
    router: Router
    channels: list[str]
    concurrency: int = 100
    consumer_timeout: float | None = None
    flush_timeout: float = 2.0
    grace_period: float = 10.0
    _counts: dict[str, int] = attrs.field(init=False)
    _running: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _pulling: set[_Puller] = attrs.field(factory=set, init=False)
    _received: dict[str, int] = attrs.field(factory=dict, init=False)
    _durations: dict[tuple[str, str], Histogram] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if type(self.concurrency) is not int or self.concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {self.concurrency!r}")
        if self.consumer_timeout is not None and not self.consumer_timeout > 0:
            raise ValueError(
                f"consumer_timeout must be a positive number of seconds, got {self.consumer_timeout!r}"
            )
        if not self.channels:
            raise ValueError(
                "the worker has no channels to listen on (check --only-channels/--exclude-channels)"
            )
        for name in self.channels:
            validate_channel_name(name, receive=True)
        self._counts = dict.fromkeys(
            ("consumed", "failed", "timed_out", "expired", "requeued", "unrouted"), 0
        )

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            **self._counts,
            running=self._running,
            received=dict(self._received),
            durations={key: histogram.snapshot() for key, histogram in self._durations.items()},
        )

    async def run(
        self,
        *,
        shutdown: trio.Event | None = None,
        task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume until cancelled, or until *shutdown* is set (then drain for ``grace_period``)."""
        log.info("worker listening on channels: %s", ", ".join(self.channels))
        with use_layer(self.layer):
            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as consumers:
                    for _ in range(self.concurrency):
                        consumers.start_soon(self._consume_loop)
                    if shutdown is not None:
                        outer.start_soon(self._stop_when_set, shutdown, consumers.cancel_scope)
                    task_status.started(self)
                outer.cancel_scope.cancel()

    async def _stop_when_set(self, shutdown: trio.Event, consumers: trio.CancelScope) -> None:
        await shutdown.wait()
        # Stop pulling: idle consumers leave at once, busy ones after their message...
        self._stopping = True
        for puller in list(self._pulling):
            if puller.waiting:
                puller.scope.cancel()
        # ...within the grace period.
        consumers.deadline = trio.current_time() + self.grace_period

    async def _consume_loop(self) -> None:
        # One of `concurrency` long-lived consumer tasks. Each pulls only when it is free, so a
        # worker whose consumers are all busy leaves messages on the layer for other workers.
        # One cancel scope at a time for the task, not one per message (entering a scope costs
        # more than moving a deadline): while a consumer runs, its deadline is the message's
        # (see _consume), else none; stopping cancels it only while the task waits for a
        # message (a receive loses nothing to a cancel), never while it handles one. A scope
        # that a message's deadline cancelled is replaced.
        puller = _Puller(trio.CancelScope())
        self._pulling.add(puller)
        try:
            while not self._stopping:
                with trio.CancelScope() as scope:
                    puller.scope = scope
                    while not self._stopping and not scope.cancel_called:
                        puller.waiting = True
                        try:
                            channel, content, deadline = await self.layer.receive_with_deadline(self.channels)
                        except ChannelLayerUnavailable as exc:
                            await self._layer_trouble(exc)
                            continue
                        finally:
                            puller.waiting = False
                        if self._failures:
                            log.info("channel layer is back after %d failed receive(s)", self._failures)
                            self._failures = 0
                        self._running += 1
                        try:
                            await self._handle(channel, content, deadline, scope)
                        finally:
                            self._running -= 1
        finally:
            self._pulling.discard(puller)

    async def _layer_trouble(self, exc: ChannelLayerUnavailable) -> None:
        self._failures += 1
        pause = min(5.0, 0.05 * 2 ** min(self._failures, 10))
        if self._failures == 1 or self._failures % 50 == 0:
            log.warning(
                "channel layer error (%s: %s); retrying with backoff (%d failures so far)",
                type(exc).__name__,
                exc,
                self._failures,
            )
        await trio.sleep(pause)

    async def _handle(
        self, channel: str, content: dict[str, Any], deadline: float, scope: trio.CancelScope
    ) -> None:
        now = trio.current_time()
        key = non_local_name(channel)  # a process-specific name counts under its prefix
        self._received[key] = self._received.get(key, 0) + 1
        if now >= deadline:
            self._counts["expired"] += 1
            log.warning("dropped a message on %r: it expired before a consumer could start", channel)
            return
        message = Message(content, Channel(channel, layer=self.layer), self.layer, deadline)
        found = self.router.match(message)
        if found is None:
            self._counts["unrouted"] += 1
            log.warning("no route matches a message on %r; dropped it (keys: %s)", channel, sorted(content))
            return
        consumer, kwargs = found
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s", channel, self.router.consumer_name(consumer))
        if self.consumer_timeout is not None:
            deadline = now + self.consumer_timeout
        name = self.router.consumer_name(consumer)
        histogram = self._durations.get((key, name))
        if histogram is None:
            histogram = self._durations[(key, name)] = Histogram()
        try:
            try:
                await _consume(consumer, message, kwargs, scope, deadline, self.flush_timeout)
            finally:
                histogram.observe(trio.current_time() - now)
        except ConsumeLater:
            await self._requeue(message)
            return
        except RequestAborted as exc:
            # The client left, or its body was too large (the interface answered 413).
            self._counts["consumed"] += 1
            log.info("consumer %s abandoned a request on %r: %s", name, channel, exc)
            return
        except DenyConnection:
            self._counts["failed"] += 1
            log.error(
                "consumer %s raised DenyConnection for a message on %r; it only applies to "
                "websocket.connect consumers. The message was dropped",
                name,
                channel,
            )
            return
        except BaseException as exc:
            if _is_cancellation(exc):
                if scope.cancel_called:  # by the message's deadline: the task's loop goes on
                    self._counts["timed_out"] += 1
                    remaining = (
                        "its message expired" if self.consumer_timeout is None else "consumer_timeout passed"
                    )
                    log.warning("consumer %s for a message on %r was cancelled: %s", name, channel, remaining)
                raise
            self._counts["failed"] += 1
            log.error(
                "error in consumer %s for a message on %r; the message was dropped",
                name,
                channel,
                exc_info=exc,
            )
            return
        self._counts["consumed"] += 1

    async def _requeue(self, message: Message) -> None:
        channel = message.channel.name
        retries = message.content.get("__retries__", 0) + 1
        if retries > MESSAGE_RETRIES:
            log.warning("dropped a message on %r after %d ConsumeLater retries", channel, MESSAGE_RETRIES)
            self._counts["failed"] += 1
            return
        message.content["__retries__"] = retries
        try:
            await send_or_wait(partial(self.layer.send, channel, message.content), 0.5)
        except trio.TooSlowError:
            log.warning("dropped a ConsumeLater message: channel %r stayed full", channel)
        except ChannelLayerUnavailable as exc:
            log.warning("dropped a ConsumeLater message for %r: %s", channel, exc)
        else:
            self._counts["requeued"] += 1


async def run_consumer(
    consumer: Consumer,
    message: Message,
    kwargs: dict[str, Any],
    *,
    deadline: float = math.inf,
    flush_timeout: float = 2.0,
) -> bool:
    """Run one consumer as a worker does; return False if *deadline* cancelled it.

    Its sends are buffered and flushed afterwards, also when it raised. ``DenyConnection`` on
    ``websocket.connect`` becomes ``{"close": True}`` to the reply channel; every other
    exception (``DenyConnection`` elsewhere, ``ConsumeLater``...) propagates to the caller.
    An ``http.request`` consumer that raised or was cancelled has its failure answered on the
    reply channel: a 500 (503 if cancelled from outside), or a ``closed`` chunk if part of the
    response was sent; ``ConsumeLater`` and ``RequestAborted`` are not failures.
    """
    with trio.CancelScope() as scope:
        await _consume(consumer, message, kwargs, scope, deadline, flush_timeout)
    return not scope.cancelled_caught


async def _consume(
    consumer: Consumer,
    message: Message,
    kwargs: dict[str, Any],
    scope: trio.CancelScope,
    deadline: float,
    flush_timeout: float,
) -> None:
    # run_consumer's body, in *scope* (the worker's consumer task's own): its deadline is
    # *deadline* while the consumer runs; a cancel by it propagates to *scope* after the
    # failure was answered and the outbox flushed (shielded then: the scope is cancelled).
    outbox = Outbox(message.channel_layer)
    reply = _HttpReply.of(message)
    if reply is not None:
        outbox.watcher = reply.saw
    failure: str | None = "error"
    try:
        scope.deadline = deadline
        try:
            with use_outbox(outbox):
                await consumer(message, **kwargs)
        finally:
            scope.deadline = math.inf
        failure = None
    except DenyConnection:
        if message.channel.name != "websocket.connect" or not message.has_reply_channel:
            raise
        failure = None
        outbox.add(group=False, name=message.reply_channel.name, content={"close": True})
    except (ConsumeLater, RequestAborted):
        failure = None
        raise
    except BaseException as exc:
        if _is_cancellation(exc):
            failure = "timeout" if scope.cancel_called else "cancelled"
        raise
    finally:
        if failure is not None and reply is not None:
            reply.answer_failure(outbox, failure)
        await outbox.flush(timeout=flush_timeout)


#: How a failed ``http.request`` consumer is answered, by the way it failed.
_FAILURE_ANSWERS: dict[str, tuple[int, bytes]] = {
    "error": (500, b"500 Internal Server Error\n"),
    "timeout": (500, b"500 Internal Server Error: the consumer timed out.\n"),
    "cancelled": (503, b"503 Service Unavailable: the worker stopped before answering.\n"),
}


def _follow(state: HttpResponseProtocol, content: dict[str, Any]) -> None:
    try:
        state.reply(content)
    except ValueError:
        state.finished = True  # a bad response message: the interface answers it itself


@attrs.define(eq=False)
class _HttpReply:
    """What an ``http.request`` consumer sent to its reply channel, to answer its failure.

    Immediate sends have reached the client; buffered ones (in the outbox) have not. If the
    whole response is out or buffered, it stands. If part of it reached the client, the
    response is aborted with a ``closed`` chunk. Otherwise a half-built buffered response is
    dropped and the client gets a 500.
    """

    reply_channel: str
    sent: HttpResponseProtocol = attrs.Factory(HttpResponseProtocol)

    @classmethod
    def of(cls, message: Message) -> _HttpReply | None:
        if message.channel.name == "http.request" and message.has_reply_channel:
            return cls(message.reply_channel.name)
        return None

    def saw(self, channel: str, content: dict[str, Any]) -> None:
        """An immediate send made by the consumer."""
        if channel == self.reply_channel and not self.sent.finished:
            _follow(self.sent, content)

    def answer_failure(self, outbox: Outbox, failure: str) -> None:
        after_flush = attrs.evolve(self.sent)
        for content in outbox.buffered(self.reply_channel):
            _follow(after_flush, content)
        if after_flush.finished:
            return
        if self.sent.started:
            closed = {"content": b"", "more_content": False, "closed": True}
            outbox.add(group=False, name=self.reply_channel, content=closed)
            return
        status, text = _FAILURE_ANSWERS[failure]
        headers = [[b"content-type", b"text/plain; charset=utf-8"], [b"content-length", b"%d" % len(text)]]
        outbox.discard(self.reply_channel)
        outbox.add(
            group=False,
            name=self.reply_channel,
            content={"status": status, "headers": headers, "content": text, "more_content": False},
        )


async def run_worker(
    layer: BaseChannelLayer,
    routing: Any,
    *,
    only_channels: Iterable[str] = (),
    exclude_channels: Iterable[str] = (),
    concurrency: int = 100,
    consumer_timeout: float | None = None,
    grace_period: float = 10.0,
    http_fallback: Consumer | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a worker for *routing* (a list, a dotted path, or a :class:`Router`) on *layer*.

    Listens on every channel the routing handles, narrowed by the *only_channels* and
    *exclude_channels* globs. ``task_status.started()`` hands back the :class:`Worker` once it
    is about to pull messages. Runs until cancelled, or until *shutdown* is set (then running
    consumers get *grace_period* seconds). Routing errors (a bad dotted path, a plain ``def``
    consumer) are raised before anything starts.
    """
    router = routing if isinstance(routing, Router) else Router(routing, http_fallback=http_fallback)
    worker = Worker(
        layer,
        router,
        select_channels(router.channels(), only_channels, exclude_channels),
        concurrency=concurrency,
        consumer_timeout=consumer_timeout,
        grace_period=grace_period,
    )
    await worker.run(shutdown=shutdown, task_status=task_status)
