"""A small JSON value that a JSON Schema accepts: what the simulated model writes for
`response_format: json_schema` and as the arguments of a tool call.

`minimal_instance(schema, strict=...)` builds the least value of each kind: `{}` with
only the required properties, `[]` or `minItems` items, `""` or `minLength` letters,
`0` or the nearest number within the bounds, `false`, `null`, the first `enum` value,
the `const`, the first `anyOf`/`oneOf` branch that can be built, `allOf` merged,
`$ref` into `$defs`/`definitions`.

Keywords it does not satisfy (`pattern`, `not`, `if`, `contains`, `patternProperties`,
`propertyNames`, `dependentSchemas`, `uniqueItems` over several items, a `multipleOf`
that is not whole) raise `SchemaUnsupported` when `strict` (a response format promises
valid output: the request is refused instead) and are ignored otherwise (tool-call
arguments, which real models get wrong too). Annotations (`title`, `description`,
`format`, `default`, ...) never matter. No I/O, no third-party validator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaUnsupported", "minimal_instance"]

MAX_DEPTH = 32
_UNSATISFIED = (
    "pattern",
    "not",
    "if",
    "contains",
    "patternProperties",
    "propertyNames",
    "dependentSchemas",
)


class SchemaUnsupported(ValueError):
    """The schema asks for something `minimal_instance` cannot build; the message says what."""


def minimal_instance(schema: Any, *, strict: bool) -> Any:
    """A small value valid under `schema` (see the module docstring)."""
    return _Builder(schema, strict).build(schema, 0)


class _Builder:
    def __init__(self, root: Any, strict: bool) -> None:
        self.root = root
        self.strict = strict

    def refuse(self, what: str) -> None:
        if self.strict:
            raise SchemaUnsupported(what)

    def build(self, schema: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise SchemaUnsupported("the schema nests deeper than 32 levels (or refers to itself)")
        if schema is True or schema == {}:
            return {}
        if schema is False:
            raise SchemaUnsupported("the schema `false` accepts no value")
        if not isinstance(schema, Mapping):
            raise SchemaUnsupported("a schema must be an object or a boolean")
        if "$ref" in schema:
            return self.build(self.resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for keyword in _UNSATISFIED:
            if keyword in schema:
                self.refuse(f"the keyword '{keyword}' is not supported")
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            return self.build(self.merge(schema, depth), depth + 1)
        for keyword in ("anyOf", "oneOf"):
            branches = schema.get(keyword)
            if isinstance(branches, list) and branches:
                return self.first_branch(branches, depth)
        return self.of_type(schema, _type_of(schema), depth)

    def first_branch(self, branches: list[Any], depth: int) -> Any:
        last: SchemaUnsupported | None = None
        for branch in branches:
            try:
                return self.build(branch, depth + 1)
            except SchemaUnsupported as exc:
                last = exc
        assert last is not None
        raise last

    def resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaUnsupported(f"only local $ref is supported, not {ref!r}")
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise SchemaUnsupported(f"$ref {ref!r} points nowhere")
            node = node[key]
        return node

    def merge(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        """`allOf` as one schema: properties, required and bounds combined."""
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping) and "$ref" in part:
                part = self.resolve(part["$ref"])
            if not isinstance(part, Mapping):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, Mapping):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def of_type(self, schema: Mapping[str, Any], kind: str | None, depth: int) -> Any:
        if kind == "object" or kind is None:
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "string":
            return "a" * _whole(schema.get("minLength"), 0)
        if kind in ("integer", "number"):
            return self.number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        raise SchemaUnsupported(f"unknown type {kind!r}")

    def object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        value: dict[str, Any] = {}
        for name in required if isinstance(required, list) else ():
            if not isinstance(name, str):
                raise SchemaUnsupported("required must list property names")
            value[name] = self.build(properties.get(name, {}), depth + 1)
        if _whole(schema.get("minProperties"), 0) > len(value):
            self.refuse("minProperties beyond the required properties is not supported")
        return value

    def array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        count = _whole(schema.get("minItems"), 0)
        if count > 1 and schema.get("uniqueItems") is True:
            self.refuse("uniqueItems with minItems over 1 is not supported")
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        return [
            self.build(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)
        ]

    def number(self, schema: Mapping[str, Any], *, integer: bool) -> int | float:
        low = _bound(schema, "minimum", "exclusiveMinimum", integer, up=True)
        high = _bound(schema, "maximum", "exclusiveMaximum", integer, up=False)
        value: float = 0
        if low is not None and value < low:
            value = low
        if high is not None and value > high:
            value = high
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and step > 0:
            if integer or float(step).is_integer():
                value = math.ceil(value / step) * step
            else:
                self.refuse("a multipleOf that is not a whole number is not supported")
        if low is not None and high is not None and low > high:
            raise SchemaUnsupported("the schema's bounds leave no number")
        return int(value) if integer or float(value).is_integer() else value


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [k for k in kind if isinstance(k, str)]
        return named[0] if named else None
    if isinstance(kind, str):
        return kind
    if kind is not None:
        raise SchemaUnsupported("type must be a string or a list of strings")
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _whole(value: Any, default: int) -> int:
    whole = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if whole else default


def _bound(
    schema: Mapping[str, Any], inclusive: str, exclusive: str, integer: bool, *, up: bool
) -> float | None:
    """The least (`up`) or greatest admissible number the bounds allow."""
    found: list[float] = []
    value = schema.get(inclusive)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if integer:
            value = math.ceil(value) if up else math.floor(value)
        found.append(value)
    value = schema.get(exclusive)
    if isinstance(value, int | float) and not isinstance(value, bool):
        nudge = 1 if integer else max(abs(value) * 1e-9, 1e-9)
        edge = math.floor(value) + 1 if up and integer else math.ceil(value) - 1 if integer else 0
        found.append(edge if integer else value + nudge if up else value - nudge)
    if not found:
        return None
    return max(found) if up else min(found)
