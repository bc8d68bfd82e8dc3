"""A small OpenAI-compatible server for tests: what an `openai_upstream` model talks to.

It speaks the parts of vLLM's OpenAI server rtcts forwards, deterministically, with
token counts of its own (not rtcts's tokenizer, so a test can tell whose usage was
billed): a token is a whitespace-separated word, a message costs 3 more, the tools' JSON
one per 16 characters.

    GET  /v1/models, /health          up; /metrics is 404 (load from requests in flight)
    POST /v1/chat/completions         text, tool calls (the first tool, or the named
                                      one, unless tool_choice is "none" or the last
                                      message is a tool's result), n choices, logprobs,
                                      response_format json_object, SSE with usage
    POST /v1/completions              each prompt's n choices, legacy logprobs, SSE
    POST /v1/embeddings               deterministic vectors, floats or base64
    a logit_bias naming token 999999  400, as vLLM answers a token out of vocabulary

Every request body is kept in `bodies` (by path), for tests to check what was sent.
`serving()` runs it on uvicorn in a thread, on a free port of 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

OUT_OF_VOCABULARY = "999999"
EMBEDDING_SIZE = 8


def words(text: str) -> list[str]:
    return text.split()


def prompt_tokens(messages: list[dict[str, Any]], tools: list[Any] | None) -> int:
    total = 0
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += len(words(content)) + 3
        for call in message.get("tool_calls") or []:
            total += len(words(call["function"]["arguments"])) + 1
    if tools:
        total += len(json.dumps(tools)) // 16
    return total


def arguments_for(tool: dict[str, Any]) -> str:
    """Each required parameter: "Paris" for a string, 1 for a number, true for a boolean."""
    schema = tool["function"].get("parameters") or {}
    values: dict[str, Any] = {}
    for name in schema.get("required", []):
        kind = schema.get("properties", {}).get(name, {}).get("type")
        values[name] = {"integer": 1, "number": 1, "boolean": True}.get(kind, "Paris")
    return json.dumps(values)


def logprob_entry(token: str, top: int) -> dict[str, Any]:
    alternatives = [token, "the", "a", "of"][: max(top, 0)]
    return {
        "token": token,
        "logprob": -0.5,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": -0.5 - i, "bytes": list(t.encode())}
            for i, t in enumerate(alternatives)
        ],
    }


class Choice:
    """One planned choice: its text pieces or its tool call, and how it ends."""

    def __init__(self, index: int, pieces: list[str], finish: str, call: dict[str, Any] | None):
        self.index = index
        self.pieces = pieces
        self.finish = finish
        self.call = call

    @property
    def tokens(self) -> int:
        if self.call is not None:
            return len(words(self.call["function"]["arguments"])) + 1
        return len(self.pieces)


def plan_chat(body: dict[str, Any]) -> list[Choice]:
    n = int(body.get("n") or 1)
    cap = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    messages = body["messages"]
    after_result = messages[-1].get("role") == "tool"
    calls = tools and choice != "none" and not (after_result and choice in (None, "auto"))
    plans = []
    for index in range(n):
        if calls:
            named = choice["function"]["name"] if isinstance(choice, dict) else None
            tool = next(t for t in tools if named in (None, t["function"]["name"]))
            call = {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": arguments_for(tool)},
            }
            plans.append(Choice(index, [], "tool_calls", call))
            continue
        if (body.get("response_format") or {}).get("type") == "json_object":
            text = ['{"ok":', " true}"]
        elif after_result:
            text = ["The", " weather", " is", " sunny."]
        else:
            text = [f"Choice {index}."] + [f" word{i}" for i in range(cap + 4)]
        finish = "stop" if len(text) <= cap else "length"
        plans.append(Choice(index, text[:cap], finish, None))
    return plans


def chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    plans = plan_chat(body)
    top = int(body.get("top_logprobs") or 0)
    choices = []
    for plan in plans:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(plan.pieces) or None}
        if plan.call is not None:
            message["tool_calls"] = [plan.call]
        choice: dict[str, Any] = {
            "index": plan.index,
            "message": message,
            "finish_reason": plan.finish,
            "logprobs": None,
        }
        if body.get("logprobs") and plan.call is None:
            choice["logprobs"] = {"content": [logprob_entry(p, top) for p in plan.pieces]}
        choices.append(choice)
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "upstream"),
        "choices": choices,
        "usage": usage(
            prompt_tokens(body["messages"], body.get("tools")), sum(p.tokens for p in plans)
        ),
    }


def chat_events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    plans = plan_chat(body)
    top = int(body.get("top_logprobs") or 0)

    def chunk(index: int, delta: dict[str, Any], **fields: Any) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": None, **fields}
        return {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "choices": [choice]}

    for plan in plans:
        yield chunk(plan.index, {"role": "assistant", "content": ""})
    for plan in plans:
        if plan.call is not None:
            call = plan.call
            head = {"index": 0, "id": call["id"], "type": "function"}
            yield chunk(
                plan.index,
                {
                    "tool_calls": [
                        {**head, "function": {"name": call["function"]["name"], "arguments": ""}}
                    ]
                },
            )
            for piece in words(call["function"]["arguments"]):
                yield chunk(
                    plan.index,
                    {"tool_calls": [{"index": 0, "function": {"arguments": piece + " "}}]},
                )
        for piece in plan.pieces:
            extra = {}
            if body.get("logprobs"):
                extra["logprobs"] = {"content": [logprob_entry(piece, top)]}
            yield chunk(plan.index, {"content": piece}, **extra)
        yield {
            **chunk(plan.index, {}),
            "choices": [{"index": plan.index, "delta": {}, "finish_reason": plan.finish}],
        }
    if (body.get("stream_options") or {}).get("include_usage"):
        tokens = prompt_tokens(body["messages"], body.get("tools"))
        yield {
            "id": "chatcmpl-upstream",
            "choices": [],
            "usage": usage(tokens, sum(p.tokens for p in plans)),
        }


def plan_completion(body: dict[str, Any]) -> list[Choice]:
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    n = int(body.get("n") or 1)
    cap = int(body.get("max_tokens") or 16)
    plans = []
    for p, prompt in enumerate(prompts):
        for i in range(n):
            text = [f" {prompt.split()[-1] if prompt.split() else 'x'}-{i}"] + [
                f" w{k}" for k in range(cap)
            ]
            plans.append(Choice(p * n + i, text[:cap], "length", None))
    return plans


def legacy_logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    return {
        "tokens": pieces,
        "token_logprobs": [-0.5] * len(pieces),
        "top_logprobs": [{p: -0.5} for p in pieces] if top else None,
        "text_offset": [sum(len(q) for q in pieces[:i]) for i in range(len(pieces))],
    }


def completion_answer(body: dict[str, Any]) -> dict[str, Any]:
    plans = plan_completion(body)
    logprobs = body.get("logprobs")
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    return {
        "id": "cmpl-upstream",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", "upstream"),
        "choices": [
            {
                "index": p.index,
                "text": "".join(p.pieces),
                "logprobs": None if logprobs is None else legacy_logprobs(p.pieces, logprobs),
                "finish_reason": p.finish,
            }
            for p in plans
        ],
        "usage": usage(sum(len(words(x)) for x in prompts), sum(p.tokens for p in plans)),
    }


def completion_events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    plans = plan_completion(body)
    for plan in plans:
        for k, piece in enumerate(plan.pieces):
            last = k + 1 == len(plan.pieces)
            yield {
                "id": "cmpl-upstream",
                "object": "text_completion",
                "choices": [
                    {
                        "index": plan.index,
                        "text": piece,
                        "logprobs": None,
                        "finish_reason": plan.finish if last else None,
                    }
                ],
            }
    if (body.get("stream_options") or {}).get("include_usage"):
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        tokens = sum(len(words(x)) for x in prompts)
        yield {
            "id": "cmpl-upstream",
            "choices": [],
            "usage": usage(tokens, sum(p.tokens for p in plans)),
        }


def vector(item: str | list[int], size: int) -> list[float]:
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    return [round((b - 128) / 128, 4) for b in (seed * 4)[:size]]


def embeddings_answer(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if inputs and isinstance(inputs[0], int):
        inputs = [inputs]
    size = int(body.get("dimensions") or EMBEDDING_SIZE)
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        tokens += len(item) if isinstance(item, list) else len(words(item))
        values = vector(item, size)
        encoded: Any = values
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{size}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage(tokens, 0)}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class OpenAIServer:
    """The server's routes and the bodies it was sent."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    def last(self, path: str) -> dict[str, Any]:
        return self.bodies[path][-1]

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "upstream", "object": "model"}]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def _body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(await request.body())
        self.bodies.setdefault(request.url.path, []).append(body)
        return body

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        if OUT_OF_VOCABULARY in (body.get("logit_bias") or {}):
            message = f"token {OUT_OF_VOCABULARY} is out of vocabulary"
            error = {
                "message": message,
                "type": "BadRequestError",
                "param": "logit_bias",
                "code": 400,
            }
            return JSONResponse({"error": error}, status_code=400)
        if body.get("stream"):
            return _sse(chat_events(body))
        return JSONResponse(chat_answer(body))

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        if body.get("stream"):
            return _sse(completion_events(body))
        return JSONResponse(completion_answer(body))

    async def embeddings(self, request: Request) -> Response:
        return JSONResponse(embeddings_answer(await self._body(request)))


def _sse(events: Iterator[dict[str, Any]]) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


@contextmanager
def serving() -> Iterator[tuple[str, OpenAIServer]]:
    """The server on uvicorn in a daemon thread; yields (base URL, server)."""
    server = OpenAIServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(server.app, log_level="warning", access_log=False, lifespan="off")
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the OpenAI test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        runner.should_exit = True
        thread.join(timeout=30)
        sock.close()
