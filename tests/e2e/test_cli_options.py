"""Every option of ``python -m trio_channels``, through the real command line: a process of its
own, real sockets, real clients (issue 17 §1).

``test_every_flag_is_tested_through_the_cli`` keeps it so: each flag the parser knows must
appear in one of the ``tests/e2e/test_cli*.py`` files.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from trio_channels import __version__
from trio_channels.cli import options

from ..redis_server import RedisServer
from .conftest import ws_url
from .processes import ENV, ROOT, running
from .raw_websocket import RawWebSocket

APP = "tests.e2e.cli_app:routing"
FREE = ("--bind", "127.0.0.1:0")
#: A line in the one log format: "2025-01-31 12:00:00 INFO name: message".
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (CRITICAL|ERROR|WARNING|INFO|DEBUG|TRACE) [\w.-]+: ")


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_channels", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=cwd,
        timeout=60,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line (argparse's own errors come after its usage lines), exit status 2."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(lines[0]), "nothing after the error"
    return lines[0]


async def get(url: str, path: str, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url + path, **options)


# -- the command line itself -------------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"trio_channels {__version__} (") and "Trio " in result.stdout


def test_every_flag_is_tested_through_the_cli() -> None:
    """Each flag (and ROUTING, through its variable) is used by a test that runs the CLI."""
    sources = "".join(path.read_text() for path in Path(__file__).parent.glob("test_cli*.py"))
    missing = sorted(
        {
            option.flag
            for option in options()
            if option.flag.startswith("--") and f'"{option.flag}"' not in sources
        }
    )
    assert missing == []
    assert "TRIO_CHANNELS_ROUTING" in sources


async def test_module_attr_paths_and_environment_variables() -> None:
    """ROUTING as module:attr (here from TRIO_CHANNELS_ROUTING), --http-app as a dotted path,
    --bind from TRIO_CHANNELS_BIND: every option has its variable."""
    env = {
        **ENV,
        "TRIO_CHANNELS_ROUTING": APP,
        "TRIO_CHANNELS_BIND": "127.0.0.1:0",
        "TRIO_CHANNELS_HTTP_APP": "tests.e2e.cli_app.asgi_app",
    }
    async with running("run", env=env) as (_, url):
        assert (await get(url, "/who")).json()["path"] == "/who"
        assert (await get(url, "/elsewhere")).text == "from the ASGI app /elsewhere"
    # The flag beats the variable.
    async with running(
        "run", APP, "--bind", "127.0.0.1:0", env={**ENV, "TRIO_CHANNELS_BIND": "nonsense"}
    ) as (_, url):
        assert (await get(url, "/who")).status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRIO_CHANNELS_CONCURRENCY": "many"}, "environment variable TRIO_CHANNELS_CONCURRENCY='many' is invalid for --concurrency"),
        ({"TRIO_CHANNELS_CONCURRENCY": "0"}, "concurrency must be an int >= 1, got 0"),
        ({"TRIO_CHANNELS_LOG_LEVEL": "loud"}, "TRIO_CHANNELS_LOG_LEVEL='loud' is invalid for --log-level"),
        ({"TRIO_CHANNELS_PROXY_HEADERS": "maybe"}, "TRIO_CHANNELS_PROXY_HEADERS='maybe' is invalid"),
        ({"FORWARDED_ALLOW_IPS": "localhost"}, "forwarded_allow_ips entry 'localhost' is invalid"),
        ({"TRIO_CHANNELS_UDS_PERMS": "999"}, "TRIO_CHANNELS_UDS_PERMS='999' is invalid for --uds-perms"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_one_line_naming_it(env: dict[str, str], message: str) -> None:
    assert message in one_error_line(run_cli("run", *FREE, env=env))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "concurrency must be an int >= 1, got 0"),
        (["--ws-max-size", "0"], "websocket_max_message_size must be an int >= 1 (bytes), got 0"),
        (["--limit-concurrency", "0"], "limit_concurrency must be an int >= 1 or None, got 0"),
        (["--timeout-keep-alive", "-1"], "timeout_keep_alive must be a number of seconds > 0, got -1.0"),
        (["--uds-perms", "8"], "argument --uds-perms: invalid octal mode value: '8'"),
        (["--forwarded-allow-ips", "10.0.0.0/33"], "forwarded_allow_ips entry '10.0.0.0/33' is invalid"),
        (["--root-path", "app"], "root_path must be '' or a path starting with '/', got 'app'"),
        (["--reload-dir", "/nonexistent", "--reload"], "--reload-dir '/nonexistent' is not a directory"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option(args: list[str], message: str) -> None:
    assert message in one_error_line(run_cli("run", APP, *FREE, *args))


# -- proxies ------------------------------------------------------------------------------------

FORWARDED = {"X-Forwarded-For": "198.51.100.7, 10.0.0.1", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("args", "env", "client", "scheme"),
    [
        # --proxy-headers trusts the default, 127.0.0.1: the rightmost untrusted entry is the client.
        (["--proxy-headers"], {}, "10.0.0.1", "https"),
        # Naming the proxies (uvicorn's variable) trusts them: 10.0.0.1 is a proxy too.
        ([], {"FORWARDED_ALLOW_IPS": "127.0.0.1,10.0.0.0/8"}, "198.51.100.7", "https"),
        (["--forwarded-allow-ips", "*"], {}, "198.51.100.7", "https"),
        # The peer (127.0.0.1) is not trusted: the headers are ignored.
        (["--forwarded-allow-ips", "10.9.9.9"], {}, "127.0.0.1", "http"),
        # Without --proxy-headers nothing is honoured.
        ([], {}, "127.0.0.1", "http"),
        ([], {"TRIO_CHANNELS_PROXY_HEADERS": "yes"}, "10.0.0.1", "https"),
    ],
)
async def test_proxy_headers_from_trusted_proxies_only(
    args: list[str], env: dict[str, str], client: str, scheme: str
) -> None:
    async with running("run", APP, *FREE, "--root-path", "/app", *args, env={**ENV, **env}) as (_, url):
        seen = (await get(url, "/who", headers=FORWARDED)).json()
    assert (seen["client"][0], seen["scheme"], seen["root_path"]) == (client, scheme, "/app")


# -- WebSockets and limits ------------------------------------------------------------------------


async def test_ws_max_size_and_ws_protocol() -> None:
    args = ("--ws-max-size", "100", "--ws-protocol", "chat", "--ws-protocol", "v2")
    async with running("run", APP, *FREE, *args) as (_, url):
        with trio.fail_after(20):
            async with open_websocket_url(ws_url(url, "/echo/"), subprotocols=["x", "v2"]) as ws:
                assert ws.subprotocol == "v2"
                await ws.send_message("a" * 50)
                assert await ws.get_message() == "a" * 50
                await ws.send_message("a" * 200)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1009


async def test_limit_concurrency_answers_503_above_it() -> None:
    """With --limit-concurrency 1 and one request in flight, a request gets 503 and a WebSocket
    handshake is denied with 503; once it finished, both work again."""
    async with running("run", APP, *FREE, "--limit-concurrency", "1") as (process, url):
        async with trio.open_nursery() as nursery:
            first: list[httpx.Response] = []

            async def hold() -> None:
                first.append(await get(url, "/slow/3/held"))

            nursery.start_soon(hold)
            await process.output.wait_for("slow start held")
            refused = await get(url, "/who")
            assert refused.status_code == 503 and b"too many" in refused.content
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(ws_url(url, "/echo/")):
                    pass
            assert rejected.value.status_code == 503
        assert first[0].text == "done"
        assert (await get(url, "/who")).status_code == 200


async def test_concurrency_runs_one_consumer_at_a_time() -> None:
    """--concurrency 1: the second slow request's consumer starts only after the first ended."""
    async with running("run", APP, *FREE, "--concurrency", "1") as (process, url):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, url, "/slow/1/a")
            await process.output.wait_for("slow start a")
            nursery.start_soon(get, url, "/slow/0/b")
            await process.output.wait_for("slow start b")
        out = process.output.stdout.decode()
        assert out.index("slow end a") < out.index("slow start b")


