"""Meter ids (UUIDv7), the in-memory sink and the meter record."""

from __future__ import annotations

import uuid

from serve_app.metering.meter import MemorySink, Meter, new_meter_id
from tests.factories import NOW_MS, make_meter


def _meter(n: int = 0, **overrides: object) -> Meter:
    return make_meter(n, **overrides)


def test_meter_id_is_a_uuid_version_7_with_the_rfc_4122_variant() -> None:
    value = uuid.UUID(new_meter_id(NOW_MS))
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_meter_id_is_the_canonical_text_form() -> None:
    text = new_meter_id(NOW_MS)
    assert text == str(uuid.UUID(text))
    assert len(text) == 36


def test_meter_id_starts_with_its_millisecond_timestamp() -> None:
    value = uuid.UUID(new_meter_id(NOW_MS))
    assert value.int >> 80 == NOW_MS


def test_meter_id_without_a_time_uses_the_clock() -> None:
    value = uuid.UUID(new_meter_id())
    assert value.version == 7
    assert value.int >> 80 > NOW_MS - 10 * 365 * 86_400_000  # a plausible recent time


def test_meter_ids_are_ordered_by_time() -> None:
    ids = [new_meter_id(NOW_MS + step) for step in range(0, 5000, 7)]
    assert ids == sorted(ids)
    assert [uuid.UUID(i).int for i in ids] == sorted(uuid.UUID(i).int for i in ids)


def test_meter_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_meter_id(NOW_MS) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_memory_sink_keeps_meters_in_order() -> None:
    sink = MemorySink()
    meters = [_meter(n) for n in range(3)]
    for meter in meters:
        sink.emit(meter)
    assert list(sink.meters) == meters


def test_memory_sink_keeps_only_the_last_n() -> None:
    sink = MemorySink(maxlen=3)
    for n in range(10):
        sink.emit(_meter(n))
    assert [m.request_id for m in sink.meters] == ["chatcmpl-7", "chatcmpl-8", "chatcmpl-9"]


def test_meter_to_dict_round_trips() -> None:
    meter = _meter(failure=None)
    data = meter.to_dict()
    assert data["billed_micro"] == 124
    assert data["failure"] is None
    assert Meter(**data) == meter


def test_failed_meter_to_dict_round_trips() -> None:
    meter = _meter(billable=False, billed_micro=0, list_price_micro=0, failure="GenerationFailed")
    assert Meter(**meter.to_dict()) == meter
    assert meter.to_dict()["failure"] == "GenerationFailed"
