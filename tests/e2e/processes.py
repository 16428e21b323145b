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

import attrs
import trio

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@attrs.define(eq=False)
class Output:
    """What a process printed so far, on stdout and stderr, read as it comes (so a chatty
    process never blocks on a full pipe)."""

    stdout: bytearray = attrs.Factory(bytearray)
    stderr: bytearray = attrs.Factory(bytearray)
    closed: int = 0
    _grew: trio.Event = attrs.Factory(trio.Event)

    async def drain(self, stream: trio.abc.ReceiveStream, buffer: bytearray) -> None:
        async with stream:
            while chunk := await stream.receive_some():
                buffer += chunk
                self._grew.set()
                self._grew = trio.Event()
        self.closed += 1
        self._grew.set()

    @property
    def text(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")

    async def wait_for(self, marker: str, *, timeout: float = 30) -> str:
        """Wait until *marker* appears on either stream; return the text after it. Fails if
        the process closes its output first."""
        with trio.fail_after(timeout):
            while True:
                for buffer in (self.stderr, self.stdout):
                    text = buffer.decode(errors="replace")
                    if marker in text:
                        return text.split(marker, 1)[1]
                if self.closed == 2:
                    raise AssertionError(f"the process ended before printing {marker!r}:\n{self.text}")
                await self._grew.wait()

    async def wait_for_count(self, marker: str, count: int, *, timeout: float = 30) -> None:
        """Wait until *marker* appeared *count* times on stderr and stdout together."""
        with trio.fail_after(timeout):
            while self.text.count(marker) < count:
                if self.closed == 2:
                    raise AssertionError(
                        f"the process ended before printing {marker!r} {count} times:\n{self.text}"
                    )
                await self._grew.wait()

    async def ended(self) -> None:
        """Wait until the process has closed both streams (it exited)."""
        with trio.fail_after(30):
            while self.closed < 2:
                await self._grew.wait()


@attrs.define(eq=False)
class Running:
    """A started process and what it printed; ``process, url = running`` unpacks it."""

    process: trio.Process
    found: str
    output: Output

    def __iter__(self) -> Any:
        return iter((self, self.found))

    # The trio.Process interface the tests use.
    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def pid(self) -> int:
        return self.process.pid

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        return await self.process.wait()


@asynccontextmanager
async def started(command: list[str], marker: str, **options: Any) -> AsyncIterator[Running]:
    """Start *command*, wait for *marker* in its output, yield it (``.found``: the word after
    the marker; unpacks as ``(process, found)``).

    The server logs its banner on stderr; both streams are read as they come. The process is
    stopped with SIGTERM afterwards (SIGKILL if it does not stop in 15 s). *options* go to
    ``trio.lowlevel.open_process`` (``env``, ``cwd`` override the defaults).
    """
    options.setdefault("env", ENV)
    options.setdefault("cwd", ROOT)
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
    )
    assert process.stdout is not None and process.stderr is not None
    output = Output()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.drain, process.stdout, output.stdout)
            nursery.start_soon(output.drain, process.stderr, output.stderr)
            try:
                rest = (await output.wait_for(marker)).split()
                yield Running(process, rest[0] if rest else "", output)
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(15):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def running(*args: str, marker: str = " at ", **options: Any) -> AbstractAsyncContextManager[Running]:
    """``python -m trio_channels ARGS``; with the default marker, yields the URL it serves at."""
    return started([sys.executable, "-m", "trio_channels", *args], marker, **options)
