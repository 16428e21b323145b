"""The worker: one layer poller feeding consumer tasks, under a capacity limiter.

Theory of operation
-------------------
The poller takes a slot from a ``trio.CapacityLimiter(concurrency)`` *before* it receives, so
while every slot is busy it stops pulling and leaves messages on the layer for other workers.
Each received message runs in its own task in the worker's nursery, under a cancel scope whose
deadline is the message's expiry (or ``consumer_timeout``); a message already past its expiry
is never started. The consumer's sends are buffered in an :class:`~trio_channels.channel.Outbox`
and flushed when it finishes, whatever way it finished.

Nothing a consumer does stops the worker: exceptions (any ``BaseException`` but cancellation
and ``KeyboardInterrupt``) are logged with their traceback and the message is dropped.
``ConsumeLater`` re-queues the message (10 times at most); ``DenyConnection`` on
``websocket.connect`` sends ``{"close": True}``. Layer errors (Redis down) are retried with
backoff. Shutdown (the ``shutdown`` event) stops the poller, gives running consumers
``grace_period`` seconds, then cancels them.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import sys
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from layers import BaseChannelLayer, ChannelFull
from layers._concurrency import leaves
from layers.base import validate_channel_name

from .channel import Channel, Message, Outbox, _current_outbox, use_layer
from .exceptions import ConsumeLater, DenyConnection
from .routing import Consumer, Router

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Worker", "WorkerStatistics", "run_worker", "select_channels"]

log = logging.getLogger("trio_channels.worker")

MESSAGE_RETRIES = 10


@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """What a worker has done so far."""

    consumed: int
    failed: int
    timed_out: int
    expired: int
    requeued: int
    unrouted: int
    running: int


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
    _limiter: trio.CapacityLimiter = attrs.field(init=False)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _counts: dict[str, int] = attrs.field(init=False)

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
        self._limiter = trio.CapacityLimiter(self.concurrency)
        self._counts = dict.fromkeys(
            ("consumed", "failed", "timed_out", "expired", "requeued", "unrouted"), 0
        )

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(**self._counts, running=self._limiter.borrowed_tokens)

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
                    with trio.CancelScope() as polling:
                        if shutdown is not None:
                            outer.start_soon(_cancel_when_set, shutdown, polling)
                        task_status.started(self)
                        await self._poll(consumers)
                    # The poller stopped (shutdown): running consumers get the grace period.
                    consumers.cancel_scope.deadline = trio.current_time() + self.grace_period
                outer.cancel_scope.cancel()

    async def _poll(self, consumers: trio.Nursery) -> None:
        failures = 0
        while True:
            token = next(self._tokens)
            await self._limiter.acquire_on_behalf_of(token)
            try:
                channel, content, deadline = await self.layer.receive_with_deadline(self.channels)
            except Exception as exc:
                self._limiter.release_on_behalf_of(token)
                failures += 1
                pause = min(5.0, 0.05 * 2**failures)
                log.warning(
                    "channel layer error (%s: %s); retrying in %.2f s", type(exc).__name__, exc, pause
                )
                await trio.sleep(pause)
                continue
            except BaseException:
                self._limiter.release_on_behalf_of(token)
                raise
            if failures:
                log.info("channel layer is back after %d failed receive(s)", failures)
                failures = 0
            consumers.start_soon(self._consume, token, channel, content, deadline)

    async def _consume(self, token: int, channel: str, content: dict[str, Any], deadline: float) -> None:
        try:
            await self._handle(channel, content, deadline)
        finally:
            self._limiter.release_on_behalf_of(token)

    async def _handle(self, channel: str, content: dict[str, Any], deadline: float) -> None:
        now = trio.current_time()
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
        outbox = Outbox(self.layer)
        _current_outbox.set(outbox)
        try:
            await self._run_consumer(consumer, message, kwargs, deadline, outbox)
        finally:
            _current_outbox.set(None)
            await outbox.flush(timeout=self.flush_timeout)

    async def _run_consumer(
        self, consumer: Consumer, message: Message, kwargs: dict[str, Any], deadline: float, outbox: Outbox
    ) -> None:
        name = self.router.consumer_name(consumer)
        channel = message.channel.name
        try:
            with trio.CancelScope(deadline=deadline) as scope:
                await consumer(message, **kwargs)
        except ConsumeLater:
            await self._requeue(message)
            return
        except DenyConnection:
            self._counts["failed" if channel != "websocket.connect" else "consumed"] += 1
            if channel == "websocket.connect" and message.reply_channel is not None:
                outbox.add(group=False, name=message.reply_channel.name, content={"close": True})
            else:
                log.error(
                    "consumer %s raised DenyConnection for a message on %r; it only applies to "
                    "websocket.connect consumers. The message was dropped",
                    name,
                    channel,
                )
            return
        except BaseException as exc:
            if _is_cancellation(exc):
                raise
            self._counts["failed"] += 1
            log.error(
                "error in consumer %s for a message on %r; the message was dropped",
                name,
                channel,
                exc_info=exc,
            )
            return
        if scope.cancelled_caught:
            self._counts["timed_out"] += 1
            remaining = "its message expired" if self.consumer_timeout is None else "consumer_timeout passed"
            log.warning("consumer %s for a message on %r was cancelled: %s", name, channel, remaining)
        else:
            self._counts["consumed"] += 1

    async def _requeue(self, message: Message) -> None:
        channel = message.channel.name
        retries = message.content.get("__retries__", 0) + 1
        if retries > MESSAGE_RETRIES:
            log.warning("dropped a message on %r after %d ConsumeLater retries", channel, MESSAGE_RETRIES)
            self._counts["failed"] += 1
            return
        message.content["__retries__"] = retries
        for _ in range(10):
            try:
                await self.layer.send(channel, message.content)
            except ChannelFull:
                await trio.sleep(0.05)
            else:
                self._counts["requeued"] += 1
                return
        log.warning("dropped a ConsumeLater message: channel %r stayed full", channel)


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


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
