"""Replay a workload through one policy: a discrete-event simulation, no Ray, no clock.

Events (a heap, `replica.EventQueue`) and arrivals (already sorted) are merged in time
order; equal times keep the order they were scheduled in, so a replay is a pure
function of (workload, policy, config): the same seed gives the same result.

Per arrival: the live state of every model (`Deployment.load`, what the ingress's
snapshot would hold), the policy's choice (`strategies`), then the served request
goes to its model's deployment. Per end: the bill on the real tokens and latency
(`charges`), the tenant's output history, the ledger and, for `incremental`, the
rolling windows the next decisions weigh. Every `control_period_s` each deployment's
autoscaler steps. When the arrivals are over the replay drains: the requests in
flight end, then every replica stops costing.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from serve_app.backtest.autoscale import CONTROL_PERIOD_S, ScalingBounds
from serve_app.backtest.charges import card_bill, decision_bill, output_cap_tokens
from serve_app.backtest.deployment import Deployment
from serve_app.backtest.ledger import Ledger, MinuteRow, ModelTotals, SyncSchedule
from serve_app.backtest.replica import (
    DECODE_DUE,
    PREFILL_DONE,
    REPLICA_WARM,
    TICK,
    EventQueue,
    Job,
    fail_at,
)
from serve_app.backtest.strategies import (
    ALLOCATED,
    INCREMENTAL,
    STATIC,
    Choice,
    CorePolicy,
    StaticGateway,
    fallback_chain,
)
from serve_app.backtest.windows import RollingWindows
from serve_app.backtest.workload import Workload
from serve_app.policy.schema import Policy
from serve_app.pricing import ClusterSnapshot, CostBasis, PriceBook, PriceRequest
from serve_app.pricing.price import PICO_PER_MICRO

HISTORY_WEIGHT = 0.2
"""Weight of the newest answer in a tenant's mean output tokens (as the ingress's
`OutputHistory`)."""
PROGRESS_EVERY = 4096


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    failure_rate: float = 0.01
    """Share of served requests that fail (seeded, the same requests for every policy)."""
    margin_window_s: float = 300.0
    """The rolling window of the incremental decision's margin guard."""
    billing_window_s: float = 60.0
    grace_s: float = 10.0
    """rtcts's billing windows: synced `grace_s` after each window's end."""
    static_sync_s: float = 86_400.0
    """The static card's nightly cron job."""
    control_period_s: float = CONTROL_PERIOD_S
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    policy: str
    rows: Sequence[MinuteRow]
    models: Mapping[str, ModelTotals]
    requests: int
    end_s: float
    unbilled_peak_micro: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None


def failure_draws(count: int, seed: int) -> tuple[list[float], list[float]]:
    """Per arrival, (whether it fails, where): drawn once so that every policy sees the
    same requests fail."""
    rng = random.Random(f"{seed}:failures")
    return [rng.random() for _ in range(count)], [rng.random() for _ in range(count)]


