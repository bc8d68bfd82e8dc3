"""The chat request's structured fields: tools, tool choice, tool calls in the history,
content parts (text and images) and the response format.

Each is kept as the JSON the client sent (engines get it as it is) after its shape is
checked here; the JSON schema beside each check says the same rule, no more.
"""

from __future__ import annotations

from typing import Any

from serve_app.ingress.protocol_fields import NAME_PATTERN, check_name, invalid, unsupported

MAX_TOOLS = 128
TOOL_CHOICES = ("none", "auto", "required")
IMAGE_DETAILS = ("auto", "low", "high")

_OBJECT = {"type": "object"}
_NAME = {"type": "string", "pattern": NAME_PATTERN}
FUNCTION_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string"},
        "parameters": _OBJECT,
        "strict": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
    },
}
TOOL_SCHEMA = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {"type": {"const": "function"}, "function": FUNCTION_SCHEMA},
}
TOOLS_SCHEMA = {
    "anyOf": [{"type": "array", "items": TOOL_SCHEMA, "maxItems": MAX_TOOLS}, {"type": "null"}]
}
NAMED_CHOICE_SCHEMA = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": _NAME}},
    },
}
TOOL_CHOICE_SCHEMA = {
    "anyOf": [{"enum": list(TOOL_CHOICES)}, NAMED_CHOICE_SCHEMA, {"type": "null"}]
}
TOOL_CALL_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}
TOOL_CALLS_SCHEMA = {"anyOf": [{"type": "array", "items": TOOL_CALL_SCHEMA}, {"type": "null"}]}
TEXT_PART_SCHEMA = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
IMAGE_PART_SCHEMA = {
    "type": "object",
    "required": ["type", "image_url"],
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string"}, "detail": {"enum": list(IMAGE_DETAILS)}},
        },
    },
}
RESPONSE_FORMAT_SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
        },
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": _NAME,
                        "description": {"type": "string"},
                        "schema": _OBJECT,
                        "strict": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
                    },
                },
            },
        },
        {"type": "null"},
    ]
}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{what} must be an object")
    return value


def _optional(item: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> None:
    if key in item and not isinstance(item[key], kind):
        raise invalid(f"{what}.{key} has the wrong type")


def check_tools(value: Any) -> Any:
    """`tools`: at most 128 function tools, each named; kept as sent."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("tools must be a list")
    if len(value) > MAX_TOOLS:
        raise invalid(f"tools allows at most {MAX_TOOLS} tools")
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        tool = _object(tool, where)
        if tool.get("type") != "function":
            raise unsupported(f"{where}.type must be 'function' (the only tool type served)")
        function = _object(tool.get("function"), f"{where}.function")
        check_name(function.get("name"), f"{where}.function.name")
        _optional(function, "description", str, f"{where}.function")
        _optional(function, "parameters", dict, f"{where}.function")
        if function.get("strict") is not None and not isinstance(function.get("strict"), bool):
            raise invalid(f"{where}.function.strict must be a boolean")
    return value


def check_tool_choice(value: Any) -> Any:
    """`tool_choice`: "none", "auto", "required" or `{"type": "function", ...}`."""
    if value is None or value in TOOL_CHOICES:
        return value
    if isinstance(value, str):
        raise invalid(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or a function")
    choice = _object(value, "tool_choice")
    if choice.get("type") != "function":
        raise invalid("tool_choice.type must be 'function'")
    function = _object(choice.get("function"), "tool_choice.function")
    check_name(function.get("name"), "tool_choice.function.name")
    return value


def check_tool_calls(value: Any) -> Any:
    """An assistant message's `tool_calls`: each with an id and a function's name and
    arguments (a string)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("tool_calls must be a list")
    for index, call in enumerate(value):
        where = f"tool_calls[{index}]"
        call = _object(call, where)
        if not isinstance(call.get("id"), str):
            raise invalid(f"{where}.id must be a string")
        if call.get("type") != "function":
            raise invalid(f"{where}.type must be 'function'")
        function = _object(call.get("function"), f"{where}.function")
        if not isinstance(function.get("name"), str):
            raise invalid(f"{where}.function.name must be a string")
        if not isinstance(function.get("arguments"), str):
            raise invalid(f"{where}.function.arguments must be a string (JSON text)")
    return value


def check_content_part(part: Any, index: int) -> None:
    """A text part, or an image (`image_url` with a `url`); other kinds are refused."""
    if not isinstance(part, dict):
        raise invalid(f"content[{index}] must be an object with a type")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise invalid(f"content[{index}].text must be a string")
        return
    if kind == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise invalid(f"content[{index}].image_url must be an object with a url")
        if "detail" in image and image["detail"] not in IMAGE_DETAILS:
            raise invalid(f"content[{index}].image_url.detail must be auto, low or high")
        return
    raise unsupported(
        f"content[{index}] has type {kind!r}: only text and image_url content is supported"
    )


def check_response_format(value: Any) -> Any:
    """`response_format`: text, json_object, or json_schema with a named schema."""
    if value is None:
        return None
    fmt = _object(value, "response_format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return value
    if kind != "json_schema":
        raise invalid("response_format.type must be text, json_object or json_schema")
    spec = _object(fmt.get("json_schema"), "response_format.json_schema")
    check_name(spec.get("name"), "response_format.json_schema.name")
    _optional(spec, "description", str, "response_format.json_schema")
    _optional(spec, "schema", dict, "response_format.json_schema")
    if spec.get("strict") is not None and not isinstance(spec.get("strict"), bool):
        raise invalid("response_format.json_schema.strict must be a boolean")
    return value


__all__ = [
    "IMAGE_PART_SCHEMA",
    "MAX_TOOLS",
    "RESPONSE_FORMAT_SCHEMA",
    "TEXT_PART_SCHEMA",
    "TOOLS_SCHEMA",
    "TOOL_CALLS_SCHEMA",
    "TOOL_CHOICE_SCHEMA",
    "check_content_part",
    "check_response_format",
    "check_tool_calls",
    "check_tool_choice",
    "check_tools",
]
