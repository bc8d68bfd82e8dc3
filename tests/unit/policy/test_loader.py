"""Loading policies: YAML parsing, field paths of every issue, cross-object checks, fingerprint."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.errors import PolicyError, PolicyIssue
from serve_app.policy import hash_api_key, load_policy_dict, load_policy_file, load_policy_text
from serve_app.policy.loader import format_path

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
DEFAULT_TEXT = DEFAULT_POLICY.read_text(encoding="utf-8")

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture
def data() -> dict[str, Any]:
    """A fresh copy of the default policy as plain data."""
    loaded = yaml.safe_load(DEFAULT_TEXT)
    assert isinstance(loaded, dict)
    return loaded


def _issues(data: dict[str, Any]) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        load_policy_dict(data, source="p.yaml")
    assert info.value.source == "p.yaml"
    assert info.value.issues
    return info.value.issues


def _text_issues(text: str) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, source="p.yaml")
    return info.value.issues


# --- valid policies ------------------------------------------------------------------


def test_default_policy_file_loads() -> None:
    loaded = load_policy_file(DEFAULT_POLICY)
    assert loaded.source == str(DEFAULT_POLICY)
    assert len(loaded.fingerprint) == 64
    assert loaded.version == f"2026-11-27.1+{loaded.fingerprint[:12]}"
    assert {t.id for t in loaded.policy.tenants} == {"demo-basic", "demo-pro"}


def test_text_and_dict_and_file_agree(data: dict[str, Any]) -> None:
    from_file = load_policy_file(DEFAULT_POLICY)
    from_text = load_policy_text(DEFAULT_TEXT)
    from_dict = load_policy_dict(data)
    assert from_file.fingerprint == from_text.fingerprint == from_dict.fingerprint
    assert from_file.policy == from_dict.policy
    assert from_text.source == from_dict.source == "<policy>"


def test_fingerprint_is_equal_for_equal_content(data: dict[str, Any]) -> None:
    first = load_policy_dict(data)
    reordered = dict(reversed(list(copy.deepcopy(data).items())))
    reordered["plans"][0] = dict(reversed(list(reordered["plans"][0].items())))
    second = load_policy_dict(reordered)
    assert first.fingerprint == second.fingerprint
    assert first.version == second.version


def test_fingerprint_ignores_spelling_of_the_same_value(data: dict[str, Any]) -> None:
    explicit = copy.deepcopy(data)
    explicit["schema_version"] = 1  # already 1; and a default spelled out
    explicit["models"][0]["default_output_tokens"] = 256
    assert load_policy_dict(explicit).fingerprint == load_policy_dict(data).fingerprint


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["plans"][0].update(margin_floor=0.36),
        lambda d: d["models"][0].update(usd_per_hour=0.81),
        lambda d: d["routes"]["auto"].reverse(),
        lambda d: d.update(version="2026-11-27.2"),
        lambda d: d["tenants"][0]["api_key_sha256"].append(hash_api_key("another key")),
    ],
    ids=["margin_floor", "usd_per_hour", "route order", "version", "extra key"],
)
def test_fingerprint_changes_with_content(data: dict[str, Any], mutate: Mutation) -> None:
    before = load_policy_dict(data).fingerprint
    changed = copy.deepcopy(data)
    mutate(changed)
    assert load_policy_dict(changed).fingerprint != before


def test_yaml_anchors_and_merge_keys_are_supported() -> None:
    text = DEFAULT_TEXT.replace(
        "sla: {ttft_target_ms: 2000, tpot_target_ms: 100, credit_fraction: 0.10}",
        "sla: &basic_sla {ttft_target_ms: 2000, tpot_target_ms: 100, credit_fraction: 0.10}",
    ).replace(
        "sla: {ttft_target_ms: 1000, tpot_target_ms: 60, credit_fraction: 0.25}",
        "sla: {<<: *basic_sla, ttft_target_ms: 1000, tpot_target_ms: 60, credit_fraction: 0.25}",
    )
    assert "<<: *basic_sla" in text
    assert load_policy_text(text).fingerprint == load_policy_file(DEFAULT_POLICY).fingerprint


# --- field-level issues, with pydantic's loc turned into field paths -----------------


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (lambda d: d.update(colour="red"), "colour", "unknown field"),
        (lambda d: d["models"][0].update(gpu="L4"), "models[0].gpu", "unknown field"),
        (
            lambda d: d["models"][1]["throughput"].update(tensor_parallel=2),
            "models[1].throughput.tensor_parallel",
            "unknown field",
        ),
        (lambda d: d.pop("version"), "version", "required field is missing"),
        (
            lambda d: d["models"][2].pop("throughput"),
            "models[2].throughput",
            "required field is missing",
        ),
        (
            lambda d: d["models"][0].update(usd_per_hour=-0.8),
            "models[0].usd_per_hour",
            "Input should be greater than 0 (got -0.8)",
        ),
        (
            lambda d: d["plans"][0]["prices_by_model"]["qwen2.5-32b"].update(
                output_usd_per_1m_tokens=-4
            ),
            "plans[0].prices_by_model.qwen2.5-32b.output_usd_per_1m_tokens",
            "Input should be greater than or equal to 0 (got -4)",
        ),
        (
            lambda d: d["plans"][1]["prices_by_tier"][2].update(input_usd_per_1m_tokens=-0.5),
            "plans[1].prices_by_tier[2].input_usd_per_1m_tokens",
            "Input should be greater than or equal to 0",
        ),
        (
            lambda d: d["plans"][0].update(margin_floor=1.0),
            "plans[0].margin_floor",
            "Input should be less than 1 (got 1.0)",
        ),
        (
            lambda d: d["plans"][1].update(margin_floor=-0.1),
            "plans[1].margin_floor",
            "Input should be greater than or equal to 0 (got -0.1)",
        ),
        (
            lambda d: d["models"][0].update(backend="tpu"),
            "models[0].backend",
            "(got 'tpu')",
        ),
        (
            lambda d: d["tenants"][0].update(api_key_sha256=["rtcts-demo-basic"]),
            "tenants[0].api_key_sha256[0]",
            "should match pattern",
        ),
        (
            lambda d: d["plans"][1]["prices_by_tier"].update(
                gold=d["plans"][1]["prices_by_tier"][1]
            ),
            "plans[1].prices_by_tier.gold",
            "invalid key: Input should be a valid integer",
        ),
    ],
)
def test_field_issue_names_its_path(
    data: dict[str, Any], mutate: Mutation, path: str, reason: str
) -> None:
    mutate(data)
    (issue,) = _issues(data)
    assert issue.path == path
    assert reason in issue.message


# --- object-level rules (model validators): the path is the object's -----------------


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (
            lambda d: d["models"][0]["throughput"].update(decode_tokens_per_s_at_max_batch=2000),
            "models[0].throughput",
            "decode_tokens_per_s_at_max_batch must lie between the batch-1 rate (35) "
            "and batch-1 rate x max_concurrent_sequences (1120)",
        ),
        (
            lambda d: d["models"][2]["throughput"].update(decode_tokens_per_s_at_max_batch=10),
            "models[2].throughput",
            "decode_tokens_per_s_at_max_batch must lie between",
        ),
        (
            lambda d: d["models"][1]["autoscaling"].update(min_replicas=5),
            "models[1].autoscaling",
            "min_replicas (5) exceeds max_replicas (4)",
        ),
        (
            lambda d: d["models"][0].update(backend="openai_upstream"),
            "models[0]",
            "upstream_url is required for, and only for, backend openai_upstream",
        ),
        (
            lambda d: d["models"][0].update(upstream_url="http://localhost:9000/v1"),
            "models[0]",
            "upstream_url is required for, and only for, backend openai_upstream",
        ),
        (
            lambda d: d["plans"][0]["prices_by_model"].update(
                {"llama-3.1-8b": {"input_usd_per_1m_tokens": 0, "output_usd_per_1m_tokens": 0}}
            ),
            "plans[0].prices_by_model.llama-3.1-8b",
            "a price card must charge for input or output tokens",
        ),
        (
            lambda d: d["plans"][0].update(on_infeasible=["reroute"]),
            "plans[0].on_infeasible",
            "on_infeasible must end with 'throttle' or 'accept'",
        ),
        (
            lambda d: d["plans"][0].update(on_infeasible=["surcharge", "throttle"]),
            "plans[0]",
            "on_infeasible has 'surcharge' but surge_cap is 1 (no surcharge)",
        ),
    ],
)
def test_object_rule_names_the_object(
    data: dict[str, Any], mutate: Mutation, path: str, reason: str
) -> None:
    mutate(data)
    (issue,) = _issues(data)
    assert issue.path == path
    assert issue.message == reason or reason in issue.message
    assert "function-after" not in issue.path  # no pydantic validator tag in a path


# --- cross-object rules (checks.py) ---------------------------------------------------


def _duplicate_model(d: dict[str, Any]) -> None:
    d["models"].append(copy.deepcopy(d["models"][0]))


def _duplicate_key(d: dict[str, Any]) -> None:
    d["tenants"][1]["api_key_sha256"].append(d["tenants"][0]["api_key_sha256"][0])


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (
            lambda d: d["routes"]["auto"].append("gpt-5"),
            "routes.auto[3]",
            "unknown model 'gpt-5'",
        ),
        (
            lambda d: d["routes"]["economy"].append("llama-3.1-8b"),
            "routes.economy[2]",
            "model 'llama-3.1-8b' listed twice",
        ),
        (
            lambda d: d["routes"].update({"llama-3.1-8b": ["qwen2.5-32b"]}),
            "routes.llama-3.1-8b",
            "alias 'llama-3.1-8b' is also a model id",
        ),
        (lambda d: d["routes"].update(empty=[]), "routes.empty", "alias lists no model"),
        (
            _duplicate_model,
            "models[4].id",  # appended after the four models of the default policy
            "duplicate model id 'llama-3.1-8b' (first at models[0])",
        ),
        (
            lambda d: d["plans"].append(copy.deepcopy(d["plans"][0])),
            "plans[2].id",
            "duplicate plan id 'basic' (first at plans[0])",
        ),
        (
            lambda d: d["tenants"].append({**d["tenants"][0], "api_key_sha256": ["a" * 64]}),
            "tenants[2].id",
            "duplicate tenant id 'demo-basic' (first at tenants[0])",
        ),
        (
            _duplicate_key,
            "tenants[1].api_key_sha256[1]",
            "duplicate API key (also a key of tenant 'demo-basic')",
        ),
        (lambda d: d["tenants"][0].update(plan="gold"), "tenants[0].plan", "unknown plan 'gold'"),
        (
            lambda d: d["plans"][0]["prices_by_model"].update(
                {"gpt-5": {"input_usd_per_1m_tokens": 1, "output_usd_per_1m_tokens": 1}}
            ),
            "plans[0].prices_by_model.gpt-5",
            "unknown model 'gpt-5'",
        ),
        (
            lambda d: d["plans"][1]["prices_by_tier"].update(
                {9: {"input_usd_per_1m_tokens": 1, "output_usd_per_1m_tokens": 1}}
            ),
            "plans[1].prices_by_tier[9]",
            "no model has quality tier 9",
        ),
        (
            lambda d: d["plans"][0].update(prices_by_model={}),
            "plans[0]",
            "plan 'basic' prices no model",
        ),
    ],
)
def test_cross_object_issue_names_its_path(
    data: dict[str, Any], mutate: Mutation, path: str, reason: str
) -> None:
    mutate(data)
    (issue,) = _issues(data)
    assert (issue.path, issue.message) == (path, reason)


def test_duplicate_key_within_one_tenant(data: dict[str, Any]) -> None:
    keys = data["tenants"][0]["api_key_sha256"]
    keys.append(keys[0])
    (issue,) = _issues(data)
    assert issue.path == "tenants[0].api_key_sha256[1]"
    assert "duplicate API key" in issue.message


def test_every_issue_is_reported_at_once(data: dict[str, Any]) -> None:
    data["models"][0]["gpu"] = "L4"
    data["models"][1]["usd_per_hour"] = -1
    data["plans"][0]["margin_floor"] = 1.5
    issues = _issues(data)
    assert [i.path for i in issues] == [
        "models[0].gpu",
        "models[1].usd_per_hour",
        "plans[0].margin_floor",
    ]


def test_every_cross_object_issue_is_reported_at_once(data: dict[str, Any]) -> None:
    data["routes"]["auto"].append("gpt-5")
    data["tenants"][1]["plan"] = "gold"
    _duplicate_key(data)
    paths = [i.path for i in _issues(data)]
    assert paths == ["routes.auto[3]", "tenants[1].plan", "tenants[1].api_key_sha256[1]"]


def test_policy_error_has_one_line_per_issue_each_naming_the_source(
    data: dict[str, Any],
) -> None:
    data["models"][0]["gpu"] = "L4"
    data["plans"][1]["margin_floor"] = -1
    with pytest.raises(PolicyError) as info:
        load_policy_dict(data, source="policies/bad.yaml")
    assert str(info.value).splitlines() == [
        "policies/bad.yaml: models[0].gpu: unknown field",
        "policies/bad.yaml: plans[1].margin_floor: "
        "Input should be greater than or equal to 0 (got -1)",
    ]


def test_long_inputs_are_not_echoed(data: dict[str, Any]) -> None:
    data["version"] = "v" * 65
    (issue,) = _issues(data)
    assert issue.path == "version"
    assert "v" * 41 not in issue.message


# --- YAML -----------------------------------------------------------------------------


def test_duplicate_yaml_key_is_reported_with_its_path_and_line() -> None:
    lines = DEFAULT_TEXT.splitlines()
    at = lines.index("    margin_floor: 0.35")
    lines.insert(at + 1, "    margin_floor: 0.5")
    (issue,) = _text_issues("\n".join(lines))
    assert issue.path == "plans[0].margin_floor"
    assert issue.message == f"duplicate key 'margin_floor' (line {at + 2}, column 5)"


def test_every_duplicate_yaml_key_is_reported() -> None:
    text = "a: {b: 1, b: 2}\nl:\n  - {x: 1}\n  - {x: 1, x: 2}\na: 3\n"
    issues = _text_issues(text)
    assert [str(i) for i in issues] == [
        "a.b: duplicate key 'b' (line 1, column 11)",
        "l[1].x: duplicate key 'x' (line 4, column 12)",
        "a: duplicate key 'a' (line 5, column 1)",
    ]


def test_duplicate_yaml_keys_compare_by_value() -> None:
    (issue,) = _text_issues("m:\n  1: a\n  01: b\n")
    assert issue.path == "m[1]"
    assert issue.message.startswith("duplicate key 1 (line 3")


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("models: [a, b\n", "line 2, column 1", "expected ',' or ']'"),
        ("a: 1\n b: 2\n", "line 2, column 3", "mapping values are not allowed here"),
        ("a: 1\n---\nb: 2\n", "line 2, column 1", "expected a single document"),
        ("? [a, b]\n: 1\n", "line 1, column 3", "found unhashable key"),
        (
            "a: !!python/object/apply:os.system [echo hi]\n",
            "line 1, column 4",
            "could not determine a constructor",
        ),
        ("a: \x00\n", "", "unacceptable character #x0000"),
        ("version: 2026-13-45\n", "", "invalid YAML: month must be in 1..12"),
        ("a: !!int twelve\n", "", "invalid YAML"),
        ("- 1\n- 2\n", "", "a policy must be a YAML mapping"),
        ("just text\n", "", "a policy must be a YAML mapping"),
        ("", "", "a policy must be a YAML mapping"),
        ("# only a comment\n", "", "a policy must be a YAML mapping"),
    ],
    ids=[
        "unclosed",
        "bad indent",
        "two documents",
        "unhashable key",
        "python tag",
        "control char",
        "bad date",
        "bad int tag",
        "list",
        "scalar",
        "empty",
        "comment",
    ],
)
def test_bad_yaml_is_one_issue_on_one_line(text: str, path: str, reason: str) -> None:
    (issue,) = _text_issues(text)
    assert issue.path == path
    assert reason in issue.message
    assert "\n" not in str(issue)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert str(info.value) == f"{path}: cannot read file: No such file or directory"


def test_directory_is_not_a_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read file"):
        load_policy_file(tmp_path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert str(info.value).startswith(f"{path}: not UTF-8 text")


# --- format_path and PolicyIssue ---------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        ((), ""),
        (("version",), "version"),
        (("plans", 0, "margin_floor"), "plans[0].margin_floor"),
        (("routes", "auto", 3), "routes.auto[3]"),
        (("plans", 1, "prices_by_tier", 2), "plans[1].prices_by_tier[2]"),
    ],
)
def test_format_path(loc: tuple[int | str, ...], path: str) -> None:
    assert format_path(loc) == path


def test_issue_without_path_is_just_its_message() -> None:
    assert str(PolicyIssue("", "a policy must be a YAML mapping")) == (
        "a policy must be a YAML mapping"
    )
    assert str(PolicyIssue("version", "required field is missing")) == (
        "version: required field is missing"
    )
