"""Request schemas of the Stripe endpoints the emulator serves, and validation like Stripe's.

Source of truth: `../shared/data/stripe/meter_schemas.json` (Stripe's own OpenAPI
description, transcribed) when that file is present next to the repository. The same
schemas are embedded below (descriptions stripped) so the emulator behaves the same in
an installed package without `../shared`; a unit test keeps the two equal.

Validation order, like Stripe's: decode the body (form with bracket notation for v1,
JSON for v2), coerce form strings to the schema's scalar types, then check the JSON
schema (required, unknown parameters, types, lengths, enums). The first problem
becomes one Stripe-shaped `invalid_request_error` with the parameter it concerns.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jsonschema import Draft7Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

Schema = dict[str, Any]

SHARED_FILE = "meter_schemas.json"

_EXPAND: Schema = {"type": "array", "items": {"maxLength": 5000, "type": "string"}}

EMBEDDED_SCHEMAS: dict[str, Schema] = {
    "POST /v1/billing/meter_events": {
        "required": ["event_name", "payload"],
        "type": "object",
        "properties": {
            "event_name": {"maxLength": 100, "type": "string"},
            "expand": _EXPAND,
            "identifier": {"maxLength": 100, "type": "string"},
            "payload": {"type": "object", "additionalProperties": {"type": "string"}},
            "timestamp": {"type": "integer", "format": "unix-time"},
        },
        "additionalProperties": False,
    },
    "POST /v1/billing/meter_event_adjustments": {
        "required": ["event_name", "type"],
        "type": "object",
        "properties": {
            "cancel": {
                "type": "object",
                "properties": {"identifier": {"maxLength": 100, "type": "string"}},
            },
            "event_name": {"maxLength": 100, "type": "string"},
            "expand": _EXPAND,
            "type": {"type": "string", "enum": ["cancel"]},
        },
        "additionalProperties": False,
    },
    "POST /v1/billing/meters": {
        "required": ["default_aggregation", "display_name", "event_name"],
        "type": "object",
        "properties": {
            "customer_mapping": {
                "required": ["event_payload_key", "type"],
                "type": "object",
                "properties": {
                    "event_payload_key": {"maxLength": 100, "type": "string"},
                    "type": {"type": "string", "enum": ["by_id"]},
                },
            },
            "default_aggregation": {
                "required": ["formula"],
                "type": "object",
                "properties": {"formula": {"type": "string", "enum": ["count", "last", "sum"]}},
            },
            "display_name": {"maxLength": 250, "type": "string"},
            "event_name": {"maxLength": 100, "type": "string"},
            "event_time_window": {"type": "string", "enum": ["day", "hour"]},
            "expand": _EXPAND,
            "value_settings": {
                "required": ["event_payload_key"],
                "type": "object",
                "properties": {"event_payload_key": {"maxLength": 100, "type": "string"}},
            },
        },
        "additionalProperties": False,
    },
    "GET /v1/billing/meters": {
        "type": "object",
        "properties": {
            "ending_before": {"maxLength": 5000, "type": "string"},
            "expand": _EXPAND,
            "limit": {"type": "integer"},
            "starting_after": {"maxLength": 5000, "type": "string"},
            "status": {"type": "string", "enum": ["active", "inactive"]},
        },
        "required": [],
        "additionalProperties": False,
    },
    "GET /v1/billing/meters/{id}": {
        "type": "object",
        "properties": {"expand": _EXPAND},
        "required": [],
        "additionalProperties": False,
    },
    "GET /v1/billing/meters/{id}/event_summaries": {
        "type": "object",
        "properties": {
            "customer": {"maxLength": 5000, "type": "string"},
            "end_time": {"type": "integer", "format": "unix-time"},
            "ending_before": {"maxLength": 5000, "type": "string"},
            "expand": _EXPAND,
            "limit": {"type": "integer"},
            "start_time": {"type": "integer", "format": "unix-time"},
            "starting_after": {"maxLength": 5000, "type": "string"},
            "value_grouping_window": {"type": "string", "enum": ["day", "hour"]},
        },
        "required": ["customer", "end_time", "start_time"],
        "additionalProperties": False,
    },
    "POST /v2/billing/meter_event_stream": {
        "required": ["events"],
        "type": "object",
        "properties": {
            "events": {
                "type": "array",
                "items": {
                    "required": ["event_name", "payload"],
                    "type": "object",
                    "properties": {
                        "event_name": {"type": "string"},
                        "identifier": {"type": "string"},
                        "payload": {"type": "object", "additionalProperties": {"type": "string"}},
                        "timestamp": {"type": "string", "format": "date-time"},
                    },
                },
            }
        },
    },
    # A subset of Stripe's customer-create parameters (the ones rtcts may send).
    "POST /v1/customers": {
        "type": "object",
        "properties": {
            "email": {"maxLength": 512, "type": "string"},
            "expand": _EXPAND,
            "metadata": {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"type": "string"}},
                    {"type": "string", "enum": [""]},
                ]
            },
            "name": {"maxLength": 256, "type": "string"},
            "phone": {"maxLength": 20, "type": "string"},
        },
        "additionalProperties": False,
    },
}
"""Transcribed from Stripe's OpenAPI (see module docstring), descriptions stripped."""

