"""What an interface server counts for its :meth:`~interface.InterfaceServer.statistics`.

Connections are counted by kind when they take a reply channel and when they give it back:
``"http"`` (one HTTP request; a keep-alive connection's requests count one by one) and
``"websocket"`` (one WebSocket, from its handshake to its close; a denied handshake counts too).
Drops are counted by what was dropped (``"reply"``, ``"frame"``, ``"websocket.disconnect"``,
``"http.disconnect"``...), every one of them, where :class:`~interface.logs.DropLog` logs only
the first of each kind and then a line with the count.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["KINDS", "InterfaceCounters", "InterfaceStatistics"]

#: The kinds of connection an interface serves.
KINDS = ("http", "websocket")


@attrs.frozen(kw_only=True)
class InterfaceStatistics:
    """An interface server's counters at one moment.

    ``open`` are the connections open now and ``accepted`` those taken on since the server
    started, by kind (``"http"``, ``"websocket"``); ``dropped`` counts what was dropped, by what.
    """

    open: Mapping[str, int]
    accepted: Mapping[str, int]
    dropped: Mapping[str, int]


@attrs.define(eq=False, slots=True)
class InterfaceCounters:
    """The live counters; the server's connections update them, :meth:`snapshot` reads them."""

    open: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(KINDS, 0))
    accepted: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(KINDS, 0))
    #: What was dropped, by what (a :class:`~interface.logs.DropLog` adds to it).
    dropped: dict[str, int] = attrs.Factory(dict)

    def opened(self, kind: str) -> None:
        self.open[kind] += 1
        self.accepted[kind] += 1

    def closed(self, kind: str) -> None:
        self.open[kind] -= 1

    def snapshot(self) -> InterfaceStatistics:
        return InterfaceStatistics(
            open=dict(self.open), accepted=dict(self.accepted), dropped=dict(self.dropped)
        )
