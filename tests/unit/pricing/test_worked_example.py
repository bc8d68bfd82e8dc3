"""The worked example of docs/pricing-model.md, number by number."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.policy import load_policy_file
from serve_app.pricing import (
    Action,
    ClusterSnapshot,
    CostBasis,
    ModelLoad,
    PriceBook,
    PriceRequest,
    Reason,
    ReplicaLoad,
    WindowMargin,
    decide,
)
from serve_app.pricing.cost import estimate

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "pricing-model.md").read_text(encoding="utf-8")
REQUEST = PriceRequest("llama-3.1-8b", input_tokens=1000, max_tokens=200)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    loaded = load_policy_file(ROOT / "policies" / "default.yaml")
    return PriceBook.from_policy(loaded.policy, loaded.version)


def _state(running: int) -> ClusterSnapshot:
    return ClusterSnapshot(
        {"llama-3.1-8b": ModelLoad((ReplicaLoad(running=running),), failure_rate=0.02)}
    )


def test_worked_example_numbers(book: PriceBook) -> None:
    model = book.models["llama-3.1-8b"]
    assert model.batch_slowdown == pytest.approx(0.027957, abs=1e-6)
    assert model.decode_tokens_per_s(9) == pytest.approx(257.43, abs=0.01)
    est = estimate(model, _state(8).load(model.id), 1000, 200)
    assert est.cost_usd == pytest.approx(0.000251759, abs=1e-9)
    assert est.ttft_s == pytest.approx(0.333, abs=1e-3)
    assert est.tpot_s * 1000 == pytest.approx(34.96, abs=0.01)
    assert est.total_s == pytest.approx(7.326, abs=1e-3)

    decision = decide(REQUEST, book, "basic", _state(8))
    q = decision.candidates[0]
    assert q.predicted_output_tokens == 200
    assert q.cost_micro == 252
    assert q.price_micro == 390
    assert q.margin == pytest.approx(0.3545, abs=1e-4)
    assert (decision.action, decision.reason) == (Action.ALLOW, Reason.REQUESTED_FEASIBLE)
    assert decision.price_micro == 390


def test_worked_example_near_idle_is_throttled_on_the_allocated_basis(book: PriceBook) -> None:
    decision = decide(REQUEST, book, "basic", _state(2), basis=CostBasis.ALLOCATED)
    q = decision.candidates[0]
    assert q.cost_micro == 532
    assert round(q.margin * 100) == -36
    assert decision.action is Action.THROTTLE
    assert decision.retry_after_s == 1.0


def test_worked_example_incremental(book: PriceBook) -> None:
    model = book.models["llama-3.1-8b"]
    added_s = 1000 / 3000 + 200 * model.batch_slowdown / 35
    assert added_s == pytest.approx(0.49309, abs=1e-5)
    assert model.usd_per_s * added_s / 0.98 == pytest.approx(0.000111812, abs=1e-9)
    decision = decide(REQUEST, book, "basic", _state(2))
    q = decision.candidates[0]
    assert q.incremental_cost_micro == 112
    assert (decision.action, decision.reason) == (Action.ALLOW, Reason.REQUESTED_FEASIBLE)
    window = WindowMargin(60_000, round(model.usd_per_s * 300 * 1e6))
    assert window.cost_micro == 66_667
    assert round(window.margin * 1000) == -111
    windowed = decide(REQUEST, book, "basic", _state(2), windows={model.id: window})
    assert windowed.action is Action.ALLOW
    after = WindowMargin(60_000 + q.price_micro, 66_667 + q.incremental_cost_micro)
    assert round(after.margin * 1000) == -106
    assert decide(REQUEST, book, "basic", _state(0)).candidates[0].incremental_cost_micro == 0


@pytest.mark.parametrize(
    "text",
    [
        "0.027957",
        "257.43 tokens/s",
        "1.11025 s",
        "cost_micro = 252",
        "0.333 s",
        "34.96 ms",
        "7.326 s",
        "price_micro = 390",
        "0.3545",
        "**allow**",
        "costs 532 micro-USD",
        "margin is −36%",
        "`Retry-After: 1`",
        "$0.000111812",
        "incremental_cost_micro = 112",
        "0.49309 s",
        "margin −11.1%",
        "to −10.6%: **allow**",
        "incremental_cost_micro = 0",
    ],
)
def test_the_document_states_the_checked_numbers(text: str) -> None:
    assert text in DOC
