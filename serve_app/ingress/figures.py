"""The ingress's live figures: what the dashboard shows and the metrics export.

`LiveFigures` is the `Metrics` the request path records into. It passes every call on
to the inner metrics (Ray's) and counts decisions, revenue and SLA credits per plan in
the shared `Tally`; from the live-state loop (`live_state`, once a second) it
integrates the replica cost of each model (warm and starting replicas alike, idle
included), flushes the tally, reads the billing health every `BILLING_PERIOD_S`, and
hands the gauges (`telemetry.LiveGauges`) to the inner metrics. The dashboard document
(`dashboard.py`) is built from the same figures, so both say the same.

Realized margin per model, over the margin window: revenue of every ingress replica
(the shared tally) against the whole cost of the model's replicas; with no Redis
(a memory tally: this replica's revenue only) against this replica's share of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_app.cluster.state import ClusterState
from serve_app.ingress.margins import MarginWindows
from serve_app.ingress.tally import Buckets, MemoryTallyStore, Tally, model_field
from serve_app.metering.view import BillingView
from serve_app.pricing import ClusterSnapshot, PriceBook, PriceRequest, WindowMargin, quote
from serve_app.telemetry import LiveGauges, Metrics, ModelFigures, ShardHealth

logger = logging.getLogger("rtcts.ingress")

BILLING_PERIOD_S = 5.0
"""How often the billing health is read from Redis (one pipeline per meter shard)."""
REFERENCE_TOKENS = 1000
"""Cost per 1M tokens is priced on a request of 1000 prompt and 1000 output tokens."""


@dataclass(frozen=True)
class Billing:
    """The billing health as last read (`BillingView.health()`, `last_reconcile()`)."""

    shards: list[dict[str, Any]]
    last_reconcile: dict[str, Any] | None
    read_at: float


class LiveFigures:
    """A `Metrics` that keeps the dashboard's figures (module docstring)."""

    def __init__(
        self,
        inner: Metrics,
        *,
        tally: Tally | None = None,
        share: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`share`: this replica's part of the traffic (1 / ingress replicas), which its
        revenue is set against when the tally is its own (no Redis)."""
        self.inner = inner
        self.tally = tally or Tally(MemoryTallyStore(), clock=clock)
        self._share = share
        self._clock = clock
        self._billing_view: BillingView | None = None
        self.billing: Billing | None = None
        self._book: Callable[[], PriceBook] | None = None
        self.state: ClusterState | None = None
        self._costs: MarginWindows | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def bind(
        self,
        book: Callable[[], PriceBook],
        state: ClusterState,
        billing: BillingView | None = None,
    ) -> None:
        """What the figures are read against: the current policy's price book (it
        changes on reload), the live cluster state and the billing view (if billing
        is on). Call it once the tally's store is final (before serving)."""
        self._book = book
        self.state = state
        self._billing_view = billing
        self._costs = MarginWindows(
            {m.id: m.usd_per_s for m in book().models.values()},
            # Every replica's revenue against the whole cost, or this one's against its part.
            share=1.0 if self.tally.store.shared else self._share,
            window_s=self.tally.window_s,
            bucket_s=self.tally.bucket_s,
            clock=self._clock,
        )

    @property
    def book(self) -> PriceBook:
        assert self._book is not None, "LiveFigures.bind() first"
        return self._book()

    # ------------------------------------------------------------------ Metrics

    def decision(self, model: str, decision: str, reason: str, plan: str = "") -> None:
        self.inner.decision(model, decision, reason, plan)
        self.tally.decision(plan, decision)

    def billed(
        self,
        model: str,
        billed_micro: int,
        cost_micro: int,
        margin: float,
        plan: str = "",
        credit_micro: int = 0,
    ) -> None:
        self.inner.billed(model, billed_micro, cost_micro, margin, plan, credit_micro)
        self.tally.billed(plan, model, billed_micro, credit_micro)

    def failure(self, model: str) -> None:
        self.inner.failure(model)

    def gauges(self, gauges: LiveGauges) -> None:
        self.inner.gauges(gauges)

    def live_state(self, snapshot: ClusterSnapshot) -> None:
        """Called once a second with the live state: cost integrated, then the tally
        flushed, the billing health read when due and the gauges set, in a task (one at
        a time: a slow Redis skips ticks, never piles them up)."""
        self.inner.live_state(snapshot)
        if self._costs is not None:
            self._costs.replicas(snapshot)
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the serving loop (tools, tests)
                return
            self._task = loop.create_task(self.refresh(snapshot))

    async def refresh(self, snapshot: ClusterSnapshot) -> None:
        try:
            await self.tally.flush()
            if self.billing is None or self.now() - self.billing.read_at >= BILLING_PERIOD_S:
                await self.refresh_billing()
            if self._book is not None:
                self.inner.gauges(self.gauges_now(snapshot, await self.tally.window()))
        except Exception as exc:  # Redis down: the figures wait, serving goes on
            if not self._failing:
                logger.warning("live figures not refreshed: %s", type(exc).__name__)
            self._failing = True
        else:
            self._failing = False

    async def refresh_billing(self) -> None:
        """Read the billing health now (nothing without billing; Redis errors raised)."""
        if self._billing_view is not None:
            self.billing = Billing(
                await self._billing_view.health(),
                await self._billing_view.last_reconcile(),
                self.now(),
            )

    # ------------------------------------------------------------------ figures

    def now(self) -> float:
        return self._clock()

    def replica_costs(self) -> dict[int, dict[str, int]]:
        """Per bucket start, per model: the replica cost in it, micro-USD."""
        if self._costs is None:
            return {}
        return {
            start: {m: w.cost_micro for m, w in models.items()}
            for start, models in self._costs.history().items()
        }

    def realized(self, buckets: Buckets) -> dict[str, WindowMargin]:
        """Per model of the policy: revenue and replica cost over the window."""
        costs = self.replica_costs()
        starts = set(self.tally.starts())
        result = {}
        for model in self.book.models:
            revenue = sum(b.get(model_field(model, "revenue"), 0) for b in buckets.values())
            cost = sum(c.get(model, 0) for s, c in costs.items() if s in starts)
            result[model] = WindowMargin(revenue, cost)
        return result

    def cost_per_1m_usd(self, snapshot: ClusterSnapshot) -> dict[str, float]:
        """Per model, the cost to serve 1M tokens now, in USD (a reference request of
        1000 prompt and 1000 output tokens, priced on the live state)."""
        book = self.book
        result = {}
        for model_id, model in book.models.items():
            plan = next((p for p in book.plans.values() if model_id in p.rates), None)
            if plan is None:
                continue
            q = quote(
                PriceRequest(model_id, REFERENCE_TOKENS, max_tokens=REFERENCE_TOKENS),
                model,
                plan,
                snapshot,
            )
            tokens = q.input_tokens + q.predicted_output_tokens
            result[model_id] = round(q.cost_micro / tokens, 6) if tokens else 0.0
        return result

    def target_replicas(self) -> dict[str, int | None]:
        if self.state is None:
            return {}
        return {m: entry["target_replicas"] for m, entry in self.state.view().items()}

    def gauges_now(self, snapshot: ClusterSnapshot, buckets: Buckets) -> LiveGauges:
        realized = self.realized(buckets)
        costs = self.cost_per_1m_usd(snapshot)
        targets = self.target_replicas()
        billing = self.billing
        return LiveGauges(
            models=[
                ModelFigures(
                    model,
                    targets.get(model),
                    costs.get(model),
                    margin_or_none(window),
                    window.revenue_micro / 1e6,
                    window.cost_micro / 1e6,
                )
                for model, window in realized.items()
            ],
            floors={p.id: p.margin_floor for p in self.book.plans.values()},
            billing=None if billing is None else [shard_health(s) for s in billing.shards],
            last_reconcile=None
            if billing is None or billing.last_reconcile is None
            else (float(billing.last_reconcile["at"]), bool(billing.last_reconcile["ok"])),
        )


def margin_or_none(window: WindowMargin) -> float | None:
    """The window's margin; None without revenue (no margin to speak of)."""
    return None if window.revenue_micro <= 0 else round(window.margin, 6)


def shard_health(health: dict[str, Any]) -> ShardHealth:
    return ShardHealth(
        shard=int(health["shard"]),
        outbox=int(health["outbox"]),
        oldest_unsynced_age_s=health.get("oldest_unsynced_age_s"),
        dead_letters=int(health["dead_letters"]),
        open_windows=int(health["open_windows"]),
        stream_pending=int(health.get("stream_pending", 0)),
    )
