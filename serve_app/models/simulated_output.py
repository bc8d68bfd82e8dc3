"""What the simulated model writes, decided up front and deterministically.

`plan_output(request, ...)` returns one `PlannedChoice` per choice: its tokens (each a
piece of text that counts as exactly one token, `tokens.split_tokens`), its finish
reason, and what the pieces are (content, or a tool call's name then arguments). The
timing (slots, prefill, batched decode) is `simulated.py`'s; the features:

- **Text.** As before: `generate_text` of the natural length (a function of the prompt
  and `seed`), cut at the output cap ("length").
- **Several choices** (`n`, and each prompt of a text completion): choice `i` of a
  prompt draws its text from the prompt's key plus `i`, so choices differ and the first
  is what a single choice would be.
- **stop.** The text ends before the first stop sequence it contains ("stop"); the
  sequence itself is not written.
- **Tools.** With `tools` and a `tool_choice` other than "none", the model calls one
  tool ("tool_calls"): the one `tool_choice` names, else the first; its arguments are
  `json_instance.minimal_instance` of the tool's `parameters` (the required fields), as
  JSON. After a tool result (the last message is the tool's) with `tool_choice` "auto"
  (or unset), it answers in text, so an agent's loop ends.
- **response_format.** `json_object`: `{"answer": "<text>"}`; `json_schema`: the
  schema's minimal instance, or `SchemaUnsupported` (the request is refused) when the
  schema asks for what the builder cannot promise. Valid JSON unless the output cap
  cuts it ("length"), as with any engine.
- **logprobs.** Each content token gets a deterministic logprob in [-2, 0) and
  `top_logprobs` alternatives from the simulated vocabulary, in OpenAI's shape for the
  endpoint (chat: `content` entries; completions: `tokens`, `token_logprobs`, ...).
- **Sampling** (temperature, top_p, penalties, logit_bias) is not modelled: the
  simulated text is deterministic filler, and the simulation is of time, tokens and
  load. The fields are accepted and reach real engines as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app.models.backend import ChatMessage, FinishReason, GenerationRequest, Json
from serve_app.models.json_instance import minimal_instance
from serve_app.models.tokens import count_tokens, generate_text, split_tokens

__all__ = ["PlannedChoice", "ToolCall", "embedding_vector", "plan_output", "prompt_keys"]

LOGPROB_SCALE = 2.0
"""Simulated logprobs lie in [-LOGPROB_SCALE, 0)."""
_ALTERNATIVES = ("the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The tool a choice calls: the first `name_tokens` tokens write its name."""

    call_id: str
    name: str
    name_tokens: int


@dataclass(slots=True)
class PlannedChoice:
    """One choice: its tokens in order, how it ends, and what its tokens are."""

    index: int
    pieces: list[str]
    finish_reason: FinishReason
    key: int
    tool: ToolCall | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    legacy: bool = False
    """A text completion's choice (its logprobs in the legacy shape)."""
    offsets: list[int] = field(default_factory=list)

    def delta_fields(self, position: int) -> dict[str, Any]:
        """The `Delta` fields of this choice's token at `position` (empty for a tool
        name's tokens before its last: the name is sent whole)."""
        piece = self.pieces[position]
        if self.tool is not None:
            if position + 1 < self.tool.name_tokens:
                return {}
            if position + 1 == self.tool.name_tokens:
                call = {
                    "index": 0,
                    "id": self.tool.call_id,
                    "type": "function",
                    "function": {"name": self.tool.name, "arguments": ""},
                }
                return {"tool_calls": (call,)}
            return {"tool_calls": ({"index": 0, "function": {"arguments": piece}},)}
        fields: dict[str, Any] = {"text": piece}
        if self.logprobs:
            fields["logprobs"] = self.token_logprobs(position)
        return fields

    def token_logprobs(self, position: int) -> Json:
        piece = self.pieces[position]
        value = _logprob(self.key, position)
        top = [(piece, value)] + [
            (word, value - 0.5 * (rank + 1))
            for rank, word in enumerate(_alternatives(piece, self.top_logprobs - 1))
        ]
        top = top[: self.top_logprobs]
        if self.legacy:
            return {
                "tokens": [piece],
                "token_logprobs": [value],
                "top_logprobs": [dict(top)] if self.top_logprobs else None,
                "text_offset": [self.offsets[position] if self.offsets else 0],
            }
        return {
            "content": [
                {
                    "token": piece,
                    "logprob": value,
                    "bytes": list(piece.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top
                    ],
                }
            ]
        }


def prompt_keys(request: GenerationRequest) -> list[int]:
    """The key each prompt's output is drawn from: the chat's, or each text prompt's.

    For a chat this is the simulated model's key since the first version (seed and
    messages), so plain answers are unchanged."""
    if request.prompt is not None:
        return [_key(request.seed, (("prompt", text),)) for text in request.prompt]
    return [_key(request.seed, ((m.role, m.content) for m in request.messages))]


