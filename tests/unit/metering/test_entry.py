"""The stream's entry format: a batch of meters and its fold summary (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from serve_app.metering.entry import (
    MeterBatch,
    batch_item,
    decode_meters,
    encode_batch,
    parse_summary,
)
from serve_app.metering.meter import Meter
from tests.factories import make_meter

T0 = 1_800_000_000_000  # ms, a whole second


def _meter(n: int, tenant: str = "t", **overrides: object) -> Meter:
    fields: dict[str, object] = {
        "tenant_id": tenant,
        "stripe_customer_id": "cus_" + tenant.replace(".", "_").replace(":", "_"),
        "input_tokens": 10,
        "output_tokens": 5,
        "credit_micro": 10,
        "billed_micro": 90,
        "ended_at_ms": T0 + n,
    }
    return make_meter(n, **{**fields, **overrides})


def test_the_summary_sums_billable_meters_per_tenant_and_second() -> None:
    meters = [
        _meter(0),
        _meter(1),
        _meter(2, billable=False, billed_micro=0, credit_micro=0),  # failed: counted only
        _meter(1500),  # the next second: its own group
        _meter(3, tenant="u"),
    ]
    batch = encode_batch(meters, shard=2)
    assert batch.shard == 2
    assert batch.count == 5
    assert len(batch.batch_id) == 32
    assert parse_summary(batch.summary) == [
        ("t", "cus_t", T0 // 1000, 2, 1, 180, 30, 20),
        ("t", "cus_t", T0 // 1000 + 1, 1, 0, 90, 15, 10),
        ("u", "cus_u", T0 // 1000, 1, 0, 90, 15, 10),
    ]
    assert decode_meters(batch.meters) == meters  # the verified records, all of them


def test_an_entry_read_from_the_stream_gives_the_fold_its_batch_id_and_groups() -> None:
    batch = encode_batch([_meter(0)])
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in batch.fields().items()
    }
    assert batch_item(fields) == (batch.batch_id, parse_summary(batch.summary))


def test_a_spool_line_gives_back_the_same_entry() -> None:
    batch = encode_batch([_meter(0), _meter(1, tenant="t.2:x")])
    line = batch.spool_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert MeterBatch.from_spool_line(line) == batch


@pytest.mark.parametrize("cut", [1, 20, 45, -30, -1])
def test_a_torn_spool_line_is_refused(cut: int) -> None:
    line = encode_batch([_meter(0), _meter(1)]).spool_line()
    with pytest.raises(ValueError):  # noqa: PT011 - every kind of damage is a ValueError
        MeterBatch.from_spool_line(line[:cut])


@pytest.mark.parametrize(
    "change",
    [
        {"tenant_id": "has,comma"},
        {"tenant_id": "semi;colon"},
        {"stripe_customer_id": "not-a-customer"},
        {"billed_micro": -1},
        {"billed_micro": 1.5},
        {"ended_at_ms": 1.0e12},
        {"input_tokens": None},
    ],
)
def test_a_meter_the_summary_cannot_carry_is_refused(change: dict[str, object]) -> None:
    meter = dataclasses.replace(_meter(0), **change)
    with pytest.raises((ValueError, TypeError)):
        encode_batch([meter])


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"m": b"{}"},  # a per-meter entry of another format
        {b"b": b"short", b"s": b""},
        {b"b": b"0" * 32, b"s": b"t,cus_t,1,1"},
        {b"b": b"0" * 32, b"s": b"t,cus_t,1,1,0,-5,1,1"},
        {b"b": b"0" * 32, b"s": b"\xff"},
    ],
)
def test_entries_that_are_not_batches_are_refused(fields: dict[bytes, bytes]) -> None:
    assert batch_item(fields) is None


def test_an_empty_summary_is_an_entry_with_nothing_to_fold() -> None:
    assert batch_item({b"b": b"a" * 32, b"s": b""}) == ("a" * 32, [])
