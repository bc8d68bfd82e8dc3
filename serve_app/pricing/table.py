"""A plain-text table of decisions, for the CLI (pure: returns a string)."""

from __future__ import annotations

from serve_app.errors import PricingError
from serve_app.policy.schema import Policy
from serve_app.pricing.book import PriceBook
from serve_app.pricing.decision import decide
from serve_app.pricing.types import ClusterSnapshot, ModelLoad, PriceRequest, ReplicaLoad

SAMPLE_BATCH_SHARE = 4
"""The sample snapshot fills a quarter of each warm replica's batch."""


def sample_snapshot(policy: Policy) -> ClusterSnapshot:
    """Each model at its minimum replicas, each a quarter busy; scale-to-zero models cold."""
    return ClusterSnapshot(
        {
            m.id: ModelLoad(
                tuple(
                    ReplicaLoad(running=m.throughput.max_concurrent_sequences // SAMPLE_BATCH_SHARE)
                    for _ in range(m.autoscaling.min_replicas)
                )
            )
            for m in policy.models
        }
    )


def render_price_table(book: PriceBook, request: PriceRequest, snapshot: ClusterSnapshot) -> str:
    """One block per plan: the decision, then each candidate's quote."""
    lines = [
        f"request: model={request.model} input_tokens={request.input_tokens} "
        f"max_tokens={request.max_tokens} (policy {book.version})",
    ]
    header = (
        f"  {'model':<16}{'tier':>5}{'warm':>5}{'batch':>6}{'ttft_s':>9}{'total_s':>9}"
        f"{'cost_usd':>11}{'price_usd':>11}{'margin':>10}  why not"
    )
    for plan_id in book.plans:
        try:
            decision = decide(request, book, plan_id, snapshot)
        except PricingError as exc:
            lines += ["", f"plan {plan_id}: {exc}"]
            continue
        lines += [
            "",
            f"plan {plan_id}: {decision.action.value} -> {decision.model_id or '-'} "
            f"({decision.reason.value}) price ${decision.price_micro / 1e6:.6f}"
            + (f", retry after {decision.retry_after_s:.0f}s" if decision.retry_after_s else ""),
            header,
        ]
        for q in decision.candidates:
            lines.append(
                f"  {q.model_id:<16}{q.quality_tier:>5}{q.warm_replicas:>5}{q.batch:>6}"
                f"{q.ttft_s:>9.2f}{q.total_s:>9.2f}{q.cost_micro / 1e6:>11.6f}"
                f"{q.price_micro / 1e6:>11.6f}{q.margin:>10.1%}  "
                + (", ".join(r.value for r in q.reasons) or "feasible")
            )
    return "\n".join(lines)
