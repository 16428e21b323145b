"""A Trio-native Redis connection: hiredis parses, redis-py packs, nothing hand-written.

Theory of operation
-------------------
A :class:`RedisConnection` is one socket with a writer task and a reader task. A caller
appends its packed command to the outgoing buffer and a :class:`_Pending` slot to a deque in
one synchronous step, so requests and slots are in the same order; the writer sends whatever
has accumulated in one write; the reader feeds every received chunk to a ``hiredis.Reader``
and completes slots in order. Many concurrent callers thus share the connection (pipelining).
A caller cancelled while waiting marks its slot abandoned: the reader still consumes that
reply and drops it, so a stale reply can never reach the next caller, and since only the
writer touches the socket a command is never half-written.

Errors are redis-py's: socket problems become ``redis.exceptions.ConnectionError`` (one place,
:func:`_map_errors`), timeouts ``TimeoutError``, error replies ``ResponseError`` and its
subclasses by the table redis-py's parsers use (:data:`_ERROR_CLASSES`, public classes only:
nothing here imports a private redis-py module). A connection that failed once is dead; the
:class:`ConnectionPool` makes a new one on the next request.
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final

import attrs
import hiredis
import trio
from redis import exceptions as errors
from redis.connection import HiredisRespSerializer, parse_url
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

__all__ = ["ConnectionPool", "RedisAddress", "RedisConnection", "RequestCounter"]

_NOT_ENOUGH_DATA = object()


@attrs.frozen(kw_only=True)
class RedisAddress:
    """Where and how to connect, from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Raises :exc:`ValueError` naming *url* if it cannot be parsed."""
        try:
            options = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"Redis URL {url!r} is invalid: {exc}") from None
        from urllib.parse import urlsplit

        database = urlsplit(url).path.strip("/")
        if not url.lower().startswith("unix:") and database and not database.isdigit():
            # redis-py's parse_url silently falls back to database 0 here.
            raise ValueError(
                f"Redis URL {url!r} is invalid: the database {database!r} must be a number, like /0"
            )
        return cls(
            host=options.get("host") or "localhost",
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            db=int(options.get("db") or 0),
            username=options.get("username"),
            password=options.get("password"),
            tls=url.lower().startswith("rediss://"),
            socket_timeout=float(options.get("socket_timeout") or 10.0),
        )

    def __str__(self) -> str:
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{'rediss' if self.tls else 'redis'}://{where}/{self.db}"


@contextlib.contextmanager
def _map_errors(address: RedisAddress) -> Iterator[None]:
    """The one place where I/O errors become redis-py's exceptions."""
    try:
        yield
    except trio.TooSlowError as exc:
        raise TimeoutError(f"Redis at {address} did not answer in time") from exc
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionError(f"Redis at {address}: {exc or type(exc).__name__}") from exc


@attrs.define(eq=False, slots=True)
class _Pending:
    event: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False


#: Error replies by their first word -> redis-py's (public) exception classes: the table its
#: own parsers use, so callers see what redis-py users see (the word is dropped from the text).
_ERROR_CLASSES: Final[dict[str, type[RedisError]]] = {
    "WRONGPASS": errors.AuthenticationError,
    "NOAUTH": errors.AuthenticationError,
    "NOPERM": errors.NoPermissionError,
    "NOSCRIPT": errors.NoScriptError,
    "READONLY": errors.ReadOnlyError,
    "LOADING": errors.BusyLoadingError,
    "EXECABORT": errors.ExecAbortError,
    "OOM": errors.OutOfMemoryError,
    "MASTERDOWN": errors.MasterDownError,
    "CLUSTERDOWN": errors.ClusterDownError,
    "CROSSSLOT": errors.ClusterCrossSlotError,
    "TRYAGAIN": errors.TryAgainError,
    "MOVED": errors.MovedError,
    "ASK": errors.AskError,
}
#: ``ERR`` replies that mean more than a failed command.
_ERR_CLASSES: Final[dict[str, type[RedisError]]] = {
    "max number of clients reached": ConnectionError,
    "invalid password": errors.AuthenticationError,
    "Client sent AUTH, but no password is set": errors.AuthenticationError,
    "AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?": errors.AuthenticationError,
    "wrong number of arguments for 'auth' command": errors.AuthenticationWrongNumberOfArgsError,
    "wrong number of arguments for 'AUTH' command": errors.AuthenticationWrongNumberOfArgsError,
}


