"""``run --reload``: restart the server when its source changes (for development).

A supervisor process binds the listening sockets once, then runs the server as a child
process (``python -m trio_channels run ...`` with the same arguments), handing it the bound
sockets, so the port stays the same and no connection is refused between two children. It
watches the ``--reload-dir`` directories with :func:`watchfiles.awatch` (the operating
system's change notifications, on Trio through anyio: no polling loop of ours) and restarts
the child when a ``.py`` file changes: SIGTERM (its graceful shutdown), SIGKILL if it is
still running ``grace_period + 5`` seconds later.

A child that exits by itself (a syntax error after an edit is one line on stderr and exit
status 2) is not restarted until the next change. SIGINT and SIGTERM to the supervisor are
forwarded to the child (which runs in its own session, so Ctrl+C in a terminal reaches it
once, through the supervisor); the supervisor exits with the child's status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs
import trio

__all__ = ["Reloader"]

log = logging.getLogger("trio_channels.reload")

#: Set in the child's environment: which inherited file descriptors are its ``--bind`` and
#: ``--ws-bind`` sockets (``{"bind": [3], "ws_bind": [4]}``). Internal to the reloader.
CHILD_SOCKETS_ENV = "TRIO_CHANNELS_RELOAD_SOCKETS"


def child_sockets() -> tuple[list[str], list[str]] | None:
    """In a child of the reloader: its ``--bind`` and ``--ws-bind`` addresses (``fd://N``)."""
    value = os.environ.get(CHILD_SOCKETS_ENV)
    if not value:
        return None
    fds = json.loads(value)
    return [f"fd://{fd}" for fd in fds["bind"]], [f"fd://{fd}" for fd in fds["ws_bind"]]


@attrs.define(eq=False)
class Reloader:
    """Runs ``python -m trio_channels ARGV`` and restarts it when files in *directories*
    (absolute paths) change."""

    argv: Sequence[str]
    directories: Sequence[str]
    binds: Sequence[socket.socket]
    ws_binds: Sequence[socket.socket]
    grace_period: float = 10
    _process: trio.Process | None = None
    _changed: trio.Event = attrs.Factory(trio.Event)
    _stopping: int | None = None  # the signal that stops us, once one came

    async def run(self) -> int:
        """Supervise until SIGINT/SIGTERM; the exit status of the last child (0 if none runs)."""
        status = 0
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, stop)
            nursery.start_soon(self._watch, stop)
            log.info("reloading on changes to .py files in %s", ", ".join(self.directories))
            while self._stopping is None:
                self._changed = trio.Event()
                self._process = await nursery.start(self._run_child)
                status = await self._wait(self._process)
                if self._stopping is not None:
                    break
                if not self._changed.is_set():
                    log.warning(
                        "the server exited with status %s; waiting for a change to restart it", status
                    )
                    await _first(self._changed.wait, stop.wait)
                    if self._stopping is not None:
                        status = 0  # stopped while nothing ran
            nursery.cancel_scope.cancel()
        return status

    async def _run_child(self, *, task_status: trio.TaskStatus[trio.Process]) -> None:
        fds = {
            "bind": [sock.fileno() for sock in self.binds],
            "ws_bind": [sock.fileno() for sock in self.ws_binds],
        }
        env = {**os.environ, CHILD_SOCKETS_ENV: json.dumps(fds)}
        # Its own session: a terminal's Ctrl+C reaches the supervisor only, which forwards it once.
        await trio.run_process(
            [sys.executable, "-m", "trio_channels", *self.argv],
            check=False,
            env=env,
            pass_fds=[*fds["bind"], *fds["ws_bind"]],
            start_new_session=True,
            task_status=task_status,
            deliver_cancel=self._kill,
        )

    async def _wait(self, process: trio.Process) -> int:
        """Until the child exits by itself, or a change restarts it; its exit status."""
        try:
            await _first(process.wait, self._changed.wait)
            if process.returncode is None:
                log.info("detected a change; restarting the server")
                await self._stop(process, signal.SIGTERM)
            return await process.wait()
        finally:
            self._process = None

    async def _stop(self, process: trio.Process, signum: int) -> None:
        process.send_signal(signum)
        with trio.move_on_after(self.grace_period + 5):
            await process.wait()
        if process.returncode is None:
            process.kill()

    async def _kill(self, process: trio.Process) -> None:
        # Cancelled (a hard stop of the supervisor): stop the child as the CLI would.
        await self._stop(process, signal.SIGTERM)

    async def _signals(self, stop: trio.Event) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._stopping = signum
                stop.set()
                if self._process is not None and self._process.returncode is None:
                    self._process.send_signal(signum)  # a second one stops the child at once, as usual

    async def _watch(self, stop: trio.Event) -> None:
        from watchfiles import PythonFilter, awatch  # the optional extra "reload"

        # *stop* tells watchfiles' watcher thread to return (it checks it every 50 ms), so a
        # shutdown does not wait for its 5 s timeout.
        changes_seen = awatch(*self.directories, watch_filter=PythonFilter(), stop_event=stop)
        async for changes in changes_seen:
            names = sorted({Path(path).name for _, path in changes})
            log.info("changed: %s", ", ".join(names))
            self._changed.set()


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return when the first of *waits* (async callables) returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)
