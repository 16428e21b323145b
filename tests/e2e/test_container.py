"""The container files (Dockerfile, .dockerignore, compose.yaml) agree with the CLI, and run.

There is no Docker engine here, so the files are parsed (a small Dockerfile reader for the
instructions we use, PyYAML for compose.yaml, Docker's .dockerignore rules), checked against
each other and against ``--help``, and then the image's command and the compose services'
commands are run as local processes: only the listening address (``0.0.0.0:8000`` becomes a
free port on 127.0.0.1) and the Redis host (``redis:6379`` becomes a redis-server started
here with the compose service's own arguments) are changed.
"""

from __future__ import annotations

import argparse
import configparser
import json
import posixpath
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import redis
import trio
import yaml
from trio_websocket import open_websocket_url

from trio_channels import ServerConfig
from trio_channels.cli import build_parser

from ..redis_server import RedisServer
from .demo_helpers import chat, next_chat
from .processes import ENV, ROOT, started

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
LOCAL_BIND = "127.0.0.1:0"


# --- reading the files ------------------------------------------------------------------------


@attrs.frozen
class Instruction:
    """One Dockerfile instruction: its keyword (upper-case) and its arguments, continuations joined."""

    keyword: str
    arguments: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ``CMD``/``RUN``/``ENTRYPOINT`` (a shell form fails)."""
        try:
            argv = json.loads(self.arguments)
        except json.JSONDecodeError:
            argv = None
        assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), (
            f"Dockerfile line {self.line}: {self.keyword} must be in exec form (a JSON array), "
            f"got {self.arguments!r}"
        )
        return argv


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (default ``\\`` escape, comments, continuation lines)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction too
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, arguments = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
            pending = []
    assert not pending, f"Dockerfile line {start}: the file ends inside a continued instruction"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage (from its ``FROM`` on): what the image runs."""
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in instructions if instruction.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the image's stage, found {len(found)}"
    return found[0]


