"""Fields the request bodies share (chat, text completions, embeddings, quotes): their
types, their rules, and the JSON schema each declares.

A rule checked by a validator here is also declared in the field's JSON schema
(`WithJsonSchema`, `json_schema_extra`), and nothing more: the served document
(`openapi.py`) accepts exactly what rtcts accepts, which the fuzz test holds
(tests/integration/test_openapi_fuzz.py). Raw JSON objects that go to the engine as
sent (tool definitions, a response format's schema, `logit_bias`) are checked for
their shape and kept as the client wrote them (unknown keys included).
"""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

MICRO_PER_USD = 1_000_000
MAX_PRICE_USD = Decimal(1_000_000)
"""Upper bound of `max_price_usd`: keeps the exact micro-USD conversion cheap."""
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 128
"""Most choices per request (`n`), as OpenAI allows."""
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""A function's or a JSON schema's name, as OpenAI allows."""
_NAME = re.compile(NAME_PATTERN)
TOKEN_ID_PATTERN = r"^[0-9]{1,10}$"
_TOKEN_ID = re.compile(TOKEN_ID_PATTERN)

UNSUPPORTED = "unsupported_parameter"
"""Pydantic error type of a feature rtcts does not support (becomes the error `code`)."""


def unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError(UNSUPPORTED, message)


def invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", message)


def integral(value: Any) -> Any:
    """A float without a fraction as the int it is: JSON has one number type, and JSON
    Schema's `integer` takes `1.0` (Python's `json.dumps(16.0)` sends it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


StrictInt = Annotated[int, Field(strict=True), BeforeValidator(integral)]
PositiveInt = Annotated[int, Field(strict=True, ge=1), BeforeValidator(integral)]
Penalty = Annotated[float, Field(strict=True, ge=-2, le=2)]
Choices = Annotated[int, Field(strict=True, ge=1, le=MAX_CHOICES), BeforeValidator(integral)]
Temperature = Annotated[float, Field(strict=True, ge=0, le=2)]
TopP = Annotated[float, Field(strict=True, gt=0, le=1)]
StrictBool = Annotated[bool, Field(strict=True)]
TopLogprobs = Annotated[
    int, Field(strict=True, ge=0, le=MAX_TOP_LOGPROBS), BeforeValidator(integral)
]
"""Alternatives per token of chat logprobs (0-20)."""
LegacyLogprobs = Annotated[int, Field(strict=True, ge=0, le=5), BeforeValidator(integral)]
"""A text completion's `logprobs`: alternatives per token (0-5)."""
Dimensions = Annotated[int, Field(strict=True, ge=1, le=8192), BeforeValidator(integral)]
"""Length of an embedding (1-8192)."""


_PRICE_TEXT = r"^(?:[0-9]{1,6}(?:\.[0-9]+)?|1000000(?:\.0+)?)$"
"""`max_price_usd` as a string, as documented: a plain decimal from 0 to 1,000,000.
(Any string `Decimal` reads is accepted within that range, `1e2` too.)"""
MaxPrice = Annotated[
    Decimal | None,
    Field(ge=0, le=MAX_PRICE_USD),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": int(MAX_PRICE_USD)},
                {"type": "string", "pattern": _PRICE_TEXT},
                {"type": "null"},
            ]
        }
    ),
]
"""rtcts extension: the most the client agrees to pay for the request, in USD (a
number, or a decimal string for an exact amount)."""

STOP_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
        {"type": "null"},
    ]
}
LOGIT_BIAS_SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"pattern": TOKEN_ID_PATTERN},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            "maxProperties": MAX_LOGIT_BIAS,
        },
        {"type": "null"},
    ]
}


def price_cap_micro(value: Decimal | None) -> int | None:
    """`max_price_usd` in integer micro-USD, rounded down (exact, no float)."""
    if value is None:
        return None
    # quantize keeps at most 6 decimals of a value ≤ MAX_PRICE_USD: 13 digits, exact.
    micro = value.quantize(Decimal("0.000001"), rounding=ROUND_FLOOR)
    return int(micro * MICRO_PER_USD)


def check_stop(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid("stop must be a string or a list of strings")
    if len(value) > MAX_STOP_SEQUENCES:
        raise invalid(f"stop allows at most {MAX_STOP_SEQUENCES} sequences, got {len(value)}")
    return value


def stop_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def check_logit_bias(value: Any) -> Any:
    """A map of token ids (decimal strings) to a bias in [-100, 100], at most 300."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("logit_bias must be an object of token ids to numbers")
    if len(value) > MAX_LOGIT_BIAS:
        raise invalid(f"logit_bias allows at most {MAX_LOGIT_BIAS} tokens")
    for key, bias in value.items():
        if not _TOKEN_ID.match(key):
            raise invalid(f"logit_bias key {key!r} is not a token id")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise invalid(f"logit_bias[{key!r}] must be a number from -100 to 100")
    return value


def check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise invalid(f"{what} must be 1-64 letters, digits, '_' or '-'")


class Incoming(BaseModel):
    """Base of request bodies: unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)


class StreamOptions(Incoming):
    include_usage: Annotated[bool, Field(strict=True)] = False
    """Send a last chunk, with empty choices, that carries the usage."""


STREAM_OPTIONS_NEED_STREAM: dict[str, Any] = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}
"""JSON schema of a body: `stream_options` (an object) only with `stream: true`."""


__all__ = [
    "LOGIT_BIAS_SCHEMA",
    "MAX_CHOICES",
    "MAX_PRICE_USD",
    "MAX_STOP_SEQUENCES",
    "MAX_TOP_LOGPROBS",
    "MICRO_PER_USD",
    "NAME_PATTERN",
    "STOP_SCHEMA",
    "STREAM_OPTIONS_NEED_STREAM",
    "UNSUPPORTED",
    "Choices",
    "Dimensions",
    "Incoming",
    "LegacyLogprobs",
    "MaxPrice",
    "Penalty",
    "PositiveInt",
    "StreamOptions",
    "StrictBool",
    "StrictInt",
    "Temperature",
    "TopLogprobs",
    "TopP",
    "check_logit_bias",
    "check_name",
    "check_stop",
    "integral",
    "invalid",
    "price_cap_micro",
    "stop_tuple",
    "unsupported",
]
