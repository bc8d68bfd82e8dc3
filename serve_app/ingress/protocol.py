"""The OpenAI Chat Completions wire format, as rtcts speaks it.

Requests follow OpenAI's `POST /v1/chat/completions` body. Fields rtcts does not know
are ignored (OpenAI clients add new ones over time); every field it knows is honoured,
forwarded to the engine, or refused with a clear 400, never dropped: tools and tool
choice, tool calls and results in the history, text and image content, `n` choices,
logprobs, response formats (JSON object, JSON schema), penalties and `logit_bias` go to
the model, and a model that does not serve one is no candidate for the request
(`features()`, `serve_app/policy/capabilities.py`). The legacy `functions` are refused
(send `tools`), as are content parts other than text and images. Validation errors
raised here become OpenAI-shaped 400 answers (`serve_app.ingress.errors`).

rtcts adds, in requests, `max_price_usd` (the client's price cap) and, in responses,
an `rtcts` object (the price and decision) and a `pricing` object on each model card.

The request models' JSON schemas are the served API document's (`openapi.py`): where
a rule is checked by a validator here, the field also declares it in its schema
(`WithJsonSchema`, `json_schema_extra`), so the document accepts what rtcts accepts.
Only rules JSON Schema cannot say are left to the descriptions (a prompt that does not
fit the model's context window, a `tool_choice` naming a function that `tools` lacks).
The answers are `responses.py`'s, re-exported here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import WithJsonSchema

from serve_app.ingress.protocol_fields import (
    LOGIT_BIAS_SCHEMA,
    MAX_PRICE_USD,
    MAX_STOP_SEQUENCES,
    MICRO_PER_USD,
    STOP_SCHEMA,
    STREAM_OPTIONS_NEED_STREAM,
    UNSUPPORTED,
    Choices,
    Incoming,
    MaxPrice,
    Penalty,
    PositiveInt,
    StreamOptions,
    StrictBool,
    StrictInt,
    Temperature,
    TopLogprobs,
    TopP,
    check_logit_bias,
    check_stop,
    invalid,
    price_cap_micro,
    stop_tuple,
    unsupported,
)
from serve_app.ingress.protocol_tools import (
    IMAGE_PART_SCHEMA,
    RESPONSE_FORMAT_SCHEMA,
    TEXT_PART_SCHEMA,
    TOOL_CALLS_SCHEMA,
    TOOL_CHOICE_SCHEMA,
    TOOLS_SCHEMA,
    check_content_part,
    check_response_format,
    check_tool_calls,
    check_tool_choice,
    check_tools,
)
from serve_app.ingress.responses import (
    SSE_DONE,
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FinishReason,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    sse,
)
from serve_app.models.backend import ChatMessage, GenerationRequest
from serve_app.models.tokens import count_chat_tokens
from serve_app.policy.capabilities import Capability

Role = Literal["system", "user", "assistant", "tool", "developer"]

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
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": _TEXT},
                    },
                },
            ]
        }
    },
}
"""A message with some text that is not whitespace (the rule of `messages`)."""
_CONTENT_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"anyOf": [TEXT_PART_SCHEMA, IMAGE_PART_SCHEMA]}},
        {"type": "null"},
    ]
}
_NOTHING = {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}
"""The documented schema of a field rtcts refuses: absent, null or an empty list."""


# --------------------------------------------------------------------------- requests


class ChatCompletionMessage(Incoming):
    """One message of the conversation."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {  # content is required, and not null, unless the message is the assistant's
                    "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
                    "then": {
                        "required": ["content"],
                        "properties": {"content": {"not": {"type": "null"}}},
                    },
                },
                {  # a tool's message answers a call: it names it
                    "if": {"properties": {"role": {"const": "tool"}}},
                    "then": {
                        "required": ["tool_call_id"],
                        "properties": {"tool_call_id": {"type": "string"}},
                    },
                },
            ]
        }
    )

    role: Role
    content: Annotated[str | list[dict[str, Any]] | None, WithJsonSchema(_CONTENT_SCHEMA)] = None
    """A string, or a list of text and `image_url` parts; null only for an assistant
    message."""
    name: str | None = None
    tool_calls: Annotated[list[dict[str, Any]] | None, WithJsonSchema(TOOL_CALLS_SCHEMA)] = None
    """An assistant message's calls of tools (as the model made them)."""
    tool_call_id: str | None = None
    """A tool message: the id of the call it answers."""

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise invalid("content must be a string or a list of text and image_url parts")
        for index, part in enumerate(value):
            check_content_part(part, index)
        return value

    @field_validator("tool_calls", mode="before")
    @classmethod
    def _tool_calls(cls, value: Any) -> Any:
        return check_tool_calls(value)

    @model_validator(mode="after")
    def _content_present(self) -> ChatCompletionMessage:
        if self.content is None and self.role != "assistant":
            raise invalid(f"content is required for a {self.role} message")
        if self.role == "tool" and self.tool_call_id is None:
            raise invalid("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        """The content as one string (text parts concatenated)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content if part["type"] == "text")

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(
            part["type"] == "image_url" for part in self.content
        )

    def to_message(self) -> ChatMessage:
        return ChatMessage(
            role=self.role,
            content=self.text(),
            name=self.name,
            tool_calls=tuple(self.tool_calls or ()),
            tool_call_id=self.tool_call_id,
            parts=tuple(self.content)
            if self.has_images() and isinstance(self.content, list)
            else (),
        )


