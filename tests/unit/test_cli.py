"""`rtcts policy validate`, `rtcts policy hash-key` and the `rtcts reconcile` report: exit
codes, one-line errors, printed figures."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.cli import main, render_reconcile
from serve_app.metering.reconcile import compare
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS
from serve_app.policy import hash_api_key

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
DEFAULT_TEXT = DEFAULT_POLICY.read_text(encoding="utf-8")

Mutation = Callable[[dict[str, Any]], None]


def _default() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_TEXT)
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, data: object, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _validate(capsys: pytest.CaptureFixture[str], *files: Path) -> tuple[int, str, str]:
    code = main(["policy", "validate", *map(str, files)])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, path: Path, field_path: str, reason: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    prefix = f"{path}: {field_path}: " if field_path else f"{path}: "
    assert line.startswith(prefix), line
    assert reason in line.removeprefix(prefix), line


# --- valid --------------------------------------------------------------------------


def test_default_policy_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _validate(capsys, DEFAULT_POLICY)
    assert code == 0
    assert err == ""
    assert out.startswith(f"{DEFAULT_POLICY}: ok (version 2026-11-27.1+")
    assert "4 models, 3 routes, 2 plans, 2 tenants" in out


def test_relative_path_from_the_repository(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["policy", "validate", "policies/default.yaml"]) == 0
    assert capsys.readouterr().out.startswith("policies/default.yaml: ok")


def test_a_copy_of_the_default_is_valid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _validate(capsys, _write(tmp_path, _default()))
    assert code == 0
    assert "policy.yaml: ok" in out


# --- one invalid change at a time -----------------------------------------------------


def _duplicate_model(d: dict[str, Any]) -> None:
    d["models"].append(copy.deepcopy(d["models"][0]))


def _duplicate_api_key(d: dict[str, Any]) -> None:
    d["tenants"][1]["api_key_sha256"] = list(d["tenants"][0]["api_key_sha256"])


INVALID: list[tuple[str, Mutation, str, str]] = [
    ("unknown top-level field", lambda d: d.update(colour="red"), "colour", "unknown field"),
    (
        "unknown nested field",
        lambda d: d["models"][0].update(gpu="L4"),
        "models[0].gpu",
        "unknown field",
    ),
    (
        "unknown field in a plan",
        lambda d: d["plans"][1]["sla"].update(p99_ms=10),
        "plans[1].sla.p99_ms",
        "unknown field",
    ),
    (
        "negative usd_per_hour",
        lambda d: d["models"][1].update(usd_per_hour=-1.79),
        "models[1].usd_per_hour",
        "Input should be greater than 0 (got -1.79)",
    ),
    (
        "negative price",
        lambda d: d["plans"][0]["prices_by_model"]["llama-3.1-70b"].update(
            input_usd_per_1m_tokens=-2
        ),
        "plans[0].prices_by_model.llama-3.1-70b.input_usd_per_1m_tokens",
        "Input should be greater than or equal to 0 (got -2)",
    ),
    (
        "negative tier price",
        lambda d: d["plans"][1]["prices_by_tier"][3].update(output_usd_per_1m_tokens=-10),
        "plans[1].prices_by_tier[3].output_usd_per_1m_tokens",
        "Input should be greater than or equal to 0 (got -10)",
    ),
    (
        "margin floor 1.0",
        lambda d: d["plans"][0].update(margin_floor=1.0),
        "plans[0].margin_floor",
        "Input should be less than 1 (got 1.0)",
    ),
    (
        "margin floor -0.1",
        lambda d: d["plans"][1].update(margin_floor=-0.1),
        "plans[1].margin_floor",
        "Input should be greater than or equal to 0 (got -0.1)",
    ),
    (
        "alias naming an unknown model",
        lambda d: d["routes"]["premium"].append("gpt-5"),
        "routes.premium[2]",
        "unknown model 'gpt-5'",
    ),
    (
        "duplicate model id",
        _duplicate_model,
        "models[4].id",
        "duplicate model id 'llama-3.1-8b' (first at models[0])",
    ),
    (
        "duplicate API key across tenants",
        _duplicate_api_key,
        "tenants[1].api_key_sha256[0]",
        "duplicate API key (also a key of tenant 'demo-basic')",
    ),
    (
        "tenant with unknown plan",
        lambda d: d["tenants"][1].update(plan="enterprise"),
        "tenants[1].plan",
        "unknown plan 'enterprise'",
    ),
    (
        "alias equal to a model id",
        lambda d: d["routes"].update({"qwen2.5-32b": ["llama-3.1-70b"]}),
        "routes.qwen2.5-32b",
        "alias 'qwen2.5-32b' is also a model id",
    ),
    (
        "chain not ending with throttle or accept",
        lambda d: d["plans"][0].update(on_infeasible=["reroute"]),
        "plans[0].on_infeasible",
        "on_infeasible must end with 'throttle' or 'accept'",
    ),
    (
        "surcharge while surge_cap is 1",
        lambda d: d["plans"][1].update(surge_cap=1),
        "plans[1]",
        "on_infeasible has 'surcharge' but surge_cap is 1",
    ),
    (
        "min_replicas above max_replicas",
        lambda d: d["models"][2]["autoscaling"].update(min_replicas=3),
        "models[2].autoscaling",
        "min_replicas (3) exceeds max_replicas (2)",
    ),
    (
        "saturated decode rate above its range",
        lambda d: d["models"][0]["throughput"].update(decode_tokens_per_s_at_max_batch=1121),
        "models[0].throughput",
        "decode_tokens_per_s_at_max_batch must lie between the batch-1 rate (35)",
    ),
    (
        "saturated decode rate below its range",
        lambda d: d["models"][1]["throughput"].update(decode_tokens_per_s_at_max_batch=27),
        "models[1].throughput",
        "decode_tokens_per_s_at_max_batch must lie between the batch-1 rate (28)",
    ),
    (
        "price card with both prices zero",
        lambda d: d["plans"][1]["prices_by_tier"].update(
            {2: {"input_usd_per_1m_tokens": 0, "output_usd_per_1m_tokens": 0}}
        ),
        "plans[1].prices_by_tier[2]",
        "a price card must charge for input or output tokens",
    ),
    (
        "openai_upstream without upstream_url",
        lambda d: d["models"][1].update(backend="openai_upstream"),
        "models[1]",
        "upstream_url is required for, and only for, backend openai_upstream",
    ),
    (
        "missing required field",
        lambda d: d["plans"][0].pop("sla"),
        "plans[0].sla",
        "required field is missing",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field_path", "reason"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_policy_gives_one_line_naming_file_path_and_reason(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    mutate: Mutation,
    field_path: str,
    reason: str,
) -> None:
    data = _default()
    mutate(data)
    path = _write(tmp_path, data)
    code, out, err = _validate(capsys, path)
    assert code == 1
    assert out == ""
    _assert_one_line_error(err, path, field_path, reason)


# --- invalid text -----------------------------------------------------------------------


def test_duplicate_yaml_key_is_reported_with_path_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = DEFAULT_TEXT.splitlines()
    at = lines.index("    margin_floor: 0.30")  # in plan 'pro'
    lines.insert(at + 1, "    margin_floor: 0.20")
    path = tmp_path / "dup.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    code, _, err = _validate(capsys, path)
    assert code == 1
    _assert_one_line_error(
        err, path, "plans[1].margin_floor", f"duplicate key 'margin_floor' (line {at + 2},"
    )


def test_malformed_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    route = "  economy: [llama-3.1-8b, qwen2.5-32b]\n"
    assert route in DEFAULT_TEXT
    path = tmp_path / "broken.yaml"
    path.write_text(DEFAULT_TEXT.replace(route, route.replace("]", "")), encoding="utf-8")
    line = DEFAULT_TEXT[: DEFAULT_TEXT.index(route)].count("\n") + 2  # where it is noticed
    code, _, err = _validate(capsys, path)
    assert code == 1
    _assert_one_line_error(err, path, f"line {line}, column 10", "expected ',' or ']'")


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    code, _, err = _validate(capsys, path)
    assert code == 1
    _assert_one_line_error(err, path, "", "cannot read file: No such file or directory")


def test_top_level_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _write(tmp_path, [_default()])
    code, _, err = _validate(capsys, path)
    assert code == 1
    _assert_one_line_error(err, path, "", "a policy must be a YAML mapping")


def test_empty_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    code, _, err = _validate(capsys, path)
    assert code == 1
    _assert_one_line_error(err, path, "", "a policy must be a YAML mapping")


def test_binary_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    code, _, err = _validate(capsys, path)
    assert code == 1
    _assert_one_line_error(err, path, "", "not UTF-8 text")


# --- several errors, several files ------------------------------------------------------


def test_several_errors_give_one_line_each(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _default()
    data["models"][0]["gpu"] = "L4"
    data["models"][2]["usd_per_hour"] = -11.96
    data["plans"][0]["margin_floor"] = 1.0
    path = _write(tmp_path, data, "several.yaml")
    code, out, err = _validate(capsys, path)
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 3
    expected = [
        ("models[0].gpu", "unknown field"),
        ("models[2].usd_per_hour", "greater than 0"),
        ("plans[0].margin_floor", "less than 1"),
    ]
    for line, (field_path, reason) in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}: {field_path}: ")
        assert reason in line


def test_several_cross_object_errors_give_one_line_each(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = _default()
    data["routes"]["auto"].append("gpt-5")
    _duplicate_api_key(data)
    path = _write(tmp_path, data)
    code, _, err = _validate(capsys, path)
    assert code == 1
    assert [line.removeprefix(f"{path}: ").split(": ")[0] for line in err.splitlines()] == [
        "routes.auto[3]",
        "tenants[1].api_key_sha256[0]",
    ]


def test_every_file_is_validated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = _default()
    bad["plans"][0]["margin_floor"] = -0.1
    bad_path = _write(tmp_path, bad, "bad.yaml")
    missing = tmp_path / "missing.yaml"
    code, out, err = _validate(capsys, bad_path, DEFAULT_POLICY, missing)
    assert code == 1
    (ok_line,) = out.splitlines()
    assert ok_line.startswith(f"{DEFAULT_POLICY}: ok")
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad_path}: plans[0].margin_floor: ")
    assert lines[1].startswith(f"{missing}: cannot read file")


# --- the real console script and module, in a subprocess ----------------------------------


def _console_script() -> str:
    beside = Path(sys.executable).parent / "rtcts"
    found = str(beside) if beside.exists() else shutil.which("rtcts")
    if found is None:
        pytest.skip("the rtcts console script is not installed")
    return found


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_subprocess_exit_codes_and_no_traceback(tmp_path: Path, how: str) -> None:
    command = [_console_script()] if how == "console script" else [sys.executable, "-m"]
    if how == "python -m":
        command.append("serve_app.cli")
    bad = _default()
    bad["routes"]["auto"].append("gpt-5")
    bad["tenants"][0]["api_key_sha256"].append("not-a-digest")
    bad_path = _write(tmp_path, bad, "bad.yaml")

    ok = subprocess.run(
        [*command, "policy", "validate", "policies/default.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("policies/default.yaml: ok")
    assert ok.stderr == ""

    failed = subprocess.run(
        [*command, "policy", "validate", str(bad_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines() == [
        f"{bad_path}: tenants[0].api_key_sha256[1]: String should match pattern "
        "'^[0-9a-f]{64}$' (got 'not-a-digest')"
    ]


# --- hash-key and usage -------------------------------------------------------------------


def test_hash_key_prints_the_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "hash-key", "rtcts-demo-pro"]) == 0
    assert capsys.readouterr().out == hash_api_key("rtcts-demo-pro") + "\n"


def test_hash_key_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("rtcts-demo-basic\n"))
    assert main(["policy", "hash-key", "-"]) == 0
    out = capsys.readouterr().out
    assert out == "90ad01ea2122a849e5926f1753e4a37f8dffc536cdd4b29828a7479e6c30d45e\n"
    assert "rtcts-demo-basic" not in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: rtcts" in capsys.readouterr().out


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "validate"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_reconcile_prints_whole_numbers_as_text_and_as_the_admin_json() -> None:
    report = compare(
        {("cus_a", METER_EVENT_BILLED): 5, ("cus_a", METER_EVENT_TOKENS): 7},
        {("cus_a", METER_EVENT_BILLED): Decimal("8.0"), ("cus_a", METER_EVENT_TOKENS): Decimal(7)},
        start_time=0,
        end_time=60,
    )
    data = json.loads(render_reconcile(report, as_json=True))
    assert data == report.to_dict()
    assert [(x["unit"], x["local"], x["stripe"], x["drift"]) for x in data["lines"]] == [
        ("micro_usd", 5, 8, 3),
        ("tokens", 7, 7, 0),
    ]
    text = render_reconcile(report).splitlines()
    assert text[0].split() == [
        "cus_a",
        METER_EVENT_BILLED,
        "local",
        "5",
        "stripe",
        "8",
        "micro_usd",
        "DRIFT",
        "+3",
    ]
    assert text[1].split()[-2:] == ["tokens", "ok"]
    assert text[-1] == "1 lines drift"