async def test_timeouts() -> None:
    """--http-timeout (503), --websocket-connect-timeout (403), --websocket-timeout (a lifetime,
    then 1000), --max-body-size (413), each far below its default."""
    args = ("--http-timeout", "1", "--websocket-connect-timeout", "1", "--websocket-timeout", "2", "--max-body-size", "10",
            "--grace-period", "0")  # fmt: skip
    async with running("run", APP, *FREE, *args) as (_, url):
        with trio.fail_after(10):
            assert (await get(url, "/never")).status_code == 503  # default: 120 s
        with trio.fail_after(4), pytest.raises(ConnectionRejected) as rejected:  # default: 5 s
            async with open_websocket_url(ws_url(url, "/noaccept/")):
                pass
        assert rejected.value.status_code == 403
        with trio.fail_after(15):  # default: the layer's group_expiry, a day
            async with open_websocket_url(ws_url(url, "/echo/")) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1000
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(url + "/who", content=b"x" * 100)).status_code == 413
    # The consumer's own deadline: cancelled, its client answered 500 at once.
    async with running("run", APP, *FREE, "--consumer-timeout", "0.5") as (_, url):
        with trio.fail_after(10):
            response = await get(url, "/never")
        assert response.status_code == 500 and b"timed out" in response.content


async def test_ping_interval_and_timeout() -> None:
    """A client that never answers pings is closed (1011) after --ping-interval + --ping-timeout."""
    async with running("run", APP, *FREE, "--ping-interval", "0.5", "--ping-timeout", "1") as (_, url):
        with trio.fail_after(15):
            client = await RawWebSocket.connect(ws_url(url, "/echo/"))
            try:
                assert await client.close_frame() == 1011
            finally:
                await client.aclose()


