"""The budget's month (`month_of`), found once per hour: exact at every boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from serve_app.admission.keys import month_of


def _at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


def test_the_month_turns_at_midnight_utc_not_an_instant_before_or_after() -> None:
    new_year = _at(2027, 1, 1)
    assert month_of(new_year - 1e-3) == "2026-12"
    assert month_of(new_year) == "2027-01"
    assert month_of(_at(2028, 2, 29, 23, 59, 59)) == "2028-02"
    assert month_of(_at(2028, 3, 1)) == "2028-03"


def test_every_hour_of_a_year_has_the_month_of_its_datetime() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for hours in range(0, 366 * 24, 7):
        for offset_s in (0.0, 1799.5, 3599.999):
            moment = start + timedelta(hours=hours, seconds=offset_s)
            assert month_of(moment.timestamp()) == moment.strftime("%Y-%m")
