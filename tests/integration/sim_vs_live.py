"""The parts of tests/integration/test_backtest_matches_live.py (its docstring says what
is compared and why): the policy and trace slice both sides get, the live client, what
the host and the live app delivered, the backtests of the live timeline, the checks.

Everything but `replay_live` and `LiveProbe` is pure: a live run recorded with
`RTCTS_SIM_VS_LIVE_DUMP=run.json` can be compared again offline (`LiveRun.load`,
`compare`), also against a deliberately wrong replica model (`compare(..., adjust=...)`)
to see which check catches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from rtcts_dev.demo import chat_body, outcome_of, prompt_tokens_sent
from serve_app.backtest.replay import Replay, ReplayConfig
from serve_app.backtest.replica import Job
from serve_app.backtest.runner import PACKAGED_TRACE, BacktestOptions, run_backtest
from serve_app.backtest.trace import TraceRequest, load_trace
from serve_app.backtest.workload import Arrival, Workload, WorkloadSpec, make_tenants
from serve_app.policy import LoadedPolicy, load_policy_file
from serve_app.pricing import PriceBook
from tests.integration import cpu_probe
from tests.integration.conftest import KEYS, POLICY

MODEL = "small"
"""What every request names (the flex tenant's card model)."""
PLAN = "flex"
SLICE_S = 60.0
"""Trace seconds replayed (before compression)."""
SPEED = 1.5
"""Time compression, the same on both sides (a pass of the slice takes 40 s)."""
MAX_TOKENS = 1024
"""The backtest tenant's max_tokens (the models' max_output_tokens)."""
CONTEXT_WINDOW = 4096
"""The smallest context window of the integration policy."""
REQUEST_TIMEOUT_S = 120.0
DRAIN_S = 60.0
"""After the last pass, how long its requests may still take."""
CLUSTER_POLL_S = 0.5

# What the host and the live app delivered (see the test's docstring).
BUSY_CPU_SHARE = 0.8
"""Below this CPU share (cpu_probe) the host was busy."""
PACE_TOLERANCE = 0.10
PACE_SLACK_S = 0.02
"""A live decode keeps the engine's pace when it takes at most (1 + PACE_TOLERANCE)
times o steps of the full batch (o − 1, and one for joining mid-step) plus this. A
replica starved for a moment catches up (its steps make up the time they overslept), so
a decode only goes past this when the replica fell behind for good."""
PACE_LATE_SHARE = 0.05
"""The live app fell behind when more of its requests than this decoded slower,"""
PATH_P90_S = 0.15
"""... or when the 90th percentile of the HTTP path (client to ingress and back) took
longer than this (quiet: ~15 ms; seen 30-100 ms on busy hosts where every check held,
0.3-0.5 s where the one-replica model's TTFT was 230 ms late),"""
SEND_LATE_P99_S = 0.25
"""... or when the client sent 1% of its requests later than this."""

# The checks' tolerances (see the test's docstring).
MIX_TOLERANCE = 0.10
P50_TOLERANCE = 0.35
P50_OVERHEAD_S = 0.05
TPOT_TOLERANCE = 0.05
"""Median TPOT, live over the backtest's, a model with one replica."""
REPLICAS_TPOT_TOLERANCE = 0.08
"""... a model with several replicas (how full each batch is depends on the routing)."""
ONE_REPLICA_LATENCY = (0.95, 1.07)
"""Mean live latency over the backtest's, a model with one replica (no routing)."""
ONE_REPLICA_TTFT_S = (-0.10, 0.20)
"""Mean live TTFT minus the backtest's (seconds), a model with one replica."""
REPLICAS_LATENCY = (0.85, 1.35)
"""Mean live latency over the backtest's, a model with several replicas."""
MIN_PAIRS = 10
"""A model's per-model checks need this many requests served in the counted pass."""


# ---------------------------------------------------------------------- policy, trace


def sim_policy(source: Path = POLICY) -> dict[str, Any]:
    """The integration policy under its own version. The session's other app
    (conftest's `app_url`) serves the same model ids in the same Ray and keeps idle
    replicas of `small` and `mid`; the one load registry holds both apps' reports, and an
    ingress counts only its own application's (`ReplicaReport.app`), which this test
    relies on."""
    data: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    data["version"] = f"{data['version']}-sim"
    return data


def write_policy(path: Path) -> Path:
    path.write_text(yaml.safe_dump(sim_policy(), sort_keys=False), encoding="utf-8")
    return path


def trace_slice() -> list[TraceRequest]:
    """The first SLICE_S seconds of the packaged trace whose prompt fits beside MAX_TOKENS
    (as the server counts it: `rtcts demo`'s synthetic prompt)."""
    return [
        r
        for r in load_trace(PACKAGED_TRACE)
        if r.offset_s < SLICE_S
        and prompt_tokens_sent(r.prompt_tokens) + MAX_TOKENS <= CONTEXT_WINDOW
        and r.output_tokens >= 1
    ]


def write_trace(requests: Sequence[TraceRequest], path: Path) -> Path:
    """The slice as a trace file, with the prompt tokens the server counts."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for r in requests:
            writer.writerow(
                [f"{r.offset_s:.6f}", prompt_tokens_sent(r.prompt_tokens), r.output_tokens]
            )
    return path


def pass_period_s(requests: Sequence[TraceRequest]) -> float:
    """One pass of the compressed slice, as `rtcts backtest` loops it (the last offset
    plus the mean gap: `serve_app.backtest.workload.shape`)."""
    offsets = [r.offset_s / SPEED for r in requests]
    return offsets[-1] + offsets[-1] / (len(offsets) - 1)


# ---------------------------------------------------------------------- the live side


@dataclass(slots=True)
class LiveRequest:
    """One request of the live run; times in seconds from the start of its first pass."""

    index: int
    """Position in the slice."""
    pass_no: int
    planned_s: float
    sent_s: float = math.nan
    latency_s: float = math.nan
    """At the client, from `sent_s` to the whole answer."""
    status: int = 0
    model: str | None = None
    decision: str | None = None
    error: str | None = None
    ttft_s: float | None = None
    """From the request's arrival at the ingress to its first token (rtcts.ttft_ms)."""
    total_s: float | None = None
    """From the request's arrival at the ingress to its end (rtcts.total_ms); `total_s -
    ttft_s` is the replica's own time for the tokens after the first."""
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def served(self) -> bool:
        return self.status == 200 and self.model is not None

    @property
    def finished(self) -> bool:
        return math.isfinite(self.latency_s)


@dataclass
class LiveRun:
    requests: list[LiveRequest]
    period_s: float
    started: float
    """time.monotonic() at the start of the first pass."""
    passes: int
    counted: int
    """The pass compared (the last one sent)."""
    cluster: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """`GET /v1/cluster` every CLUSTER_POLL_S: (time, per model the autoscaler's target
    and its replicas' [warm, running, queued]), for a failure's investigation."""
    host: list[str] = field(default_factory=list)
    """Per pass after the warm-up, what the host and the app delivered (`Delivery`)."""

    def of_pass(self, pass_no: int) -> list[LiveRequest]:
        return [r for r in self.requests if r.pass_no == pass_no]

    def window(self, pass_no: int) -> tuple[float, float]:
        """A pass on the monotonic clock: from its start to its last answer (or its end)."""
        start = self.started + pass_no * self.period_s
        ends = [r.sent_s + r.latency_s for r in self.of_pass(pass_no) if r.finished]
        return start, self.started + max([(pass_no + 1) * self.period_s, *ends])

    def dump(self, path: Path) -> None:
        data = {**asdict(self), "requests": [asdict(r) for r in self.requests]}
        path.write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LiveRun:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["requests"] = [LiveRequest(**r) for r in data["requests"]]
        return cls(**data)


class LiveProbe:
    """`cpu_probe.py` in a process of its own, its lines in a file, during the live run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, str(Path(cpu_probe.__file__)), "900"],
            stdout=self._file,
            stderr=subprocess.DEVNULL,
        )

    def summary(self, start: float, end: float) -> cpu_probe.ProbeSummary:
        return cpu_probe.summarize(cpu_probe.read_samples(self.path), start, end)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._file.close()


AnotherPass = Callable[[int, float, float, Sequence[LiveRequest]], bool]
"""(pass, its start, its end on the monotonic clock, its requests so far) -> send one
more pass?"""


async def replay_live(
    url: str,
    requests: Sequence[TraceRequest],
    period_s: float,
    another_pass: AnotherPass,
    max_passes: int,
) -> LiveRun:
    """Send the compressed slice pass after pass, back to back, each request as `rtcts
    demo` sends a trace request (a synthetic prompt of its tokens, its output tokens as
    `max_tokens`), and poll `/v1/cluster` meanwhile.

    Pass 0 is the warm-up. When pass k ≥ 1 has been sent, `another_pass` says whether to
    send one more (at most `max_passes` in all); the last pass sent is the one compared."""
    run: list[LiveRequest] = []
    cluster: list[tuple[float, dict[str, Any]]] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512, keepalive_expiry=2)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"authorization": f"Bearer {KEYS[PLAN]}"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5),
        limits=limits,
    ) as client:
        started = time.monotonic()

        async def send(record: LiveRequest, request: TraceRequest) -> None:
            sent = time.monotonic()
            record.sent_s = sent - started
            try:
                response = await client.post("/v1/chat/completions", json=chat_body(request, MODEL))
                body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                record.latency_s = time.monotonic() - sent
                record.error = type(exc).__name__
                return
            record.latency_s = time.monotonic() - sent
            ok = response.status_code == 200
            outcome = outcome_of(
                response.status_code, response.headers, None if ok else body, record.latency_s
            )
            record.status = outcome.status
            record.model = outcome.model
            record.decision = outcome.decision
            record.error = outcome.error
            if ok:
                record.ttft_s = body["rtcts"]["ttft_ms"] / 1000.0
                record.total_s = body["rtcts"]["total_ms"] / 1000.0
                record.input_tokens = body["usage"]["prompt_tokens"]
                record.output_tokens = body["usage"]["completion_tokens"]

        async def poll() -> None:
            while True:
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    at = time.monotonic() - started
                    models = (await client.get("/v1/cluster")).json()["models"]
                    cluster.append(
                        (
                            round(at, 3),
                            {
                                m: {
                                    "target": v["target_replicas"],
                                    "replicas": [
                                        [r["warm"], r["running"], r["queued"]]
                                        for r in v["replicas"]
                                    ],
                                }
                                for m, v in models.items()
                            },
                        )
                    )
                await asyncio.sleep(CLUSTER_POLL_S)

        poller = asyncio.create_task(poll())
        tasks = []
        pass_no = 0
        try:
            while True:
                base = pass_no * period_s
                for index, request in enumerate(requests):
                    record = LiveRequest(index, pass_no, base + request.offset_s / SPEED)
                    run.append(record)
                    delay = started + record.planned_s - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(send(record, request)))
                end = started + base + period_s
                delay = end - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if pass_no + 1 >= max_passes:
                    break
                sent = [r for r in run if r.pass_no == pass_no]
                if pass_no >= 1 and not another_pass(pass_no, started + base, end, sent):
                    break
                pass_no += 1
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=DRAIN_S)
        finally:
            poller.cancel()
    return LiveRun(run, period_s, started, pass_no + 1, pass_no, cluster=cluster)


# ---------------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the host and the live app delivered during one pass.

    `busy` comes from the CPU probe alone (nothing of rtcts); `behind` from the live
    requests: replica decodes slower than the engine's slowest on-pace batch, a slow
    HTTP path, late sends."""

    probe: cpu_probe.ProbeSummary
    slow_decodes: float
    """Share of the served requests whose decode took longer than an on-pace replica's
    slowest (`slowest_on_pace_s`)."""
    path_p90_s: float
    """90th percentile of client latency minus the ingress's own total."""
    send_late_p99_s: float

    @property
    def busy(self) -> bool:
        return self.probe.cpu_share < BUSY_CPU_SHARE or self.probe.coverage < 0.9

    @property
    def behind(self) -> bool:
        return (
            self.slow_decodes > PACE_LATE_SHARE
            or self.path_p90_s > PATH_P90_S
            or self.send_late_p99_s > SEND_LATE_P99_S
        )

    @property
    def conclusive(self) -> bool:
        """False only when the host was busy and the live app fell behind its model."""
        return not (self.busy and self.behind)

    def __str__(self) -> str:
        return (
            f"host {'busy' if self.busy else 'free'} (probe: {self.probe}); "
            f"app {'behind' if self.behind else 'on pace'}: {self.slow_decodes:.0%} of "
            f"decodes slower than the engine's slowest on-pace batch, HTTP path p90 "
            f"{self.path_p90_s * 1000:.0f} ms, sends late p99 {self.send_late_p99_s * 1000:.0f} ms"
        )


def slowest_on_pace_s(book: PriceBook, model: str, output_tokens: int) -> float:
    """The longest a replica that keeps its modelled pace takes for a request's tokens
    after the first: every step at the full batch's TPOT, one step more for joining the
    batch mid-step, PACE_TOLERANCE and timer slack."""
    profile = book.models[model]
    full = output_tokens * profile.tpot_s(profile.max_concurrent_sequences)
    return (1.0 + PACE_TOLERANCE) * full + PACE_SLACK_S


def delivery(
    probe: cpu_probe.ProbeSummary, records: Sequence[LiveRequest], book: PriceBook
) -> Delivery:
    served = [
        r
        for r in records
        if r.served and r.total_s is not None and r.ttft_s is not None and r.output_tokens
    ]
    slow = sum(
        1
        for r in served
        if r.model in book.models
        and (r.total_s or 0.0) - (r.ttft_s or 0.0)
        > slowest_on_pace_s(book, r.model or "", r.output_tokens or 1)
    )
    path = sorted(r.latency_s - (r.total_s or 0.0) for r in served)
    late = sorted(r.sent_s - r.planned_s for r in records if math.isfinite(r.sent_s))
    return Delivery(
        probe,
        slow / len(served) if served else 0.0,
        _quantile(path, 0.9),
        _quantile(late, 0.99),
    )


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# ---------------------------------------------------------------------- the backtest side


@dataclass(frozen=True, slots=True)
class SimJob:
    """One served request of the backtest, times from its arrival."""

    index: int
    """Its position in the workload."""
    model: str
    latency_s: float
    ttft_s: float
    decode_s: float
    output_tokens: int


def _sim_job(job: Job, now: float) -> SimJob:
    return SimJob(
        job.index,
        job.model_id,
        now - job.arrival_s,
        job.first_token_s - job.arrival_s,
        now - job.first_token_s,
        job.output_tokens,
    )


class TimedReplay(Replay):
    """A replay that also keeps each served request's figures."""

    jobs: list[SimJob]

    def _ended(self, job: Job, now: float) -> None:
        if not job.failed:
            self.jobs.append(_sim_job(job, now))
        super()._ended(job, now)


class RoutedReplay(TimedReplay):
    """The backtest's deployments and replicas, but every request goes where the live app
    sent it, with the output its live answer had (`routes`, by workload position; None:
    the live app did not serve it): the replica model (routing among a model's replicas,
    slots, queues, prefill, batching, autoscaling) on the live decisions."""

    routes: Sequence[tuple[str, int] | None]

    def _arrive(self, index: int, now: float) -> None:
        route = self.routes[index]
        if route is None:
            return
        model_id, output_tokens = route
        input_tokens = self.workload.arrivals[index].input_tokens
        job = Job(index, now, model_id, input_tokens, max(1, output_tokens), None, None)
        self.deployments[model_id].route(job, now)

    def _ended(self, job: Job, now: float) -> None:
        self.jobs.append(_sim_job(job, now))  # nothing to bill: no decision was made here


Adjust = Callable[[Replay], None]
"""Changes a replay before it runs (offline: a deliberately wrong replica model)."""


def incremental_replay(
    loaded: LoadedPolicy, work: Workload, kind: type[TimedReplay] = TimedReplay
) -> TimedReplay:
    """What `rtcts backtest --policies incremental --failure-rate 0` replays."""
    replay = kind(
        "incremental",
        loaded.policy,
        PriceBook.from_policy(loaded.policy, loaded.version),
        work,
        ReplayConfig(failure_rate=0.0),
    )
    replay.jobs = []
    return replay


def workload(timeline: Sequence[tuple[float, TraceRequest]], period_s: float) -> Workload:
    """The backtest's workload of (time, request) arrivals in time order (times from the
    start of the pass compared; earlier passes at negative times): one flex tenant (no
    price cap) naming MODEL with `max_tokens` MAX_TOKENS, the prompt tokens the server
    counts. `check_against_rtcts_backtest` shows `rtcts backtest` shapes the same."""
    spec = WorkloadSpec(
        duration_s=period_s,
        speed=SPEED,
        mix={PLAN: 1.0},
        tenants_per_plan=1,
        model=MODEL,
        max_tokens=MAX_TOKENS,
    )
    times = [t for t, _ in timeline]
    if times != sorted(times):
        raise ValueError("the timeline is not in time order")
    arrivals = tuple(
        Arrival(t, 0, prompt_tokens_sent(r.prompt_tokens), r.output_tokens, False)
        for t, r in timeline
    )
    return Workload(arrivals, make_tenants(spec, [PLAN]), period_s, None)


def check_against_rtcts_backtest(
    policy_path: Path, trace_path: Path, requests: Sequence[TraceRequest], period_s: float
) -> dict[str, int]:
    """`run_backtest` (what `rtcts backtest` runs) on the slice file, and `workload` of
    the planned timeline (a warm-up pass, then the counted one) replayed as `compare`
    replays: the same arrivals, the same served mix. So what `compare` replays is `rtcts
    backtest`'s model, only on other arrival times. Returns the served counts."""
    result = run_backtest(
        BacktestOptions(
            trace=trace_path,
            policy=policy_path,
            policies=("incremental",),
            speed=SPEED,
            mix={PLAN: 1.0},
            tenants_per_plan=1,
            model=MODEL,
            max_tokens=MAX_TOKENS,
            price_cap_share=0.0,
            failure_rate=0.0,
        ),
        Path.cwd(),
    )
    loaded = load_policy_file(policy_path)
    timeline = [(k * period_s + r.offset_s / SPEED, r) for k in (-1, 0) for r in requests]
    own = workload(timeline, period_s)
    theirs = result.workload.arrivals
    assert len(own.arrivals) == len(theirs), (len(own.arrivals), len(theirs))
    for a, b in zip(own.arrivals, theirs, strict=True):
        assert abs(a.t - b.t) < 1e-6, (a, b)
        assert a[1:] == b[1:], (a, b)
    replayed = incremental_replay(loaded, own).run()
    served = {m: t.served for m, t in result.results["incremental"].models.items()}
    assert {m: t.served for m, t in replayed.models.items()} == served
    return served


# ---------------------------------------------------------------------- the comparison


@dataclass(frozen=True, slots=True)
class Side:
    """What one side did with the counted pass."""

    requests: int
    served: Mapping[str, int]
    throttled: int
    latencies: Sequence[float]
    """End-to-end latency of each served request."""
    tpot: Mapping[str, Sequence[float]]
    """Per model, each served request's seconds per output token after the first."""

    def shares(self) -> dict[str, float]:
        """Each model's share of the requests, and the throttled share."""
        counts = {**self.served, "throttled": self.throttled}
        return {m: n / self.requests for m, n in counts.items() if n} if self.requests else {}

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else math.nan

    def __str__(self) -> str:
        shares = ", ".join(f"{m} {s:.1%}" for m, s in sorted(self.shares().items()))
        tpot = ", ".join(
            f"{m} {statistics.median(v) * 1000:.1f} ms" for m, v in sorted(self.tpot.items()) if v
        )
        return f"{self.requests} requests: {shares}; p50 {self.p50:.3f} s; median TPOT {tpot}"


def live_side(run: LiveRun) -> Side:
    requests = run.of_pass(run.counted)
    served: dict[str, int] = {}
    tpot: dict[str, list[float]] = {}
    latencies = []
    for r in requests:
        if r.served and r.model is not None:
            served[r.model] = served.get(r.model, 0) + 1
            latencies.append(r.latency_s)
            if r.output_tokens and r.output_tokens > 1 and r.total_s and r.ttft_s is not None:
                tpot.setdefault(r.model, []).append((r.total_s - r.ttft_s) / (r.output_tokens - 1))
    throttled = sum(1 for r in requests if r.decision == "throttle")
    return Side(len(requests), served, throttled, latencies, tpot)


def live_timeline(
    run: LiveRun, requests: Sequence[TraceRequest]
) -> tuple[list[tuple[float, TraceRequest]], list[LiveRequest]]:
    """Every live request when it was sent (from the start of the counted pass), in time
    order; and the live records in the same order."""
    origin = run.counted * run.period_s
    records = sorted(run.requests, key=lambda r: r.sent_s)
    return [(r.sent_s - origin, requests[r.index]) for r in records], records


def _side(records: Sequence[LiveRequest], counted: int, jobs: Sequence[SimJob]) -> Side:
    """The backtest's figures of the counted pass (`records`: the live requests in
    workload order)."""
    indexes = {i for i, r in enumerate(records) if r.pass_no == counted}
    served: dict[str, int] = {}
    tpot: dict[str, list[float]] = {}
    latencies = []
    for job in jobs:
        if job.index not in indexes:
            continue
        served[job.model] = served.get(job.model, 0) + 1
        latencies.append(job.latency_s)
        if job.output_tokens > 1:
            tpot.setdefault(job.model, []).append(job.decode_s / (job.output_tokens - 1))
    throttled = len(indexes) - sum(served.values())  # no failures: the rest was throttled
    return Side(len(indexes), served, throttled, latencies, tpot)


def sim_side(
    run: LiveRun, requests: Sequence[TraceRequest], loaded: LoadedPolicy, adjust: Adjust | None
) -> Side:
    """The backtest of the live timeline (each request when the client sent it, every
    pass) with its own decisions, counted on the pass the live side counts."""
    timeline, records = live_timeline(run, requests)
    replay = incremental_replay(loaded, workload(timeline, run.period_s))
    if adjust is not None:
        adjust(replay)
    replay.run()
    return _side(records, run.counted, replay.jobs)


def routed_pairs(
    run: LiveRun, requests: Sequence[TraceRequest], loaded: LoadedPolicy, adjust: Adjust | None
) -> list[tuple[LiveRequest, SimJob]]:
    """`RoutedReplay` of the live timeline: each served request of the counted pass, live
    and in the backtest's replica model."""
    timeline, records = live_timeline(run, requests)
    replay = incremental_replay(loaded, workload(timeline, run.period_s), RoutedReplay)
    assert isinstance(replay, RoutedReplay)
    replay.routes = [
        (r.model, r.output_tokens or 1) if r.served and r.model is not None else None
        for r in records
    ]
    if adjust is not None:
        adjust(replay)
    replay.run()
    jobs = {j.index: j for j in replay.jobs}
    return [(r, jobs[i]) for i, r in enumerate(records) if r.pass_no == run.counted and i in jobs]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def compare(
    run: LiveRun,
    requests: Sequence[TraceRequest],
    loaded: LoadedPolicy,
    adjust: Adjust | None = None,
) -> tuple[list[Check], str]:
    """The checks of the test's docstring, and a report of both sides' figures."""
    live = live_side(run)
    sim = sim_side(run, requests, loaded, adjust)
    live_shares, sim_shares = live.shares(), sim.shares()
    keys = sorted(set(live_shares) | set(sim_shares))
    gaps = {k: live_shares.get(k, 0.0) - sim_shares.get(k, 0.0) for k in keys}
    worst = max(keys, key=lambda k: abs(gaps[k]))
    checks = [
        Check(
            "served-model mix",
            abs(gaps[worst]) <= MIX_TOLERANCE,
            f"largest gap {gaps[worst]:+.1%} ({worst}), tolerance {MIX_TOLERANCE:.0%}",
        ),
        Check(
            "p50 end to end",
            abs(live.p50 - sim.p50) <= P50_TOLERANCE * sim.p50 + P50_OVERHEAD_S,
            f"live {live.p50:.3f} s, backtest {sim.p50:.3f} s "
            f"(tolerance {P50_TOLERANCE:.0%} + {P50_OVERHEAD_S * 1000:.0f} ms)",
        ),
    ]
    pairs = routed_pairs(run, requests, loaded, adjust)
    book = PriceBook.from_policy(loaded.policy, loaded.version)
    lines = []
    for model in sorted({r.model for r, _ in pairs if r.model}):
        mine = [(r, j) for r, j in pairs if r.model == model]
        if len(mine) < MIN_PAIRS:
            continue
        one_replica = book.models[model].max_replicas == 1
        live_mean = statistics.fmean(r.total_s or 0.0 for r, _ in mine)
        sim_mean = statistics.fmean(j.latency_s for _, j in mine)
        ttft_gap = statistics.fmean(r.ttft_s or 0.0 for r, _ in mine) - statistics.fmean(
            j.ttft_s for _, j in mine
        )
        bounds = ONE_REPLICA_LATENCY if one_replica else REPLICAS_LATENCY
        checks.append(
            Check(
                f"{model} mean latency",
                _within(live_mean / sim_mean, bounds),
                f"live {live_mean:.3f} s / backtest {sim_mean:.3f} s = "
                f"{live_mean / sim_mean:.3f}, within {bounds} "
                f"({'one replica' if one_replica else 'several replicas'}, {len(mine)} requests)",
            )
        )
        if one_replica:
            checks.append(
                Check(
                    f"{model} mean TTFT",
                    _within(ttft_gap, ONE_REPLICA_TTFT_S),
                    f"live - backtest {ttft_gap * 1000:+.0f} ms, within "
                    f"{tuple(int(b * 1000) for b in ONE_REPLICA_TTFT_S)} ms",
                )
            )
        tpots = [
            (
                ((r.total_s or 0.0) - (r.ttft_s or 0.0)) / (j.output_tokens - 1),
                j.decode_s / (j.output_tokens - 1),
            )
            for r, j in mine
            if j.output_tokens > 1
        ]
        if len(tpots) >= MIN_PAIRS:
            live_tpot = statistics.median(t for t, _ in tpots)
            sim_tpot = statistics.median(t for _, t in tpots)
            ratio = live_tpot / sim_tpot
            tolerance = TPOT_TOLERANCE if one_replica else REPLICAS_TPOT_TOLERANCE
            checks.append(
                Check(
                    f"{model} median TPOT",
                    abs(ratio - 1.0) <= tolerance,
                    f"live {live_tpot * 1000:.2f} ms / backtest {sim_tpot * 1000:.2f} ms = "
                    f"{ratio:.3f}, tolerance {tolerance:.0%}",
                )
            )
        lines.append(f"  {model}: {len(mine)} requests, mean TTFT gap {ttft_gap * 1000:+.0f} ms")
    report = "\n".join(
        [
            f"backtest (own decisions): {sim}",
            f"live:                     {live}",
            "backtest's replica model on the live decisions:",
            *lines,
            *(str(c) for c in checks),
        ]
    )
    return checks, report