def _error_reply(text: str) -> RedisError:
    word, _, rest = text.partition(" ")
    if word == "ERR":
        return _ERR_CLASSES.get(rest, ResponseError)(rest)
    error_class = _ERROR_CLASSES.get(word)
    try:
        return ResponseError(text) if error_class is None else error_class(rest)
    except Exception:  # MOVED/ASK parse their text; never let a reply break the reader
        return ResponseError(text)


@attrs.define(eq=False, slots=True)
class RequestCounter:
    """How many requests (:meth:`RedisConnection.execute_many` calls: one round trip each,
    whatever the number of commands in it) some connections have made."""

    requests: int = 0


@attrs.define(eq=False)
class RedisConnection:
    """One connection; see the module docstring. Use :meth:`open` inside a nursery."""

    address: RedisAddress
    counter: RequestCounter | None = None
    _stream: trio.abc.Stream | None = None
    _pending: deque[_Pending] = attrs.Factory(deque)
    _outgoing: bytearray = attrs.Factory(bytearray)
    _wake_writer: trio.Event = attrs.Factory(trio.Event)
    _serializer: HiredisRespSerializer = attrs.Factory(HiredisRespSerializer)
    _closed: trio.Event = attrs.Factory(trio.Event)
    _failure: BaseException | None = None

    @classmethod
    async def open(
        cls, address: RedisAddress, nursery: trio.Nursery, counter: RequestCounter | None = None
    ) -> RedisConnection:
        """Connect, start the reader in *nursery*, authenticate and select the database.

        Its requests are counted in *counter*, if given."""
        connection = cls(address, counter)
        with _map_errors(address), trio.fail_after(address.socket_timeout):
            if address.path:
                stream: trio.abc.Stream = await trio.open_unix_socket(address.path)
            else:
                stream = await trio.open_tcp_stream(address.host, address.port)
                if address.tls:
                    stream = trio.SSLStream(
                        stream, ssl.create_default_context(), server_hostname=address.host
                    )
                    await stream.do_handshake()
        connection._stream = stream
        # The tasks get the stream itself: the connection may be closed before they start.
        nursery.start_soon(connection._read_replies, stream)
        nursery.start_soon(connection._write_requests, stream)
        try:
            if address.password is not None:
                if address.username:
                    await connection.execute("AUTH", address.username, address.password)
                else:
                    await connection.execute("AUTH", address.password)
            if address.db:
                await connection.execute("SELECT", address.db)
        except BaseException:
            await connection.aclose()
            raise
        return connection

    @property
    def broken(self) -> bool:
        return self._closed.is_set()

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply (error replies are raised)."""
        (result,) = await self.execute_many([args])
        if isinstance(result, RedisError):  # an error reply (AuthenticationError is not a ResponseError)
            raise result
        return result

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send several commands in one write; error replies are returned, not raised."""
        if self._closed.is_set():
            raise ConnectionError(f"Redis at {self.address}: connection closed ({self._failure})")
        if self.counter is not None:
            self.counter.requests += 1
        for command in commands:
            for chunk in self._serializer.pack(*command):
                self._outgoing += chunk
        slots = [_Pending() for _ in commands]
        # Queued and slotted in the same synchronous step, so replies match requests; the
        # writer task sends whatever has accumulated in one write (concurrent callers share
        # syscalls as well as round trips).
        self._pending.extend(slots)
        self._wake_writer.set()
        try:
            for slot in slots:
                await slot.event.wait()
        except BaseException:
            for slot in slots:
                slot.abandoned = True  # its reply will be read and dropped
            raise
        results = []
        for slot in slots:
            if slot.error is not None:
                raise slot.error
            results.append(slot.result)
        return results

    async def _write_requests(self, stream: trio.abc.Stream) -> None:
        try:
            while True:
                await self._wake_writer.wait()
                if self._closed.is_set():
                    return
                self._wake_writer = trio.Event()
                data, self._outgoing = bytes(self._outgoing), bytearray()
                if not data:
                    continue
                with trio.fail_after(self.address.socket_timeout), _map_errors(self.address):
                    await stream.send_all(data)
        except (ConnectionError, TimeoutError) as exc:
            self._fail(exc)
            with trio.CancelScope(shield=True):
                await self._close_stream()

    async def _read_replies(self, stream: trio.abc.Stream) -> None:
        reader = hiredis.Reader(replyError=_error_reply, notEnoughData=_NOT_ENOUGH_DATA)
        try:
            while not self._closed.is_set():
                with _map_errors(self.address):
                    data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError(f"Redis at {self.address} closed the connection")
                reader.feed(bytes(data))
                while True:
                    reply = reader.gets()
                    if reply is _NOT_ENOUGH_DATA:
                        break
                    if not self._pending:
                        raise ConnectionError(f"Redis at {self.address} sent a reply nobody asked for")
                    slot = self._pending.popleft()
                    if not slot.abandoned:
                        slot.result = reply
                        slot.event.set()
        except (ConnectionError, hiredis.ProtocolError) as exc:
            self._fail(exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc)))
        finally:
            self._fail(ConnectionError(f"Redis at {self.address}: connection closed"))
            with trio.CancelScope(shield=True):
                await self._close_stream()

    def _fail(self, error: BaseException) -> None:
        if self._closed.is_set():
            return
        self._failure = error
        self._closed.set()
        self._wake_writer.set()  # the writer sees the connection closed and ends
        while self._pending:
            slot = self._pending.popleft()
            slot.error = error
            slot.event.set()

    async def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await trio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        """Close the connection; pending callers get ConnectionError. Idempotent."""
        self._fail(ConnectionError(f"Redis at {self.address}: connection closed"))
        await self._close_stream()


