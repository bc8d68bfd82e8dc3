"""The OpenAI Chat Completions wire format, as rtcts speaks it.

Requests follow OpenAI's `POST /v1/chat/completions` body. Fields rtcts does not know
are ignored (OpenAI clients add new ones over time), but features rtcts cannot honour
(tools, functions, several choices, logprobs, non-text content) are rejected with a
clear message rather than silently dropped. Validation errors raised here become
OpenAI-shaped 400 answers through `serve_app.ingress.errors.install_error_handlers`.

rtcts adds, in requests, `max_price_usd` (the client's price cap) and, in responses,
an `rtcts` object (the price and decision) and a `pricing` object on each model card.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from serve_app.models.backend import ChatMessage

MICRO_PER_USD = 1_000_000
MAX_PRICE_USD = Decimal(1_000_000)
"""Upper bound of `max_price_usd`: keeps the exact micro-USD conversion cheap."""
MAX_STOP_SEQUENCES = 4

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length"]

UNSUPPORTED = "unsupported_parameter"
"""Pydantic error type of a feature rtcts does not support (becomes the error `code`)."""

_StrictInt = Annotated[int, Field(strict=True)]
_PositiveInt = Annotated[int, Field(strict=True, ge=1)]
_Penalty = Annotated[float, Field(strict=True, ge=-2, le=2)]


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError(UNSUPPORTED, message)


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_value", message)


# --------------------------------------------------------------------------- requests


class _Incoming(BaseModel):
    """Base of request bodies: unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore")


class TextContentPart(_Incoming):
    """One part of a multi-part message content; rtcts accepts text parts only."""

    type: Literal["text"] = "text"
    text: str


class ChatCompletionMessage(_Incoming):
    """One message of the conversation."""

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

    model: Annotated[str, Field(min_length=1)]
    messages: list[ChatCompletionMessage]
    max_tokens: _PositiveInt | None = None
    """Deprecated by OpenAI in favour of `max_completion_tokens`, still widely sent."""
    max_completion_tokens: _PositiveInt | None = None
    """Wins over `max_tokens` when both are set."""
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    n: _StrictInt | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: _StrictInt | None = None
    user: str | None = None
    presence_penalty: _Penalty | None = None
    """Accepted and ignored."""
    frequency_penalty: _Penalty | None = None
    """Accepted and ignored."""
    max_price_usd: Annotated[Decimal, Field(ge=0, le=MAX_PRICE_USD)] | None = None
    """rtcts extension: the most the client agrees to pay for this request, in USD."""

    # Declared only to be rejected with a clear message; never serialized.
    tools: Any = Field(default=None, exclude=True, repr=False)
    functions: Any = Field(default=None, exclude=True, repr=False)
    logprobs: Any = Field(default=None, exclude=True, repr=False)

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
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise _unsupported("tools and function calling are not supported")
        return None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value is True:
            raise _unsupported("logprobs are not supported")
        if value not in (None, False):
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
    model_config = ConfigDict(extra="forbid")


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