class ChatCompletionRequest(Incoming):
    """The body of `POST /v1/chat/completions`."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                STREAM_OPTIONS_NEED_STREAM,
                {  # tool_choice only with tools
                    "if": {
                        "required": ["tool_choice"],
                        "properties": {"tool_choice": {"not": {"type": "null"}}},
                    },
                    "then": {
                        "required": ["tools"],
                        "properties": {"tools": {"type": "array", "minItems": 1}},
                    },
                },
                {  # top_logprobs only with logprobs
                    "if": {
                        "required": ["top_logprobs"],
                        "properties": {"top_logprobs": {"type": "integer"}},
                    },
                    "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
                },
            ]
        }
    )
    endpoint: ClassVar[Capability] = Capability.CHAT

    model: Annotated[str, Field(min_length=1)]
    """A model id or a route alias (`GET /v1/models`)."""
    messages: Annotated[
        list[ChatCompletionMessage],
        Field(json_schema_extra={"minItems": 1, "contains": _SOME_CONTENT}),
    ]
    """At least one message, and at least one with some text that is not whitespace."""
    max_tokens: PositiveInt | None = None
    """Deprecated by OpenAI in favour of `max_completion_tokens`, still widely sent."""
    max_completion_tokens: PositiveInt | None = None
    """Wins over `max_tokens` when both are set. With several choices, each choice's cap."""
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices | None = None
    """Choices per request (1-128): billed for every choice's output tokens."""
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str | list[str] | None, WithJsonSchema(STOP_SCHEMA)] = None
    seed: StrictInt | None = None
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Any] | None, WithJsonSchema(LOGIT_BIAS_SCHEMA)] = None
    """Token id (a decimal string) to a bias from -100 to 100, at most 300 tokens."""
    logprobs: StrictBool | None = None
    """Return each output token's log probability."""
    top_logprobs: TopLogprobs | None = None
    """Alternatives per token (0-20), with `logprobs: true`."""
    tools: Annotated[list[dict[str, Any]] | None, WithJsonSchema(TOOLS_SCHEMA)] = None
    """Function tools the model may call (at most 128); their definitions are prompt."""
    tool_choice: Annotated[str | dict[str, Any] | None, WithJsonSchema(TOOL_CHOICE_SCHEMA)] = None
    """"none", "auto", "required" or `{"type": "function", "function": {"name": ...}}` (a
    function of `tools`); only with `tools`."""
    parallel_tool_calls: StrictBool | None = None
    response_format: Annotated[dict[str, Any] | None, WithJsonSchema(RESPONSE_FORMAT_SCHEMA)] = None
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}}}`."""
    max_price_usd: MaxPrice = None
    """rtcts extension: the most the client agrees to pay for this request, in USD (a
    number, or a decimal string for an exact amount)."""

    # The deprecated form of tools: refused with a clear message; never serialized.
    functions: Annotated[Any, WithJsonSchema(_NOTHING)] = Field(
        default=None, exclude=True, repr=False
    )
    """Deprecated by OpenAI: a non-empty list is refused (`unsupported_parameter`), send
    `tools`."""

    @field_validator("messages")
    @classmethod
    def _some_content(cls, messages: list[ChatCompletionMessage]) -> list[ChatCompletionMessage]:
        if not messages:
            raise invalid("messages must contain at least one message")
        if not any(message.text().strip() for message in messages):
            raise invalid("messages must contain at least one message with non-empty content")
        return messages

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_sequences(cls, value: Any) -> Any:
        return check_stop(value)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        return check_logit_bias(value)

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        return check_tools(value)

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        return check_tool_choice(value)

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, value: Any) -> Any:
        return check_response_format(value)

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, value: Any) -> Any:
        if value is None or value == []:
            return None
        if isinstance(value, list):
            raise unsupported("functions are deprecated and not served: send tools")
        raise invalid("functions must be a list")

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and info.data.get("stream") is not True:
            raise invalid("stream_options is only allowed when stream is true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_needs_tools(cls, value: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if value is not None and not tools:
            raise invalid("tool_choice is only allowed when tools are given")
        if isinstance(value, dict):
            wanted = value["function"]["name"]
            if wanted not in {tool["function"]["name"] for tool in tools or ()}:
                raise invalid(f"tool_choice names '{wanted}', which is not one of the tools")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("logprobs") is not True:
            raise invalid("top_logprobs is only allowed when logprobs is true")
        return value

    # ---------------------------------------------------------------- the request

    def to_messages(self) -> tuple[ChatMessage, ...]:
        """The conversation as backend messages, multi-part contents flattened to text
        (the parts kept where there are images)."""
        return tuple(m.to_message() for m in self.messages)

    def output_cap(self) -> int | None:
        """The client's cap on output tokens: `max_completion_tokens`, else `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def price_cap_micro(self) -> int | None:
        """`max_price_usd` in integer micro-USD, rounded down (exact, no float)."""
        return price_cap_micro(self.max_price_usd)

    def stop_sequences(self) -> tuple[str, ...]:
        """`stop` as a tuple (empty when unset)."""
        return stop_tuple(self.stop)

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def choices(self) -> int:
        return self.n or 1

    def calls_tools(self) -> bool:
        """Whether the model may call a tool (tools given, `tool_choice` not "none")."""
        return bool(self.tools) and self.tool_choice != "none"

    def features(self) -> frozenset[Capability]:
        """What a model must serve to answer this request as asked."""
        wanted: set[Capability] = set()
        history = any(m.role == "tool" or m.tool_calls for m in self.messages)
        if self.calls_tools() or history:
            wanted.add(Capability.TOOLS)
        if self.logprobs:
            wanted.add(Capability.LOGPROBS)
        if self.choices() > 1:
            wanted.add(Capability.N)
        kind = (self.response_format or {}).get("type")
        if kind == "json_object":
            wanted.add(Capability.JSON_OBJECT)
        elif kind == "json_schema":
            wanted.add(Capability.JSON_SCHEMA)
        if self.presence_penalty or self.frequency_penalty:
            wanted.add(Capability.PENALTIES)
        if self.logit_bias:
            wanted.add(Capability.LOGIT_BIAS)
        if any(m.has_images() for m in self.messages):
            wanted.add(Capability.IMAGES)
        return frozenset(wanted)

    def prompt_tokens(self) -> int:
        """The prompt's tokens as rtcts estimates them (tool definitions included); the
        bill uses the engine's count."""
        return count_chat_tokens(self.to_messages(), self.tools or ())

    def generation(
        self, request_id: str, max_tokens: int, capabilities: frozenset[Capability]
    ) -> GenerationRequest:
        """The engine's request, for a model with `capabilities`. Tools with
        `tool_choice: "none"` go only to a model that serves tools (one that does not
        could not call them anyway)."""
        tools = tuple(self.tools or ()) if Capability.TOOLS in capabilities else ()
        return GenerationRequest(
            request_id=request_id,
            messages=self.to_messages(),
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_sequences(),
            seed=self.seed,
            n=self.choices(),
            tools=tools,
            tool_choice=self.tool_choice if tools else None,
            parallel_tool_calls=self.parallel_tool_calls if tools else None,
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs,
            response_format=self.response_format,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias or None,
            user=self.user,
        )


class QuoteRequest(ChatCompletionRequest):
    """The body of `POST /v1/quote`: the same as a chat completion request."""


__all__ = [
    "MAX_PRICE_USD",
    "MAX_STOP_SEQUENCES",
    "MICRO_PER_USD",
    "SSE_DONE",
    "UNSUPPORTED",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "Choice",
    "ChunkChoice",
    "ChunkDelta",
    "FinishReason",
    "ModelCard",
    "ModelList",
    "QuoteRequest",
    "ResponseMessage",
    "Role",
    "StreamOptions",
    "Usage",
    "sse",
]
