"""Child server processes under a supervisor: ``--processes N`` and ``--reload``.

A supervisor is a small Trio program. It binds the listening sockets once (the command line
does, with :func:`~interface.listeners.bind_sockets`), then runs its children: ``python -m
trio_channels run ...`` (or ``worker ...``) with the same arguments, in one nursery of
:func:`trio.run_process` tasks. Each child inherits the bound sockets (file descriptors it
serves as ``fd://N``) and one end of a *control* socket pair, all named in its environment
(``TRIO_CHANNELS_SUPERVISED``):

* the child writes one JSON line on the control socket once it serves (its pid, URLs, layer
  and channels); the supervisor prints the banner when every child has;
* the child watches the control socket too: end-of-file means the supervisor is gone (even
  killed with SIGKILL), and the child shuts down gracefully instead of holding the port.

Every child accepts from the same sockets, so there is one accept queue per address: the
kernel wakes the idle children and one of them takes the connection; a connection queued
while a child restarts is taken by another. (Why not ``SO_REUSEPORT``: see
:doc:`deployment`.)

SIGINT and SIGTERM to the supervisor are forwarded to every child (each runs in its own
session, so a terminal's Ctrl+C reaches it once, through the supervisor), and each drains as
a single server does: 1001 to WebSockets, the grace period for requests in flight. The
supervisor closes its own copies of the sockets at once, so once the children stopped
accepting, new connections are refused; it exits when every child has. A child still running
``grace_period + 5`` seconds after the first signal is killed. A second signal is forwarded
too (the children stop at once); after a second SIGINT the exit status is 130.

Two policies share this machinery:

``--processes N`` (``Supervisor(processes=N)``)
    A child that exits by itself is restarted after a backoff (:class:`RestartPolicy`),
    logged as one line. The supervisor gives up (:attr:`Supervisor.error`, the other children
    stopped) when a child exits before every child had been ready once (a start-up failure:
    status 2), or when children exited five times within ten seconds (systemd's default start
    limit; status 1).
``--reload`` (``Supervisor(reload_directories=...)``)
    One child, restarted when a ``.py`` file under the directories changes (watched with
    ``watchfiles.awatch``: the operating system's notifications, no polling loop of ours);
    SIGTERM stops the old child gracefully first. A child that exits by itself (a syntax error
    after an edit is one line and status 2) waits for the next change.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from interface.listeners import close_sockets

__all__ = ["RestartPolicy", "Supervised", "Supervisor", "cpu_count", "describe_exit"]

log = logging.getLogger("trio_channels.supervisor")

#: In a child's environment: what the supervisor handed it, as JSON: its number, the inherited
#: file descriptors of its ``--bind`` and ``--ws-bind`` sockets and of its control socket
#: (``{"index": 1, "bind": [3], "ws_bind": [4], "control": 5}``). Internal to the supervisor.
SUPERVISED_ENV = "TRIO_CHANNELS_SUPERVISED"


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def describe_exit(returncode: int) -> str:
    """How a process ended, for a log line: ``exited with status 1``, ``was killed by SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


# ----------------------------------------------------------------------------- the child's side


@attrs.frozen(kw_only=True)
class Supervised:
    """What a supervised child was handed; :meth:`from_environment` reads it."""

    #: The child's number, 1 to N.
    index: int
    #: Its ``--bind`` and ``--ws-bind`` addresses: the inherited sockets, as ``fd://N``.
    bind: tuple[str, ...]
    ws_bind: tuple[str, ...]
    #: The file descriptor of its end of the control socket.
    control: int

    @classmethod
    def from_environment(cls) -> Supervised | None:
        """In a child of a supervisor, what it was handed (and the variable is removed from
        ``os.environ``, so the application's own subprocesses do not inherit it); else ``None``."""
        value = os.environ.pop(SUPERVISED_ENV, None)
        if not value:
            return None
        fds = json.loads(value)
        return cls(
            index=fds["index"],
            bind=tuple(f"fd://{fd}" for fd in fds["bind"]),
            ws_bind=tuple(f"fd://{fd}" for fd in fds["ws_bind"]),
            control=fds["control"],
        )

    def report_ready(self, report: Mapping[str, Any]) -> None:
        """Tell the supervisor this child serves: *report* (JSON values) as one line.

        A plain blocking write of a few hundred bytes to a socket nobody else writes to: the
        socket buffer takes it at once. A supervisor already gone is not an error here
        (:meth:`wait_orphaned` notices).
        """
        try:
            os.write(self.control, json.dumps(report).encode() + b"\n")
        except OSError:
            pass

    async def wait_orphaned(self) -> None:
        """Return when the supervisor is gone: its end of the control socket closed.

        The supervisor never writes to it, so readable means end-of-file (or an error).
        """
        while True:
            await trio.lowlevel.wait_readable(self.control)
            try:
                if not os.read(self.control, 64):
                    return
            except OSError:
                return


# ----------------------------------------------------------------------------- the policy


