"""The OpenAI Chat Completions wire format, as rtcts speaks it.

Requests follow OpenAI's `POST /v1/chat/completions` body. Fields rtcts does not know
are ignored (OpenAI clients add new ones over time), but features rtcts cannot honour
(tools, functions, several choices, logprobs, non-text content) are rejected with a
clear message rather than silently dropped. Validation errors raised here become
OpenAI-shaped 400 answers through `serve_app.ingress.errors.install_error_handlers`.

rtcts adds, in requests, `max_price_usd` (the client's price cap) and, in responses,
an `rtcts` object (the price and decision) and a `pricing` object on each model card.

The request models' JSON schemas are the served API document's (`openapi.py`): where
a rule is checked by a validator here, the field also declares it in its schema
(`WithJsonSchema`, `json_schema_extra`), so the document accepts what rtcts accepts.
Only rules JSON Schema cannot say are left to the descriptions (a prompt that does not
fit the model's context window).
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from serve_app.models.backend import ChatMessage

MICRO_PER_USD = 1_000_000
MAX_PRICE_USD = Decimal(1_000_000)
"""Upper bound of `max_price_usd`: keeps the exact micro-USD conversion cheap."""
MAX_STOP_SEQUENCES = 4
_NOTHING = {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}
"""The documented schema of a feature rtcts refuses: absent, null or an empty list."""

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length"]

UNSUPPORTED = "unsupported_parameter"
"""Pydantic error type of a feature rtcts does not support (becomes the error `code`)."""


def _integral(value: Any) -> Any:
    """A float without a fraction as the int it is: JSON has one number type, and JSON
    Schema's `integer` takes `1.0` (Python's `json.dumps(16.0)` sends it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_StrictInt = Annotated[int, Field(strict=True), BeforeValidator(_integral)]
_PositiveInt = Annotated[int, Field(strict=True, ge=1), BeforeValidator(_integral)]
_Penalty = Annotated[float, Field(strict=True, ge=-2, le=2)]

_PRICE_TEXT = r"^(?:[0-9]{1,6}(?:\.[0-9]+)?|1000000(?:\.0+)?)$"
"""`max_price_usd` as a string, as documented: a plain decimal from 0 to 1,000,000.
(Any string `Decimal` reads is accepted within that range, `1e2` too.)"""
_NOT_SPACE = r"[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A character `str.strip()` keeps, as a JSON Schema pattern."""
_TEXT = {"type": "string", "pattern": _NOT_SPACE}
_SOME_CONTENT = {
    "type": "object",
    "required": ["content"],
    "properties": {
        "content": {
            "anyOf": [
                _TEXT,
                {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": _TEXT},
                    },
                },
            ]
        }
    },
}
"""A message with some text that is not whitespace (the rule of `messages`)."""


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError(UNSUPPORTED, message)


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", message)


# --------------------------------------------------------------------------- requests


class _Incoming(BaseModel):
    """Base of request bodies: unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)


class TextContentPart(_Incoming):
    """One part of a multi-part message content; rtcts accepts text parts only."""

    model_config = ConfigDict(json_schema_extra={"required": ["type", "text"]})

    type: Literal["text"] = "text"
    """Required (`ChatCompletionMessage` refuses a part without it)."""
    text: str


class ChatCompletionMessage(_Incoming):
    """One message of the conversation."""

    model_config = ConfigDict(
        json_schema_extra={
            # content is required, and not null, unless the message is the assistant's
            "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
            "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        }
    )

    role: Role
    content: str | list[TextContentPart] | None = None
    """A string or a list of text parts; null only for an assistant message."""
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise _invalid("content must be a string or a list of text parts")
        for index, part in enumerate(value):
            if not isinstance(part, dict):
                raise _invalid(f"content[{index}] must be an object with type 'text'")
            if part.get("type") != "text":
                raise _unsupported(
                    f"content[{index}] has type {part.get('type')!r}: "
                    "only text content is supported"
                )
            if not isinstance(part.get("text"), str):
                raise _invalid(f"content[{index}].text must be a string")
        return value

    @model_validator(mode="after")
    def _content_present(self) -> ChatCompletionMessage:
        if self.content is None and self.role != "assistant":
            raise _invalid(f"content is required for a {self.role} message")
        return self

    def text(self) -> str:
        """The content as one string (text parts concatenated)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Incoming):
    include_usage: Annotated[bool, Field(strict=True)] = False
    """Send a last chunk, with empty choices, that carries the usage."""


