"""The reaper's last step: what it removes, and the run file it releases (only its own).
Its life around a killed `rtcts run` is tested on real processes in
tests/integration/test_local_processes.py."""

from __future__ import annotations

from pathlib import Path

from serve_app.local.instance import RunFile, RunRecord
from serve_app.local.reaper import reap


def test_reap_removes_owned_paths_and_releases_its_run_file(tmp_path: Path) -> None:
    state = tmp_path / "rtcts-hap-1"
    state.mkdir()
    kept = tmp_path / "other"
    kept.mkdir()
    RunFile(tmp_path).write(RunRecord(1, None, "mark-a"))
    reap("mark-a", tmp_path, iter([f"path {state}\n", f"path {kept}\n", "noise\n"]), 0.1)
    assert not state.exists()
    assert kept.exists()
    assert not (tmp_path / "run.json").exists()


def test_reap_leaves_the_run_file_of_a_newer_instance(tmp_path: Path) -> None:
    RunFile(tmp_path).write(RunRecord(1, None, "newer"))
    reap("older", tmp_path, iter([]), 0.1)
    assert (tmp_path / "run.json").exists()
