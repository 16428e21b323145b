"""All checks: ``pip install nox && nox`` runs every session below (CI runs exactly that).

Tool settings live here rather than in pyproject.toml, which holds only the build system.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
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


@nox.session
def tests(session: nox.Session) -> None:
    """pytest + pytest-trio (trio mode): real sockets, real Redis servers, headless Chromium."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *RUFF, *RUFF_RULES, *SOURCES)
    session.run("ruff", "format", "--check", *RUFF, *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages (settings in setup.cfg)."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", *PACKAGES)


@nox.session
def docs(session: nox.Session) -> None:
    """Sphinx with warnings as errors, nitpicky cross-references."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-n", "-q", "-b", "html", "docs", "docs/_build/html")
