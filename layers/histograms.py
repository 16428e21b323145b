"""Durations counted into buckets, for the metrics (pure; no clock, no I/O).

A :class:`Histogram` is what a Prometheus histogram needs and nothing more: a count per
bucket, the sum and the count. Whoever times something calls :meth:`Histogram.observe`
with seconds; :meth:`Histogram.snapshot` is a frozen copy to read at any time (a scrape).
"""

from __future__ import annotations

import bisect
from typing import Final

import attrs

__all__ = ["CONSUMER_BUCKETS", "ROUND_TRIP_BUCKETS", "Histogram", "HistogramSnapshot"]

#: Upper bounds, in seconds, for consumer durations (Prometheus' default buckets, plus 30 s and 60 s).
CONSUMER_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Upper bounds, in seconds, for Redis round trips (a local round trip is ~0.1 ms).
ROUND_TRIP_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@attrs.frozen(kw_only=True)
class HistogramSnapshot:
    """``buckets`` (upper bounds, seconds) with ``cumulative`` counts (of observations at or
    under each bound; the last entry is every observation, the ``+Inf`` bucket), ``total``
    seconds observed."""

    buckets: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@attrs.define(eq=False, slots=True)
class Histogram:
    """Observations of seconds counted into *buckets* (upper bounds, ascending)."""

    buckets: tuple[float, ...] = CONSUMER_BUCKETS
    _counts: list[int] = attrs.field(init=False)
    _total: float = attrs.field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"histogram buckets must be distinct and ascending, got {self.buckets!r}")
        self._counts = [0] * (len(self.buckets) + 1)  # the last: above every bound

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self._total += seconds

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[int] = []
        running = 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(buckets=self.buckets, cumulative=tuple(cumulative), total=self._total)
