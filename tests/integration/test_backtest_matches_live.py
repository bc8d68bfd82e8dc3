"""The simulation matches the live cluster (issue #12, item 4).

A short slice of the Azure conversation trace is replayed twice over: through
`rtcts backtest` (`run_backtest`, policy `incremental`: what the live app decides) and
through a running rtcts app on the session's Ray Serve (simulated backend), with the
same policy (tests/integration/policy.yaml), the same tenant (one `flex` tenant naming
`small`), the same arrivals and the same output lengths. Then the two must agree on:

- **served-model mix**: each model's share of the served requests within
  `MIX_TOLERANCE` (10 percentage points). Both sides run the same pricing core on
  nearly the same load, but the live ingress decides on a load snapshot that is up
  to a poll old and on replicas that Serve's autoscaler starts at its own moments, so
  the requests near a reroute threshold may go either way; 10 points is a few
  dozen requests of a slice of a few hundred, and a systematic error (a wrong
  capacity, a missing queue) moves the mix by far more.
- **p50 end-to-end latency**: within `P50_TOLERANCE` (30%) of the backtest's, plus
  `P50_OVERHEAD_S` (50 ms) for what only the live path has: HTTP, the ingress, Serve's
  routing and the event loops' timer granularity (each decode step sleeps on a timer,
  so a few hundred steps add tens of ms). Queueing and batching dominate the latency
  here (seconds), and a wrong replica model (rate, batch slowdown, slots) moves it by
  well over 30%.

How the two sides are made alike:

- **Arrivals**: the trace's first `SLICE_S` seconds (prompts that fit the context
  window with `MAX_TOKENS` to spare), played `SPEED` times faster on both sides. The
  backtest plays its trace once before time 0 as a warm-up (the whole slice, as it is
  shorter than the warm-up) and counts only the pass from 0; the live client likewise
  sends the slice twice back to back and counts only the second pass.
- **Output length**: the backtest assumes each request generates the trace's
  `GeneratedTokens` (capped by `max_tokens`, here `MAX_TOKENS`, above every output of the
  slice). The live app runs with `natural_output: False` (a simulated answer fills
  `max_tokens`) and each request asks for its trace output as `max_tokens` (as
  `rtcts demo` sends it), so it generates exactly those tokens. The one difference
  left: the pricing's output prediction is capped by the request's `max_tokens`
  (the trace output live, `MAX_TOKENS` in the backtest).
- **Failures**: none on either side (the app's `failure_rate` is 0; the backtest's too).

The measured figures are printed (`-s` shows them).
"""

from __future__ import annotations

import asyncio
import csv
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtcts_dev.demo import chat_body, outcome_of, prompt_tokens_sent
from serve_app.backtest.replay import Replay, ReplayConfig
from serve_app.backtest.replica import Job
from serve_app.backtest.runner import PACKAGED_TRACE, BacktestOptions, run_backtest
from serve_app.backtest.trace import TraceRequest, load_trace
from serve_app.policy import load_policy_file
from serve_app.pricing import PriceBook
from tests.integration.conftest import KEYS, POLICY, wait_until

pytestmark = [
    pytest.mark.integration,
    # Passed in 2 of 3 runs; it failed when the host's CPU was starved (load average 45
    # on 2 cores): the live simulated replicas then run slower than their stated speed
    # while the backtest assumes it. Run by hand on a quiet machine until it checks the
    # replicas kept their speed (issue #12 item 4, open).
    pytest.mark.skipif(
        os.environ.get("RTCTS_SIM_VS_LIVE") != "1",
        reason="backtest vs live cluster: set RTCTS_SIM_VS_LIVE=1 on a quiet machine",
    ),
]

APP = "rtcts-sim"
PREFIX = "/sim"
SLICE_S = 60.0
"""Trace seconds replayed (before compression)."""
SPEED = 1.5
"""Time compression, the same on both sides (the slice takes 40 s a pass)."""
MODEL = "small"
PLAN = "flex"
MAX_TOKENS = 1024
"""The backtest tenants' max_tokens (the model's max_output_tokens)."""
CONTEXT_WINDOW = 4096
"""The smallest context window of the integration policy."""
MIX_TOLERANCE = 0.10
P50_TOLERANCE = 0.30
P50_OVERHEAD_S = 0.05
DRAIN_S = 60.0


def trace_slice() -> list[TraceRequest]:
    """The first SLICE_S seconds of the trace whose prompt fits beside MAX_TOKENS."""
    return [
        r
        for r in load_trace(PACKAGED_TRACE)
        if r.offset_s < SLICE_S
        and prompt_tokens_sent(r.prompt_tokens) + MAX_TOKENS <= CONTEXT_WINDOW
        and r.output_tokens >= 1
    ]


