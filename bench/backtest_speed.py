"""Benchmark: how fast `rtcts backtest` replays, in requests per second of wall time.

Issue #12 target: the backtest replays at least 20,000 requests per second of wall
time on the 2-core reference machine. What is timed is the acceptance run (the Azure
conversation trace with `--spike`, the three policies in one run), end to end as
`rtcts backtest --spike` does it (finding and loading its default trace: the copy
shipped in the package, else ../shared/data; the policy, shaping the workload, the
three replays, the summaries), without printing. A request replayed through three
policies counts three times (`replays/s`, the figure the target is about); each
policy's own rate is shown too, with the CPU time of the process beside wall time
(a busy shared machine shows in the gap between the two).

    .venv/bin/python bench/backtest_speed.py                # 3 runs, the median recorded
    .venv/bin/python bench/backtest_speed.py --runs 1 --json
    .venv/bin/python bench/backtest_speed.py --hours 2      # a shorter workload
    .venv/bin/python bench/backtest_speed.py --per-policy   # each policy alone as well

A benchmark, not a test: it always exits 0 and prints PASS or FAIL against the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from serve_app.backtest.runner import BacktestOptions, find_trace, run_backtest
from serve_app.backtest.strategies import POLICIES

TARGET_PER_S = 20_000
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def one_run(options: BacktestOptions, per_policy: bool) -> dict[str, Any]:
    """The whole run, then (if asked) each policy alone, for its own rate."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_backtest(options, PROJECT_ROOT)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    arrivals = len(result.workload.arrivals)
    alone: dict[str, dict[str, float]] = {}
    for name in options.policies if per_policy else ():
        only = BacktestOptions(**{**_fields(options), "policies": (name,)})
        w, c = time.perf_counter(), time.process_time()
        run_backtest(only, PROJECT_ROOT)
        w, c = time.perf_counter() - w, time.process_time() - c
        alone[name] = {"wall_s": w, "cpu_s": c, "per_s": arrivals / w}
    replays = arrivals * len(options.policies)
    return {
        "arrivals": arrivals,
        "replays": replays,
        "wall_s": wall,
        "cpu_s": cpu,
        "replays_per_s": replays / wall,
        "replays_per_cpu_s": replays / cpu,
        "policies": alone,
    }


def _fields(options: BacktestOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is the figure")
    parser.add_argument("--hours", type=float, default=None, help="workload length (default 4)")
    parser.add_argument("--per-policy", action="store_true", help="also time each one alone")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args()
    options = BacktestOptions(spike=True, hours=args.hours, policies=POLICIES)
    load_before = os.getloadavg()
    runs = [one_run(options, args.per_policy) for _ in range(max(1, args.runs))]
    median = statistics.median(r["replays_per_s"] for r in runs)
    verdict = "PASS" if median >= TARGET_PER_S else "FAIL"
    load_average = os.getloadavg()
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "trace": str(find_trace(PROJECT_ROOT)),
        "load_average_before": load_before,
        "load_average": load_average,
    }
    if args.json:
        print(json.dumps({"meta": meta, "runs": runs, "median": median, "verdict": verdict}))
        return 0
    print(
        f"rtcts backtest speed: --spike, {runs[0]['arrivals']:,} arrivals x "
        f"{len(options.policies)} policies; {meta['cpus']} CPUs, {meta['machine']}, "
        f"Python {meta['python']}, {meta['date']}, {meta['commit']}"
    )
    for n, r in enumerate(runs, start=1):
        own = ", ".join(f"{p} {v['per_s']:,.0f}/s" for p, v in r["policies"].items())
        print(
            f"run {n}: {r['replays']:,} replays in {r['wall_s']:.1f} s wall "
            f"({r['cpu_s']:.1f} s CPU): {r['replays_per_s']:,.0f} replays/s "
            f"({r['replays_per_cpu_s']:,.0f} per CPU-second)" + (f"; alone: {own}" if own else "")
        )
    before = ", ".join(f"{x:.2f}" for x in load_before)
    load = ", ".join(f"{x:.2f}" for x in load_average)
    print(f"trace: {meta['trace']}")
    print(f"load average before: {before}; now: {load}")
    print(f"{verdict}: median {median:,.0f} replays/s (target >= {TARGET_PER_S:,}/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
