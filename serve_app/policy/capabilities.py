"""What a model can serve: endpoints and the optional features of a request.

Each backend kind declares the capabilities it can have (`BACKEND_CAPABILITIES`) and
the ones a model of that kind has unless its policy entry lists its own
(`DEFAULT_CAPABILITIES`). The ingress reads a model's set from the policy (never from a
replica: no remote call on the request path), and the pricing core treats a candidate
that lacks a feature the request asks for as infeasible, so an alias routes to a model
that can serve it and a request no candidate can serve is refused with a 400 naming the
field and the model (docs/decisions.md, "The OpenAI surface real clients send").

    endpoint      chat          POST /v1/chat/completions
                  completions   POST /v1/completions (legacy text completions)
                  embeddings    POST /v1/embeddings
    feature       tools         `tools` (function calling) with a `tool_choice` other than "none"
                  logprobs      `logprobs` (chat: true; completions: a number)
                  n             more than one choice (`n` > 1, or several prompts)
                  json_object   `response_format: {"type": "json_object"}`
                  json_schema   `response_format: {"type": "json_schema", ...}`
                  penalties     a non-zero `presence_penalty` or `frequency_penalty`
                  logit_bias    a non-empty `logit_bias`
                  images        `image_url` content parts
"""

from __future__ import annotations

from enum import Enum
from typing import Final


class Capability(str, Enum):
    """An endpoint a model serves, or an optional feature of a request it honours."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    TOOLS = "tools"
    LOGPROBS = "logprobs"
    N = "n"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"
    PENALTIES = "penalties"
    LOGIT_BIAS = "logit_bias"
    IMAGES = "images"


ENDPOINTS: Final = frozenset({Capability.CHAT, Capability.COMPLETIONS, Capability.EMBEDDINGS})
GENERATION_ENDPOINTS: Final = frozenset({Capability.CHAT, Capability.COMPLETIONS})
"""The endpoints priced with a plan's input and output token rates."""

FEATURE_PARAMS: Final = {
    Capability.CHAT: "model",
    Capability.COMPLETIONS: "model",
    Capability.EMBEDDINGS: "model",
    Capability.TOOLS: "tools",
    Capability.LOGPROBS: "logprobs",
    Capability.N: "n",
    Capability.JSON_OBJECT: "response_format",
    Capability.JSON_SCHEMA: "response_format",
    Capability.PENALTIES: "presence_penalty",
    Capability.LOGIT_BIAS: "logit_bias",
    Capability.IMAGES: "messages",
}
"""The request field that asks for each capability (named in a refusal)."""

DESCRIPTIONS: Final = {
    Capability.CHAT: "chat completions",
    Capability.COMPLETIONS: "text completions (/v1/completions)",
    Capability.EMBEDDINGS: "embeddings (/v1/embeddings)",
    Capability.TOOLS: "tool calls (tools)",
    Capability.LOGPROBS: "logprobs",
    Capability.N: "several choices (n > 1)",
    Capability.JSON_OBJECT: "response_format json_object",
    Capability.JSON_SCHEMA: "response_format json_schema",
    Capability.PENALTIES: "presence and frequency penalties",
    Capability.LOGIT_BIAS: "logit_bias",
    Capability.IMAGES: "image content",
}
"""What each capability is, for people (in refusals)."""

_ALL: Final = frozenset(Capability)
_GENERATION: Final = _ALL - {Capability.EMBEDDINGS}

BACKEND_CAPABILITIES: Final[dict[str, frozenset[Capability]]] = {
    # The simulated GPU model: every endpoint and feature, deterministically
    # (serve_app/models/simulated_output.py says how each is simulated).
    "simulated": _ALL,
    # An OpenAI-compatible server gets every field as OpenAI's; it answers or refuses.
    "openai_upstream": _ALL,
    # Ray Serve LLM's LLMServer: vLLM serves all of these (embeddings with an embedding
    # model); the simulated engine inside it serves what its engine supports.
    "ray_serve_llm": _ALL,
}
"""Every capability a model of each backend kind may declare."""

DEFAULT_CAPABILITIES: Final[dict[str, frozenset[Capability]]] = {
    "simulated": _GENERATION,
    "openai_upstream": _GENERATION,
    "ray_serve_llm": _GENERATION,
}
"""A model's capabilities when its policy entry lists none: generation with every
feature. An embedding model lists its own (`capabilities: [embeddings]`): one server
serves either generation or embeddings."""


def capabilities_of(backend: str, declared: list[Capability] | None) -> frozenset[Capability]:
    """The capabilities of a model of `backend` that declares `declared` (None: the default)."""
    if declared is None:
        return DEFAULT_CAPABILITIES.get(backend, frozenset({Capability.CHAT}))
    return frozenset(declared)


def capability_issue(backend: str, declared: list[Capability]) -> str | None:
    """Why `declared` is not a valid capability list for `backend` (None: it is)."""
    beyond = set(declared) - BACKEND_CAPABILITIES.get(backend, frozenset())
    if beyond:
        return f"backend {backend} cannot serve {', '.join(sorted(c.value for c in beyond))}"
    if not ENDPOINTS & set(declared):
        return "capabilities must include an endpoint: chat, completions or embeddings"
    return None


__all__ = [
    "BACKEND_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DESCRIPTIONS",
    "ENDPOINTS",
    "FEATURE_PARAMS",
    "GENERATION_ENDPOINTS",
    "Capability",
    "capabilities_of",
    "capability_issue",
]
