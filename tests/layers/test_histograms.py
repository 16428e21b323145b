"""layers.histograms: the pure bucket counter behind the duration and round-trip metrics."""

from __future__ import annotations

import pytest

from layers.histograms import Histogram


def test_observations_fall_in_the_first_bucket_at_or_above_them() -> None:
    """A value equal to a bound counts in that bound's bucket (Prometheus' ``le``); counts are cumulative."""
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(seconds)
    snapshot = histogram.snapshot()
    assert snapshot.cumulative == (2, 4, 5)
    assert snapshot.count == 5
    assert snapshot.total == pytest.approx(8.65)


def test_a_snapshot_does_not_move_with_later_observations() -> None:
    """A scrape reads a frozen copy."""
    histogram = Histogram((1.0,))
    histogram.observe(0.5)
    snapshot = histogram.snapshot()
    histogram.observe(0.5)
    assert snapshot.count == 1 and histogram.snapshot().count == 2


def test_buckets_must_ascend() -> None:
    """Bounds out of order are refused, naming them."""
    with pytest.raises(ValueError, match=r"distinct and ascending, got \(1.0, 0.5\)"):
        Histogram((1.0, 0.5))