@attrs.define
class RestartPolicy:
    """When a child that exited is restarted, and when the supervisor gives up (pure: the
    caller passes the time)."""

    #: Seconds before the first restart of a child; doubled for each exit in a row...
    first_delay: float = 0.5
    #: ... up to this many seconds.
    max_delay: float = 30.0
    #: A child that ran this many seconds starts a new row: its restart waits ``first_delay``.
    stable_after: float = 10.0
    #: Give up when children (all together) exited ``limit`` times within ``window`` seconds.
    limit: int = 5
    window: float = 10.0
    _exits: collections.deque[float] = attrs.field(factory=collections.deque, init=False)

    def crash_loop(self, now: float) -> bool:
        """Record an exit at *now* (seconds); whether it makes ``limit`` within ``window``."""
        self._exits.append(now)
        while self._exits and self._exits[0] <= now - self.window:
            self._exits.popleft()
        return len(self._exits) >= self.limit

    def failures(self, previous: int, ran_for: float) -> int:
        """The exits in a row of a child slot, now that its child exited after *ran_for* seconds."""
        return previous + 1 if ran_for < self.stable_after else 1

    def delay(self, failures: int) -> float:
        """Seconds to wait before restarting after the *failures*-th exit in a row (1, 2, ...)."""
        return float(min(self.max_delay, self.first_delay * 2 ** (failures - 1)))


# ----------------------------------------------------------------------------- the supervisor


@attrs.define(eq=False)
class _Slot:
    """One of the N children, across its restarts."""

    index: int
    process: trio.Process | None = None
    pid: int = 0
    failures: int = 0
    #: Stopped by the supervisor for a reload: start it again at once.
    reloading: bool = False
    status: int | None = None


def _ignore(reports: list[dict[str, Any]]) -> None:
    pass