async def _keep_alive_connection(url: str) -> tuple[trio.SocketStream, h11.Connection]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(client.send(h11.Request(method="GET", target="/who", headers=[("host", "x")])))
    await stream.send_all(client.send(h11.EndOfMessage()))
    await _next(stream, client, h11.EndOfMessage)
    client.start_next_cycle()
    return stream, client


async def _next(stream: trio.SocketStream, client: h11.Connection, kind: type[Any]) -> Any:
    """The next event of type *kind* from the server."""
    with trio.fail_after(20):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some())
            elif isinstance(event, kind):
                return event


async def test_timeout_keep_alive() -> None:
    """An idle keep-alive connection is closed after --timeout-keep-alive; with a longer one
    it outlives the default (5 s) and serves a second request."""
    async with running("run", APP, *FREE, "--timeout-keep-alive", "1") as (_, url):
        stream, _ = await _keep_alive_connection(url)
        with trio.fail_after(20):
            assert await stream.receive_some() == b""  # closed by the server
        await stream.aclose()
    async with running("run", APP, *FREE, "--timeout-keep-alive", "60") as (_, url):
        stream, client = await _keep_alive_connection(url)
        await trio.sleep(7)
        await stream.send_all(client.send(h11.Request(method="GET", target="/who", headers=[("host", "x")])))
        await stream.send_all(client.send(h11.EndOfMessage()))
        assert (await _next(stream, client, h11.Response)).status_code == 200
        await stream.aclose()


async def test_static_files_and_grace_period(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("static a")
    args = ("--static-root", str(tmp_path), "--static-url", "/files/", "--grace-period", "1")
    async with running("run", APP, *FREE, *args) as (process, url):
        assert (await get(url, "/files/a.txt")).text == "static a"
        assert (await get(url, "/static/a.txt")).status_code == 404

        async def cut_off() -> None:
            with pytest.raises(httpx.HTTPError):  # no answer: the grace period ended first
                await get(url, "/never")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut_off)
            await process.output.wait_for("never started")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(6):  # the default grace period would take 10 s
                await process.wait()
            nursery.cancel_scope.cancel()
        assert process.returncode == 0


# -- sessions, workers, channels ------------------------------------------------------------------


async def test_session_store_and_worker_channels(redis_server: RedisServer) -> None:
    """--session-store puts HTTP sessions in Redis; a worker with --only-channels or
    --exclude-channels consumes only those channels (the rest stays unanswered)."""
    import redis

    layer = ("--layer", redis_server.url)
    store = ("--session-store", redis_server.url)
    async with (
        running("run", APP, *FREE, "--noworker", "--http-timeout", "2", *layer) as (_, url),
        running(
            "worker", APP, *layer, *store, "--only-channels", "websocket.*", marker="worker listening on"
        ),
        running("worker", APP, *layer, *store, "--exclude-channels", "http.*", marker="worker listening on"),
    ):
        with trio.fail_after(20):
            async with open_websocket_url(ws_url(url, "/echo/")) as ws:
                await ws.send_message("ws works")
                assert await ws.get_message() == "ws works"
            assert (await get(url, "/who")).status_code == 503  # no worker takes http.request
    async with running("run", APP, *FREE, *store) as (_, url):
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(url + "/visit")).text == "1"
            assert (await client.get(url + "/visit")).text == "2"
        keys = redis.Redis.from_url(redis_server.url).keys("trio_channels:session*")
        assert len(keys) == 1


