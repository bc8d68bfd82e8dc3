"""A mock OpenAI-compatible upstream for the benchmarks: cheap, fixed answers, fixed TTFT.

An HTTP/1.1 keep-alive server on raw asyncio (uvloop when installed), one process, no
framework, so that it costs as little CPU per request as a Python server can and the
gateways in front of it are what a benchmark measures. It answers:

- `POST /v1/chat/completions`: a fixed completion of `--tokens` tokens (usage:
  `prompt_tokens` 12, `completion_tokens` as given) for whatever `model` was asked;
  with `"stream": true`, server-sent events: nothing for `--ttft-ms`, then one chunk
  per token every `--itl-ms` (the first carries the role), a last chunk with the
  finish reason, a usage chunk when `stream_options.include_usage` is set, `[DONE]`;
- `GET /v1/models` (the `--models` listed), `GET /health`;
- `GET /metrics`: a page shaped like vLLM's (~400 sample lines: its load gauges, with
  `vllm:num_requests_running` = the requests in flight, counters, 13 histograms,
  process metrics; `--metrics small` keeps the 3 load gauges alone), so that rtcts's
  upstream backend reads, and pays for reading, the server's load as from vLLM.

`--delay-ms` adds a fixed wait before every non-streamed answer (0 by default: the
answer takes what the server's own work takes, about 0.5 ms at c=8 on 2 cores).

    .venv/bin/python bench/mock_openai.py --port 18181
    .venv/bin/python bench/mock_openai.py --port 18181 --ttft-ms 20 --itl-ms 2 --tokens 8

Prints `READY <port>` on stdout once it listens; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

ANSWER_WORD = "ok"
PROMPT_TOKENS = 12
MODEL_LABEL = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'
HISTOGRAMS = (
    "time_to_first_token_seconds",
    "time_per_output_token_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "request_inference_time_seconds",
    "request_prefill_time_seconds",
    "request_decode_time_seconds",
    "request_prompt_tokens",
    "request_generation_tokens",
    "iteration_tokens_total",
    "request_max_num_generation_tokens",
    "request_params_n",
    "request_params_max_tokens",
)
BUCKETS = (
    *("0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5"),
    *("0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0"),
    *("640.0", "2560.0", "+Inf"),
)


def metrics_rest(full: bool) -> str:
    """Everything on the metrics page after the running gauge (which changes)."""
    lines = [
        f"vllm:num_requests_waiting{{{MODEL_LABEL}}} 0",
        f"vllm:kv_cache_usage_perc{{{MODEL_LABEL}}} 0.1",
    ]
    if not full:
        return "\n".join(lines) + "\n"
    for name in ("collected", "uncollectable"):
        lines += [f'python_gc_objects_{name}_total{{generation="{g}"}} 1.0' for g in range(3)]
    lines += [f'python_gc_collections_total{{generation="{g}"}} 1.0' for g in range(3)]
    lines += [
        f"process_{name} 1.0"
        for name in ("virtual_memory_bytes", "resident_memory_bytes", "start_time_seconds")
    ]
    lines += [f"process_{name} 1.0" for name in ("cpu_seconds_total", "open_fds", "max_fds")]
    for name in ("num_requests_swapped", "gpu_cache_usage_perc", "cpu_cache_usage_perc"):
        lines += [f"# TYPE vllm:{name} gauge", f"vllm:{name}{{{MODEL_LABEL}}} 0.0"]
    for name in ("num_preemptions_total", "prompt_tokens_total", "generation_tokens_total"):
        lines += [f"# TYPE vllm:{name} counter", f"vllm:{name}{{{MODEL_LABEL}}} 12.0"]
    for name in HISTOGRAMS:
        lines.append(f"# HELP vllm:{name} Histogram.\n# TYPE vllm:{name} histogram")
        lines += [f'vllm:{name}_bucket{{le="{b}",{MODEL_LABEL}}} 12.0' for b in BUCKETS]
        lines += [
            f"vllm:{name}_sum{{{MODEL_LABEL}}} 34.5",
            f"vllm:{name}_count{{{MODEL_LABEL}}} 12.0",
        ]
    lines += [
        f'vllm:request_success_total{{finished_reason="{reason}",{MODEL_LABEL}}} 100.0'
        for reason in ("stop", "length", "abort")
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Config:
    tokens: int
    ttft_s: float
    itl_s: float
    delay_s: float
    models: tuple[str, ...]
    full_metrics: bool = True


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """The fixed answers, built once per model name (bytes ready to write)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._completions: dict[str, bytes] = {}
        self._streams: dict[tuple[str, bool], list[bytes]] = {}
        self.models = _response(
            "200 OK",
            "application/json",
            json.dumps(
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "owned_by": "mock"} for m in config.models
                    ],
                }
            ).encode(),
        )
        self.health = _response("200 OK", "application/json", b"{}")
        self.metrics_rest = metrics_rest(config.full_metrics)
        self.not_found = _response("404 Not Found", "application/json", b'{"error":"not found"}')
        self.bad_request = _response(
            "400 Bad Request", "application/json", b'{"error":{"message":"bad request"}}'
        )

    def completion(self, model: str) -> bytes:
        found = self._completions.get(model)
        if found is None:
            n = self.config.tokens
            found = _response(
                "200 OK",
                "application/json",
                json.dumps(
                    {
                        "id": "chatcmpl-mock",
                        "object": "chat.completion",
                        "created": 1767225600,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": " ".join([ANSWER_WORD] * n),
                                },
                                "finish_reason": "length",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": PROMPT_TOKENS,
                            "completion_tokens": n,
                            "total_tokens": PROMPT_TOKENS + n,
                        },
                    },
                    separators=(",", ":"),
                ).encode(),
            )
            self._completions[model] = found
        return found

    def stream(self, model: str, usage: bool) -> list[bytes]:
        """The head, then one chunked-encoded event per token, then the tail (one item)."""
        key = (model, usage)
        found = self._streams.get(key)
        if found is None:
            n = self.config.tokens

            def event(choice: dict[str, object], extra: dict[str, object] | None = None) -> bytes:
                payload: dict[str, object] = {
                    "id": "chatcmpl-mock",
                    "object": "chat.completion.chunk",
                    "created": 1767225600,
                    "model": model,
                    "choices": [choice] if choice else [],
                    **(extra or {}),
                }
                return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            events = []
            for i in range(n):
                delta: dict[str, str] = {"content": ANSWER_WORD if i == 0 else " " + ANSWER_WORD}
                if i == 0:
                    delta = {"role": "assistant", **delta}
                events.append(_chunked(event({"index": 0, "delta": delta, "finish_reason": None})))
            tail = event({"index": 0, "delta": {}, "finish_reason": "length"})
            if usage:
                tail += event(
                    {},
                    {
                        "usage": {
                            "prompt_tokens": PROMPT_TOKENS,
                            "completion_tokens": n,
                            "total_tokens": PROMPT_TOKENS + n,
                        }
                    },
                )
            tail += b"data: [DONE]\n\n"
            found = [head, *events, _chunked(tail) + b"0\r\n\r\n"]
            self._streams[key] = found
        return found