@attrs.define(eq=False)
class ConnectionPool:
    """Connections to one Redis server, living in the owner's *nursery*.

    ``shared()`` is the pipelined connection every short command uses (one is enough: it
    pipelines); ``dedicated()`` lends a connection for a blocking command and takes it back
    afterwards (or closes it if the command was interrupted, since its reply is unknown).
    ``on_connect`` runs on every new connection before anyone uses it (the layer checks there
    whether the server is the one it knew); if it raises, the connection is closed and the
    error reaches whoever asked for the connection.
    """

    address: RedisAddress
    nursery: trio.Nursery
    max_idle: int = 8
    on_connect: Callable[[RedisConnection], Awaitable[None]] | None = None
    #: The requests of every connection of the pool (for measurements: round trips).
    counter: RequestCounter = attrs.Factory(RequestCounter)
    _shared: RedisConnection | None = None
    _connecting: trio.Lock = attrs.Factory(trio.Lock)
    _idle: list[RedisConnection] = attrs.Factory(list)
    _all: set[RedisConnection] = attrs.Factory(set)

    async def _open(self) -> RedisConnection:
        connection = await RedisConnection.open(self.address, self.nursery, self.counter)
        if self.on_connect is not None:
            try:
                await self.on_connect(connection)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await connection.aclose()
                raise
        self._all.add(connection)
        return connection

    async def shared(self) -> RedisConnection:
        if self._shared is None or self._shared.broken:
            async with self._connecting:
                if self._shared is None or self._shared.broken:
                    self._shared = await self._open()
        return self._shared

    async def execute(self, *args: Any) -> Any:
        connection = await self.shared()
        return await connection.execute(*args)

    @contextlib.asynccontextmanager
    async def dedicated(self) -> Any:
        while self._idle:
            connection = self._idle.pop()
            if not connection.broken:
                break
        else:
            connection = await self._open()
        clean = False
        try:
            yield connection
            clean = True
        finally:
            if clean and not connection.broken and len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                self._all.discard(connection)
                with trio.CancelScope(shield=True):
                    await connection.aclose()

    async def aclose(self) -> None:
        for connection in list(self._all):
            await connection.aclose()
        self._all.clear()
        self._idle.clear()
        self._shared = None