TRANSCRIBED = tuple(EMBEDDED_SCHEMAS)
"""Operations whose schema comes from Stripe's description (the rest are the emulator's)."""

EMULATOR_SCHEMAS: dict[str, Schema] = {
    "GET /v1/customers": {
        "type": "object",
        "properties": {
            "email": {"maxLength": 512, "type": "string"},
            "ending_before": {"maxLength": 5000, "type": "string"},
            "expand": _EXPAND,
            "limit": {"type": "integer"},
            "starting_after": {"maxLength": 5000, "type": "string"},
        },
        "additionalProperties": False,
    },
    "GET /v1/customers/{id}": {
        "type": "object",
        "properties": {"expand": _EXPAND},
        "additionalProperties": False,
    },
    "POST /v1/billing/meters/{id}/deactivate": {
        "type": "object",
        "properties": {"expand": _EXPAND},
        "additionalProperties": False,
    },
    "POST /v1/billing/meters/{id}/reactivate": {
        "type": "object",
        "properties": {"expand": _EXPAND},
        "additionalProperties": False,
    },
    "POST /v2/billing/meter_event_session": {"type": "object", "additionalProperties": False},
}
"""Schemas for operations not transcribed in the shared excerpt (same conventions)."""

CUSTOMER_ID_PARAM: Schema = {"maxLength": 255, "type": "string", "pattern": "^[A-Za-z0-9_]+$"}
"""Emulator extension: `POST /v1/customers` takes an `id` (real Stripe refuses one)."""


def shared_schema_dir() -> Path:
    """`../shared/data/stripe` next to the repository root (may not exist)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "stripe"


def strip_docs(node: Any) -> Any:
    """A copy of an OpenAPI schema without prose and vendor keys (what validation needs)."""
    if isinstance(node, dict):
        return {
            k: strip_docs(v)
            for k, v in node.items()
            if k not in ("description", "summary", "title") and not k.startswith("x-")
        }
    if isinstance(node, list):
        return [strip_docs(v) for v in node]
    return node


def transcribe(document: Mapping[str, Any]) -> dict[str, Schema]:
    """Request schemas of the operations in `TRANSCRIBED`, read from an OpenAPI `paths` doc."""
    paths = document["paths"]
    out: dict[str, Schema] = {}
    for operation in TRANSCRIBED:
        method, path = operation.split(" ", 1)
        spec = paths[path][method.lower()]
        if method == "GET":
            params = [p for p in spec.get("parameters", []) if p.get("in") == "query"]
            out[operation] = {
                "type": "object",
                "properties": {p["name"]: strip_docs(p["schema"]) for p in params},
                "required": [p["name"] for p in params if p.get("required")],
                "additionalProperties": False,
            }
        else:
            content = spec["requestBody"]["content"]
            out[operation] = strip_docs(next(iter(content.values()))["schema"])
    return out


def load_schemas(schema_dir: Path | None = None) -> tuple[dict[str, Schema], str]:
    """All request schemas and where they came from (the shared file, or "embedded").

    `schema_dir` defaults to `shared_schema_dir()`; a missing file means the embedded copy.
    """
    schemas = copy.deepcopy(EMBEDDED_SCHEMAS)
    source = "embedded"
    path = (schema_dir or shared_schema_dir()) / SHARED_FILE
    if path.is_file():
        schemas.update(transcribe(json.loads(path.read_text(encoding="utf-8"))))
        source = str(path)
    schemas.update(copy.deepcopy(EMULATOR_SCHEMAS))
    customers = schemas["POST /v1/customers"]
    customers["properties"] = {**customers["properties"], "id": CUSTOMER_ID_PARAM}
    return schemas, source


class ParamError(Exception):
    """A request parameter Stripe would refuse: answered as HTTP 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