class Server(asyncio.Protocol):
    """One connection: parse requests as they come (Content-Length bodies), answer in order."""

    inflight = 0
    """Requests being answered, over all connections (the /metrics gauge)."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._busy: asyncio.Task[None] | None = None
        self._queue: list[tuple[bytes, bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._busy is not None:
            self._busy.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            method, path = lines[0].split(b" ", 2)[:2]
            self._queue.append((method, path, body))
            if self._busy is None:
                self._pump()

    def _pump(self) -> None:
        """Answer what is queued, in order: synchronously while nothing waits; a stream or
        a delayed answer goes to a task, which pumps the rest when it is done."""
        while self._queue and self._transport is not None:
            method, path, body = self._queue.pop(0)
            reply = self._quick(method, path, body)
            if isinstance(reply, bytes):
                self._transport.write(reply)
                continue
            self._busy = asyncio.get_running_loop().create_task(self._slow(reply))
            return

    def _quick(self, method: bytes, path: bytes, body: bytes) -> bytes | dict[str, object]:
        """The answer's bytes, or the parsed request when it must wait (a stream, a delay)."""
        answers = self._answers
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            try:
                request = json.loads(body)
                model = str(request.get("model", "mock"))
            except (ValueError, AttributeError):
                return answers.bad_request
            if request.get("stream") or answers.config.delay_s > 0:
                return dict(request)
            return answers.completion(model)
        if method == b"GET":
            if path in (b"/v1/models", b"/models"):
                return answers.models
            if path == b"/health":
                return answers.health
            if path == b"/metrics":
                running = f"vllm:num_requests_running{{{MODEL_LABEL}}} {Server.inflight}\n"
                return _response(
                    "200 OK",
                    "text/plain; version=0.0.4",
                    (running + answers.metrics_rest).encode(),
                )
        return answers.not_found

    async def _slow(self, request: dict[str, object]) -> None:
        model = str(request.get("model", "mock"))
        Server.inflight += 1
        try:
            if request.get("stream"):
                await self._stream(model, request)
            else:
                await asyncio.sleep(self._answers.config.delay_s)
                if self._transport is not None:
                    self._transport.write(self._answers.completion(model))
        finally:
            Server.inflight -= 1
            self._busy = None
        self._pump()

    async def _stream(self, model: str, request: dict[str, object]) -> None:
        options = request.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        head, *events, tail = self._answers.stream(model, usage)
        config = self._answers.config
        transport = self._transport
        if transport is None:
            return
        transport.write(head)
        await asyncio.sleep(config.ttft_s)
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(config.itl_s)
            if self._transport is None:
                return
            transport.write(event)
        transport.write(tail)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--tokens", type=int, default=8, help="completion tokens per answer")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="streams: first token after")
    parser.add_argument("--itl-ms", type=float, default=2.0, help="streams: between tokens")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="non-streamed: extra wait")
    parser.add_argument(
        "--metrics",
        choices=("vllm", "small"),
        default="vllm",
        help="/metrics: a page shaped like vLLM's (~400 lines), or the 3 load gauges alone",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b"],
        help="what GET /v1/models lists (any model name is answered)",
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    config = Config(
        tokens=args.tokens,
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
        delay_s=args.delay_ms / 1000,
        models=tuple(args.models),
        full_metrics=args.metrics == "vllm",
    )
    answers = Answers(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Server(answers), args.host, args.port, backlog=1024, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
