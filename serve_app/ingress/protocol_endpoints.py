"""The request bodies of `POST /v1/completions` (legacy text completions) and
`POST /v1/embeddings`, as rtcts speaks them.

Both are priced, admitted, metered and billed like chat (`service.py`): a text
completion at the plan's token rates, the prompt counted on the prompts (several
prompts, `n` choices each, multiply the output); an embedding at the plan's embedding
price per input token, with no output. Unknown fields are ignored; every known field is
honoured, forwarded to the engine, or refused with a clear 400: `echo`, `suffix`, a
`best_of` other than `n`, and prompts given as token ids are refused (no backend rtcts
ships serves them alike).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import WithJsonSchema

from serve_app.ingress.protocol_fields import (
    LOGIT_BIAS_SCHEMA,
    STOP_SCHEMA,
    STREAM_OPTIONS_NEED_STREAM,
    Choices,
    Dimensions,
    Incoming,
    LegacyLogprobs,
    MaxPrice,
    Penalty,
    PositiveInt,
    StreamOptions,
    StrictBool,
    StrictInt,
    Temperature,
    TopP,
    check_logit_bias,
    check_stop,
    integral,
    invalid,
    price_cap_micro,
    stop_tuple,
    unsupported,
)
from serve_app.models.backend import EmbeddingRequest, GenerationRequest
from serve_app.models.tokens import count_prompt_tokens, count_tokens
from serve_app.policy.capabilities import Capability

DEFAULT_COMPLETION_TOKENS = 16
"""`max_tokens` of a text completion that sets none (OpenAI's default)."""
MAX_PROMPTS = 2048
MAX_EMBEDDING_INPUTS = 2048

_PROMPT_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_PROMPTS},
    ]
}
_NON_EMPTY = {"type": "string", "minLength": 1}
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_EMBEDDING_INPUT_SCHEMA = {
    "anyOf": [
        _NON_EMPTY,
        {"type": "array", "items": _NON_EMPTY, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
        _TOKEN_IDS,
        {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
    ]
}
_ABSENT_OR_FALSE = {"anyOf": [{"const": False}, {"type": "null"}]}
_ABSENT = {"type": "null"}


class CompletionRequest(Incoming):
    """The body of `POST /v1/completions`."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                STREAM_OPTIONS_NEED_STREAM,
            ]
        }
    )
    endpoint: ClassVar[Capability] = Capability.COMPLETIONS

    model: Annotated[str, Field(min_length=1)]
    """A model id or a route alias (`GET /v1/models`)."""
    prompt: Annotated[str | list[str], WithJsonSchema(_PROMPT_SCHEMA)]
    """A prompt, or several (each gets `n` choices). Token-id prompts are not served."""
    max_tokens: PositiveInt | None = None
    """Output tokens of each choice at most; 16 when unset, as OpenAI's."""
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices | None = None
    """Choices per prompt (1-128)."""
    best_of: Annotated[Any, WithJsonSchema({"anyOf": [{"const": 1}, {"type": "null"}]})] = Field(
        default=None, exclude=True
    )
    """Only 1: rtcts generates the choices it returns (`n`)."""
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    logprobs: LegacyLogprobs | None = None
    """Log probabilities of each output token and of this many alternatives (0-5)."""
    echo: Annotated[StrictBool | None, WithJsonSchema(_ABSENT_OR_FALSE)] = None
    """Not served: `true` is refused."""
    suffix: Annotated[Any, WithJsonSchema(_ABSENT)] = Field(default=None, exclude=True)
    """Not served: a suffix is refused."""
    stop: Annotated[str | list[str] | None, WithJsonSchema(STOP_SCHEMA)] = None
    seed: StrictInt | None = None
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Any] | None, WithJsonSchema(LOGIT_BIAS_SCHEMA)] = None
    max_price_usd: MaxPrice = None
    """rtcts extension: the most the client agrees to pay, in USD."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            if len(value) > MAX_PROMPTS:
                raise invalid(f"prompt allows at most {MAX_PROMPTS} prompts")
            return value
        if isinstance(value, list) and value and all(isinstance(p, int | list) for p in value):
            raise unsupported("prompts given as token ids are not served: send text")
        raise invalid("prompt must be a string or a non-empty list of strings")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise unsupported("echo is not served")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        if value is not None:
            raise unsupported("suffix is not served")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        return check_stop(value)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        return check_logit_bias(value)

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and info.data.get("stream") is not True:
            raise invalid("stream_options is only allowed when stream is true")
        return value

    @field_validator("best_of", mode="before")
    @classmethod
    def _best_of(cls, value: Any) -> Any:
        if value is None or (integral(value) == 1 and not isinstance(value, bool)):
            return value
        if isinstance(integral(value), int) and not isinstance(value, bool):
            raise unsupported("best_of other than 1 is not served: ask for n choices")
        raise invalid("best_of must be an integer")

    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)

    def output_cap(self) -> int:
        return self.max_tokens or DEFAULT_COMPLETION_TOKENS

    def price_cap_micro(self) -> int | None:
        return price_cap_micro(self.max_price_usd)

    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def choices(self) -> int:
        """Choices in all: `n` per prompt."""
        return (self.n or 1) * len(self.prompts())

    def features(self) -> frozenset[Capability]:
        wanted: set[Capability] = set()
        if self.logprobs is not None:
            wanted.add(Capability.LOGPROBS)
        if self.choices() > 1:
            wanted.add(Capability.N)
        if self.presence_penalty or self.frequency_penalty:
            wanted.add(Capability.PENALTIES)
        if self.logit_bias:
            wanted.add(Capability.LOGIT_BIAS)
        return frozenset(wanted)

    def prompt_tokens(self) -> int:
        return count_prompt_tokens(self.prompts())

    def generation(
        self, request_id: str, max_tokens: int, capabilities: frozenset[Capability]
    ) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            messages=(),
            prompt=self.prompts(),
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop_tuple(self.stop),
            seed=self.seed,
            n=self.n or 1,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias or None,
            user=self.user,
        )


class EmbeddingsRequest(Incoming):
    """The body of `POST /v1/embeddings`."""

    endpoint: ClassVar[Capability] = Capability.EMBEDDINGS
    stream: ClassVar[bool] = False

    model: Annotated[str, Field(min_length=1)]
    """An embedding model's id, or a route alias of embedding models."""
    input: Annotated[
        str | list[str] | list[int] | list[list[int]], WithJsonSchema(_EMBEDDING_INPUT_SCHEMA)
    ]
    """A text, several (at most 2048), or token ids (one list, or several)."""
    encoding_format: Literal["float", "base64"] | None = None
    """`float` (the default) or `base64` (little-endian float32, as OpenAI's)."""
    dimensions: Dimensions | None = None
    """Length of each vector, where the model can shorten them."""
    user: str | None = None
    max_price_usd: MaxPrice = None
    """rtcts extension: the most the client agrees to pay, in USD."""

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise invalid("input must not be empty")
            return value
        if not isinstance(value, list) or not value:
            raise invalid("input must be a string, a list of strings or token ids")
        value = [[integral(t) for t in v] if isinstance(v, list) else integral(v) for v in value]
        if all(isinstance(v, str) for v in value):
            items: list[Any] = value
        elif all(_token_id(v) for v in value):
            return value
        elif all(isinstance(v, list) for v in value):
            items = value
            if not all(v and all(_token_id(t) for t in v) for v in items):
                raise invalid("each token-id input must be a non-empty list of ids >= 0")
        else:
            raise invalid("input must be a string, a list of strings or token ids")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise invalid(f"input allows at most {MAX_EMBEDDING_INPUTS} items")
        if any(isinstance(v, str) and not v for v in items):
            raise invalid("input must not contain empty strings")
        return value

    def inputs(self) -> tuple[str | tuple[int, ...], ...]:
        value: Any = self.input
        if isinstance(value, str):
            return (value,)
        if isinstance(value[0], int):
            return (tuple(value),)
        return tuple(v if isinstance(v, str) else tuple(v) for v in value)

    def price_cap_micro(self) -> int | None:
        return price_cap_micro(self.max_price_usd)

    def include_usage(self) -> bool:
        return False

    def choices(self) -> int:
        return 1

    def output_cap(self) -> int:
        return 0

    def features(self) -> frozenset[Capability]:
        return frozenset()

    def prompt_tokens(self) -> int:
        return sum(len(x) if isinstance(x, tuple) else count_tokens(x) for x in self.inputs())

    def embedding(self, request_id: str) -> EmbeddingRequest:
        return EmbeddingRequest(
            request_id=request_id,
            inputs=self.inputs(),
            dimensions=self.dimensions,
            user=self.user,
        )


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


__all__ = ["DEFAULT_COMPLETION_TOKENS", "CompletionRequest", "EmbeddingsRequest"]
