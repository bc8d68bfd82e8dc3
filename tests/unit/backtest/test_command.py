"""`rtcts backtest`: options, defaults (policy, trace), output and errors, via the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.backtest.runner import (
    PACKAGED_POLICY,
    POLICY_PATH,
    BacktestError,
    cheapest_model,
    find_trace,
    resolve_policy,
    resolve_trace,
)
from serve_app.cli import main
from serve_app.policy import LoadedPolicy, load_policy_file
from tests.unit.backtest.conftest import ROOT


def test_the_packaged_backtest_policy_is_the_one_users_edit() -> None:
    assert PACKAGED_POLICY.read_bytes() == (ROOT / POLICY_PATH).read_bytes(), (
        "cp policies/backtest.yaml serve_app/backtest/backtest.yaml"
    )
    loaded = load_policy_file(PACKAGED_POLICY)
    assert {p.margin_floor for p in loaded.policy.plans} == {0.35}


def test_the_default_policy_is_the_working_directorys_else_the_packaged_one(
    tmp_path: Path,
) -> None:
    assert resolve_policy(None, tmp_path) == PACKAGED_POLICY
    assert resolve_policy(None, ROOT) == ROOT / POLICY_PATH
    assert resolve_policy(Path("x.yaml"), ROOT) == Path("x.yaml")


def test_the_default_trace_ships_with_rtcts_and_shared_data_is_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve_app.backtest import runner

    packaged = find_trace(tmp_path, source_root=tmp_path)
    assert packaged == runner.PACKAGED_TRACE
    assert packaged.is_file()
    assert (packaged.parent / "LICENSE.md").is_file()  # CC BY 4.0 attribution
    monkeypatch.setattr(runner, "PACKAGED_TRACE", tmp_path / "absent.csv")
    assert find_trace(tmp_path, source_root=tmp_path) is None
    with pytest.raises(BacktestError, match="--trace PATH"):
        resolve_trace(None, tmp_path, source_root=tmp_path)
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "azure_llm_trace_conv_2023.csv").write_text("x", encoding="utf-8")
    project = tmp_path / "project"
    project.mkdir()
    found = find_trace(project, source_root=tmp_path / "elsewhere")
    assert found is not None
    assert found.resolve() == shared / "azure_llm_trace_conv_2023.csv"


def test_requests_name_the_cheapest_model_by_default(backtest_policy: LoadedPolicy) -> None:
    assert cheapest_model(backtest_policy) == "llama-3.1-8b"


def test_the_command_prints_json_and_writes_the_report(
    trace_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html, png = tmp_path / "r.html", tmp_path / "m.png"
    argv = ["backtest", "--trace", str(trace_csv), "--hours", "0.1", "--no-progress"]
    code = main([*argv, "--policies", "static,incremental", "--json", "--html", str(html)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["policies"]) == ["static", "incremental"]
    assert html.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert main([*argv, "--policies", "static", "--png", str(png), "--every", "1"]) == 0
    out = capsys.readouterr()
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "== static: every 1 min" in out.out
    assert f"rtcts: wrote {png}" in out.err
    assert "\r" not in out.err  # no progress bar when asked for none


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "cheap"], "unknown policy cheap"),
        (["--spike-factor", "1"], "must be more than 1"),
        (["--speed", "0"], "must be more than 0"),
        (["--mix", "basic"], "not PLAN=SHARE"),
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--price-caps", "2"], "--price-caps is a share"),
        (["--mix", "gold=1"], "not in the policy"),
        (["--model", "gpt-9"], "sells no model of 'gpt-9'"),
        (["--trace", "/nonexistent.csv"], "cannot read the trace"),
    ],
)
def test_bad_runs_are_one_line_errors(
    trace_csv: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["backtest", "--trace", str(trace_csv), "--hours", "0.05", "--no-progress", *args]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