def _split_key(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not bracket:
        return [key]
    parts = [head]
    tail = "[" + rest
    for match in _KEY_PART.finditer(tail):
        parts.append(match.group(1))
    return parts


def param_name(parts: list[str] | tuple[Any, ...]) -> str:
    """`("payload", "value")` -> `payload[value]`, Stripe's way of naming a nested param."""
    if not parts:
        return ""
    return str(parts[0]) + "".join(f"[{p}]" for p in parts[1:])


def decode_form(text: str) -> dict[str, Any]:
    """Decode `application/x-www-form-urlencoded` with Stripe's bracket notation.

    `payload[value]=12&expand[0]=a` -> `{"payload": {"value": "12"}, "expand": {"0": "a"}}`
    (index keys become lists in `coerce`, which knows the schema). Leaves stay strings.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        parts = _split_key(key)
        node = root
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamError(f"Invalid object: {param_name(parts[: depth + 1])}", None)
            node = child
        last = parts[-1]
        if last == "":
            last = str(len(node))
        if isinstance(node.get(last), dict):
            raise ParamError(f"Invalid object: {param_name(parts)}", param_name(parts))
        node[last] = value
    return root


def coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """Form strings -> the schema's scalar types; index maps -> lists (like Stripe's parser)."""
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            if isinstance(value, dict) and branch.get("type") in ("object", "array"):
                return coerce(value, branch)
        return value
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    if kind == "number" and isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"-?\d+(\.\d+)?", value) else value
        except ValueError:  # pragma: no cover - the regex admits only floats
            return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "array":
        items = schema.get("items", {})
        if isinstance(value, dict) and all(k.isdigit() for k in value):
            return [coerce(value[k], items) for k in sorted(value, key=int)]
        if isinstance(value, list):
            return [coerce(v, items) for v in value]
        return value
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else {})
            out[k] = coerce(v, sub)
        return out
    return value


def _describe(error: Any) -> ParamError:
    """One jsonschema error -> the message, param and code Stripe gives for that problem."""
    path = list(error.absolute_path)
    validator = error.validator
    instance = error.instance
    if validator == "required":
        missing = next(r for r in error.validator_value if r not in instance)
        param = param_name([*path, missing])
        return ParamError(f"Missing required param: {param}.", param, "parameter_missing")
    if validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        extra = sorted(k for k in instance if k not in allowed)
        param = param_name([*path, extra[0]]) if extra else param_name(path)
        return ParamError(f"Received unknown parameter: {param}", param, "parameter_unknown")
    param = param_name(path)
    if validator == "type":
        expected = error.validator_value
        if expected == "integer":
            return ParamError(f"Invalid integer: {instance}", param, "parameter_invalid_integer")
        if expected == "object":
            return ParamError(f"Invalid object: {param}", param)
        if expected == "array":
            return ParamError(f"Invalid array: {param}", param)
        return ParamError(f"Invalid {expected}: {param}", param)
    if validator == "maxLength":
        shown = instance if len(instance) <= 20 else instance[:20] + "..."
        return ParamError(
            f"Invalid string: {shown}; must be at most {error.validator_value} characters", param
        )
    if validator == "enum":
        choices = ", ".join(repr(c) if c == "" else str(c) for c in error.validator_value)
        return ParamError(f"Invalid {param}: must be one of {choices}", param)
    if validator == "pattern":
        return ParamError(f"Invalid {param}: {instance}", param)
    return ParamError(f"Invalid {param or 'request'}: {error.message}", param or None)


class RequestValidator:
    """Validates decoded request parameters of each operation against its schema."""

    def __init__(self, schemas: Mapping[str, Schema]) -> None:
        self.schemas = dict(schemas)
        self._validators = {op: Draft7Validator(s) for op, s in self.schemas.items()}

    def validate(self, operation: str, params: Mapping[str, Any], *, form: bool) -> dict[str, Any]:
        """Coerced parameters, or `ParamError` for the first problem Stripe would report."""
        schema = self.schemas[operation]
        data = coerce(dict(params), schema) if form else dict(params)
        error = best_match(self._validators[operation].iter_errors(data))
        if error is not None:
            raise _describe(error)
        return dict(data)