def write_trace(requests: list[TraceRequest], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for r in requests:
            # The prompt the server counts (demo's synthetic prompt), so both agree.
            writer.writerow(
                [f"{r.offset_s:.6f}", prompt_tokens_sent(r.prompt_tokens), r.output_tokens]
            )
    return path


class TimedReplay(Replay):
    """A replay that also keeps each counted request's end-to-end latency."""

    latencies: list[float]

    def _ended(self, job: Job, now: float) -> None:
        if not job.failed and job.arrival_s >= 0:
            self.latencies.append(now - job.arrival_s)
        super()._ended(job, now)


def backtest(trace_path: Path) -> dict[str, Any]:
    options = BacktestOptions(
        trace=trace_path,
        policy=POLICY,
        policies=("incremental",),
        speed=SPEED,
        mix={PLAN: 1.0},
        tenants_per_plan=1,
        model=MODEL,
        max_tokens=MAX_TOKENS,
        price_cap_share=0.0,
        failure_rate=0.0,
    )
    result = run_backtest(options, Path.cwd())
    replayed = result.results["incremental"]
    served = {m: t.served for m, t in replayed.models.items()}
    throttled = sum(row.actions.get("throttle", 0) for row in replayed.rows)
    loaded = load_policy_file(POLICY)
    replay = TimedReplay(
        "incremental",
        loaded.policy,
        PriceBook.from_policy(loaded.policy, loaded.version),
        result.workload,
        ReplayConfig(failure_rate=0.0, seed=options.seed),
    )
    replay.latencies = []
    timed = replay.run()
    assert {m: t.served for m, t in timed.models.items()} == served
    return {
        "requests": result.workload.counted,
        "served": served,
        "throttled": throttled,
        "period_s": result.workload.duration_s,
        "latencies": replay.latencies,
    }


async def replay_live(url: str, requests: list[TraceRequest], period_s: float) -> dict[str, Any]:
    """Send the compressed slice twice (a warm-up pass, then the counted one)."""
    plan = [(r.offset_s / SPEED, r, False) for r in requests]
    plan += [(period_s + t, r, True) for t, r, _ in plan]
    served: dict[str, int] = {}
    latencies: list[float] = []
    other: dict[str, int] = {}
    throttled = [0]
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512, keepalive_expiry=2)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"authorization": f"Bearer {KEYS[PLAN]}"},
        timeout=httpx.Timeout(120, connect=5),
        limits=limits,
    ) as client:

        async def send(request: TraceRequest, counted: bool) -> None:
            started = time.monotonic()
            response = await client.post("/v1/chat/completions", json=chat_body(request, MODEL))
            latency = time.monotonic() - started
            body = response.json() if response.status_code != 200 else None
            outcome = outcome_of(response.status_code, response.headers, body, latency)
            if not counted:
                return
            if outcome.status == 200:
                model = outcome.model or "?"
                served[model] = served.get(model, 0) + 1
                latencies.append(outcome.latency_s)
            elif outcome.decision == "throttle":
                throttled[0] += 1
            else:
                key = outcome.error or str(outcome.status)
                other[key] = other.get(key, 0) + 1

        tasks = []
        start = time.monotonic()
        for at, request, counted in plan:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(request, counted)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=DRAIN_S)
    return {"served": served, "throttled": throttled[0], "latencies": latencies, "other": other}


def shares(side: dict[str, Any]) -> dict[str, float]:
    """Each model's share of the counted requests, and the throttled share."""
    counts = {**side["served"], "throttled": side["throttled"]}
    total = sum(counts.values())
    return {m: n / total for m, n in counts.items()} if total else {}


def test_backtest_matches_live(ray_serve: str, tmp_path: Path) -> None:
    from ray import serve

    from serve_app.builder import build_app

    requests = trace_slice()
    sim = backtest(write_trace(requests, tmp_path / "slice.csv"))
    serve.run(
        build_app(
            {
                "policy_path": str(POLICY),
                "natural_output": False,
                "app_name": APP,
                "data_dir": str(tmp_path / "rtcts-data"),
                "window_s": 1,
                "grace_s": 1,
            }
        ),
        name=APP,
        route_prefix=PREFIX,
    )
    try:
        url = f"{ray_serve}{PREFIX}"
        headers = {"authorization": f"Bearer {KEYS[PLAN]}"}

        def ready() -> bool:
            health = httpx.get(f"{url}/healthz", timeout=5).json()
            cluster = httpx.get(f"{url}/v1/cluster", headers=headers, timeout=5).json()
            warm = [m for m in cluster["models"].values() if any(r["warm"] for r in m["replicas"])]
            return health["load_age_s"] is not None and len(warm) >= 2

        wait_until(ready, timeout_s=120)
        live = asyncio.run(replay_live(url, requests, sim["period_s"]))
    finally:
        serve.delete(APP)

    sim_shares, live_shares = shares(sim), shares(live)
    sim_p50 = statistics.median(sim["latencies"])
    live_p50 = statistics.median(live["latencies"])
    print(
        f"\nbacktest: {sim['requests']} requests, served {sim['served']} "
        f"throttled {sim['throttled']} "
        f"shares {sim_shares}, p50 {sim_p50:.3f} s"
        f"\nlive:     served {live['served']} throttled {live['throttled']} "
        f"shares {live_shares}, other {live['other']}, "
        f"p50 {live_p50:.3f} s"
    )
    assert sum(sim["served"].values()) + sim["throttled"] == sim["requests"] == len(requests)
    assert not live["other"], live["other"]
    for model in sorted(set(sim_shares) | set(live_shares)):
        gap = abs(sim_shares.get(model, 0.0) - live_shares.get(model, 0.0))
        assert gap <= MIX_TOLERANCE, (model, sim_shares, live_shares)
    assert abs(live_p50 - sim_p50) <= P50_TOLERANCE * sim_p50 + P50_OVERHEAD_S, (
        live_p50,
        sim_p50,
    )
