"""A backtest as text (a summary per policy, side by side, and the minute table) and as
JSON (`to_dict`: money in whole micro-USD, margins as fractions, None where undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serve_app.backtest.ledger import ACTIONS, MinuteRow, margin
from serve_app.backtest.runner import BacktestResult
from serve_app.backtest.summary import WINDOW_MINUTES, PolicySummary


def usd(micro: int) -> str:
    return f"${micro / 1e6:,.2f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def describe(result: BacktestResult) -> str:
    """One line: what was replayed, how."""
    w = result.workload
    o = result.options
    spike = ""
    if w.spike is not None:
        spike = (
            f", spike x{w.spike.factor:g} from {w.spike.start_s / 3600:g} h "
            f"for {w.spike.duration_s / 3600:g} h"
        )
    return (
        f"{w.counted:,} requests over {w.duration_s / 3600:.2f} h "
        f"(trace {result.trace_path.name}, speed {o.speed:g}{spike}, seed {o.seed}); "
        f"policy {result.policy_version}; requests name {result.model}; "
        f"floor {result.floor * 100:g}%"
    )


def summary_table(result: BacktestResult) -> str:
    names = list(result.summaries)
    s = [result.summaries[n] for n in names]
    floor = result.floor
    spiked = result.workload.spike is not None

    def worst(x: PolicySummary) -> str:
        window = x.worst_window
        if window is None:
            return "-"
        return f"{pct(window.margin)} (min {window.start_minute})"

    lines: list[tuple[str, list[str]]] = [
        ("requests", [f"{x.requests:,}" for x in s]),
        ("served", [f"{x.served:,}" for x in s]),
        ("throttled (refused)", [f"{x.throttled:,}" for x in s]),
        ("rerouted", [f"{x.actions.get('reroute', 0):,}" for x in s]),
        ("surcharged", [f"{x.actions.get('surcharge', 0):,}" for x in s]),
        ("accepted below floor", [f"{x.actions.get('accept_below_floor', 0):,}" for x in s]),
        ("rejected (context)", [f"{x.actions.get('rejected', 0):,}" for x in s]),
        ("failed (not billed)", [f"{x.failed:,}" for x in s]),
        ("SLA missed (credited)", [f"{x.sla_missed:,}" for x in s]),
        ("fallback requests", [f"{x.fallback:,}" for x in s]),
    ]
    if spiked:
        lines.append(("  in the spike", [f"{x.fallback_in_spike:,}" for x in s]))
    lines += [
        ("revenue", [usd(x.revenue_micro) for x in s]),
        ("SLA credits", [usd(x.sla_credits_micro) for x in s]),
        ("GPU cost", [usd(x.gpu_cost_micro) for x in s]),
        ("realized margin", [pct(x.margin) for x in s]),
    ]
    if spiked:
        lines += [
            ("  before the spike", [pct(x.margin_before_spike) for x in s]),
            ("  in the spike", [pct(x.margin_in_spike) for x in s]),
            ("  after the spike", [pct(x.margin_after_spike) for x in s]),
        ]
    lines += [
        (
            f"{WINDOW_MINUTES}-min windows < {floor * 100:g}%",
            [f"{x.windows_below_floor} of {len(x.windows)}" for x in s],
        ),
        (f"worst {WINDOW_MINUTES}-min window", [worst(x) for x in s]),
        ("unbilled exposure, peak", [usd(x.unbilled_peak_micro) for x in s]),
        (
            "TTFT p50 / p99, s",
            [
                "-"
                if x.ttft_p50_s is None or x.ttft_p99_s is None
                else f"{x.ttft_p50_s:.2f} / {x.ttft_p99_s:.2f}"
                for x in s
            ],
        ),
    ]
    width = max(18, *(len(v) + 2 for _, values in lines for v in values))
    label = max(len(name) for name, _ in lines) + 2
    out = [" " * label + "".join(f"{n:>{width}}" for n in names)]
    out += [f"{name:<{label}}" + "".join(f"{v:>{width}}" for v in values) for name, values in lines]
    return "\n".join(out)


def minute_table(rows: Sequence[MinuteRow], every: int = 1) -> str:
    """The minute table, `every` minutes a row (sums; unbilled at the row's end)."""
    head = (
        f"{'min':>5} {'revenue':>10} {'GPU cost':>10} {'margin':>8} {'served':>7} "
        f"{'rerouted':>8} {'throttled':>9} {'surch.':>6} {'<floor':>6} {'credits':>9} "
        f"{'unbilled':>10}"
    )
    out = [head]
    for start in range(0, len(rows), every):
        part = rows[start : start + every]
        revenue = sum(r.revenue_micro for r in part)
        cost = sum(r.gpu_cost_micro for r in part)

        def count(action: str, part: Sequence[MinuteRow] = part) -> int:
            return sum(r.actions[action] for r in part)

        out.append(
            f"{start:>5} {usd(revenue):>10} {usd(cost):>10} {pct(margin(revenue, cost)):>8} "
            f"{sum(r.served for r in part):>7,} {count('reroute'):>8,} {count('throttle'):>9,} "
            f"{count('surcharge'):>6,} {count('accept_below_floor'):>6,} "
            f"{usd(sum(r.sla_credits_micro for r in part)):>9} {usd(part[-1].unbilled_micro):>10}"
        )
    return "\n".join(out)


def render_text(result: BacktestResult, every: int = 15) -> str:
    """The summary; with `every` > 0, each policy's table `every` minutes a row first."""
    out = []
    if every > 0:
        for name, replay in result.results.items():
            out += [f"== {name}: every {every} min", minute_table(replay.rows, every), ""]
    out += ["rtcts backtest: " + describe(result), "", summary_table(result)]
    return "\n".join(out)


def row_dict(row: MinuteRow) -> dict[str, Any]:
    return {
        "minute": row.minute,
        "revenue_micro": row.revenue_micro,
        "gpu_cost_micro": row.gpu_cost_micro,
        "margin": row.margin,
        "served": row.served,
        **{action: row.actions[action] for action in ACTIONS},
        "failed": row.failed,
        "sla_missed": row.sla_missed,
        "fallback": row.fallback,
        "sla_credits_micro": row.sla_credits_micro,
        "unbilled_micro": row.unbilled_micro,
        "cost_by_model_micro": dict(row.cost_by_model),
        "tokens_by_model": dict(row.tokens_by_model),
        "replicas_by_model": {m: round(v, 4) for m, v in row.replicas_by_model.items()},
    }


def summary_dict(s: PolicySummary) -> dict[str, Any]:
    worst = s.worst_window
    return {
        "requests": s.requests,
        "served": s.served,
        "actions": dict(s.actions),
        "throttled": s.throttled,
        "failed": s.failed,
        "sla_missed": s.sla_missed,
        "fallback": s.fallback,
        "fallback_in_spike": s.fallback_in_spike,
        "revenue_micro": s.revenue_micro,
        "sla_credits_micro": s.sla_credits_micro,
        "gpu_cost_micro": s.gpu_cost_micro,
        "margin": s.margin,
        "margin_before_spike": s.margin_before_spike,
        "margin_in_spike": s.margin_in_spike,
        "margin_after_spike": s.margin_after_spike,
        "floor": s.floor,
        "windows": [
            {
                "start_minute": w.start_minute,
                "revenue_micro": w.revenue_micro,
                "gpu_cost_micro": w.gpu_cost_micro,
                "margin": w.margin,
            }
            for w in s.windows
        ],
        "windows_below_floor": s.windows_below_floor,
        "worst_window_margin": None if worst is None else worst.margin,
        "unbilled_peak_micro": s.unbilled_peak_micro,
        "ttft_p50_s": s.ttft_p50_s,
        "ttft_p99_s": s.ttft_p99_s,
        "models": {
            m: {
                "served": t.served,
                "revenue_micro": t.revenue_micro,
                "gpu_cost_micro": t.gpu_cost_micro,
                "replica_hours": round(t.replica_hours, 4),
                "peak_replicas": t.peak_replicas,
                "tokens": t.tokens,
                "cost_per_1m_tokens_usd": t.cost_per_1m_tokens_usd,
            }
            for m, t in s.models.items()
        },
    }


def to_dict(result: BacktestResult) -> dict[str, Any]:
    o = result.options
    w = result.workload
    return {
        "trace": str(result.trace_path),
        "policy": {"source": result.policy_source, "version": result.policy_version},
        "model": result.model,
        "floor": result.floor,
        "workload": {
            "requests": w.counted,
            "warmup_requests": len(w.arrivals) - w.counted,
            "duration_s": w.duration_s,
            "speed": o.speed,
            "seed": o.seed,
            "tenants": [
                {"id": t.id, "plan": t.plan, "model": t.model, "price_cap": t.price_cap}
                for t in w.tenants
            ],
            "failure_rate": o.failure_rate,
            "spike": None
            if w.spike is None
            else {
                "start_s": w.spike.start_s,
                "duration_s": w.spike.duration_s,
                "factor": w.spike.factor,
                "requests": sum(1 for a in w.arrivals if a.spike),
            },
        },
        "policies": {
            name: {
                "summary": summary_dict(result.summaries[name]),
                "minutes": [row_dict(r) for r in replay.rows],
            }
            for name, replay in result.results.items()
        },
    }
