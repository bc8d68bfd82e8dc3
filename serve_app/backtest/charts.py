"""The report's charts, built from a backtest result as `plot` values (hours on x)."""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.backtest.ledger import MinuteRow, margin
from serve_app.backtest.plot import PALETTE, Band, HLine, LineChart, Series
from serve_app.backtest.runner import BacktestResult
from serve_app.backtest.summary import WINDOW_MINUTES

POLICY_COLORS = {"static": "#d62728", "allocated": "#1f77b4", "incremental": "#2ca02c"}
DECISIONS = (
    ("allow", "served as asked", "#4c9f70"),
    ("reroute", "rerouted / fallback", "#e6a23c"),
    ("surcharge", "surcharged", "#9b59b6"),
    ("accept_below_floor", "accepted below floor", "#f08080"),
    ("throttle", "throttled", "#555555"),
    ("rejected", "rejected", "#bbbbbb"),
)


def _bands(result: BacktestResult) -> tuple[Band, ...]:
    spike = result.workload.spike
    if spike is None:
        return ()
    return (Band(spike.start_s / 3600, spike.end_s / 3600, f"spike x{spike.factor:g}"),)


def _bins(rows: Sequence[MinuteRow], minutes: int) -> list[Sequence[MinuteRow]]:
    return [rows[start : start + minutes] for start in range(0, len(rows), minutes)]


def _windows(result: BacktestResult, rows: Sequence[MinuteRow]) -> list[Sequence[MinuteRow]]:
    """Whole 5-minute windows within the workload (the drain after it left out)."""
    minutes = int(result.workload.duration_s // 60)
    return _bins(rows[: minutes - minutes % WINDOW_MINUTES], WINDOW_MINUTES)


def margin_chart(result: BacktestResult) -> LineChart:
    """Realized margin of every policy per 5-minute window, the floor, the spike."""
    series: list[Series] = []
    for name, replay in result.results.items():
        points: list[tuple[float, float | None]] = []
        for k, part in enumerate(_windows(result, replay.rows)):
            m = margin(sum(r.revenue_micro for r in part), sum(r.gpu_cost_micro for r in part))
            points.append(((k + 0.5) * WINDOW_MINUTES / 60, m))
        series.append(Series(name, POLICY_COLORS.get(name, PALETTE[len(series)]), tuple(points)))
    return LineChart(
        title=f"realized gross margin, {WINDOW_MINUTES}-min windows",
        x_label="hours",
        y_label="margin",
        series=tuple(series),
        hlines=(HLine(result.floor, f"floor {result.floor * 100:g}%"),),
        bands=_bands(result),
        percent=True,
        y_clip=(-1.0, 1.0),
    )


def decision_stacks(
    rows: Sequence[MinuteRow], minutes: int
) -> tuple[list[float], list[tuple[str, str, list[float]]]]:
    """(bin starts in hours, one (label, color, counts) per decision) per `minutes`."""
    bins = _bins(rows, minutes)
    xs = [k * minutes / 60 for k in range(len(bins))]
    stacks = [
        (label, color, [float(sum(r.actions[action] for r in part)) for part in bins])
        for action, label, color in DECISIONS
    ]
    return xs, [s for s in stacks if any(s[2])]


def cost_per_token_chart(result: BacktestResult, policy: str) -> LineChart:
    """GPU cost per 1M tokens (prompt and output) of each model per 5-minute window."""
    rows = result.results[policy].rows
    series = []
    for i, model in enumerate(result.usd_per_hour):
        points: list[tuple[float, float | None]] = []
        for k, part in enumerate(_windows(result, rows)):
            tokens = sum(r.tokens_by_model[model] for r in part)
            cost = sum(r.cost_by_model[model] for r in part)
            points.append(((k + 0.5) * WINDOW_MINUTES / 60, cost / tokens if tokens else None))
        series.append(Series(model, PALETTE[i % len(PALETTE)], tuple(points)))
    return LineChart(
        title=f"{policy}: GPU cost per 1M tokens by model (log scale)",
        x_label="hours",
        y_label="USD per 1M tokens",
        series=tuple(series),
        bands=_bands(result),
        log_y=True,
    )


def unbilled_chart(result: BacktestResult) -> LineChart:
    """Revenue earned but not yet synced to Stripe, at each minute's end."""
    series = tuple(
        Series(
            name,
            POLICY_COLORS.get(name, PALETTE[i]),
            tuple(((r.minute + 1) / 60, r.unbilled_micro / 1e6) for r in replay.rows),
        )
        for i, (name, replay) in enumerate(result.results.items())
    )
    return LineChart(
        title="unbilled exposure (revenue not yet synced)",
        x_label="hours",
        y_label="USD",
        series=series,
        bands=_bands(result),
    )
