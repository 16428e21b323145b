"""How the command line configures logging: one format for everything the server prints.

The start-up banner, every log line and the access log share :data:`LOG_FORMAT` (a user's
``--log-config`` file may change it). Logs go to stderr; the access log goes to stdout (or a
file), as uvicorn and Daphne do, so it can be piped apart. Levels are uvicorn's:
``critical``, ``error``, ``warning``, ``info`` (the default), ``debug`` (every message's
channel and consumer) and ``trace`` (also the protocol libraries' own debug logs: h11, h2,
hpack, trio-websocket, Hypercorn).
"""

from __future__ import annotations

import json
import logging
import logging.config
from pathlib import Path
from typing import Any

__all__ = ["LOG_FORMAT", "LOG_LEVELS", "configure_logging", "logging_config"]

#: The one line format: ``2025-01-31 12:00:00 INFO trio_channels: serving ... at http://...``.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Below DEBUG: the protocol libraries' debug output too.
TRACE = 5
#: ``--log-level`` names and their ``logging`` levels.
LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
#: Loggers that speak at DEBUG about every frame: quiet unless the level is ``trace``.
PROTOCOL_LOGGERS = ("hpack", "h2", "h11", "trio-websocket", "interface.hypercorn", "watchfiles")

logging.addLevelName(TRACE, "TRACE")


def logging_config(level: str = "info", *, access_log: str | None = "-") -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` dict the CLI applies.

    *access_log* is ``"-"`` (stdout), a file path, or ``None`` (no access log). Formatter
    ``default`` and handlers ``default`` (stderr) and ``access`` are there for a
    ``--log-config`` file to reuse.
    """
    number = LOG_LEVELS[level]
    handlers: dict[str, Any] = {
        "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
    }
    if access_log is not None:
        handlers["access"] = (
            {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stdout"}
            if access_log == "-"
            else {"class": "logging.FileHandler", "formatter": "default", "filename": access_log}
        )
    loggers: dict[str, Any] = {
        name: {
            "level": logging.getLevelName(max(number, logging.WARNING) if number > TRACE else logging.DEBUG)
        }
        for name in PROTOCOL_LOGGERS
    }
    loggers["interface.access"] = {
        "handlers": ["access"] if access_log is not None else [],
        "level": "INFO" if access_log is not None else "WARNING",
        "propagate": False,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": LOG_FORMAT, "datefmt": DATE_FORMAT}},
        "handlers": handlers,
        "loggers": loggers,
        "root": {"handlers": ["default"], "level": logging.getLevelName(number)},
    }


def read_log_config(path: str) -> dict[str, Any]:
    """A dictConfig from a ``.json``, ``.yaml`` or ``.yml`` file; :exc:`ValueError` naming the
    file if it cannot be read or parsed (or PyYAML is missing for YAML)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"log config {path!r} must be a .json, .yaml or .yml file (a logging dictConfig)")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(
            f"log config {path!r} could not be read: {(exc.strerror or str(exc)).lower()}"
        ) from exc
    if suffix == ".json":
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"log config {path!r} is not valid JSON: {exc}") from exc
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"log config {path!r} is YAML, which needs PyYAML: pip install pyyaml (or use a .json file)"
            ) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"log config {path!r} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(loaded, dict) or "version" not in loaded:
        raise ValueError(f"log config {path!r} must be a logging dictConfig mapping with a 'version' key")
    return loaded


def configure_logging(
    level: str = "info", *, access_log: str | None = "-", log_config: str | None = None
) -> None:
    """Apply :func:`logging_config`, then the user's *log_config* file over it (its
    ``disable_existing_loggers`` defaults to false, so our loggers keep working)."""
    logging.config.dictConfig(logging_config(level, access_log=access_log))
    if log_config is not None:
        user = read_log_config(log_config)
        user.setdefault("disable_existing_loggers", False)
        try:
            logging.config.dictConfig(user)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            message = " ".join(str(exc).split())
            raise ValueError(f"log config {log_config!r} could not be applied: {message}") from exc
