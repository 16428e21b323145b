"""What every benchmark server process does: raise its fd limit, report Trio tasks on SIGUSR1.

``kill -USR1 <pid>`` makes a server that called :func:`install` write one line
``trio-tasks <N>`` to its stdout (fd 1, unbuffered): the number of Trio tasks alive in its
``trio.run``, counted from the root task down. ``benchmarks/compare.py`` reads it to report tasks
per idle WebSocket. The handler is a plain Python signal handler, so the server under test needs
no change: it runs between two bytecodes of whatever task was running, walks the task tree
(nothing else runs meanwhile) and writes with ``os.write``.
"""

from __future__ import annotations

import os
import resource
import signal
from types import FrameType

import trio

TASKS_MARKER = "trio-tasks"


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (10,000 sockets need it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def count_tasks(task: trio.lowlevel.Task) -> int:
    """*task* and every task below it."""
    return 1 + sum(count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks)


def _report(signum: int, frame: FrameType | None) -> None:
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:  # not inside trio.run (starting or stopping)
        root = None
    count = -1 if root is None else count_tasks(root)
    os.write(1, f"{TASKS_MARKER} {count}\n".encode())


def install() -> None:
    """Raise the fd limit and install the SIGUSR1 task report (call before ``trio.run``)."""
    raise_fd_limit()
    signal.signal(signal.SIGUSR1, _report)
