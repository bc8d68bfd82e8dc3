"""Calibration: how much Serve's fast mode gains over its default mode on this machine,
with no rtcts code at all.

Target 3 of `bench/ingress_overhead.py` asks the priced path in Serve's fast mode for
5x the throughput of the pass-through app in Serve's default mode. The issue set it
from a measurement of a reference pipeline: a FastAPI ingress -> handle -> a model
deployment that returns a small JSON body, `max_ongoing_requests=64` on both, 16
connections (default mode 204 req/s, fast mode 1,523 req/s: 7.5x). This script
measures that same pipeline here, in both modes, so that target 3 can be read against
what Serve itself allows on the machine:

- `default`: Serve's defaults (access log lines on), through Serve's HTTP proxy;
- `fast` (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`): through the ingress replica's own port
  (`direct`) and, when a haproxy binary is found, through HAProxy on the public port
  (`haproxy`), set up as `rtcts run` sets it up.

Each mode runs in its own subprocess and Ray (Serve reads these settings when its
processes start). The load generator, CPU accounting and cell interleaving are those
of `bench/ingress_overhead.py`.

    .venv/bin/python bench/serve_reference.py                  # c=16 and 32, 5 s cells x 3
    .venv/bin/python bench/serve_reference.py --concurrency 16 --repeats 2

A benchmark, not a test: it always exits 0. Ray never gets port 6379.
"""

# No `from __future__ import annotations`: FastAPI reads the route signature.
import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingress_overhead as bench  # the sibling benchmark's harness

MAX_ONGOING = 64


def reference_app() -> Any:
    """FastAPI ingress -> handle -> a model returning a small JSON body (the issue's
    reference pipeline). Built in a function so that Ray pickles it by value."""
    from ray import serve

    api = FastAPI(docs_url=None)

    class Model:
        def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
            return {"text": "ok", "completion_tokens": bench.MAX_TOKENS}

    class Ingress:
        def __init__(self, model: Any) -> None:
            self._model = model

        @api.post(bench.CHAT_PATH)
        async def chat(self, request: Request) -> dict[str, Any]:
            answer = await self._model.remote(await request.json())
            return {"object": "chat.completion", "usage": answer}

    model = serve.deployment(max_ongoing_requests=MAX_ONGOING)(Model).bind()
    ingress = serve.deployment(max_ongoing_requests=MAX_ONGOING)(serve.ingress(api)(Ingress))
    return ingress.bind(model)


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process: start Ray and Serve, deploy, measure, shut down."""
    fast = args.phase == "fast"
    env = bench.haproxy_env(log) if fast else None

    def deploy(port: int) -> list[bench.Target]:
        from ray import serve

        serve.run(reference_app(), name=bench.PLAIN_APP, route_prefix=bench.PLAIN_PREFIX)
        if not fast:
            return [bench.Target("plain", "default", "proxy", port)]
        targets = [bench.Target("plain", "fast", "haproxy", port)] if env else []
        direct = bench.direct_ports().get(bench.PLAIN_PREFIX)
        if direct is not None:
            targets.append(bench.Target("plain", "fast", "direct", direct))
        return targets

    return bench.with_serve(fast, deploy, args, log, env)


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def run_subprocess(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    return bench.run_phase_subprocess(
        Path(__file__),
        [
            *("--phase", phase),
            *("--duration", str(args.duration), "--repeats", str(args.repeats)),
            *("--concurrency", *(str(c) for c in args.concurrency)),
        ],
    )


def report(cells: list[dict[str, Any]], concurrencies: Sequence[int]) -> str:
    by = {(c["target"], c["concurrency"]): c for c in cells}
    names = sorted({c["target"] for c in cells}, key=lambda n: (n.split()[1], n))
    lines = [
        "| metric | c | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for metric in ("rps", "p50_ms", "server_cpu_ms_per_req"):
        for c in concurrencies:
            row = [f"{by[(n, c)][metric]:.2f}" if (n, c) in by else "-" for n in names]
            lines.append(f"| {metric} | {c} | " + " | ".join(row) + " |")
    baseline = {c: by.get(("plain default proxy", c)) for c in concurrencies}
    lines.append("")
    for name in names:
        if "fast" not in name:
            continue
        ratios = [
            f"{by[(name, c)]['rps'] / b['rps']:.2f}x at c={c}"
            for c in concurrencies
            if (name, c) in by and (b := baseline[c]) is not None and b["rps"]
        ]
        lines.append(f"{name} / plain default proxy req/s: " + ", ".join(ratios))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is kept")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--phase", choices=("default", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # What bench.measure reads besides the above.
    args.warmup, args.idle, args.client = 3.0, 3.0, "raw"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase is not None:
        result = run_phase(args)
        if args.out is not None:
            args.out.write_text(json.dumps(result))
        return 0
    cells: list[dict[str, Any]] = []
    for phase in ("default", "fast"):
        print(f"[{phase} mode]", file=sys.stderr, flush=True)
        cells += run_subprocess(phase, args)["cells"]
    print(
        f"Serve reference pipeline, fast vs default mode; {os.cpu_count()} CPUs; "
        f"{args.duration:g} s cells x {args.repeats} (medians)\n"
    )
    print(report(cells, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
