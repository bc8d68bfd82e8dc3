"""Percentiles for the benchmarks: one definition, one scale.

`q` is on the 0-100 scale (`percentile(xs, 99)` is the p99, `percentile(xs, 99.9)` the
p99.9), as in `numpy.percentile`. Between two samples the value is interpolated
linearly, as numpy's default method (`"linear"`) does: with the n values sorted, the
p-th percentile sits at position (n - 1) * q / 100, counted from 0.

The benchmark scripts run as `python bench/<x>.py`, which puts `bench/` first on
`sys.path`, so they import this module as `from stats import percentile`; tests import
it as `bench.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile of `values`, q from 0 to 100 (50 is the median, 99 the p99).

    Linear interpolation between the two nearest samples, like `numpy.percentile` with
    its default method. `values` need not be sorted. With no values the result is NaN
    (numpy raises instead), so an empty run still prints a row.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q is on the 0-100 scale, got {q!r}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * (q / 100)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    low, high = float(ordered[below]), float(ordered[above])
    if fraction >= 0.5:  # as numpy does: measured from the nearer end, exact at the ends
        return high - (high - low) * (1 - fraction)
    return low + (high - low) * fraction
