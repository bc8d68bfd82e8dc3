"""A whole backtest: find the trace and the policy, shape the workload, replay it
through each policy compared, summarize.

Defaults: the policy is `policies/backtest.yaml` of the working directory, else its
packaged copy; the trace is the Azure LLM conversation trace 2023 from
`../shared/data/` (from the working directory, then from the source tree's parent),
else `--trace PATH`. Without `--spike` the workload is one pass of the (compressed)
trace; with it, the spike starts after `spike_start_h` hours, lasts `spike_hours` and
the workload runs one more hour after it (unless `hours` says otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.backtest.replay import Replay, ReplayConfig, ReplayResult, failure_draws
from serve_app.backtest.strategies import POLICIES, fallback_chain
from serve_app.backtest.summary import PolicySummary, summarize
from serve_app.backtest.trace import TraceRequest, load_trace
from serve_app.backtest.workload import SpikeSpec, Workload, WorkloadSpec, shape
from serve_app.errors import BacktestError as BacktestError
from serve_app.policy import LoadedPolicy, load_policy_file
from serve_app.pricing import PriceBook

TRACE_NAME = "azure_llm_trace_conv_2023.csv"
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_TRACE = PACKAGE_DIR / "data" / TRACE_NAME
"""Where a copy shipped with the package would lie (used first when present)."""
SHARED_TRACE = Path("..") / "shared" / "data" / TRACE_NAME
SOURCE_ROOT = PACKAGE_DIR.parents[1]
POLICY_PATH = Path("policies") / "backtest.yaml"
PACKAGED_POLICY = PACKAGE_DIR / "backtest.yaml"

Progress = Callable[[str, int, int], None]
"""Called with (policy, requests replayed so far in all policies, requests in all)."""


@dataclass(frozen=True, slots=True)
class BacktestOptions:
    trace: Path | None = None
    policy: Path | None = None
    policies: tuple[str, ...] = POLICIES
    hours: float | None = None
    speed: float = 1.0
    mix: Mapping[str, float] | None = None
    tenants_per_plan: int = 10
    model: str | None = None
    """What the tenants' requests name; default: the policy's cheapest model."""
    max_tokens: int = 1024
    price_cap_share: float = 0.3
    spike: bool = False
    spike_start_h: float = 1.0
    spike_hours: float = 2.0
    spike_factor: float = 4.0
    failure_rate: float = 0.01
    seed: int = 0


@dataclass(frozen=True, slots=True)
class BacktestResult:
    options: BacktestOptions
    trace_path: Path
    policy_source: str
    policy_version: str
    model: str
    floor: float
    workload: Workload
    results: Mapping[str, ReplayResult]
    summaries: Mapping[str, PolicySummary]
    usd_per_hour: Mapping[str, float] = field(default_factory=dict)


def find_trace(cwd: Path, source_root: Path = SOURCE_ROOT) -> Path | None:
    for candidate in (PACKAGED_TRACE, cwd / SHARED_TRACE, source_root / SHARED_TRACE):
        if candidate.is_file():
            return candidate
    return None


def resolve_trace(explicit: Path | None, cwd: Path, source_root: Path = SOURCE_ROOT) -> Path:
    if explicit is not None:
        return explicit
    found = find_trace(cwd, source_root)
    if found is None:
        raise BacktestError(
            f"trace not found: {SHARED_TRACE} (looked from {cwd} and {source_root}); "
            "give one with --trace PATH"
        )
    return found


def resolve_policy(explicit: Path | None, cwd: Path) -> Path:
    if explicit is not None:
        return explicit
    local = cwd / POLICY_PATH
    return local if local.is_file() else PACKAGED_POLICY


def cheapest_model(loaded: LoadedPolicy) -> str:
    """The model with the lowest replica price (ties: the first listed)."""
    return min(loaded.policy.models, key=lambda m: m.usd_per_hour).id


def floor_of(loaded: LoadedPolicy, plans: Sequence[str]) -> float:
    """The strictest margin floor of the plans in the mix: the report's floor line."""
    return max(p.margin_floor for p in loaded.policy.plans if p.id in plans)


def build_workload(
    options: BacktestOptions, trace: Sequence[TraceRequest], loaded: LoadedPolicy, model: str
) -> Workload:
    spike = None
    if options.spike:
        spike = SpikeSpec(
            options.spike_start_h * 3600.0, options.spike_hours * 3600.0, options.spike_factor
        )
    if options.hours is not None:
        duration = options.hours * 3600.0
    elif spike is not None:
        duration = spike.end_s + 3600.0
    else:
        span = trace[-1].offset_s / options.speed
        duration = span + span / max(1, len(trace) - 1)
    spec = WorkloadSpec(
        duration_s=duration,
        speed=options.speed,
        mix=options.mix,
        tenants_per_plan=options.tenants_per_plan,
        model=model,
        max_tokens=options.max_tokens,
        price_cap_share=options.price_cap_share,
        spike=spike,
        seed=options.seed,
    )
    return shape(trace, spec, [p.id for p in loaded.policy.plans])


def run_backtest(
    options: BacktestOptions, cwd: Path, progress: Progress | None = None
) -> BacktestResult:
    unknown = [p for p in options.policies if p not in POLICIES]
    if unknown or not options.policies:
        raise BacktestError(
            f"unknown policy {', '.join(unknown) or '(none)'}: choose from {', '.join(POLICIES)}"
        )
    trace_path = resolve_trace(options.trace, cwd)
    trace = load_trace(trace_path)
    loaded = load_policy_file(resolve_policy(options.policy, cwd))
    book = PriceBook.from_policy(loaded.policy, loaded.version)
    model = options.model or cheapest_model(loaded)
    try:
        workload = build_workload(options, trace, loaded, model)
        for tenant in workload.tenants:
            if not fallback_chain(book, tenant.plan, model):
                raise ValueError(f"plan {tenant.plan} sells no model of {model!r}")
    except ValueError as exc:
        raise BacktestError(str(exc)) from None
    if not 0.0 <= options.failure_rate < 1.0:
        raise BacktestError(f"the failure rate must lie in [0, 1), got {options.failure_rate}")
    config = ReplayConfig(failure_rate=options.failure_rate, seed=options.seed)
    draws = failure_draws(len(workload.arrivals), options.seed)
    plans = sorted({t.plan for t in workload.tenants})
    floor = floor_of(loaded, plans)
    total = len(workload.arrivals) * len(options.policies)
    results: dict[str, ReplayResult] = {}
    summaries: dict[str, PolicySummary] = {}
    for n, name in enumerate(options.policies):
        done_before = n * len(workload.arrivals)
        replayed = 0

        def tick(count: int, name: str = name, done_before: int = done_before) -> None:
            nonlocal replayed
            replayed += count
            if progress is not None:
                progress(name, done_before + replayed, total)

        replay = Replay(name, loaded.policy, book, workload, config, draws)
        results[name] = replay.run(tick if progress is not None else None)
        summaries[name] = summarize(results[name], workload.duration_s, workload.spike, floor)
    return BacktestResult(
        options=options,
        trace_path=trace_path,
        policy_source=str(loaded.source),
        policy_version=loaded.version,
        model=model,
        floor=floor,
        workload=workload,
        results=results,
        summaries=summaries,
        usd_per_hour={m.id: m.usd_per_hour for m in loaded.policy.models},
    )
