"""`LoadTable`, the load registry's state, on a fake clock (no Ray)."""

from __future__ import annotations

from serve_app.cluster.registry import REPORT_EXPIRY_S, LoadTable
from serve_app.cluster.reports import ReplicaReport
from tests.fakes import FakeClock


def _report(replica_id: str, reported_at: float, running: int = 0) -> ReplicaReport:
    return ReplicaReport(
        model_id="m",
        replica_id=replica_id,
        running=running,
        queued=0,
        warm=True,
        start_remaining_s=0.0,
        reported_at=reported_at,
    )


def test_empty_table_has_no_reports() -> None:
    assert LoadTable(FakeClock()).snapshot() == []


def test_reports_are_in_the_snapshot() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    a, b = _report("a", clock.now), _report("b", clock.now)
    table.report(a)
    table.report(b)
    assert sorted(table.snapshot(), key=lambda r: r.replica_id) == [a, b]


def test_newer_report_of_a_replica_replaces_the_older() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    table.report(_report("a", clock.now - 0.2, running=1))
    newer = _report("a", clock.now, running=7)
    table.report(newer)
    assert table.snapshot() == [newer]


def test_forget_drops_a_replica() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    table.report(_report("a", clock.now))
    table.report(_report("b", clock.now))
    table.forget("a")
    assert [r.replica_id for r in table.snapshot()] == ["b"]


def test_forgetting_an_unknown_replica_is_harmless() -> None:
    table = LoadTable(FakeClock())
    table.forget("nobody")
    assert table.snapshot() == []


def test_report_at_the_expiry_age_is_still_fresh() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    report = _report("a", clock.now)
    table.report(report)
    clock.now += REPORT_EXPIRY_S
    assert table.snapshot() == [report]


def test_silent_replica_expires_after_the_expiry() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    table.report(_report("silent", clock.now))
    clock.now += 1.0
    talking = _report("talking", clock.now)
    table.report(talking)
    clock.now += REPORT_EXPIRY_S - 0.5  # silent: 1.5 + 0.5 s old; talking: 1.0 s
    assert table.snapshot() == [talking]


def test_expired_replica_is_dropped_and_comes_back_when_it_reports_again() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    table.report(_report("a", clock.now))
    clock.now += REPORT_EXPIRY_S + 1
    assert table.snapshot() == []
    back = _report("a", clock.now)
    table.report(back)
    assert table.snapshot() == [back]


def test_a_fresh_report_keeps_a_replica_alive() -> None:
    clock = FakeClock()
    table = LoadTable(clock)
    for _ in range(5):
        table.report(_report("a", clock.now))
        clock.now += REPORT_EXPIRY_S * 0.9
    assert [r.replica_id for r in table.snapshot()] == ["a"]


def test_an_ingress_counts_only_its_own_applications_replicas() -> None:
    """Two rtcts apps in one Ray cluster share the registry: app B's idle replicas of
    a model id app A also serves must not count as A's spare capacity."""
    from serve_app.cluster.reports import ReplicaReport, of_app

    mine = ReplicaReport("small", "r-a", 8, 2, True, 0.0, 0.0, app="a")
    theirs = ReplicaReport("small", "r-b", 0, 0, True, 0.0, 0.0, app="b")
    in_ingress = ReplicaReport("up", "up@i1", 1, 0, True, 0.0, 0.0)
    assert of_app([mine, theirs, in_ingress], "a") == [mine, in_ingress]
