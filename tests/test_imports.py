"""Package borders: nothing is imported through a private name, and what crosses a border is
in the ``__all__`` of the module it comes from (issue 13 §4).

The three packages depend one way (``layers`` <- ``interface`` <- ``trio_channels``); a name
another package uses is part of the module's contract, so ``__all__`` says so.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("layers", "interface", "trio_channels")
ORDER = {name: index for index, name in enumerate(PACKAGES)}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue  # running it is the CLI
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, source module, name) for every ``from X import name`` in *module*."""
    package = module if _is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                yield node.lineno, source, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                source, _, name = alias.name.rpartition(".")
                if source:
                    yield node.lineno, source, name


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT / relative.with_suffix(".py")).exists() or (ROOT / relative / "__init__.py").exists()


def _violations() -> list[str]:
    found = []
    for module, path in _modules():
        own = module.split(".")[0]
        for line, source, name in _imports(module, path):
            top = source.split(".")[0]
            if top not in PACKAGES:
                continue
            where = f"{path.relative_to(ROOT)}:{line}: from {source} import {name}"
            if ORDER[top] > ORDER[own]:
                found.append(
                    f"{where}: {own} must not import from {top} (layers <- interface <- trio_channels)"
                )
                continue
            if _is_module(f"{source}.{name}"):  # a submodule
                if name.startswith("_") and top != own:
                    found.append(f"{where}: a private module of another package")
                continue
            if name.startswith("_") and not name.startswith("__"):
                found.append(f"{where}: a private name from another module")
                continue
            if top != own:
                exported = getattr(importlib.import_module(source), "__all__", None)
                if exported is None or name not in exported:
                    found.append(f"{where}: crosses into {own}, so {source}.__all__ must list {name!r}")
    return found


def test_no_private_names_cross_modules_and_borders_go_through_all() -> None:
    assert _violations() == []


@pytest.mark.parametrize("module", [name for name, _ in _modules()])
def test_all_lists_only_names_that_exist(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in getattr(loaded, "__all__", []):
        assert hasattr(loaded, name), f"{module}.__all__ lists {name!r}, which it does not define"
