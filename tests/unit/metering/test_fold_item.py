"""What the aggregator takes from a stream entry (pure)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from serve_app.metering.ledger import fold_item
from serve_app.metering.stream import encode_meter
from tests.factories import METER as BASE

METER = dataclasses.replace(
    BASE,
    meter_id="m1",
    tenant_id="t",
    stripe_customer_id="cus_t",
    input_tokens=10,
    output_tokens=5,
    credit_micro=10,
    billed_micro=90,
    ended_at_ms=1_800_000_000_000,
)


def test_the_fold_fields_of_an_encoded_meter() -> None:
    assert fold_item(encode_meter(METER)) == ("m1", "t", "cus_t", 1_800_000_000_000, 1, 90, 15, 10)


@pytest.mark.parametrize(
    "change",
    [
        {"meter_id": ""},
        {"tenant_id": 7},
        {"billed_micro": -1},
        {"billed_micro": 1.5},
        {"ended_at_ms": "soon"},
        {"input_tokens": None},
    ],
)
def test_malformed_meters_are_refused(change: dict[str, object]) -> None:
    assert fold_item(json.dumps({**METER.to_dict(), **change})) is None


@pytest.mark.parametrize("data", [b"not json", b"[]", b"{}", None])
def test_entries_that_are_not_meters_are_refused(data: bytes | None) -> None:
    assert fold_item(data) is None
