"""The simulation matches the live cluster (issue #12, item 4).

A slice of the Azure conversation trace (its first `SLICE_S` = 60 s whose prompt fits
the context window beside 1024 output tokens: 181 requests, played 1.5 times faster, so
a pass takes 40 s) goes through a running rtcts app on the session's Ray Serve
(simulated backend, `rtcts demo`'s requests: a synthetic prompt of the trace's prompt
tokens, the trace's output tokens as `max_tokens`), and through `rtcts backtest`'s model
(policy `incremental`, what the live app decides), with the same policy (tests/
integration/policy.yaml, beside the session's other app on the same model ids:
`sim_vs_live.sim_policy` says why that holds), one `flex` tenant naming `small`, the same
arrivals and output lengths, no failures.
The pieces are in tests/integration/sim_vs_live.py.

**Same arrivals: what the host delivered.** The live client sends the slice pass after
pass, back to back: pass 0 warms the cluster up (the backtest also plays its trace once
before time 0), the last pass is compared. The backtest replays every request of every
pass at the moment the client actually sent it (a busy client sends late; the model
then sees the same late arrival), so arrivals are the same to the millisecond.
`check_against_rtcts_backtest` first shows that `run_backtest` on the slice file and
this test's own workload of the planned times are the same arrivals and the same
served mix: the comparison replays `rtcts backtest`'s model, only on the delivered times.

**What the host delivered, and when a pass is compared.** The live replicas sleep their
modelled step times; a host whose CPUs are taken by other work wakes them late, and the
ingress and Serve's proxy with them, so live latency grows while the model's does not:
that is what failed this test once (load average 45 on 2 cores). Two measures per pass:

- the host: `cpu_probe.py`, a process of its own that asks for 5 ms of CPU every 100 ms
  and times it (nothing of rtcts in it). Busy when it got less than `BUSY_CPU_SHARE`
  (80%) of a core: 2 busy loops on the 2 cores give ≈ 50%, 8 give ≈ 22%; beside the
  app alone it gets ≈ 93%;
- the live app: behind its modelled pace when more than 5% of the served requests
  decoded more than 10% slower than the engine's slowest on-pace batch allows
  (1.1 · o · TPOT(B) + 20 ms, measured by the replica itself), or the HTTP path (client
  latency minus the ingress's own total) took more than 150 ms at p90 (quiet: ~15 ms),
  or the client sent 1% of its requests more than 250 ms late.

A pass is inconclusive only when both say so: the host was busy *and* the app fell
behind. Then one more pass is sent (at most `MAX_PASSES` = 3 in all, about 2.5 min) and
compared instead; when every pass was inconclusive the test skips and says what it saw.
A busy host under which the app kept its pace is compared (seen: the probe at 52%,
every check within its tolerance). An app that falls behind on a free
host fails: that is the live app diverging from the model, whatever the cause. Seen
inconclusive: a pass with the probe at 22% and the HTTP path at 0.3-0.5 s p90, where the
one-replica model's TTFT came 230 ms late (the next pass was compared and held); 8 busy
loops beside the run: HTTP path p50 10 s, p50 26 s against 2.5 s.

**The checks and their tolerances.** Seen on eleven compared passes, on a quiet host and
on busy ones (load average up to 15), with the session's other app deployed beside this
one or not:

1. *Served-model mix* (end to end: the backtest's own decisions): each model's share
   and the throttled share within `MIX_TOLERANCE` = 10 points. Seen: largest gap 1.7-6.1
   points, always the live app throttling more. The live ingress decides on load
   reports up to ~200 ms old and on Serve's replicas; the slice saturates the cluster,
   so near the throttle threshold single decisions differ (about half of them after the
   first 20 s) while the shares stay close. Pricing without the replicas' queues or no
   scale-up moves the mix by 17-45 points; a decode rate 20% off or no batch slowdown
   by up to ~10 (3 catches those).
2. *p50 end-to-end latency* of the served requests, own decisions: within
   `P50_TOLERANCE` = 35% of the backtest's, plus 50 ms for what only the live path has
   (HTTP, ingress, Serve). Seen: live/backtest 0.97-1.23, the most on busy hosts: the
   two sides serve slightly different requests (see 1), and Serve's routing adds 7-19%
   to `small`'s mean (see 3).
3. *The backtest's replica model on the live decisions* (`RoutedReplay`): the live
   timeline replayed through the backtest's deployments and replicas, each request sent
   to the model the live app chose, with its live output length. The comparison is then
   request by request, free of the decision noise of 1-2. Per model with at least 10
   requests in the pass:
   - a model with one replica (`mid`: no routing choice): mean latency live/backtest in
     [0.95, 1.07] (seen 1.009-1.032: the ingress's own hops), mean TTFT (queue wait
     plus prefill) within -100..+200 ms of the backtest's (seen +15..+86 ms, the most on
     a busy host) and median TPOT within 5% (batching: Θ(n) at the batch sizes met;
     seen 0.3-1.4%);
   - a model with several replicas (`small`, two): mean latency live/backtest in
     [0.85, 1.35] (seen 1.07-1.19) and median TPOT within 8% (seen 0.4-4.3%). Wider,
     because Serve's router is not the backtest's least-loaded routing: it was seen
     keeping 3 requests queued on one replica for 2.5 s while the other had 2 free
     slots, so waits and batch sizes differ.

Replayed offline against each recorded pass (`RTCTS_SIM_VS_LIVE_DUMP=run.json` writes
one; `sim_vs_live.compare(..., adjust=...)` replays it with a changed model), these
checks fail a backtest whose replicas decode 10% faster or slower, batch without
slowdown or with half or 1.5 times the slowdown, have a slot more or fewer, prefill 10
times slower (4 times: caught on a quiet host), price without the replicas' queues, or
cannot scale up; 1-2 alone miss most of these.

Never timed: the test's own wall time. Everything is printed (`-s` shows it); a failure
shows both sides' figures and what the host delivered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from rtcts_dev.demo import prompt_tokens_sent
from serve_app.policy import load_policy_file
from serve_app.pricing import PriceBook
from tests.integration import sim_vs_live as sv
from tests.integration.conftest import KEYS, wait_until

pytestmark = pytest.mark.integration

APP = "rtcts-sim"
ROUTE_PREFIX = "/sim"
MAX_PASSES = 3
"""The warm-up and at most two passes to compare (the second when the host did not
deliver during the first)."""


def test_backtest_matches_live(ray_serve: str, tmp_path: Path) -> None:
    from ray import serve

    from serve_app.builder import build_app

    requests = sv.trace_slice()
    period_s = sv.pass_period_s(requests)
    policy_path = sv.write_policy(tmp_path / "policy.yaml")
    loaded = load_policy_file(policy_path)
    book = PriceBook.from_policy(loaded.policy, loaded.version)
    planned = sv.check_against_rtcts_backtest(
        policy_path, sv.write_trace(requests, tmp_path / "slice.csv"), requests, period_s
    )

    serve.run(
        build_app(
            {
                "policy": sv.sim_policy(),
                "natural_output": False,
                "app_name": APP,
                "data_dir": str(tmp_path / "rtcts-data"),
                "window_s": 1,
                "grace_s": 1,
            }
        ),
        name=APP,
        route_prefix=ROUTE_PREFIX,
    )
    probe = sv.LiveProbe(tmp_path / "probe.txt")
    seen: list[str] = []
    try:
        url = f"{ray_serve}{ROUTE_PREFIX}"
        headers = {"authorization": f"Bearer {KEYS[sv.PLAN]}"}

        def ready() -> bool:
            health = httpx.get(f"{url}/healthz", timeout=5).json()
            cluster = httpx.get(f"{url}/v1/cluster", headers=headers, timeout=5).json()
            warm = [m for m in cluster["models"].values() if any(r["warm"] for r in m["replicas"])]
            return health["load_age_s"] is not None and len(warm) >= 2

        wait_until(ready, timeout_s=120)

        def another_pass(
            pass_no: int, start: float, end: float, records: Sequence[sv.LiveRequest]
        ) -> bool:
            done = [r for r in records if r.finished]
            delivered = sv.delivery(probe.summary(start, end), done, book)
            seen.append(f"pass {pass_no} (when sent): {delivered}")
            return not delivered.conclusive

        live = asyncio.run(sv.replay_live(url, requests, period_s, another_pass, MAX_PASSES))
    finally:
        probe.stop()
        serve.delete(APP)

    counted = live.of_pass(live.counted)
    delivered = sv.delivery(probe.summary(*live.window(live.counted)), counted, book)
    live.host = [*seen, f"pass {live.counted} (compared): {delivered}"]
    dump = os.environ.get("RTCTS_SIM_VS_LIVE_DUMP")
    if dump:
        live.dump(Path(dump))
    host = "\n".join(live.host)
    print(f"\nrtcts backtest of the planned slice: served {planned}\n{host}")
    if not delivered.conclusive:
        pytest.skip(
            f"inconclusive: in pass {live.counted}, the last one sent, the host was busy "
            f"and the live app fell behind its modelled pace:\n{host}"
        )

    errors = [(r.index, r.status, r.error) for r in counted if not r.served and not r.decision]
    assert not errors, f"requests neither served nor throttled: {errors}\n{host}"
    for r in counted:
        if r.served:
            trace = requests[r.index]
            assert r.input_tokens == prompt_tokens_sent(trace.prompt_tokens), (r, trace)
            assert r.output_tokens == trace.output_tokens, (r, trace)
    assert not delivered.behind, (
        f"the live app fell behind its modelled pace on a host that had CPU to spare:\n{host}"
    )

    checks, report = sv.compare(live, requests, loaded)
    print(report)
    failed = [c for c in checks if not c.ok]
    assert not failed, f"the backtest does not match the live app:\n{report}\n{host}"
    names = [c.name for c in checks]
    assert any(name.endswith("mean TTFT") for name in names), (
        f"no one-replica model served {sv.MIN_PAIRS} requests: the slice no longer "
        f"exercises the sharpest check:\n{report}"
    )