class Replay:
    """One policy's replay of one workload (see the module docstring)."""

    def __init__(
        self,
        policy_name: str,
        policy: Policy,
        book: PriceBook,
        workload: Workload,
        config: ReplayConfig,
        draws: tuple[list[float], list[float]] | None = None,
    ) -> None:
        self.name = policy_name
        self.book = book
        self.workload = workload
        self.config = config
        self.events = EventQueue()
        specs = {m.id: m for m in policy.models}
        self.usd_per_s = {m: p.usd_per_s for m, p in book.models.items()}
        self.ledger = Ledger(list(book.models), self.usd_per_s)
        arrivals = workload.arrivals
        self.began = min(0.0, arrivals[0].t) if arrivals else 0.0
        """The replay's first moment: the warm-up's first arrival, or 0."""
        self.windows = RollingWindows(self.usd_per_s, config.margin_window_s, self.began)
        self.deployments = {
            m: Deployment(
                profile,
                ScalingBounds.from_spec(specs[m]),
                self.events,
                self._ended,
                self.windows.replicas,
                config.control_period_s,
            )
            for m, profile in book.models.items()
        }
        self.credit = {p.id: Fraction(str(p.sla.credit_fraction)) for p in policy.plans}
        self.draws = draws or failure_draws(len(workload.arrivals), config.seed)
        self.history: list[dict[str, float]] = [{} for _ in workload.tenants]
        self._tenant_setup()
        if policy_name == STATIC:
            self.static: StaticGateway | None = StaticGateway(
                book, lambda m: self.deployments[m].below_concurrency_limit()
            )
            self.core: CorePolicy | None = None
        elif policy_name in (ALLOCATED, INCREMENTAL):
            self.static = None
            basis = CostBasis.INCREMENTAL if policy_name == INCREMENTAL else CostBasis.ALLOCATED
            self.core = CorePolicy(book, basis)
        else:
            raise ValueError(f"unknown policy {policy_name!r}")

    def _tenant_setup(self) -> None:
        """Per tenant: the model whose card it is on (an alias: its first model) and
        its price of one prompt and one output token there."""
        self.card_model: list[str] = []
        self.card_rates: list[tuple[int, int]] = []
        for tenant in self.workload.tenants:
            chain = fallback_chain(self.book, tenant.plan, tenant.model)
            if not chain:
                raise ValueError(f"plan {tenant.plan} sells no model of {tenant.model!r}")
            rates = self.book.plans[tenant.plan].rates[chain[0]]
            self.card_model.append(chain[0])
            self.card_rates.append((rates.input_micro_per_1m, rates.output_micro_per_1m))

    # -- the loop --------------------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> ReplayResult:
        arrivals = self.workload.arrivals
        for deployment in self.deployments.values():
            deployment.start(self.began)
        events = self.events
        heap = events.heap
        events.push(self.began, TICK, None)
        count = len(arrivals)
        arrive = self._arrive
        deployments = self.deployments
        period = self.config.control_period_s
        i = 0
        now = 0.0
        while True:
            if i < count and (not heap or arrivals[i][0] < heap[0][0]):
                now = arrivals[i][0]
                arrive(i, now)
                i += 1
                if progress is not None and i % PROGRESS_EVERY == 0:
                    progress(PROGRESS_EVERY)
                continue
            if not heap:
                break
            now, _, kind, subject, version = heapq.heappop(heap)
            if kind == DECODE_DUE:
                subject.decode_due(version, now)
            elif kind == PREFILL_DONE:
                subject.replica.prefill_done(subject, now)
            elif kind == REPLICA_WARM:
                deployments[subject.model_id].replica_warm(subject, now)
            elif kind == TICK:
                for deployment in deployments.values():
                    deployment.tick(now)
                if i < count or any(d.ongoing for d in deployments.values()):
                    events.push(now + period, TICK, None)
        if progress is not None and count % PROGRESS_EVERY:
            progress(count % PROGRESS_EVERY)
        return self._result(max(now, self.workload.duration_s))

    def _arrive(self, index: int, now: float) -> None:
        _, tenant_index, input_tokens, trace_output, _ = self.workload.arrivals[index]
        tenant = self.workload.tenants[tenant_index]
        cap_micro = self._price_cap(tenant_index, input_tokens) if tenant.price_cap else None
        choice: Choice
        if self.static is not None:
            choice = self.static.choose(tenant.plan, tenant.model, input_tokens, tenant.max_tokens)
        else:
            assert self.core is not None
            snapshot = ClusterSnapshot({m: d.load(now) for m, d in self.deployments.items()})
            request = PriceRequest(
                tenant.model,
                input_tokens,
                tenant.max_tokens,
                self.history[tenant_index],
                cap_micro,
            )
            windows = self.windows.window_margins(now) if self.core.incremental else None
            choice = self.core.choose(request, tenant.plan, snapshot, windows)
        model_id = choice.model_id
        fallback = (
            model_id is not None
            and self.usd_per_s[model_id] > self.usd_per_s[self.card_model[tenant_index]]
        )
        self.ledger.decided(now, choice.action, model_id, fallback)
        if model_id is None:
            return
        model = self.book.models[model_id]
        cap_tokens = min(
            tenant.max_tokens,
            model.max_output_tokens,
            max(1, model.context_window_tokens - input_tokens),
        )
        if cap_micro is not None and choice.decision is not None:
            plan = self.book.plans[tenant.plan]
            cap_tokens = min(cap_tokens, output_cap_tokens(choice.decision, plan, cap_micro))
        output_tokens = max(1, min(trace_output, cap_tokens))
        fails, where = self.draws
        job = Job(
            index,
            now,
            model_id,
            input_tokens,
            output_tokens,
            fail_at(output_tokens, fails[index], self.config.failure_rate, where[index]),
            choice,
        )
        self.deployments[model_id].route(job, now)

    def _price_cap(self, tenant_index: int, input_tokens: int) -> int | None:
        """The tenant's price cap for a prompt: the list price of its worst case (the
        prompt plus `max_tokens` on its card model); None when it sends none."""
        tenant = self.workload.tenants[tenant_index]
        if not tenant.price_cap:
            return None
        in_rate, out_rate = self.card_rates[tenant_index]
        pico = input_tokens * in_rate + tenant.max_tokens * out_rate
        return (pico + PICO_PER_MICRO // 2) // PICO_PER_MICRO

    def _ended(self, job: Job, now: float) -> None:
        tenant_index = self.workload.arrivals[job.index][1]
        tenant = self.workload.tenants[tenant_index]
        model_id = job.model_id
        if job.failed:
            produced = max(0, job.decode_tokens)
            self.ledger.ended(now, model_id, 0, 0, job.input_tokens + produced, True, True, None)
            return
        output_tokens = job.output_tokens
        ttft_s = job.first_token_s - job.arrival_s
        tpot_s = (now - job.first_token_s) / (output_tokens - 1) if output_tokens > 1 else 0.0
        plan = self.book.plans[tenant.plan]
        credit = self.credit[tenant.plan]
        choice: Choice = job.decision
        if choice.decision is None:
            billed, credit_micro, sla_met = card_bill(
                self.card_rates[tenant_index],
                plan,
                job.input_tokens,
                output_tokens,
                ttft_s,
                tpot_s,
                credit,
            )
        else:
            billed, credit_micro, sla_met = decision_bill(
                choice.decision,
                plan,
                job.input_tokens,
                output_tokens,
                ttft_s,
                tpot_s,
                credit,
                self._price_cap(tenant_index, job.input_tokens),
            )
        self.ledger.ended(
            now,
            model_id,
            billed,
            credit_micro,
            job.input_tokens + output_tokens,
            False,
            sla_met,
            ttft_s,
        )
        self.windows.billed(model_id, now, billed)
        means = self.history[tenant_index]
        old = means.get(model_id)
        means[model_id] = (
            float(output_tokens) if old is None else old + HISTORY_WEIGHT * (output_tokens - old)
        )

    # -- the result ------------------------------------------------------------------------

    def _result(self, end_s: float) -> ReplayResult:
        for deployment in self.deployments.values():
            deployment.close(end_s)
        config = self.config
        sync = (
            SyncSchedule(config.static_sync_s, 0.0)
            if self.name == STATIC
            else SyncSchedule(config.billing_window_s, config.grace_s)
        )
        intervals = {m: d.intervals for m, d in self.deployments.items()}
        rows = self.ledger.rows(intervals, end_s, sync)
        peaks = {m: d.peak_replicas for m, d in self.deployments.items()}
        ttft = sorted(self.ledger.ttft_s)
        return ReplayResult(
            policy=self.name,
            rows=rows,
            models=self.ledger.model_totals(rows, peaks),
            requests=self.workload.counted,
            end_s=end_s,
            unbilled_peak_micro=self.ledger.peak_unbilled(end_s, sync),
            ttft_p50_s=_quantile(ttft, 0.50),
            ttft_p99_s=_quantile(ttft, 0.99),
        )


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
