"""Importing Ray Serve LLM's `LLMServer` on a machine without vLLM or SGLang.

Ray Serve LLM's serving code (`LLMServer`, `LLMConfig`, the `Batcher`, the engine
protocol) is plain Python, but one module of it, `openai_api_models`, takes its OpenAI
wire models from an engine at import time: vLLM's, else SGLang's, else it raises
`ImportError`. Both engines pull in torch and CUDA. So that the real `LLMServer` runs on
a CPU-only machine (CI, a laptop, the simulated engine), `ensure_openai_protocol()`
supplies the module Ray falls back to, `sglang.srt.entrypoints.openai.protocol`, with
the small pydantic models below, before anything imports `LLMServer`.

It does so only when neither vLLM nor SGLang can be found: with vLLM installed (a GPU
node, `pip install 'ray[llm]'`) nothing is supplied and Ray uses vLLM's own models. The
stand-in modules carry `__rtcts_stand_in__ = True`. They hold what rtcts's three
paths read and write (chat, text completions, embeddings: every field rtcts forwards);
the other endpoints' models accept any fields and are never served by rtcts.

Ray's usage telemetry reads the model's vLLM engine config when an engine starts; it
cannot without vLLM, and logs the failure with a traceback on every replica start. With
the stand-in, that one record (telemetry's "Failed to push telemetry", caused by the
missing `vllm` module) is dropped; Ray's telemetry never affects serving either way.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import time
import types
import uuid
from types import ModuleType
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "STAND_IN_MODULE",
    "ensure_openai_protocol",
    "openai_models",
    "serve_llm",
    "stand_in_installed",
]

STAND_IN_MODULE: Final = "sglang.srt.entrypoints.openai.protocol"
"""The module Ray Serve LLM imports its OpenAI models from when vLLM is absent."""
_ENGINES: Final = ("vllm", "sglang")
_TELEMETRY_LOGGER: Final = "ray.serve.ray.llm._internal.serve.observability.usage_telemetry.usage"


class _Wire(BaseModel):
    """Base of the stand-in models: unknown fields are ignored, as vLLM's models do."""

    model_config = ConfigDict(extra="ignore")


class ChatCompletionRequest(_Wire):
    """An OpenAI chat completion request (the fields rtcts and the simulated engine use)."""

    model: str | None = Field(default=None, description="Served model id.")
    messages: list[dict[str, Any]] = Field(description="Chat messages (role, content).")
    max_tokens: int | None = Field(default=None, ge=1, description="Most output tokens.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Most output tokens (the newer name)."
    )
    temperature: float | None = Field(default=None, description="Sampling temperature.")
    top_p: float | None = Field(default=None, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(default=None, description="Stop sequences.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    n: int = Field(default=1, ge=1, description="Choices per request.")
    stream: bool = Field(default=False, description="Answer as server-sent events.")
    stream_options: dict[str, Any] | None = Field(
        default=None, description="`include_usage`: a last chunk with the token usage."
    )
    user: str | None = Field(default=None, description="End-user id, for the engine's logs.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Function tools.")
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description="none, auto, required, or a named function."
    )
    parallel_tool_calls: bool | None = Field(default=None, description="Several calls at once.")
    logprobs: bool | None = Field(default=None, description="Each token's log probability.")
    top_logprobs: int | None = Field(default=None, ge=0, description="Alternatives per token.")
    response_format: dict[str, Any] | None = Field(
        default=None, description="text, json_object or json_schema."
    )
    presence_penalty: float | None = Field(default=None, description="Presence penalty.")
    frequency_penalty: float | None = Field(default=None, description="Frequency penalty.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Token id to bias.")
    request_id: str = Field(
        default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}",
        description="Id of the request through the engine (LLMServer stamps Serve's).",
    )


class ChatCompletionResponse(_Wire):
    """A whole chat completion."""

    id: str
    object: str = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ChatCompletionStreamResponse(_Wire):
    """One chunk of a streamed chat completion."""

    id: str
    object: str = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None


class _Unserved(BaseModel):
    """A model of an endpoint rtcts does not serve through Ray Serve LLM: any fields."""

    model_config = ConfigDict(extra="allow")


