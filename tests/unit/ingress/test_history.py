"""`OutputHistory`: each tenant's EWMA of output tokens per model."""

from __future__ import annotations

import pytest

from serve_app.ingress.history import EWMA_WEIGHT, OutputHistory


def test_unknown_tenant_has_no_history() -> None:
    assert dict(OutputHistory().of("nobody")) == {}


def test_first_observation_is_the_mean() -> None:
    history = OutputHistory()
    history.observe("t", "m", 120)
    assert dict(history.of("t")) == {"m": 120.0}


def test_later_observations_move_the_mean_by_the_weight() -> None:
    history = OutputHistory(weight=0.25)
    history.observe("t", "m", 100)
    history.observe("t", "m", 200)  # 100 + 0.25 * 100
    assert history.of("t")["m"] == pytest.approx(125.0)
    history.observe("t", "m", 25)  # 125 + 0.25 * (25 - 125)
    assert history.of("t")["m"] == pytest.approx(100.0)


def test_default_weight_favours_history() -> None:
    history = OutputHistory()
    history.observe("t", "m", 100)
    history.observe("t", "m", 600)
    assert history.of("t")["m"] == pytest.approx(100 + EWMA_WEIGHT * 500)


def test_mean_converges_to_a_steady_output() -> None:
    history = OutputHistory()
    history.observe("t", "m", 1000)
    for _ in range(100):
        history.observe("t", "m", 50)
    assert history.of("t")["m"] == pytest.approx(50.0, abs=1e-6)


def test_models_are_kept_apart() -> None:
    history = OutputHistory()
    history.observe("t", "a", 10)
    history.observe("t", "b", 90)
    assert dict(history.of("t")) == {"a": 10.0, "b": 90.0}


def test_tenants_are_isolated() -> None:
    history = OutputHistory()
    history.observe("alice", "m", 10)
    history.observe("bob", "m", 500)
    history.observe("bob", "m", 500)
    assert dict(history.of("alice")) == {"m": 10.0}
    assert dict(history.of("bob")) == {"m": 500.0}
    assert "m" not in history.of("carol")


def test_the_view_is_read_only() -> None:
    history = OutputHistory()
    history.observe("t", "m", 10)
    view = history.of("t")
    with pytest.raises(TypeError):
        view["m"] = 1.0  # type: ignore[index]
    assert history.of("t")["m"] == 10.0
