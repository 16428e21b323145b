"""Running ``python -m trio_channels`` processes from tests, and stopping them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@asynccontextmanager
async def running(*args: str, marker: str = " at http://") -> AsyncIterator[tuple[trio.Process, str]]:
    """Start the CLI, wait for *marker* in its output, yield (process, rest of that line).

    The process is stopped with SIGTERM afterwards (SIGKILL if it does not stop in 15 s).
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_channels", *args], stdout=subprocess.PIPE, env=ENV, cwd=ROOT
    )
    assert process.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(30):
            while marker.encode() not in buffer:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the process exited early: {buffer!r}"
                buffer += chunk
        rest = buffer.decode().split(marker, 1)[1]
        yield process, (marker.strip().split()[-1] if marker.startswith(" at ") else "") + rest.split()[0]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.stdout.aclose()