class CompletionRequest(_Wire):
    """An OpenAI (legacy) text completion request (the fields rtcts sends)."""

    model: str | None = Field(default=None, description="Served model id.")
    prompt: str | list[str] = Field(description="A prompt, or several.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most output tokens.")
    temperature: float | None = Field(default=None, description="Sampling temperature.")
    top_p: float | None = Field(default=None, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(default=None, description="Stop sequences.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    n: int = Field(default=1, ge=1, description="Choices per prompt.")
    logprobs: int | None = Field(default=None, ge=0, description="Alternatives per token.")
    stream: bool = Field(default=False, description="Answer as server-sent events.")
    stream_options: dict[str, Any] | None = Field(
        default=None, description="`include_usage`: a last chunk with the token usage."
    )
    presence_penalty: float | None = Field(default=None, description="Presence penalty.")
    frequency_penalty: float | None = Field(default=None, description="Frequency penalty.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Token id to bias.")
    user: str | None = Field(default=None, description="End-user id, for the engine's logs.")
    request_id: str = Field(
        default_factory=lambda: f"cmpl-{uuid.uuid4().hex}",
        description="Id of the request through the engine (LLMServer stamps Serve's).",
    )


class CompletionResponse(_Unserved):
    pass


class CompletionStreamResponse(_Unserved):
    pass


class EmbeddingRequest(_Wire):
    """An OpenAI embedding request (the fields rtcts sends)."""

    model: str | None = Field(default=None, description="Served model id.")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, several, or token ids."
    )
    encoding_format: str | None = Field(default=None, description="float (rtcts asks floats).")
    dimensions: int | None = Field(default=None, ge=1, description="Length of each vector.")
    user: str | None = Field(default=None, description="End-user id, for the engine's logs.")
    request_id: str = Field(
        default_factory=lambda: f"embd-{uuid.uuid4().hex}",
        description="Id of the request through the engine (LLMServer stamps Serve's).",
    )


class EmbeddingResponse(_Unserved):
    pass


class ScoringRequest(_Unserved):
    pass


class ScoringResponse(_Unserved):
    pass


class TokenizeRequest(_Unserved):
    pass


class TokenizeResponse(_Unserved):
    pass


class DetokenizeRequest(_Unserved):
    pass


class DetokenizeResponse(_Unserved):
    pass


_EXPORTS: Final = (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ScoringRequest,
    ScoringResponse,
    TokenizeRequest,
    TokenizeResponse,
)


def stand_in_installed() -> bool:
    """Whether this process imports Ray Serve LLM's OpenAI models from the stand-in."""
    return getattr(sys.modules.get(STAND_IN_MODULE), "__rtcts_stand_in__", False) is True


def ensure_openai_protocol() -> bool:
    """Make Ray Serve LLM importable here; True when the stand-in serves its models.

    Installs the stand-in only when neither vLLM nor SGLang can be found (an engine
    that is installed always wins); idempotent.
    """
    if stand_in_installed():
        return True
    if any(importlib.util.find_spec(name) is not None for name in _ENGINES):
        return False
    parts = STAND_IN_MODULE.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        module = types.ModuleType(name, "rtcts stand-in: see serve_app.models.ray_llm.protocol")
        is_package = depth < len(parts)
        module.__spec__ = importlib.machinery.ModuleSpec(
            name, loader=None, origin="rtcts stand-in", is_package=is_package
        )
        if is_package:
            module.__path__ = []
        module.__dict__["__rtcts_stand_in__"] = True
        sys.modules[name] = module
    protocol = sys.modules[STAND_IN_MODULE]
    for model in _EXPORTS:
        setattr(protocol, model.__name__, model)
    logging.getLogger(_TELEMETRY_LOGGER).addFilter(_TelemetryWithoutEngine())
    return True


def serve_llm() -> ModuleType:
    """`ray.serve.llm` (LLMConfig, LLMServer), the stand-in supplied where needed."""
    ensure_openai_protocol()
    return importlib.import_module("ray.serve.llm")


def openai_models() -> ModuleType:
    """Ray Serve LLM's OpenAI models module, the stand-in supplied where needed."""
    ensure_openai_protocol()
    return importlib.import_module("ray.llm._internal.serve.core.configs.openai_api_models")


class _TelemetryWithoutEngine(logging.Filter):
    """Drops Ray telemetry's failure to read the vLLM engine config where vLLM is absent."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            str(record.msg).startswith("Failed to push telemetry")
            and isinstance(error, ModuleNotFoundError)
            and error.name in _ENGINES
        )
