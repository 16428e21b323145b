"""interface/_hypercorn.py is the only module using Hypercorn's internals: it must notice
when they change (issue 13)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypercorn.trio.tcp_server import TCPServer

from interface import _hypercorn


def test_hypercorn_internals_are_what_the_adapter_expects() -> None:
    """TCPServer, WorkerContext, Lifespan and ASGIWrapper still take what the adapter passes.

    If this fails after a Hypercorn upgrade, adapt interface/_hypercorn.py and the version
    bound on hypercorn in setup.cfg together."""
    _hypercorn.check_hypercorn()


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check names what changed and where to adapt (shown with a stand-in signature)."""

    def changed(self: object, app: object, config: object, context: object, stream: object) -> None: ...

    monkeypatch.setattr(TCPServer, "__init__", changed)
    with pytest.raises(RuntimeError, match=r"TCPServer.__init__.*expected.*interface/_hypercorn.py"):
        _hypercorn.check_hypercorn()


def test_no_other_module_imports_hypercorn() -> None:
    """No other module of the interface imports Hypercorn."""
    root = Path(_hypercorn.__file__).parent
    imports = re.compile(r"^\s*(from|import)\s+hypercorn\b", re.MULTILINE)
    users = sorted(
        path.name
        for path in root.glob("*.py")
        if path.name != "_hypercorn.py" and imports.search(path.read_text())
    )
    assert users == []
