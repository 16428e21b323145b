"""Running ``python -m trio_channels`` processes from tests, and stopping them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@asynccontextmanager
async def started(command: list[str], marker: str, **options: Any) -> AsyncIterator[tuple[trio.Process, str]]:
    """Start *command*, wait for *marker* on its stdout, yield (process, the word after it).

    The process is stopped with SIGTERM afterwards (SIGKILL if it does not stop in 15 s).
    *options* go to ``trio.lowlevel.open_process``.
    """
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=ENV, cwd=ROOT, **options)
    assert process.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(30):
            while marker.encode() not in buffer:
                chunk = await process.stdout.receive_some()
                assert chunk, f"{command[:4]} exited early: {buffer!r}"
                buffer += chunk
        rest = buffer.decode().split(marker, 1)[1].split()
        yield process, rest[0] if rest else ""
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.stdout.aclose()


def running(*args: str, marker: str = " at ") -> AbstractAsyncContextManager[tuple[trio.Process, str]]:
    """``python -m trio_channels ARGS``; with the default marker, yields the URL it serves at."""
    return started([sys.executable, "-m", "trio_channels", *args], marker)
