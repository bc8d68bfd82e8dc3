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


def test_windows_are_closed_at_the_next_boundary_only() -> None:
    from serve_app.metering.aggregator import CLOSE_SLACK_S, next_close_s

    # 60 s windows, 10 s grace: windows become due at ...:10, 1:10, 2:10 ...
    assert next_close_s(65.0, 60, 10) == 70 + CLOSE_SLACK_S
    assert next_close_s(70.0, 60, 10) == 130 + CLOSE_SLACK_S
    assert next_close_s(129.9, 60, 10) == 130 + CLOSE_SLACK_S
    assert next_close_s(5.0, 1, 0) == 6 + CLOSE_SLACK_S
