"""What one `rtcts run` started, found by its mark: the sweep (SIGTERM, then SIGKILL
for what outlives the grace) and the run file's claim (a live holder refuses, a dead
one's leftovers are stopped and removed, never anything else). A fake process table."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve_app.errors import LocalServiceError
from serve_app.local.instance import MARK_ENV, RunFile, RunRecord, Started, marked, sweep
from tests.fakes import FakeClock


@dataclass
class Proc:
    environ: dict[str, str]
    start_time: int = 100
    stubborn: bool = False
    """Ignores SIGTERM (dies only of SIGKILL)."""
    signals: list[int] = field(default_factory=list)
    alive: bool = True


class FakeProcesses:
    def __init__(self, procs: dict[int, Proc]) -> None:
        self.procs = procs

    def pids(self) -> list[int]:
        return list(self.procs)

    def environ(self, pid: int) -> bytes:
        proc = self.procs.get(pid)
        if proc is None or not proc.alive:
            return b""
        return b"\0".join(f"{k}={v}".encode() for k, v in proc.environ.items())

    def start_time(self, pid: int) -> int | None:
        proc = self.procs.get(pid)
        return proc.start_time if proc is not None and proc.alive else None

    def signal(self, pid: int, signum: int) -> None:
        proc = self.procs[pid]
        proc.signals.append(signum)
        if signum == signal.SIGKILL or not proc.stubborn:
            proc.alive = False


def ours(mark: str = "m1", **extra: str) -> dict[str, str]:
    return {"PATH": "/bin", MARK_ENV: mark, **extra}


def test_marked_finds_only_live_processes_with_the_exact_mark() -> None:
    table = FakeProcesses(
        {
            1: Proc(ours("m1")),
            2: Proc(ours("m10")),  # another instance whose mark starts the same
            3: Proc({"PATH": "/bin", "X": f"{MARK_ENV}=m1"}),  # the text inside a value
            4: Proc(ours("m1"), alive=False),
            5: Proc(ours("m1")),
        }
    )
    assert marked("m1", table) == [1, 5]
    assert marked("m1", table, exclude=[5]) == [1]


def sleeper(clock: FakeClock) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        clock.now += seconds

    return sleep


def test_sweep_terms_then_kills_what_outlives_the_grace() -> None:
    clock = FakeClock(0.0)
    table = FakeProcesses({1: Proc(ours()), 2: Proc(ours(), stubborn=True), 3: Proc({})})
    signalled = sweep("m1", table=table, grace_s=2.0, clock=clock, sleep=sleeper(clock))
    assert sorted(signalled) == [1, 2]
    assert table.procs[1].signals == [signal.SIGTERM]
    assert table.procs[2].signals == [signal.SIGTERM, signal.SIGKILL]
    assert table.procs[3].signals == []  # not ours: never signalled
    assert clock() >= 2.0


def test_sweep_returns_at_once_when_everything_stops() -> None:
    clock = FakeClock(0.0)
    table = FakeProcesses({1: Proc(ours())})
    assert sweep("m1", table=table, grace_s=5.0, clock=clock, sleep=sleeper(clock)) == [1]
    assert clock() < 1.0


def test_claim_refuses_a_data_dir_held_by_a_live_instance(tmp_path: Path) -> None:
    table = FakeProcesses({10: Proc({}, start_time=7), 11: Proc({}, start_time=9)})
    RunFile(tmp_path, table).write(RunRecord(10, 7, "old"))
    with pytest.raises(LocalServiceError, match="another rtcts run \\(pid 10\\)"):
        RunFile(tmp_path, table).claim("new", pid=11)


def test_claim_after_a_dead_instance_stops_its_processes_and_removes_its_paths(
    tmp_path: Path,
) -> None:
    state = tmp_path / "rtcts-hap-x1"
    state.mkdir()
    foreign = tmp_path / "not-ours"
    foreign.mkdir()
    table = FakeProcesses(
        {
            # pid 10 now belongs to another program (started later): not the holder
            10: Proc({}, start_time=99),
            20: Proc(ours("old")),
            21: Proc(ours("other")),
            11: Proc({}, start_time=5),
        }
    )
    run_file = RunFile(tmp_path, table)
    run_file.write(RunRecord(10, 7, "old", (str(state), str(foreign))))
    leftovers = run_file.claim("new", pid=11)
    assert leftovers is not None
    assert (leftovers.pid, leftovers.processes, leftovers.paths) == (10, 1, (str(state),))
    assert not table.procs[20].alive
    assert table.procs[21].alive
    assert table.procs[10].alive
    assert not state.exists()
    assert foreign.exists()  # a recorded path rtcts did not make is left alone
    assert run_file.read() == RunRecord(11, 5, "new")


def test_the_run_file_records_paths_and_is_released_only_by_its_instance(tmp_path: Path) -> None:
    table = FakeProcesses({11: Proc({}, start_time=5)})
    run_file = RunFile(tmp_path, table)
    assert run_file.claim("mine", pid=11) is None
    run_file.add_path("mine", tmp_path / "rtcts-hap-1")
    run_file.add_path("someone-else", tmp_path / "rtcts-hap-2")
    record = run_file.read()
    assert record is not None
    assert record.paths == (str(tmp_path / "rtcts-hap-1"),)
    assert (run_file.path.stat().st_mode & 0o777) == 0o600
    run_file.release("someone-else")
    assert run_file.path.exists()
    run_file.release("mine")
    assert not run_file.path.exists()


def test_a_damaged_run_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json")
    table = FakeProcesses({11: Proc({}, start_time=5)})
    assert RunFile(tmp_path, table).claim("new", pid=11) is None


def test_started_stops_its_processes_but_the_spared_and_removes_its_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = FakeProcesses({1: Proc(ours("m1")), 2: Proc(ours("m1")), 11: Proc({}, start_time=5)})
    monkeypatch.setattr("serve_app.local.instance.LinuxProcesses", lambda: table)
    run_file = RunFile(tmp_path, table)
    run_file.claim("m1", pid=11)
    started = Started("m1", run_file, spared=[2])
    state = tmp_path / "rtcts-hap-9"
    state.mkdir()
    started.add_path(state)
    record = run_file.read()
    assert record is not None
    assert record.paths == (str(state),)
    started.stop_all(grace_s=0.0)
    assert not table.procs[1].alive
    assert table.procs[2].alive
    assert not state.exists()
    started.release()
    assert run_file.read() is None
