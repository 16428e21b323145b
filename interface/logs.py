"""The interface's log lines: the access log, and rate-limited WARNINGs for what is dropped.

:class:`DropLog` is the one helper for anything that can happen over and over (a reply that
did not fit, a frame the layer refused, a disconnect that could not be sent, a request nobody
answered in time): the first line of each kind at once, then at most one line per
``interval`` seconds with the count since, and the total when its owner closes it. A
connection owns one (``interval`` :data:`DROP_LOG_INTERVAL`); the server owns one for what
happens per request (``interval`` one minute).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import attrs
import trio

__all__ = ["DROP_LOG_INTERVAL", "DropLog", "access_log", "log", "log_access"]

log = logging.getLogger("interface")
access_log = logging.getLogger("interface.access")

#: A connection's first drop of each kind is logged at once; later ones are summed into at
#: most one line per this many seconds, and a final count when the connection ends.
DROP_LOG_INTERVAL: Final = 10.0


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


@attrs.define(slots=True)
class _Count:
    total: int
    next_line: float
    unlogged: int = 0
    reason: str = ""
    level: int = logging.WARNING
    drop: bool = True


@attrs.define(eq=False, slots=True)
class DropLog:
    """Counted log lines for what *subject* (a connection, or the interface) dropped.

    :meth:`dropped` logs the first drop of each kind (*what*, a singular noun) at once:
    ``"<subject>: dropped 1 reply (<reason>)"``; then at most one line per *interval* seconds
    with the count since: ``"dropped 286 more replies in 10 s (<reason>)"``; :meth:`close`
    logs ``"dropped 1000 replies in all (<reason>)"`` if some were not logged yet.
    :meth:`happened` is the same for events that are not drops (the text is the line).
    """

    subject: str
    interval: float = DROP_LOG_INTERVAL
    _kinds: dict[str, _Count] = attrs.Factory(dict)
    #: Where every drop (and event) is counted by *what*, logged or not (the server's metrics).
    counts: dict[str, int] | None = None

    def dropped(self, what: str, reason: str, level: int = logging.WARNING) -> None:
        """Count one *what* dropped for *reason*; log it if its line is due."""
        self._note(what, reason, level, f"dropped 1 {what} ({reason})", True)

    def happened(self, what: str, text: str, level: int = logging.WARNING) -> None:
        """Count one *what* (described by *text*); log *text* if its line is due."""
        self._note(what, text, level, text, False)

    def _note(self, what: str, reason: str, level: int, first: str, drop: bool) -> None:
        if self.counts is not None:
            self.counts[what] = self.counts.get(what, 0) + 1
        now = trio.current_time()
        count = self._kinds.get(what)
        if count is None:
            self._kinds[what] = _Count(1, now + self.interval, reason=reason, level=level, drop=drop)
            log.log(level, "%s: %s", self.subject, first)
            return
        count.total += 1
        count.unlogged += 1
        count.reason, count.level = reason, level
        if now >= count.next_line:
            log.log(
                level,
                "%s: dropped %d more %s in %.0f s (%s)"
                if drop
                else "%s: %d more %s in %.0f s (the last: %s)",
                self.subject,
                count.unlogged,
                _plural(what),
                now - count.next_line + self.interval,
                reason,
            )
            count.unlogged = 0
            count.next_line = now + self.interval

    def close(self) -> None:
        """Log the totals not logged yet (the owner ends)."""
        for what, count in self._kinds.items():
            if count.unlogged:
                log.log(
                    count.level,
                    "%s: dropped %d %s in all (%s)" if count.drop else "%s: %d %s in all (the last: %s)",
                    self.subject,
                    count.total,
                    _plural(what),
                    count.reason,
                )
                count.unlogged = 0


def log_access(client: list[Any] | None, request: str, status: int | str, size: int | str) -> None:
    """One Common Log Format line on ``interface.access`` (nothing is built if it is off)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    # Common Log Format with the client's port, as Daphne logs it: host:port - - [time] "request" status size
    host = f"{client[0]}:{client[1]}" if client and len(client) > 1 else client[0] if client else "-"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
    access_log.info('%s - - [%s] "%s" %s %s', host, stamp, request, status, size)