# -- logging ---------------------------------------------------------------------------------------


async def test_one_log_format_for_banner_logs_and_access_log() -> None:
    """The banner, the logs and the access log are one format; the access log carries the
    client's port (Daphne's ``host:port``) and the HTTP version, on stdout."""
    async with running("run", APP, *FREE) as (process, url):
        assert (await get(url, "/who")).status_code == 200
        with trio.fail_after(20):
            async with open_websocket_url(ws_url(url, "/echo/")) as ws:
                await ws.send_message("x")
                await ws.get_message()
        await process.output.wait_for("WSDISCONNECT")
    banner = next(line for line in process.output.stderr.decode().splitlines() if " serving " in line)
    assert LINE.match(banner) and " INFO trio_channels: serving " in banner, banner
    access = [line for line in process.output.stdout.decode().splitlines() if "interface.access" in line]
    assert access and all(LINE.match(line) for line in access), access
    assert any(
        re.search(r'127\.0\.0\.1:\d+ - - \[.+\] "GET /who HTTP/1\.1" 200 \d+$', line) for line in access
    )
    assert any('"WSCONNECT /echo/"' in line for line in access)


async def test_log_level_and_verbosity() -> None:
    for args in (["--log-level", "debug"], ["-v", "2"], ["--verbosity", "2"], ["--log-level", "trace"]):
        async with running("run", APP, *FREE, *args) as (process, url):
            await get(url, "/who")
            await process.output.wait_for("http.request -> ")
    async with running("run", APP, *FREE, "--log-level", "info") as (process, url):
        await get(url, "/who")
        await process.output.wait_for("GET /who")
    assert "http.request -> " not in process.output.text, "debug lines at info"


def _log_config(tmp_path: Path, suffix: str) -> Path:
    """A user's dictConfig: its own format, the banner logger kept at INFO, the rest at WARNING."""
    config = {
        "version": 1,
        "formatters": {"mine": {"format": "MINE %(levelname)s %(message)s"}},
        "handlers": {
            "out": {"class": "logging.StreamHandler", "formatter": "mine", "stream": "ext://sys.stderr"}
        },
        "loggers": {"trio_channels": {"level": "INFO"}},
        "root": {"handlers": ["out"], "level": "WARNING"},
    }
    path = tmp_path / f"logging{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(config))
    else:
        import yaml

        path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
async def test_log_config_file(tmp_path: Path, suffix: str) -> None:
    config = _log_config(tmp_path, suffix)
    async with running("run", APP, *FREE, "--log-level", "warning", "--log-config", str(config)) as (
        process,
        url,
    ):
        await get(url, "/who")
    banner = next(line for line in process.output.stderr.decode().splitlines() if " serving " in line)
    assert banner.startswith("MINE INFO serving ")
    assert "interface.access" not in process.output.text, "no access log at warning"


