"""Issue #12's acceptance run: the Azure conversation trace with --spike, one run.

- the static card's realized margin falls below the floor during the spike;
- incremental keeps every 5-minute window's realized margin at or above the floor;
- incremental refuses fewer requests than allocated.

The trace is the one `rtcts backtest --spike` finds without `--trace`
(`runner.find_trace`): the copy shipped in the package (serve_app/backtest/data), else
`../shared/data/`; a clean clone has the first.

About a minute on the 2-core machine: `pytest -m slow tests/unit/backtest`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.backtest.report import summary_table
from serve_app.backtest.runner import (
    PACKAGED_TRACE,
    BacktestOptions,
    BacktestResult,
    find_trace,
    run_backtest,
)

TRACE = find_trace(Path.cwd())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TRACE is None, reason=f"needs {PACKAGED_TRACE} or ../shared/data"),
]


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    return run_backtest(BacktestOptions(trace=TRACE, spike=True), Path.cwd())


def _windows(result: BacktestResult, policy: str) -> str:
    s = result.summaries[policy]
    return " ".join(
        f"{w.start_minute}:{'-' if w.margin is None else f'{w.margin:.3f}'}" for w in s.windows
    )


def test_static_falls_below_the_floor_during_the_spike(result: BacktestResult) -> None:
    spike = result.workload.spike
    assert spike is not None
    static = result.summaries["static"]
    assert static.margin_in_spike is not None
    assert static.margin_in_spike < result.floor, summary_table(result)
    in_spike = [w for w in static.windows if spike.covers(w.start_minute * 60.0)]
    assert any(w.below(result.floor) for w in in_spike)


def test_incremental_keeps_every_window_at_the_floor(result: BacktestResult) -> None:
    incremental = result.summaries["incremental"]
    assert incremental.windows_below_floor == 0, (
        f"{summary_table(result)}\nincremental windows: {_windows(result, 'incremental')}"
    )


def test_incremental_refuses_fewer_than_allocated(result: BacktestResult) -> None:
    s = result.summaries
    assert s["incremental"].throttled < s["allocated"].throttled, summary_table(result)