def healthcheck_command(instruction: Instruction) -> list[str]:
    """The exec-form command of ``HEALTHCHECK [--option=value ...] CMD [...]``."""
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)", instruction.arguments, re.DOTALL)
    assert match, f"Dockerfile line {instruction.line}: unexpected HEALTHCHECK {instruction.arguments!r}"
    return Instruction("CMD", match[2], instruction.line).exec_form()


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(exception?, pattern) for each line of a .dockerignore, in order (moby's patternmatcher)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex = ""
        for token in re.findall(r"\*\*/|\*\*|\*|\?|\[[^\]]*\]|.", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, token if token.startswith("[") else re.escape(token)
            )
        rules.append((exception, re.compile(regex)))
    return rules


def ignored(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Whether Docker leaves *path* (relative, with ``/``) out of the build context.

    The last rule matching the path or one of its parent directories decides.
    """
    parts = path.split("/")
    candidates = [path, *("/".join(parts[:n]) for n in range(1, len(parts)))]
    result = False
    for exception, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not exception
    return result


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def duration(text: str) -> float:
    """Seconds in a compose duration (``20s``, ``1m30s``)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(number + unit for number, unit in parts) == text, f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- the command lines ------------------------------------------------------------------------


def cli_options(command: str) -> set[str]:
    """Every ``--option`` that ``python -m trio_channels COMMAND --help`` lists, read now."""
    result = subprocess.run(
        [sys.executable, "-m", "trio_channels", command, "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # argparse puts each option's spellings at the start of a line indented by two spaces,
    # then its help two spaces or more further (or on the next lines, indented further).
    invocations = [
        re.split(r"\s{2,}", line.strip())[0] for line in result.stdout.splitlines() if line.startswith("  -")
    ]
    return {name for text in invocations for name in re.findall(r"--[a-z][a-z0-9-]*", text)}


def check_command(argv: Sequence[str], where: str) -> Any:
    """*argv* is ``python -m trio_channels run|worker ...`` with only options that exist.

    Returns what the CLI's own parser makes of it.
    """
    assert list(argv[:3]) == ["python", "-m", "trio_channels"], f"{where}: {argv!r}"
    command = argv[3]
    assert command in ("run", "worker"), f"{where}: unknown command {command!r}"
    known = cli_options(command)
    used = {arg.split("=", 1)[0] for arg in argv[4:] if arg.startswith("--")}
    assert used <= known, f"{where}: {sorted(used - known)} not in '{command} --help'"
    try:
        return build_parser().parse_args(list(argv[3:]))
    except SystemExit:
        pytest.fail(f"{where}: the CLI refuses {argv!r}")


def option(argv: Sequence[str], name: str) -> str:
    """The value of option *name* in *argv* (``--name value`` or ``--name=value``), once."""
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]
    values += [arg.split("=", 1)[1] for arg in argv if arg.startswith(name + "=")]
    assert len(values) == 1, f"expected {name} once in {argv!r}"
    return values[0]


def replaced(argv: Sequence[str], name: str, value: str) -> list[str]:
    """*argv* with option *name*'s value set to *value*."""
    old = option(argv, name)
    result = list(argv)
    for i, arg in enumerate(result):
        if arg == name:
            result[i + 1] = value
        elif arg == f"{name}={old}":
            result[i] = f"{name}={value}"
    return result


def local(argv: Sequence[str]) -> list[str]:
    """The container's ``python`` is the virtualenv's: here, this one."""
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def port_of(address: str) -> int:
    host, _, port = address.rpartition(":")
    assert host in ("0.0.0.0", "[::]"), f"{address!r}: in a container, listen on every interface"
    return int(port)


def image_port() -> int:
    expose = only(final_stage(parse_dockerfile(DOCKERFILE.read_text())), "EXPOSE").arguments.split()
    assert len(expose) == 1, f"expected one exposed port, got {expose!r}"
    return int(expose[0].removesuffix("/tcp"))


async def healthcheck(port: int) -> subprocess.CompletedProcess[bytes]:
    """The image's HEALTHCHECK command, run here against *port* instead of the exposed one."""
    stage = final_stage(parse_dockerfile(DOCKERFILE.read_text()))
    argv = healthcheck_command(only(stage, "HEALTHCHECK"))
    exposed = str(image_port())
    assert any(exposed in arg for arg in argv), f"the HEALTHCHECK does not probe port {exposed}: {argv!r}"
    with trio.fail_after(30):
        return await trio.run_process(
            local([arg.replace(exposed, str(port)) for arg in argv]), check=False, capture_stderr=True
        )


async def check_demo(url: str) -> None:
    """The demo answers: its page on HTTP, an echo and a chat room on WebSockets."""
    with trio.fail_after(30):
        async with httpx.AsyncClient() as client:
            page = await client.get(url + "/")
        assert page.status_code == 200 and "trio_channels demo" in page.text
        ws = url.replace("http://", "ws://")
        async with open_websocket_url(ws + "/echo/") as echo:
            await echo.send_message("hello container")
            assert await echo.get_message() == "hello container"
        async with (
            open_websocket_url(ws + "/chat/lobby/?name=alice") as alice,
            open_websocket_url(ws + "/chat/lobby/?name=bob") as bob,
        ):
            # Accepted means joined: the demo adds a socket to its room before accepting it.
            await alice.send_message(chat("hello room"))
            assert (await next_chat(alice))["text"] == "hello room"
            assert (await next_chat(bob))["text"] == "hello room"


# --- the checks -------------------------------------------------------------------------------


def test_dockerfile_agrees_with_the_cli_and_setup() -> None:
    """Multi-stage, non-root, its CMD parses with today's CLI, and EXPOSE, --bind and HEALTHCHECK agree."""
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    stage = final_stage(instructions)
    assert len(instructions) > len(stage), "expected a build stage before the image's stage"
    user = only(stage, "USER").arguments.split(":")[0]
    assert user not in ("root", "0"), f"the image runs as {user!r}: use an unprivileged user"
    assert only(stage, "COPY").arguments.startswith("--from="), "the image should take only the build's venv"

    argv = only(stage, "CMD").exec_form()
    args = check_command(argv, "Dockerfile CMD")
    assert args.command == "run" and args.routing is None, "the image serves the built-in demo by default"
    assert port_of(option(argv, "--bind")) == image_port()
    assert healthcheck_command(only(stage, "HEALTHCHECK"))[0] == "python"

    # Every extra the build installs exists in setup.cfg.
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = set(setup["options.extras_require"])
    arguments = [
        i.arguments for i in instructions if i.keyword == "ARG" and i.arguments.startswith("EXTRAS=")
    ]
    assert len(arguments) == 1, "expected ARG EXTRAS=... in the build stage"
    wanted = {name.strip() for name in arguments[0].removeprefix("EXTRAS=").split(",") if name.strip()}
    assert wanted <= extras, f"extras {sorted(wanted - extras)} are not in setup.cfg"


def test_dockerignore_keeps_what_the_build_needs() -> None:
    """Every file `pip install .` reads is in the build context; .git, tests and byte code are not."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    readme = setup["metadata"]["long_description"].removeprefix("file:").strip()
    needed = ["pyproject.toml", "setup.cfg", readme]
    for package in {name.split(".")[0] for name in setup["options.packages.find"]["include"].split()}:
        files = [p for p in (ROOT / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, f"package {package!r} has no files"
        needed += [p.relative_to(ROOT).as_posix() for p in files]
    assert "trio_channels/demo/static/index.html" in needed
    left_out = [path for path in needed if ignored(rules, path)]
    assert not left_out, f".dockerignore leaves out files the build needs: {left_out}"
    for path in (
        ".git/config",
        ".env",
        "tests/conftest.py",
        "docs/_build/html/index.html",
        "trio_channels.egg-info/PKG-INFO",
        "trio_channels/__pycache__/cli.cpython-312.pyc",
        "layers/redis/__pycache__/layer.cpython-312.pyc",
    ):
        assert ignored(rules, path), f".dockerignore lets {path} into the build context"


def _grace_period(args: argparse.Namespace) -> float:
    """The grace period a command runs with: its flag, else ServerConfig's default."""
    return float(args.grace_period if args.grace_period is not None else ServerConfig().grace_period)


def test_compose_agrees_with_the_dockerfile_the_cli_and_redis() -> None:
    """compose.yaml builds our Dockerfile, publishes its port, points both commands at its Redis (AOF on)."""
    document = compose()
    services: dict[str, Any] = document["services"]
    app, worker, redis_service = services["app"], services["worker"], services["redis"]
    for name in ("app", "worker"):
        service = services[name]
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build["context"])
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert context.resolve() == ROOT and (context / dockerfile).resolve() == DOCKERFILE, name
        assert "redis" in service["depends_on"], f"{name} should start after redis"

    app_argv = app["command"]
    app_args = check_command(app_argv, "compose app command")
    assert app_args.command == "run" and app_args.workers != 0, (
        "the app runs interface and workers (no --noworker)"
    )
    published = [str(mapping).rsplit(":", 1)[-1] for mapping in app["ports"]]
    assert published == [str(image_port())] == [str(port_of(option(app_argv, "--bind")))]
    assert duration(app["stop_grace_period"]) > _grace_period(app_args)

    worker_argv = worker["command"]
    worker_args = check_command(worker_argv, "compose worker command")
    assert worker_args.command == "worker"
    assert worker.get("healthcheck") == {"disable": True}, (
        "a worker serves no HTTP: disable the image's check"
    )
    assert duration(worker["stop_grace_period"]) > _grace_period(worker_args)

    # Both commands use the one Redis service, on the port it listens on.
    layer = option(app_argv, "--layer")
    assert option(worker_argv, "--layer") == layer
    url = urlsplit(layer)
    assert url.scheme == "redis" and url.hostname in services, layer
    assert url.hostname == "redis" and redis_service["image"].startswith("redis:")
    redis_argv = redis_service["command"]
    assert redis_argv[0] == "redis-server"
    listens = int(option(redis_argv, "--port")) if "--port" in redis_argv else 6379
    assert url.port == listens, f"{layer!r}, but Redis listens on {listens}"
    # AOF: a Redis restarted without its data has forgotten every group (docs/redis.rst).
    assert option(redis_argv, "--appendonly") == "yes"
    mounts = [str(volume).split(":")[1] for volume in redis_service["volumes"]]
    assert "/data" in mounts, "the AOF file lives in /data: keep it in a volume"


async def test_image_command_serves_the_demo_and_its_healthcheck_tells() -> None:
    """The Dockerfile's CMD, run here: the demo answers, the HEALTHCHECK passes, then fails once it stops."""
    argv = only(final_stage(parse_dockerfile(DOCKERFILE.read_text())), "CMD").exec_form()
    async with started(local(replaced(argv, "--bind", LOCAL_BIND)), " at ") as (process, url):
        await check_demo(url)
        port = int(url.rsplit(":", 1)[1])
        alive = await healthcheck(port)
        assert alive.returncode == 0, alive.stderr
        process.send_signal(signal.SIGTERM)  # docker stop
        with trio.fail_after(30):
            await process.wait()
    assert process.returncode == 0
    gone = await healthcheck(port)
    assert gone.returncode != 0


async def test_compose_services_run_on_a_real_redis() -> None:
    """compose.yaml's Redis (AOF on), app and worker commands, run here: the demo works, on Redis."""
    services = compose()["services"]
    redis_argv = services["redis"]["command"]
    # The container's own network settings do not apply here; the rest is passed as it is.
    container_only = {"--port", "--bind", "--dir"}
    arguments = [
        arg
        for i, arg in enumerate(redis_argv[1:], 1)
        if arg not in container_only and redis_argv[i - 1] not in container_only
    ]
    server = RedisServer(arguments=tuple(arguments)).start()
    try:
        with redis.Redis(port=server.port) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        layer = urlsplit(option(services["app"]["command"], "--layer"))
        local_layer = layer._replace(netloc=f"127.0.0.1:{server.port}").geturl()
        app = local(
            replaced(replaced(services["app"]["command"], "--bind", LOCAL_BIND), "--layer", local_layer)
        )
        worker = local(replaced(services["worker"]["command"], "--layer", local_layer))
        async with (
            started(worker, "worker listening on") as (worker_process, _),
            started(app, " at ") as (app_process, url),
        ):
            await check_demo(url)
            port = int(url.rsplit(":", 1)[1])
            healthy = await healthcheck(port)
            assert healthy.returncode == 0, healthy.stderr
            # A request to the app is answered by its own workers without touching Redis (issue
            # 12, locality): with Redis down the app is still healthy, and restarting it would
            # not bring Redis back.
            server.stop()
            down = await healthcheck(port)
            assert down.returncode == 0, down.stderr
            server.start()
            for process in (app_process, worker_process):
                process.send_signal(signal.SIGTERM)  # docker compose stop
                with trio.fail_after(30):
                    await process.wait()
                assert process.returncode == 0
    finally:
        server.cleanup()


def test_the_deployment_page_shows_these_files() -> None:
    """docs/deployment.rst literal-includes the three files themselves (never a copy that drifts)."""
    deployment = (ROOT / "docs" / "deployment.rst").read_text()
    for path in (DOCKERFILE, DOCKERIGNORE, COMPOSE):
        assert f".. literalinclude:: ../{path.name}\n" in deployment
