"""Sphinx configuration for trio_channels."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "trio_channels"
author = "the trio_channels developers"
copyright = "2026, the trio_channels developers"
release = "0.1.0.dev0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",
]
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = True
nitpick_ignore_regex = [
    # Third-party types we do not link to (no network for intersphinx here).
    (r"py:.*", r"(trio|attrs|re|os|collections\.abc|typing|contextlib|redis|hypercorn|trio_websocket)\..*"),
    (
        r"py:class",
        r"(Consumer|Router|ASGIApp|interface\.core\.\w+|trio_channels\.http\.Headers|layers\.redis\.connection\.\w+|UserLoader|trio_channels\.routing\.(RouteClass|Routing)|T)",
    ),
    (r"py:.*", r"(Any|Mapping|Sequence|Iterable|ClassVar|Final|_\w+|deque|HiredisRespSerializer)"),
    (r"py:.*", r"(socket|ssl|ipaddress|logging)\..*"),
    # Internals of the interface package that its public API names.
    (r"py:.*", r"(interface\.(listeners|protocol|core)(\..*)?|ClientDisconnected|layers\._\w+\..*)"),
    (r"py:class", r"(ChannelFull|MessageTooLarge|BaseChannelLayer|CapacityMap|LayerStatistics)"),
    (r"py:class", r"(InterfaceCounters|HistogramSnapshot)"),
    (r"py:class", r"(GroupHistory|GroupSendReport|HistoryOptions|Since|Collection)"),
    # The type variables of the ParamSpec-typed decorators, and PyJWT's key types.
    (
        r"py:class",
        r"(~?P|R|S|trio_channels\.\w+\.(P|R|S)|AllowedPublicKeys|RedisAddress|ServerAddress|ConnectionPool|jwt\..*)",
    ),
]
html_theme = "alabaster"
exclude_patterns = ["_build"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
# `nox -s docs` also runs the linkcheck builder: it checks the links inside the site (external
# URLs are skipped — the build machines have no internet access).
linkcheck_ignore = [r"https?://.*", r"wss?://.*"]
linkcheck_anchors = True
