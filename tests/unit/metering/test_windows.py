"""Window arithmetic of the aggregator (pure)."""

from __future__ import annotations

from serve_app.metering.windows import identifier, window_start_s


def test_window_start_floors_to_the_window() -> None:
    assert window_start_s(125_999, 60) == 120
    assert window_start_s(120_000, 60) == 120


def test_identifiers_are_deterministic_short_and_distinct() -> None:
    long_tenant = "t" * 64
    a = identifier(long_tenant, "rtcts_billed_micro_usd", 1_800_000_000)
    assert a == identifier(long_tenant, "rtcts_billed_micro_usd", 1_800_000_000)
    assert len(a) <= 100
    assert a != identifier(long_tenant, "rtcts_tokens", 1_800_000_000)
    assert a != identifier(long_tenant, "rtcts_billed_micro_usd", 1_800_000_060)
    assert a != identifier(long_tenant, "rtcts_billed_micro_usd", 1_800_000_000, version=2)
