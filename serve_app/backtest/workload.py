"""Shape a trace into the arrivals of a backtest (pure, deterministic by seed).

- **Time compression**: offsets are divided by `speed` (2 = twice the arrival rate).
- **Length**: the compressed trace is played again and again, back to back, until
  `duration_s` (a one-hour trace covers a day with `duration_s=86400`).
- **Warm-up**: the first `warmup_s` of the compressed trace are also played just
  before time 0 (at negative times), so that at time 0 the cluster is scaled for the
  load it meets, as a running cluster would be; the replay counts nothing before 0.
- **Tenants and plans**: each arrival is drawn (seeded) to a plan by the mix's
  shares, then to one of that plan's tenants; a share of the tenants (`price_cap_share`)
  send a price cap, the list price of their request's worst case (prompt plus
  `max_tokens` on the model they asked for), which is what lets a plan surcharge.
- **Spike** (`SpikeSpec`): between `start_s` and `start_s + duration_s` the traffic is
  `factor` times the trace's: `factor − 1` more copies of the looped trace, each
  shifted in phase so that their bursts do not line up with the original's, thinned
  (seeded) to the fraction left over when `factor − 1` is not whole. The spike's
  arrivals keep the trace's token mix and burstiness, and come from the same tenants.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from serve_app.backtest.trace import TraceRequest


class Arrival(NamedTuple):
    """One request of the backtest (a tuple: there are hundreds of thousands)."""

    t: float
    """Seconds since the start of the backtest."""
    tenant: int
    """Index into `Workload.tenants`."""
    input_tokens: int
    output_tokens: int
    """What the model would generate if nothing stopped it (the trace's count)."""
    spike: bool
    """Part of the spike's extra traffic."""


@dataclass(frozen=True, slots=True)
class TenantSpec:
    id: str
    plan: str
    model: str
    """The model id or route alias its requests name."""
    max_tokens: int
    price_cap: bool
    """Whether its requests carry a price cap (their worst-case list price)."""


@dataclass(frozen=True, slots=True)
class SpikeSpec:
    start_s: float
    duration_s: float
    factor: float
    """Traffic during the spike, as a multiple of the trace's (> 1)."""

    def __post_init__(self) -> None:
        if not self.factor > 1.0:
            raise ValueError(f"the spike's factor must be more than 1, got {self.factor}")
        if self.start_s < 0 or not self.duration_s > 0:
            raise ValueError("the spike needs a start of 0 or more and a positive duration")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def covers(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    duration_s: float
    speed: float = 1.0
    mix: Mapping[str, float] | None = None
    """Share of arrivals per plan id; None: every plan of the policy alike."""
    tenants_per_plan: int = 10
    model: str = "auto"
    max_tokens: int = 1024
    price_cap_share: float = 0.0
    spike: SpikeSpec | None = None
    seed: int = 0
    warmup_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Workload:
    arrivals: Sequence[Arrival]
    """Ordered by time; the warm-up's first, at negative times."""
    tenants: tuple[TenantSpec, ...]
    duration_s: float
    spike: SpikeSpec | None

    @property
    def counted(self) -> int:
        """Arrivals at time 0 or later (the warm-up's are not counted)."""
        return sum(1 for a in self.arrivals if a.t >= 0)


def parse_mix(text: str) -> dict[str, float]:
    """`basic=0.7,pro=0.3` (shares need not sum to 1; they are normalised)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"not PLAN=SHARE: {part.strip()!r}")
        value = float(share)
        if not value >= 0:
            raise ValueError(f"a share must be 0 or more: {part.strip()!r}")
        mix[name.strip()] = value
    if not any(mix.values()):
        raise ValueError("the mix needs at least one plan with a positive share")
    return mix


def make_tenants(spec: WorkloadSpec, plans: Sequence[str]) -> tuple[TenantSpec, ...]:
    """`tenants_per_plan` tenants per plan of the mix; the first `price_cap_share` of
    each plan's tenants send price caps."""
    rng = random.Random(f"{spec.seed}:tenants")
    capped = round(spec.price_cap_share * spec.tenants_per_plan)
    tenants: list[TenantSpec] = []
    for plan in plans:
        chosen = set(rng.sample(range(spec.tenants_per_plan), capped))
        tenants += [
            TenantSpec(
                id=f"{plan}-{n + 1:02d}",
                plan=plan,
                model=spec.model,
                max_tokens=spec.max_tokens,
                price_cap=n in chosen,
            )
            for n in range(spec.tenants_per_plan)
        ]
    return tuple(tenants)


def shape(trace: Sequence[TraceRequest], spec: WorkloadSpec, plans: Sequence[str]) -> Workload:
    """The backtest's arrivals, ordered by time (ties keep the trace's order)."""
    if not spec.speed > 0:
        raise ValueError(f"speed must be more than 0, got {spec.speed}")
    if not spec.duration_s > 0:
        raise ValueError(f"the duration must be positive, got {spec.duration_s}")
    if not trace:
        raise ValueError("the trace has no requests")
    mix = dict(spec.mix) if spec.mix is not None else dict.fromkeys(plans, 1.0)
    unknown = sorted(set(mix) - set(plans))
    if unknown:
        raise ValueError(f"plan(s) not in the policy: {', '.join(unknown)}")
    mix_plans = [p for p in plans if mix.get(p, 0.0) > 0]
    tenants = make_tenants(spec, mix_plans)
    shares = [mix[p] for p in mix_plans]

    offsets = [r.offset_s / spec.speed for r in trace]
    gap = offsets[-1] / (len(offsets) - 1) if len(offsets) > 1 else 1.0
    period = offsets[-1] + gap
    rng = random.Random(f"{spec.seed}:arrivals")
    per_plan = spec.tenants_per_plan

    def draw_tenant() -> int:
        plan_index = rng.choices(range(len(mix_plans)), shares)[0]
        return plan_index * per_plan + rng.randrange(per_plan)

    arrivals: list[Arrival] = []
    warmup = min(max(0.0, spec.warmup_s), period)
    for offset, request in zip(offsets, trace, strict=True):
        if offset >= warmup:
            break
        arrivals.append(
            Arrival(
                offset - warmup, draw_tenant(), request.prompt_tokens, request.output_tokens, False
            )
        )
    for t, request in _looped(trace, offsets, period, 0.0, 0.0, spec.duration_s):
        arrivals.append(
            Arrival(t, draw_tenant(), request.prompt_tokens, request.output_tokens, False)
        )

    spike = spec.spike
    if spike is not None and spike.start_s < spec.duration_s:
        copies = math.ceil(spike.factor - 1.0)
        keep = (spike.factor - 1.0) / copies
        end = min(spike.end_s, spec.duration_s)
        for copy in range(1, copies + 1):
            phase = period * copy / (copies + 1)
            for t, request in _looped(trace, offsets, period, phase, spike.start_s, end):
                if rng.random() < keep:
                    arrivals.append(
                        Arrival(
                            t, draw_tenant(), request.prompt_tokens, request.output_tokens, True
                        )
                    )
        arrivals.sort(key=lambda a: a.t)
    return Workload(tuple(arrivals), tenants, spec.duration_s, spike)


def _looped(
    trace: Sequence[TraceRequest],
    offsets: Sequence[float],
    period: float,
    phase: float,
    start_s: float,
    end_s: float,
) -> list[tuple[float, TraceRequest]]:
    """(time, request) of the trace played back to back from `−phase`, within
    [start_s, end_s)."""
    out: list[tuple[float, TraceRequest]] = []
    lap = math.floor((start_s + phase) / period)
    while True:
        base = lap * period - phase
        if base >= end_s:
            return out
        for offset, request in zip(offsets, trace, strict=True):
            t = base + offset
            if t >= end_s:
                return out
            if t >= start_s:
                out.append((t, request))
        lap += 1
