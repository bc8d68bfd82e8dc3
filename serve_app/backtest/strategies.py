"""The pricing policies a backtest compares: what each does with one arriving request.

- `static`: a rate card, as LiteLLM-style gateways run it. The request goes to the
  model it names (an alias: its first model the plan sells) at that model's list
  price; when that model is at its concurrency limit (a static setting: a full batch
  on every replica its quota allows, `max_replicas` × B, as a gateway's
  `max_parallel_requests`) the gateway falls back to the next model of equal or higher
  tier (an alias: its next model) below its own limit, billed at the card price of the
  model asked for. It never refuses a request that fits a context window; when every
  model is at its limit, the request waits for the one asked for. Cost is only known
  after the fact.
- `allocated`: `serve_app.pricing.decide()` as it is, each request charged its
  allocated cost (its share of the replica time its tokens take).
- `incremental`: `decide()` weighing the request's incremental cost, with each model's
  realized margin over the rolling window (`RollingWindows`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from serve_app.errors import ContextWindowError
from serve_app.pricing import (
    ClusterSnapshot,
    CostBasis,
    Decision,
    PriceBook,
    PriceRequest,
    WindowMargin,
    decide,
)

STATIC: Final = "static"
ALLOCATED: Final = "allocated"
INCREMENTAL: Final = "incremental"
POLICIES: Final = (STATIC, ALLOCATED, INCREMENTAL)

REJECTED: Final = "rejected"
"""Action of a request no model's context window fits (an error, not a refusal)."""


class Choice(NamedTuple):
    """What a policy does with one request (a tuple: one per arrival)."""

    action: str
    """allow, reroute, surcharge, accept_below_floor, throttle or rejected."""
    model_id: str | None
    decision: Decision | None
    """The core's decision (allocated, incremental); None for the static card."""
    card_model: str | None = None
    """The model whose card price the static gateway bills."""


def fallback_chain(book: PriceBook, plan_id: str, name: str) -> tuple[str, ...]:
    """The models a static gateway tries for `name` on `plan_id`, in order: the model
    and then every model of equal or higher tier the plan sells (by tier, then id), or
    the alias's models the plan sells."""
    plan = book.plans[plan_id]
    model = book.models.get(name)
    if model is not None:
        higher = sorted(
            (
                m
                for m in book.models.values()
                if m.id != name and m.id in plan.rates and m.quality_tier >= model.quality_tier
            ),
            key=lambda m: (m.quality_tier, m.id),
        )
        return (name, *(m.id for m in higher))
    return tuple(m for m in book.routes.get(name, ()) if m in plan.rates)


class StaticGateway:
    """The `static` policy (see the module docstring)."""

    def __init__(
        self,
        book: PriceBook,
        has_capacity: Callable[[str], bool],
    ) -> None:
        self._book = book
        self._has_capacity = has_capacity
        self._chains: dict[tuple[str, str], tuple[str, ...]] = {}

    def choose(self, plan_id: str, name: str, input_tokens: int, max_tokens: int) -> Choice:
        chain = self._chains.get((plan_id, name))
        if chain is None:
            chain = self._chains[(plan_id, name)] = fallback_chain(self._book, plan_id, name)
        models = self._book.models
        fits = [m for m in chain if input_tokens + max_tokens <= models[m].context_window_tokens]
        if not fits:
            return Choice(REJECTED, None, None)
        card = chain[0]
        for model_id in fits:
            if self._has_capacity(model_id):
                return Choice("allow" if model_id == card else "reroute", model_id, None, card)
        return Choice("allow" if fits[0] == card else "reroute", fits[0], None, card)


class CorePolicy:
    """`allocated` or `incremental`: the pure core's decision on that cost basis."""

    def __init__(self, book: PriceBook, basis: CostBasis) -> None:
        self._book = book
        self.basis = basis

    @property
    def incremental(self) -> bool:
        return self.basis is CostBasis.INCREMENTAL

    def choose(
        self,
        request: PriceRequest,
        plan_id: str,
        snapshot: ClusterSnapshot,
        windows: Mapping[str, WindowMargin] | None = None,
    ) -> Choice:
        try:
            decision = decide(
                request, self._book, plan_id, snapshot, basis=self.basis, windows=windows
            )
        except ContextWindowError:
            return Choice(REJECTED, None, None)
        return Choice(decision.action.value, decision.model_id, decision)
