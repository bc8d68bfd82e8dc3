"""Window arithmetic of the aggregator (pure)."""

from __future__ import annotations

from serve_app.metering.windows import (
    Layout,
    OpenWindow,
    identifier,
    open_field,
    parse_open_field,
    window_identifier,
    window_start_s,
)

LAYOUT = Layout(instance="rtcts", shards=1, shard=0)


def test_window_start_floors_to_the_window() -> None:
    assert window_start_s(125_999, 60) == 120
    assert window_start_s(120_000, 60) == 120


def _ident(tenant: str, event: str, start: int, version: int = 2) -> str:
    return identifier(tenant, event, start, window_s=60, grace_s=10, layout=LAYOUT, version=version)


def test_identifiers_are_deterministic_short_and_distinct() -> None:
    long_tenant = "t" * 64
    a = _ident(long_tenant, "rtcts_billed_micro_usd", 1_800_000_000)
    assert a == _ident(long_tenant, "rtcts_billed_micro_usd", 1_800_000_000)
    assert len(a) <= 100
    assert a != _ident(long_tenant, "rtcts_tokens", 1_800_000_000)
    assert a != _ident(long_tenant, "rtcts_billed_micro_usd", 1_800_000_060)
    assert a != _ident(long_tenant, "rtcts_billed_micro_usd", 1_800_000_000, version=3)


def test_open_fields_keep_their_shape_and_the_older_form_reads_back() -> None:
    field = open_field("t|odd", "rtcts_tokens", 1_800_000_000, 60, 10)
    assert parse_open_field(field, 1, 0) == OpenWindow(
        "t|odd", "rtcts_tokens", 1_800_000_000, 60, 10
    )
    older = parse_open_field("t|odd|rtcts_tokens|1800000000", 60, 10)
    assert older == OpenWindow("t|odd", "rtcts_tokens", 1_800_000_000, 60, 10, legacy=True)
    assert older.due_s == 1_800_000_070
    assert parse_open_field("garbage", 60, 10) is None
    # Both forms of one window (an upgrade mid-window) close under two identifiers.
    new = parse_open_field(open_field("t", "e", 1_800_000_000, 60, 10), 60, 10)
    old = parse_open_field("t|e|1800000000", 60, 10)
    assert new is not None
    assert old is not None
    assert window_identifier(new, LAYOUT) != window_identifier(old, LAYOUT)


def test_windows_are_closed_at_the_next_boundary_only() -> None:
    from serve_app.metering.aggregator import CLOSE_SLACK_S, next_close_s

    # 60 s windows, 10 s grace: windows become due at ...:10, 1:10, 2:10 ...
    assert next_close_s(65.0, 60, 10) == 70 + CLOSE_SLACK_S
    assert next_close_s(70.0, 60, 10) == 130 + CLOSE_SLACK_S
    assert next_close_s(129.9, 60, 10) == 130 + CLOSE_SLACK_S
    assert next_close_s(5.0, 1, 0) == 6 + CLOSE_SLACK_S
