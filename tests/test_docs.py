"""The documentation keeps up with the code (issue 17 §2, §5).

* Every name in the ``__all__`` of a public module is documented: some autodoc directive in
  ``docs/*.rst`` names it (or the same object under another public name).
* The configuration reference (``docs/configuration.rst``) lists exactly the command line's
  options, with the environment variable, commands and config field each really has.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest

import trio_channels
from trio_channels.cli import build_parser, options

DOCS = Path(__file__).resolve().parents[1] / "docs"
PUBLIC_MODULES = [
    "trio_channels",
    *sorted(
        f"trio_channels.{module.name}"
        for module in pkgutil.iter_modules(trio_channels.__path__)
        if not module.name.startswith("_") and module.name != "pytest_plugin"
    ),
    "layers",
    "layers.redis",
    "interface",
    "interface.messages",
    "interface.proxy",
]
_DIRECTIVE = re.compile(r"^\.\. (auto\w+):: (\S+)\n((?:   :[^\n]*\n(?:     +[^\n]*\n)*)*)", re.MULTILINE)


def _documented() -> set[int]:
    """The ids of every object an autodoc directive documents."""
    found: set[int] = set()
    for page in DOCS.glob("*.rst"):
        for kind, target, options_text in _DIRECTIVE.findall(page.read_text()):
            if kind == "automodule":
                listed = re.search(r"^   :members:(.*?)(?=\n   :|\Z)", options_text, re.DOTALL | re.MULTILINE)
                if listed is None:
                    continue
                module = importlib.import_module(target)
                names = [name.strip() for name in listed.group(1).split(",") if name.strip()]
                for name in names or getattr(module, "__all__", []):
                    found.add(id(getattr(module, name)))
            else:
                module_name, _, attribute = target.rpartition(".")
                found.add(id(getattr(importlib.import_module(module_name), attribute)))
    return found


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_is_documented(module: str) -> None:
    loaded = importlib.import_module(module)
    documented = _documented()
    missing = [
        name
        for name in getattr(loaded, "__all__", [])
        if name != "__version__" and id(getattr(loaded, name)) not in documented
    ]
    assert missing == [], f"{module}: document these in docs/*.rst (an autodoc directive)"


def test_the_names_the_issue_found_missing_are_documented() -> None:
    documented = _documented()
    for name in ("route", "include", "route_class", "serve", "ServerConfig"):
        assert id(getattr(trio_channels, name)) in documented, name
    from trio_channels.auth import channel_session_user_from_http

    assert id(channel_session_user_from_http) in documented


# -- the configuration reference ---------------------------------------------------------------


def _table() -> dict[str, list[str]]:
    """The rows of the configuration table, by their first cell (``--bind``, ``ROUTING``...)."""
    text = (DOCS / "configuration.rst").read_text()
    rows: dict[str, list[str]] = {}
    for block in re.split(r"\n   \* - ", text.split(".. list-table::", 1)[1])[2:]:
        cells = [cell.strip() for cell in re.split(r"\n     - ", block.split("\n\n", 1)[0])]
        first = re.findall(r"``([^`]+)``", cells[0])
        if first:
            rows[first[-1]] = cells
    return rows


def _parser_flags() -> set[str]:
    """Every long flag the parser knows (and the positional ROUTING), but --help."""
    parser = build_parser()
    flags: set[str] = set()

    def walk(current: argparse.ArgumentParser) -> None:
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif isinstance(action, argparse._HelpAction):
                continue
            elif action.option_strings:
                flags.add(max(action.option_strings, key=len))
            else:
                flags.add(str(action.metavar or action.dest).upper())

    walk(parser)
    return flags


def test_the_configuration_table_lists_every_flag_and_only_those() -> None:
    table = {name for name in _table() if name.startswith("--") or name == "ROUTING"}
    parser = _parser_flags()
    assert sorted(parser - table) == [], "flags missing from docs/configuration.rst"
    assert sorted(table - parser) == [], "docs/configuration.rst lists flags the CLI does not have"


@pytest.mark.parametrize("option", options(), ids=lambda option: option.flag)
def test_each_row_says_what_the_option_really_is(option: Any) -> None:
    row = _table()[option.flag]
    commands, env, _setting, field = row[1], row[2], row[3], row[4]
    assert commands == ", ".join(option.commands)
    assert f"``{option.env}``" in env
    assert field == (f"``{option.field}``" if option.field else "—")
    assert option.env in option.action.help, "--help names the variable too"