class ChatCompletionRequest(_Incoming):
    """The body of `POST /v1/chat/completions`."""

    model_config = ConfigDict(
        json_schema_extra={
            # stream_options only with stream: true
            "if": {
                "required": ["stream_options"],
                "properties": {"stream_options": {"type": "object"}},
            },
            "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        }
    )

    model: Annotated[str, Field(min_length=1)]
    """A model id or a route alias (`GET /v1/models`)."""
    messages: Annotated[
        list[ChatCompletionMessage],
        Field(json_schema_extra={"minItems": 1, "contains": _SOME_CONTENT}),
    ]
    """At least one message, and at least one with some text that is not whitespace."""
    max_tokens: _PositiveInt | None = None
    """Deprecated by OpenAI in favour of `max_completion_tokens`, still widely sent."""
    max_completion_tokens: _PositiveInt | None = None
    """Wins over `max_tokens` when both are set."""
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    n: Annotated[_StrictInt | None, WithJsonSchema({"anyOf": [{"const": 1}, {"type": "null"}]})] = (
        None
    )
    """Choices per request: rtcts serves one (`n` other than 1 is refused)."""
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    stop: Annotated[
        str | list[str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    seed: _StrictInt | None = None
    user: str | None = None
    presence_penalty: _Penalty | None = None
    """Accepted and ignored."""
    frequency_penalty: _Penalty | None = None
    """Accepted and ignored."""
    max_price_usd: Annotated[
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
    ] = None
    """rtcts extension: the most the client agrees to pay for this request, in USD (a
    number, or a decimal string for an exact amount)."""

    # Declared only to be rejected with a clear message; never serialized.
    tools: Annotated[Any, WithJsonSchema(_NOTHING)] = Field(default=None, exclude=True, repr=False)
    """Not supported: a non-empty list is refused (`unsupported_parameter`)."""
    functions: Annotated[Any, WithJsonSchema(_NOTHING)] = Field(
        default=None, exclude=True, repr=False
    )
    """Not supported: a non-empty list is refused (`unsupported_parameter`)."""
    logprobs: Annotated[Any, WithJsonSchema({"anyOf": [{"const": False}, {"type": "null"}]})] = (
        Field(default=None, exclude=True, repr=False)
    )
    """Not supported: `true` is refused (`unsupported_parameter`)."""

    @field_validator("messages")
    @classmethod
    def _some_content(cls, messages: list[ChatCompletionMessage]) -> list[ChatCompletionMessage]:
        if not messages:
            raise _invalid("messages must contain at least one message")
        if not any(message.text().strip() for message in messages):
            raise _invalid("messages must contain at least one message with non-empty content")
        return messages

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise _unsupported(f"n={n} is not supported: only one choice (n=1) per request")
        return n

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_sequences(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise _invalid("stop must be a string or a list of strings")
        if len(value) > MAX_STOP_SEQUENCES:
            raise _invalid(f"stop allows at most {MAX_STOP_SEQUENCES} sequences, got {len(value)}")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == []:
            return None
        if isinstance(value, list):
            raise _unsupported("tools and function calling are not supported")
        raise _invalid(f"{info.field_name} must be a list")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value is True:
            raise _unsupported("logprobs are not supported")
        if value is not None and value is not False:
            raise _invalid("logprobs must be a boolean")
        return None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and info.data.get("stream") is not True:
            raise _invalid("stream_options is only allowed when stream is true")
        return value

    def to_messages(self) -> tuple[ChatMessage, ...]:
        """The conversation as backend messages, multi-part contents flattened to text."""
        return tuple(ChatMessage(role=m.role, content=m.text()) for m in self.messages)

    def output_cap(self) -> int | None:
        """The client's cap on output tokens: `max_completion_tokens`, else `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def price_cap_micro(self) -> int | None:
        """`max_price_usd` in integer micro-USD, rounded down (exact, no float)."""
        if self.max_price_usd is None:
            return None
        # quantize keeps at most 6 decimals of a value ≤ MAX_PRICE_USD: 13 digits, exact.
        micro = self.max_price_usd.quantize(Decimal("0.000001"), rounding=ROUND_FLOOR)
        return int(micro * MICRO_PER_USD)

    def stop_sequences(self) -> tuple[str, ...]:
        """`stop` as a tuple (empty when unset)."""
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,)
        return tuple(self.stop)

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class QuoteRequest(ChatCompletionRequest):
    """The body of `POST /v1/quote`: the same as a chat completion request."""


# -------------------------------------------------------------------------- responses


class _Outgoing(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Usage(_Outgoing):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ResponseMessage(_Outgoing):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(_Outgoing):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason | None


class ChatCompletionResponse(_Outgoing):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    """Unix time, seconds."""
    model: str
    choices: list[Choice]
    usage: Usage
    rtcts: dict[str, Any] | None = None
    """rtcts extension: the price and the decision behind it."""


class ChunkDelta(_Outgoing):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Outgoing):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Outgoing):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    """Empty in the last chunk that carries only the usage."""
    usage: Usage | None = None
    rtcts: dict[str, Any] | None = None


class ModelCard(_Outgoing):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rtcts"
    pricing: dict[str, Any] | None = None
    """rtcts extension: list prices of the model."""


class ModelList(_Outgoing):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------------------- SSE

SSE_DONE = b"data: [DONE]\n\n"


def sse(data: BaseModel | str) -> bytes:
    """One server-sent event: `data: {json}\\n\\n` (None fields left out), or the text as is.

    `sse("[DONE]")` is the stream's end marker. A text with line breaks is sent as
    several `data:` lines, which SSE clients join back with newlines.
    """
    text = data.model_dump_json(exclude_none=True) if isinstance(data, BaseModel) else data
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("".join(f"data: {line}\n" for line in lines) + "\n").encode()