def plan_output(
    request: GenerationRequest,
    *,
    cap: int,
    natural: tuple[int, int] | None,
) -> list[PlannedChoice]:
    """Every choice of `request` (see the module docstring). `cap` is the output cap of
    each choice; `natural` the range of natural lengths (None: always the cap)."""
    choices: list[PlannedChoice] = []
    for prompt_index, key in enumerate(prompt_keys(request)):
        for n in range(request.n):
            index = prompt_index * request.n + n
            choices.append(_choice(request, index, key + n, cap, natural))
    return choices


def _choice(
    request: GenerationRequest, index: int, key: int, cap: int, natural: tuple[int, int] | None
) -> PlannedChoice:
    legacy = request.prompt is not None
    top = request.top_logprobs or 0
    tool = _tool_to_call(request)
    if tool is not None:
        name, parameters = tool
        name_pieces = split_tokens(name) or [name]
        arguments = json.dumps(minimal_instance(parameters, strict=False))
        call = ToolCall(f"call_{key % 16**12:012x}", name, len(name_pieces))
        return _cut(
            PlannedChoice(
                index, name_pieces + split_tokens(arguments), "tool_calls", key, tool=call
            ),
            cap,
        )
    fmt = request.response_format or {}
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind in ("json_object", "json_schema"):
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema", {}) if isinstance(spec, Mapping) else {}
            value: Any = minimal_instance(schema, strict=True)
        else:
            framing = count_tokens(json.dumps({"answer": ""}))
            value = {"answer": "".join(generate_text(_natural(key, cap, natural, framing), key))}
        pieces = split_tokens(json.dumps(value))
        reason: FinishReason = "stop"
    else:
        length = _natural(key, cap, natural, 0)
        pieces = generate_text(length, key)
        reason = "stop" if natural is not None and length < cap else "length"
        pieces, reason = _stopped(pieces, request.stop, reason)
    planned = PlannedChoice(
        index, pieces, reason, key, logprobs=request.logprobs, top_logprobs=top, legacy=legacy
    )
    planned = _cut(planned, cap)
    if legacy:
        planned.offsets = list(_offsets(planned.pieces))
    return planned


def _natural(key: int, cap: int, natural: tuple[int, int] | None, framing: int) -> int:
    """Tokens of natural text (the deterministic length), within the cap less `framing`."""
    if natural is None:
        return max(1, cap - framing)
    low, high = natural
    return max(1, min(low + key % (high - low + 1), cap - framing))


def _cut(planned: PlannedChoice, cap: int) -> PlannedChoice:
    if len(planned.pieces) > cap:
        planned.pieces = planned.pieces[:cap]
        planned.finish_reason = "length"
    return planned


def _stopped(
    pieces: list[str], stops: Sequence[str], reason: FinishReason
) -> tuple[list[str], FinishReason]:
    """The pieces before the first stop sequence in their text (reason "stop"), or as
    they are. A piece the stop begins inside keeps its part before it."""
    text = "".join(pieces)
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not found:
        return pieces, reason
    end = min(found)
    kept: list[str] = []
    at = 0
    for piece in pieces:
        if at + len(piece) <= end:
            kept.append(piece)
            at += len(piece)
            continue
        head = piece[: end - at]
        if head.strip():
            kept.append(head)
        break
    return kept, "stop"


def _tool_to_call(request: GenerationRequest) -> tuple[str, Any] | None:
    """(name, parameters) of the tool the model calls now, or None to answer in text."""
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    after_result = _last_role(request.messages) == "tool"
    if after_result and choice in (None, "auto"):
        return None
    wanted: str | None = None
    if isinstance(choice, Mapping):
        function = choice.get("function")
        wanted = function.get("name") if isinstance(function, Mapping) else None
    for tool in request.tools:
        function = tool.get("function")
        if not isinstance(function, Mapping):
            continue
        name = function.get("name")
        if isinstance(name, str) and (wanted is None or name == wanted):
            return name, function.get("parameters", {})
    return None


def _last_role(messages: Sequence[ChatMessage]) -> str | None:
    return messages[-1].role if messages else None


def _offsets(pieces: Sequence[str]) -> Iterator[int]:
    at = 0
    for piece in pieces:
        yield at
        at += len(piece)


def _key(seed: int | None, items: Iterator[tuple[str, str]] | tuple[tuple[str, str], ...]) -> int:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(seed).encode())
    for role, content in items:
        digest.update(b"\0" + role.encode() + b"\0" + content.encode())
    return int.from_bytes(digest.digest(), "big")


def _logprob(key: int, position: int) -> float:
    digest = hashlib.blake2b(f"{key}:{position}".encode(), digest_size=4).digest()
    return -round(LOGPROB_SCALE * (int.from_bytes(digest, "big") + 1) / 2**32, 6)


def _alternatives(piece: str, count: int) -> list[str]:
    return [word for word in _ALTERNATIVES if word != piece.strip()][: max(0, count)]


def embedding_vector(item: str | tuple[int, ...], size: int) -> tuple[float, ...]:
    """A deterministic unit vector of `size` for one input."""
    seed = item if isinstance(item, str) else ",".join(map(str, item))
    rng = random.Random(hashlib.blake2b(seed.encode(), digest_size=16).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)
