"""`bench.stats.percentile` agrees with numpy's default (linear) percentile, 0-100 scale."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bench.stats import percentile

SAMPLES = [
    [7.0],
    [3.0, 1.0],
    [5.0, 1.0, 4.0, 2.0, 3.0],
    [0.25, 0.25, 10.0, -3.5, 1e6, 42.0, 0.0],
    [random.Random(10).lognormvariate(3, 1) for _ in range(1001)],
    list(range(100_000)),
]
QS = [0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100]


@pytest.mark.parametrize("values", SAMPLES, ids=lambda v: f"n={len(v)}")
@pytest.mark.parametrize("q", QS)
def test_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(
        float(np.percentile(values, q)), rel=1e-12, abs=1e-12
    )


def test_scale_is_0_to_100() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    with pytest.raises(ValueError, match="0-100"):
        percentile(values, 101)
    with pytest.raises(ValueError, match="0-100"):
        percentile(values, -1)


def test_unsorted_and_integer_input() -> None:
    assert percentile([30, 10, 20], 50) == 20.0
    assert percentile((4, 1, 3, 2), 50) == pytest.approx(2.5)


def test_no_values_is_nan() -> None:
    assert math.isnan(percentile([], 50))
