"""Load a policy from YAML or a dict: parse safely, validate, check, and fingerprint it.

Every failure is one `PolicyError` whose issues each name a field path; nothing else
escapes (no YAML or pydantic exception, no stack trace for the user).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serve_app.errors import PolicyError, PolicyIssue
from serve_app.policy.checks import check_policy
from serve_app.policy.schema import Policy


@dataclass(frozen=True)
class LoadedPolicy:
    """A valid policy and where it came from.

    `fingerprint` is a digest of the validated content: two loads of equal content
    have equal fingerprints, so hot reload can tell a real change from a touch.
    """

    policy: Policy
    source: str
    fingerprint: str

    @property
    def version(self) -> str:
        """Stamped on every meter: the declared version plus the content fingerprint."""
        return f"{self.policy.version}+{self.fingerprint[:12]}"


def load_policy_file(path: str | Path) -> LoadedPolicy:
    """Read, validate and check the policy at `path`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(source, [PolicyIssue("", f"cannot read file: {exc.strerror}")]) from None
    return load_policy_text(text, source=source)


def load_policy_text(text: str, *, source: str = "<policy>") -> LoadedPolicy:
    """Validate a policy given as YAML text."""
    try:
        data = yaml.load(text, Loader=_UniqueKeySafeLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise PolicyError(source, [PolicyIssue(where, f"{exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, [PolicyIssue("", f"invalid YAML: {exc}")]) from None
    if not isinstance(data, Mapping):
        raise PolicyError(source, [PolicyIssue("", "a policy must be a YAML mapping")])
    return load_policy_dict(data, source=source)


def load_policy_dict(data: Mapping[str, Any], *, source: str = "<policy>") -> LoadedPolicy:
    """Validate a policy given as a dict (what `build_app` receives)."""
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, [_issue(error) for error in exc.errors()]) from None
    issues = check_policy(policy)
    if issues:
        raise PolicyError(source, issues)
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True).encode()
    return LoadedPolicy(policy, source, hashlib.sha256(canonical).hexdigest())


def format_path(loc: tuple[int | str, ...]) -> str:
    """`('plans', 0, 'margin_floor')` -> `plans[0].margin_floor`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _issue(error: Any) -> PolicyIssue:
    kind, message = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required field is missing"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if "input" in error and kind not in {"missing", "extra_forbidden"} and _short(error["input"]):
        message += f" (got {error['input']!r})"
    loc = tuple(part for part in error["loc"] if part not in _UNION_TAGS)
    return PolicyIssue(format_path(loc), message)


_UNION_TAGS = {"function-after[_saturation_in_range(), ThroughputProfile]"}


def _short(value: object) -> bool:
    return isinstance(value, (int, float, str)) and len(repr(value)) <= 40


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_UniqueKeySafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)
