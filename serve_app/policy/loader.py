"""Load a policy from YAML or a dict: parse safely, validate, check, and fingerprint it.

Every failure is one `PolicyError` whose issues each name a field path; nothing else
escapes (no YAML or pydantic exception, no stack trace for the user).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterator, Mapping
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
    except UnicodeDecodeError as exc:
        issue = PolicyIssue("", f"not UTF-8 text (byte {exc.start}: {exc.reason})")
        raise PolicyError(source, [issue]) from None
    return load_policy_text(text, source=source)


def load_policy_text(text: str, *, source: str = "<policy>") -> LoadedPolicy:
    """Validate a policy given as YAML text."""
    data = _parse_yaml(text, source)
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
    loc = tuple(error["loc"])
    if loc and loc[-1] == "[key]":  # pydantic's marker for a bad key of a dict field
        loc, message = loc[:-1], f"invalid key: {message}"
    return PolicyIssue(format_path(loc), _one_line(message))


def _short(value: object) -> bool:
    return isinstance(value, (int, float, str)) and len(repr(value)) <= 40


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely into plain data, refusing duplicate keys.

    PyYAML silently keeps the last of duplicate keys; they are found here on the node
    tree, before construction, so each is reported with its field path and line.
    """
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters at once
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            duplicates = list(_duplicate_keys(loader, node, (), set()))
            if duplicates:
                raise PolicyError(source, duplicates)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and problem.startswith("but "):  # "expected X" / "but found Y"
            problem = f"{exc.context}, {problem}"
        raise PolicyError(source, [PolicyIssue(where, _one_line(problem))]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, [PolicyIssue("", _one_line(f"invalid YAML: {exc}"))]) from None
    except PolicyError:
        raise
    except Exception as exc:  # PyYAML's constructors raise bare errors, e.g. on `2026-13-45`
        issue = PolicyIssue("", _one_line(f"invalid YAML: {exc}"))
        raise PolicyError(source, [issue]) from None


def _duplicate_keys(
    loader: yaml.SafeLoader, node: yaml.Node, loc: tuple[int | str, ...], seen: set[int]
) -> Iterator[PolicyIssue]:
    """Every duplicate mapping key under `node`; an aliased node is walked once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(loader, item, (*loc, index), seen)
    elif isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key_node, value_node in node.value:
            key_loc = loc
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = loader.construct_object(key_node)
                key_loc = (*loc, key if type(key) is int else str(key))  # as pydantic's loc
                if isinstance(key, Hashable) and key in keys:
                    mark = key_node.start_mark
                    yield PolicyIssue(
                        format_path(key_loc),
                        f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})",
                    )
                elif isinstance(key, Hashable):
                    keys.add(key)
            yield from _duplicate_keys(loader, value_node, key_loc, seen)


_MERGE_TAG = "tag:yaml.org,2002:merge"