def test_log_config_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    assert "log config" in one_error_line(
        run_cli("run", APP, *FREE, "--log-config", str(tmp_path / "bad.json"))
    )
    (tmp_path / "conf.ini").write_text("[loggers]")
    assert "must be a .json, .yaml or .yml file" in one_error_line(
        run_cli("run", APP, *FREE, "--log-config", str(tmp_path / "conf.ini"))
    )
    # Without PyYAML (a yaml module that cannot be imported shadows it), YAML is a clear error.
    (tmp_path / "nopyyaml").mkdir()
    (tmp_path / "nopyyaml" / "yaml.py").write_text("raise ImportError('No module named yaml')\n")
    (tmp_path / "c.yaml").write_text("version: 1\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "nopyyaml"), str(ROOT)])}
    line = one_error_line(run_cli("run", APP, *FREE, "--log-config", str(tmp_path / "c.yaml"), env=env))
    assert "needs PyYAML: pip install pyyaml" in line


async def test_access_log_file_and_no_access_log(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    async with running("run", APP, *FREE, "--access-log", str(log_file)) as (process, url):
        await get(url, "/who")
        await get(url, "/who")
    assert log_file.read_text().count('"GET /who HTTP/1.1" 200') == 2
    assert "interface.access" not in process.output.text
    async with running("run", APP, *FREE, "--no-access-log") as (process, url):
        await get(url, "/who")
        await process.output.wait_for(" serving ")
    assert "interface.access" not in process.output.text


# -- Unix sockets ------------------------------------------------------------------------------------


async def _get_unix(path: Path, target: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), timeout=30) as client:
        return await client.get("http://localhost" + target)


async def test_unix_socket_mode_and_cleanup(tmp_path: Path) -> None:
    """unix: sockets get --uds-perms (default 0660) and are removed on exit; a stale file from a
    crashed run is replaced; a live server's socket is "address already in use"."""
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a crashed run: the file stays, nobody listens
    stale.close()
    async with running("run", APP, "--bind", f"unix:{path}") as (process, where):
        assert where == f"http://unix:{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert (await _get_unix(path, "/who")).json()["client"] is None
        line = one_error_line(run_cli("run", APP, "--bind", f"unix:{path}"))
        assert "address already in use" in line
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await process.wait()
    assert process.returncode == 0 and not path.exists()
    async with running("run", APP, "--bind", f"unix:{path}", "--uds-perms", "600"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert (await _get_unix(path, "/who")).status_code == 200
    assert not path.exists()


async def test_ws_bind_unix_socket_is_removed_too(tmp_path: Path) -> None:
    path = tmp_path / "ws.sock"
    async with running("run", APP, *FREE, "--ws-bind", f"unix:{path}", "--uds-perms", "0o640"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert not path.exists()


# -- TLS ---------------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


async def test_tls(tmp_path: Path) -> None:
    certfile, keyfile = _self_signed(tmp_path)
    async with running("run", APP, *FREE, "--certfile", str(certfile), "--keyfile", str(keyfile)) as (_, url):
        assert url.startswith("https://")
        port = url.rsplit(":", 1)[1]
        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(certfile)), timeout=30
        ) as client:
            seen = (await client.get(f"https://localhost:{port}/who")).json()
        assert seen["scheme"] == "https"


# -- --reload ----------------------------------------------------------------------------------------

RELOAD_APP = """
from trio_channels import route
from trio_channels.http import Response, send_response

VERSION = {version!r}


async def page(message):
    await send_response(message, Response(VERSION))


routing = [route("http.request", page)]
"""


async def test_reload_restarts_on_change_and_waits_out_a_syntax_error(tmp_path: Path) -> None:
    """--reload: an edit restarts the server on the same port; a syntax error is one line and
    the supervisor waits for the next edit; Ctrl+C stops it all with status 0."""
    source = tmp_path / "reload_app.py"
    source.write_text(RELOAD_APP.format(version="first"))
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "PYTHONDONTWRITEBYTECODE": "1"}
    args = ("run", "reload_app:routing", *FREE, "--reload", "--reload-dir", str(tmp_path))
    async with running(*args, env=env, cwd=tmp_path) as (process, url):
        output = process.output
        assert (await get(url, "/")).text == "first"
        source.write_text(RELOAD_APP.format(version="the second"))
        await output.wait_for_count(" serving ", 2, timeout=60)
        assert (await get(url, "/")).text == "the second"
        source.write_text("routing = [\n")
        await output.wait_for("waiting for a change to restart it", timeout=60)
        errors = [line for line in output.stderr.decode().splitlines() if "SyntaxError" in line]
        assert len(errors) == 1 and "reload_app.py" in errors[0] and "Traceback" not in output.text
        source.write_text(RELOAD_APP.format(version="third, fixed"))
        await output.wait_for_count(" serving ", 3, timeout=60)
        assert (await get(url, "/")).text == "third, fixed"
        assert len(set(re.findall(r" at (\S+) ", output.stderr.decode()))) == 1, "one port for every child"
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            await process.wait()
    assert process.returncode == 0
