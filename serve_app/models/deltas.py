"""Streamed pieces of a generation gathered back into whole choices.

Backends that produce an answer as `Delta`s (the simulated model, a streamed upstream
answer) use `ChoiceCollector` to build the `ChoiceOutput` of each choice: the text
joined, each tool call assembled from its streamed pieces (OpenAI's `delta.tool_calls`
shape: the first piece of a call has its id and name, the next ones add arguments),
logprobs lists concatenated field by field.
"""

from __future__ import annotations

from typing import Any

from serve_app.models.backend import ChoiceOutput, Delta, FinishReason, Json

__all__ = ["ChoiceCollector"]


class ChoiceCollector:
    """One choice's streamed deltas gathered into the whole choice (text, tool calls
    assembled from their pieces, logprobs concatenated, finish reason)."""

    __slots__ = ("finish_reason", "logprobs", "texts", "tool_calls")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: FinishReason | None = None

    def add(self, delta: Delta) -> None:
        self.texts.append(delta.text)
        for piece in delta.tool_calls:
            function = piece.get("function", {})
            if "id" in piece:
                self.tool_calls.append(
                    {"id": piece["id"], "type": "function", "function": dict(function)}
                )
            elif self.tool_calls:
                call = self.tool_calls[-1]["function"]
                call["arguments"] += function.get("arguments", "")
        if delta.logprobs is not None:
            merged = self.logprobs if self.logprobs is not None else {}
            for name, values in delta.logprobs.items():
                merged.setdefault(name, []).extend(values or [None])
            self.logprobs = merged
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    def output(self, index: int) -> ChoiceOutput:
        assert self.finish_reason is not None
        logprobs: Json | None = None
        if self.logprobs is not None:
            logprobs = {
                k: (None if all(x is None for x in v) else v) for k, v in self.logprobs.items()
            }
        return ChoiceOutput(
            index, "".join(self.texts), self.finish_reason, tuple(self.tool_calls), logprobs
        )