@attrs.define(eq=False)
class Supervisor:
    """Runs ``python -m trio_channels ARGV`` as supervised children on *binds* and *ws_binds*
    (bound, listening sockets); see the module docstring."""

    argv: Sequence[str]
    binds: Sequence[socket.socket] = ()
    ws_binds: Sequence[socket.socket] = ()
    #: How many children run at once (with ``reload_directories``: 1).
    processes: int = 1
    #: The children's grace period: a child still running this long + 5 s after the first
    #: signal is killed.
    grace_period: float = 10
    #: ``--reload``: restart when a ``.py`` file under these directories (absolute) changes.
    reload_directories: Sequence[str] | None = None
    #: Called with every child's ready report (``pid``, ``urls``, ``ws_urls``, ``layer``,
    #: ``channels``) once all are ready; with ``--reload``, each time the child is.
    on_ready: Callable[[list[dict[str, Any]]], None] = _ignore
    policy: RestartPolicy = attrs.Factory(RestartPolicy)
    #: Why the supervisor gave up (one line), or ``None``.
    error: str | None = None
    _error_status: int = 1
    _slots: list[_Slot] = attrs.Factory(list)
    _ready: dict[int, dict[str, Any]] = attrs.Factory(dict)
    _all_ready_once: bool = False
    _stopping: int | None = None  # the first stop signal
    _forced_by: int | None = None  # a second one
    _stop: trio.Event = attrs.Factory(trio.Event)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _nursery: trio.Nursery | None = None

    def __attrs_post_init__(self) -> None:
        if self.reload_directories is not None and self.processes != 1:
            raise ValueError(f"--reload runs one process, not {self.processes}")
        self._slots = [_Slot(index) for index in range(1, self.processes + 1)]

    async def run(self) -> int:
        """Supervise until SIGINT/SIGTERM (or giving up); the exit status for the command line:
        0 if every child stopped cleanly, 130 after a second SIGINT, :attr:`error`'s status
        (2 or 1) if it gave up, else 1."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._signals)
            if self.reload_directories is not None:
                nursery.start_soon(self._watch)
                log.info("reloading on changes to .py files in %s", ", ".join(self.reload_directories))
            async with trio.open_nursery() as children:
                for slot in self._slots:
                    children.start_soon(self._supervise, slot)
            nursery.cancel_scope.cancel()
        if self.error is not None:
            return self._error_status
        if self._forced_by == signal.SIGINT:
            return 130
        clean = (0, -signal.SIGTERM, -signal.SIGINT, None)  # None: not running when stopped
        return 0 if all(slot.status in clean for slot in self._slots) else 1

    @property
    def _reload(self) -> bool:
        return self.reload_directories is not None

    async def _supervise(self, slot: _Slot) -> None:
        """Run *slot*'s child again and again, as the policy says, until stopped."""
        while self._stopping is None:
            generation = self._changed
            slot.reloading = False
            status, ran_for = await self._run_child(slot)
            slot.status = status
            if self._stopping is not None:
                return
            if slot.reloading:
                continue
            if self._reload:
                log.warning("the server exited with status %s; waiting for a change to restart it", status)
                await _first(generation.wait, self._stop.wait)
                slot.status = None
                continue
            what = f"process {slot.index} (pid {slot.pid}) {describe_exit(status)}"
            if not self._all_ready_once:  # a start-up failure: the next child would fail the same way
                self._give_up(f"{what} before it was ready; giving up", 2)
                return
            if self.policy.crash_loop(trio.current_time()):
                policy = self.policy
                self._give_up(
                    f"{what}: {policy.limit} exits within {policy.window:g} s, a crash loop; giving up", 1
                )
                return
            slot.failures = self.policy.failures(slot.failures, ran_for)
            delay = self.policy.delay(slot.failures)
            log.warning("%s; restarting it in %g s", what, delay)
            with trio.move_on_after(delay):
                await self._stop.wait()

    async def _run_child(self, slot: _Slot) -> tuple[int, float]:
        """Start *slot*'s child and wait until it exits: (its exit status, how many seconds it ran)."""
        stdlib_ours, theirs = socket.socketpair()
        ours = trio.socket.from_stdlib_socket(stdlib_ours)
        bind, ws_bind = [sock.fileno() for sock in self.binds], [sock.fileno() for sock in self.ws_binds]
        handed = {"index": slot.index, "bind": bind, "ws_bind": ws_bind, "control": theirs.fileno()}
        env = {**os.environ, SUPERVISED_ENV: json.dumps(handed)}
        started_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                try:
                    # Its own session: a terminal's Ctrl+C reaches the supervisor only, which forwards it once.
                    process: trio.Process = await nursery.start(
                        partial(
                            trio.run_process,
                            [sys.executable, "-m", "trio_channels", *self.argv],
                            check=False,
                            env=env,
                            pass_fds=[*bind, *ws_bind, theirs.fileno()],
                            start_new_session=True,
                            deliver_cancel=self._terminate,
                        )
                    )
                finally:
                    theirs.close()  # the child has its copy; the supervisor keeps `ours` open while it runs
                slot.process, slot.pid = process, process.pid
                if self._stopping is not None:  # a signal came while it was starting
                    process.send_signal(self._stopping)
                if not self._reload:
                    log.info("started process %d (pid %d)", slot.index, process.pid)
                report = await _read_report(ours)
                if report is not None:
                    self._child_ready(slot, report)
                await process.wait()
        finally:
            ours.close()
            slot.process = None
            self._ready.pop(slot.index, None)
        assert process.returncode is not None
        return process.returncode, trio.current_time() - started_at

    def _child_ready(self, slot: _Slot, report: dict[str, Any]) -> None:
        self._ready[slot.index] = report
        if self._reload:
            self.on_ready([report])
        elif self._all_ready_once:
            log.info("process %d (pid %d) is ready again", slot.index, slot.pid)
        elif len(self._ready) == len(self._slots):
            self._all_ready_once = True
            self.on_ready([self._ready[index] for index in sorted(self._ready)])

    def _give_up(self, message: str, status: int) -> None:
        if self.error is None:
            self.error, self._error_status = message, status
        self._begin_stop(signal.SIGTERM)

    def _begin_stop(self, signum: int) -> None:
        """Forward *signum* to every child; the first time, stop restarting them."""
        if self._stopping is None:
            self._stopping = signum
            self._stop.set()
            # The children keep their copies while they drain; once they stopped accepting and
            # these are closed too, a new connection is refused rather than left waiting.
            close_sockets([*self.binds, *self.ws_binds])
            assert self._nursery is not None
            self._nursery.start_soon(self._deadline)
        else:
            self._forced_by = signum
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signum)

    async def _deadline(self) -> None:
        await trio.sleep(self.grace_period + 5)
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                log.warning(
                    "process %d (pid %d) did not stop within %g s; killing it",
                    slot.index,
                    slot.pid,
                    self.grace_period + 5,
                )
                slot.process.kill()

    async def _terminate(self, process: trio.Process) -> None:
        """Stop *process* as the command line would: SIGTERM, SIGKILL if it is still running
        ``grace_period + 5`` seconds later."""
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.grace_period + 5):
            await process.wait()
        if process.returncode is None:
            process.kill()

    async def _signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if self._stopping is None and not self._reload:
                    log.info(
                        "received %s: stopping %d processes", signal.Signals(signum).name, len(self._slots)
                    )
                self._begin_stop(signum)

    async def _watch(self) -> None:
        from watchfiles import PythonFilter, awatch  # the optional extra "reload"

        # _stop tells watchfiles' watcher thread to return (it checks it every 50 ms), so a
        # shutdown does not wait for its 5 s timeout.
        assert self.reload_directories is not None
        changes_seen = awatch(*self.reload_directories, watch_filter=PythonFilter(), stop_event=self._stop)
        async for changes in changes_seen:
            names = sorted({Path(path).name for _, path in changes})
            log.info("changed: %s", ", ".join(names))
            changed, self._changed = self._changed, trio.Event()
            changed.set()
            for slot in self._slots:
                process = slot.process
                if process is not None and process.returncode is None and not slot.reloading:
                    slot.reloading = True
                    log.info("detected a change; restarting the server")
                    assert self._nursery is not None
                    self._nursery.start_soon(self._terminate, process)


async def _read_report(sock: trio.socket.SocketType) -> dict[str, Any] | None:
    """The JSON line a child writes on its control socket once it is ready; ``None`` if it
    closed the socket first (it exited)."""
    data = b""
    while b"\n" not in data:
        chunk = await sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    report: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return report


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return when the first of *waits* (async callables) returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)
