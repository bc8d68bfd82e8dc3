"""The backtest as one self-contained HTML page: the summary table and inline SVG charts
(margin over time with the floor, requests by decision, GPU cost per 1M tokens per
model, unbilled exposure). No scripts, no external resources."""

from __future__ import annotations

from html import escape

from serve_app.backtest.charts import (
    cost_per_token_chart,
    decision_stacks,
    margin_chart,
    unbilled_chart,
)
from serve_app.backtest.report import describe, summary_table
from serve_app.backtest.runner import BacktestResult
from serve_app.backtest.svg import line_chart, stacked_bars

DECISION_BIN_MINUTES = 15
STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 820px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
pre { background: #f7f7f7; padding: 10px; font-size: 12px; overflow-x: auto; }
p.note { color: #555; font-size: 13px; }
svg { display: block; margin: 8px 0 16px; }
"""


def render_html(result: BacktestResult) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>rtcts backtest</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>rtcts backtest</h1>",
        f"<p>{escape(describe(result))}</p>",
        f"<pre>{escape(summary_table(result))}</pre>",
        "<h2>Realized margin over time</h2>",
        line_chart(margin_chart(result)),
        '<p class="note">Revenue billed (SLA credits off) against replica-hours, idle and '
        "starting replicas included, per 5-minute window; margins below -100% are drawn at "
        "-100%.</p>",
        "<h2>Requests by decision</h2>",
    ]
    for name, replay in result.results.items():
        xs, stacks = decision_stacks(replay.rows, DECISION_BIN_MINUTES)
        parts.append(
            stacked_bars(
                f"{name}: requests per {DECISION_BIN_MINUTES} min by decision",
                "hours",
                "requests",
                xs,
                DECISION_BIN_MINUTES / 60,
                stacks,
            )
        )
    parts.append("<h2>GPU cost per 1M tokens by model</h2>")
    parts += [line_chart(cost_per_token_chart(result, name)) for name in result.results]
    parts += [
        "<h2>Unbilled exposure</h2>",
        line_chart(unbilled_chart(result)),
        '<p class="note">rtcts syncs each billing window (60 s) 10 s after it ends; the '
        "static card's cron job syncs once a day.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
