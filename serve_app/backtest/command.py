"""`rtcts backtest`: its options and what it prints and writes (serve_app/cli.py adds it).

    rtcts backtest                          # the trace once, the three policies
    rtcts backtest --spike --html r.html --png margin.png
    rtcts backtest --json > backtest.json   # summaries and the minute tables

Output: each policy's table (`--every` minutes a row, 0 for none) and the summaries
side by side on stdout, or JSON with `--json`; `--html` writes the self-contained
report, `--png` the margin chart. A progress bar goes to stderr when it is a terminal
(or with `--progress`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from serve_app.backtest.strategies import POLICIES
from serve_app.backtest.workload import parse_mix


def _number(kind: type[float] | type[int], low: float, inclusive: bool = True) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= low if inclusive else value > low):
            relation = "at least" if inclusive else "more than"
            raise argparse.ArgumentTypeError(f"must be {relation} {low:g}: {text}")
        return value

    return parse


def _mix(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(unknown) or '(none)'}: choose from {', '.join(POLICIES)}"
        )
    return names


def add_backtest_command(commands: Any) -> None:
    """Add `backtest` to the `rtcts` subcommands."""
    p = commands.add_parser(
        "backtest",
        help="replay a trace through the pricing policies in simulated time (no Ray)",
        description="Replay an LLM trace (default: the Azure conversation trace 2023) through "
        "the pricing core and a simulated cluster (batching, queueing, cold starts, failures, "
        "Serve-like autoscaling), once per policy: static (a rate card, cost known after the "
        "fact), allocated and incremental (rtcts's decisions). Deterministic by --seed.",
    )
    p.add_argument("--trace", type=Path, default=None, help="trace CSV (default: the Azure one)")
    p.add_argument(
        "--policy", type=Path, default=None, help="policy file (default policies/backtest.yaml)"
    )
    p.add_argument(
        "--policies",
        type=_policies,
        default=POLICIES,
        help="policies to compare, comma-separated (default static,allocated,incremental)",
    )
    p.add_argument(
        "--hours", type=_number(float, 0, False), default=None, help="how long to replay"
    )
    p.add_argument(
        "--speed", type=_number(float, 0, False), default=1.0, help="time compression (1)"
    )
    p.add_argument("--mix", type=_mix, default=None, help="plans, e.g. basic=0.6,pro=0.4")
    p.add_argument("--tenants", type=_number(int, 1), default=10, help="tenants per plan (10)")
    p.add_argument("--model", default=None, help="model or alias requests name (cheapest)")
    p.add_argument("--max-tokens", type=_number(int, 1), default=1024, help="requests' cap")
    p.add_argument(
        "--price-caps",
        type=_number(float, 0),
        default=0.3,
        help="share of tenants sending a price cap (0.3)",
    )
    p.add_argument("--spike", action="store_true", help="inject the seed's spike")
    p.add_argument("--spike-start", type=_number(float, 0), default=1.0, help="hours (1)")
    p.add_argument("--spike-hours", type=_number(float, 0, False), default=2.0, help="(2)")
    p.add_argument(
        "--spike-factor", type=_number(float, 1, False), default=4.0, help="traffic multiple (4)"
    )
    p.add_argument(
        "--failure-rate", type=_number(float, 0), default=0.01, help="failed requests (0.01)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--every", type=_number(int, 0), default=15, help="minutes a table row (15)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    p.add_argument("--png", type=Path, default=None, help="write the margin chart PNG here")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from serve_app.backtest.charts import margin_chart
    from serve_app.backtest.html import render_html
    from serve_app.backtest.png import line_chart_png
    from serve_app.backtest.progress import ProgressBar
    from serve_app.backtest.report import render_text, to_dict
    from serve_app.backtest.runner import BacktestError, BacktestOptions, run_backtest

    if args.price_caps > 1:
        raise BacktestError(f"--price-caps is a share, 0 to 1: {args.price_caps}")
    options = BacktestOptions(
        trace=args.trace,
        policy=args.policy,
        policies=args.policies,
        hours=args.hours,
        speed=args.speed,
        mix=args.mix,
        tenants_per_plan=args.tenants,
        model=args.model,
        max_tokens=args.max_tokens,
        price_cap_share=args.price_caps,
        spike=args.spike,
        spike_start_h=args.spike_start,
        spike_hours=args.spike_hours,
        spike_factor=args.spike_factor,
        failure_rate=args.failure_rate,
        seed=args.seed,
    )
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressBar(sys.stderr) if show else None
    try:
        result = run_backtest(options, Path.cwd(), bar)
    finally:
        if bar is not None:
            bar.close()
    if args.html is not None:
        _write(args.html, render_html(result).encode())
    if args.png is not None:
        _write(args.png, line_chart_png(margin_chart(result)))
    if args.json:
        print(json.dumps(to_dict(result), indent=1))
    else:
        print(render_text(result, args.every))
    return 0


def _write(path: Path, content: bytes) -> None:
    from serve_app.backtest.runner import BacktestError

    try:
        path.write_bytes(content)
    except OSError as exc:
        raise BacktestError(f"{path}: cannot write ({exc.strerror or exc})") from None
    print(f"rtcts: wrote {path}", file=sys.stderr)
