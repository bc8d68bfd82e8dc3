"""A backend that forwards to an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp).

`OpenAIUpstream` posts each request to the server's `/v1/chat/completions` with one
`httpx.AsyncClient`, streaming with server-sent events, and reads the server's load
from its Prometheus `/metrics` page (see `prometheus.py`), polled in the background.
A server without a readable `/metrics` page is priced from the requests this replica
has in flight to it.

Errors map onto the backend hierarchy: the server unreachable or timing out before
it answers → `BackendUnavailable`; an HTTP error status, a malformed body or a stream
that stops before its end → `GenerationFailed`. The API key travels only in the
`Authorization` header and is scrubbed from every message this module writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx

from serve_app.models.backend import (
    BackendUnavailable,
    ChatMessage,
    Completion,
    Delta,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    LoadReport,
)
from serve_app.models.prometheus import (
    MetricsParseError,
    UnrecognizedMetrics,
    parse_metrics,
    vllm_load,
)

__all__ = ["OpenAIUpstream"]

logger = logging.getLogger(__name__)

_CHAT_PATH = "/v1/chat/completions"
_MAX_ERROR_CHARS = 500
_FAILED_FINISH_REASONS = frozenset({"abort", "error"})


class OpenAIUpstream:
    """A `Backend` that forwards to an OpenAI-compatible HTTP server.

    `base_url` is the server's root (`http://host:8000`); a trailing `/v1` is accepted
    and dropped. `model` is the name sent as `model` when the request names no
    `upstream_model`; without either, the first model the server lists at start is
    used. `timeout_s` bounds each network wait of a request (connecting: at most
    10 s), not its whole length. `metrics_poll_s` is how often `/metrics` is read;
    `start_timeout_s` bounds how long `start()` retries until the server answers.
    `transport` replaces the network (tests pass `httpx.MockTransport`); `clock` times
    requests and ages metrics readings.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600,
        metrics_poll_s: float = 0.1,
        start_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("upstream base_url must be an http(s) URL with a host")
        if timeout_s <= 0 or metrics_poll_s <= 0 or start_timeout_s < 0:
            raise ValueError("timeout_s and metrics_poll_s must be > 0, start_timeout_s >= 0")
        path = parts.path.rstrip("/")
        path = path.removesuffix("/v1")
        self._base_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self._display_url = urlunsplit((parts.scheme, host, path, "", ""))
        self._secrets = tuple(s for s in (api_key or None, parts.password or None) if s)
        self._api_key = api_key or None
        self._model = model
        self._timeout_s = timeout_s
        self._metrics_poll_s = metrics_poll_s
        self._metrics_timeout_s = min(timeout_s, 5.0)
        self._probe_timeout_s = min(timeout_s, 10.0)
        self._stale_after_s = max(1.0, 10 * metrics_poll_s)
        self._start_timeout_s = start_timeout_s
        self._transport = transport
        self._clock = clock

        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._inflight = 0
        self._metrics_enabled = True
        self._engine_load: tuple[int, int, float | None] | None = None
        self._metrics_at = -math.inf

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Wait for the server to answer, read `/metrics` once, then poll it.

        Retries with backoff for up to `start_timeout_s` while the server is
        unreachable or answers 5xx (loading); raises `BackendUnavailable` after that,
        or at once when the server rejects the API key.
        """
        if self._closed:
            raise BackendUnavailable("upstream backend is closed")
        if self._started:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers,
            timeout=httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 10.0)),
            transport=self._transport,
        )
        try:
            await self._wait_until_up()
            polling = await self.poll_metrics_once()
        except BaseException:
            await self._client.aclose()
            self._client = None
            raise
        if polling:
            self._poller = asyncio.create_task(self._poll_loop(), name="upstream-metrics")
        self._started = True
        logger.info("upstream %s is up (model %s)", self._display_url, self._model or "-")

    async def close(self) -> None:
        """Stop polling and close the HTTP client; later calls raise `BackendUnavailable`."""
        self._closed = True
        self._started = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---------------------------------------------------------------- load

    def load(self) -> LoadReport:
        """The server's load from fresh metrics, else this replica's requests in flight.

        Metrics lag by up to one poll, so the report never shows fewer requests than
        this replica has in flight: the shortfall counts as queued when the server
        reports a queue, as running otherwise.
        """
        local = self._inflight
        engine = self._engine_load
        age_s = self._clock() - self._metrics_at
        if engine is None or age_s > self._stale_after_s:
            return LoadReport(
                running=local,
                queued=0,
                warm=self._started,
                extra={"local_inflight": float(local)},
            )
        running, waiting, kv = engine
        shortfall = local - running - waiting
        if shortfall > 0:
            if waiting > 0:
                waiting += shortfall
            else:
                running += shortfall
        return LoadReport(
            running=running,
            queued=waiting,
            warm=self._started,
            kv_cache_usage=kv,
            extra={
                "local_inflight": float(local),
                "metrics_age_s": max(0.0, age_s),
            },
        )

    async def poll_metrics_once(self) -> bool:
        """Read `/metrics` once; False when the server has no usable page (stop polling).

        A 404, a page that does not parse, or one without a known engine's load
        metrics turns metrics off for good; a network error or 5xx is left to the
        next poll (the last reading goes stale after ten polls, at least 1 s).
        """
        if not self._metrics_enabled or self._client is None:
            return False
        try:
            response = await self._client.get("/metrics", timeout=self._metrics_timeout_s)
        except httpx.TransportError as exc:
            logger.debug("upstream %s /metrics: %s", self._display_url, self._scrub(str(exc)))
            return True
        if response.status_code >= 500:
            logger.debug("upstream %s /metrics: HTTP %d", self._display_url, response.status_code)
            return True
        reason: str | None = None
        if response.status_code >= 400:
            reason = f"HTTP {response.status_code}"
        else:
            try:
                self._engine_load = vllm_load(parse_metrics(response.text))
                self._metrics_at = self._clock()
                return True
            except (MetricsParseError, UnrecognizedMetrics) as exc:
                reason = self._scrub(str(exc))
        self._metrics_enabled = False
        self._engine_load = None
        logger.info(
            "upstream %s has no usable /metrics (%s); counting requests in flight locally",
            self._display_url,
            reason,
        )
        return False

    # ---------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> Completion:
        """Post the request without streaming; usage from the server, else counted."""
        client = self._require_client()
        body = self._body(request, stream=False)
        started = self._clock()
        self._inflight += 1
        try:
            try:
                response = await client.post(_CHAT_PATH, json=body)
            except httpx.TransportError as exc:
                raise self._unavailable(exc) from None
        finally:
            self._inflight -= 1
        total_s = max(0.0, self._clock() - started)
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content)
        payload = self._json(response.content)
        try:
            choice = payload["choices"][0]
            content = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._malformed(f"no choices[0].message.content ({exc})") from None
        finish_reason = self._finish_reason(finish)
        input_tokens, output_tokens = self._usage(payload.get("usage"))
        if input_tokens is None:
            input_tokens = _count_messages(request.messages)
        if output_tokens is None:
            output_tokens = _count_tokens(content)
        return Completion(
            text=content,
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            ttft_s=total_s,
            total_s=total_s,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Post with `stream: true`; one Delta per content piece, then a closing Delta.

        The closing Delta has empty text, the finish reason and the usage (the
        server's, else counted). A stream that ends before `[DONE]` without a finish
        reason, or breaks off, raises `GenerationFailed`.
        """
        client = self._require_client()
        body = self._body(request, stream=True)
        started = self._clock()
        ttft_s: float | None = None
        self._inflight += 1
        try:
            try:
                response = await client.send(
                    client.build_request("POST", _CHAT_PATH, json=body), stream=True
                )
            except httpx.TransportError as exc:
                raise self._unavailable(exc) from None
            try:
                if response.status_code >= 400:
                    raise self._status_error(response.status_code, await response.aread())
                pieces: list[str] = []
                finish: object = None
                usage: object = None
                done = False
                async for line in response.aiter_lines():
                    data = _sse_data(line)
                    if data is None:
                        continue
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    chunk = self._json(data.encode())
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    text, chunk_finish = self._parse_chunk(chunk)
                    if chunk_finish is not None:
                        finish = chunk_finish
                    if text:
                        if ttft_s is None:
                            ttft_s = self._clock() - started
                        pieces.append(text)
                        yield Delta(text=text)
                if not done and finish is None:
                    raise self._malformed("stream ended before [DONE]")
            except httpx.TransportError as exc:
                raise GenerationFailed(
                    self._scrub(
                        f"upstream {self._display_url} stream broke off: "
                        f"{type(exc).__name__}: {exc}"
                    )
                ) from None
            finally:
                await response.aclose()
        finally:
            self._inflight -= 1
        finish_reason = self._finish_reason(finish)
        input_tokens, output_tokens = self._usage(usage)
        if input_tokens is None:
            input_tokens = _count_messages(request.messages)
        if output_tokens is None:
            output_tokens = _count_tokens("".join(pieces))
        logger.debug(
            "upstream %s request %s: ttft %.3fs total %.3fs",
            self._display_url,
            request.request_id,
            ttft_s if ttft_s is not None else -1.0,
            self._clock() - started,
        )
        yield Delta(
            text="",
            finish_reason=finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    # ---------------------------------------------------------------- helpers

    async def _wait_until_up(self) -> None:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        delay = 0.01
        last = "no answer"
        while True:
            last = await self._probe(self._client)
            if not last:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BackendUnavailable(
                    f"upstream {self._display_url} did not come up within "
                    f"{self._start_timeout_s:g}s: {last}"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)

    async def _probe(self, client: httpx.AsyncClient) -> str:
        """'' when the server is up; else why not. Raises when retrying cannot help."""
        try:
            response = await client.get("/v1/models", timeout=self._probe_timeout_s)
            if response.status_code in (401, 403):
                raise BackendUnavailable(
                    f"upstream {self._display_url} rejected the API key "
                    f"(HTTP {response.status_code} on /v1/models)"
                )
            if response.status_code == 200:
                self._learn_model(response)
                return ""
            if response.status_code < 500:
                response = await client.get("/health", timeout=self._probe_timeout_s)
            if response.status_code < 500:
                return ""
            return f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            return self._scrub(f"{type(exc).__name__}: {exc}")

    def _learn_model(self, response: httpx.Response) -> None:
        if self._model is not None:
            return
        try:
            listed = response.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            return
        if isinstance(listed, str) and listed:
            self._model = listed

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._metrics_poll_s)
            try:
                if not await self.poll_metrics_once():
                    return
            except Exception:  # keep polling whatever one poll hits
                logger.exception("upstream %s: metrics poll failed", self._display_url)

    def _require_client(self) -> httpx.AsyncClient:
        if self._closed:
            raise BackendUnavailable("upstream backend is closed")
        if not self._started or self._client is None:
            raise BackendUnavailable("upstream backend is not started")
        return self._client

    def _body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        model = request.upstream_model or self._model
        if model is not None:
            body["model"] = model
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _parse_chunk(self, chunk: dict[str, Any]) -> tuple[str, object]:
        """(content text, finish_reason or None) of one streamed chunk."""
        error = chunk.get("error")
        if error is not None or chunk.get("object") == "error":
            raise GenerationFailed(
                self._scrub(f"upstream {self._display_url} failed mid-stream: {_error_text(chunk)}")
            )
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self._malformed("choices is not a list")
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if text is not None and not isinstance(text, str):
                raise self._malformed("delta.content is not a string")
            return text or "", choice.get("finish_reason")
        return "", None

    def _finish_reason(self, finish: object) -> FinishReason:
        if finish == "length":
            return "length"
        if finish in _FAILED_FINISH_REASONS:
            raise GenerationFailed(
                f"upstream {self._display_url} ended the generation with {finish!r}"
            )
        return "stop"

    def _usage(self, usage: object) -> tuple[int | None, int | None]:
        if not isinstance(usage, dict):
            return None, None
        return _token_count(usage.get("prompt_tokens")), _token_count(
            usage.get("completion_tokens")
        )

    def _json(self, content: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(content)
        except ValueError:
            raise self._malformed(f"body is not JSON: {content[:80]!r}") from None
        if not isinstance(payload, dict):
            raise self._malformed("body is not a JSON object")
        return cast(dict[str, Any], payload)

    def _malformed(self, detail: str) -> GenerationFailed:
        return GenerationFailed(
            self._scrub(f"upstream {self._display_url} sent a malformed answer: {detail}")
        )

    def _unavailable(self, exc: httpx.TransportError) -> BackendUnavailable:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
        return BackendUnavailable(
            self._scrub(f"upstream {self._display_url} {kind}: {type(exc).__name__}: {exc}")
        )

    def _status_error(self, status: int, content: bytes) -> GenerationFailed:
        try:
            detail = _error_text(json.loads(content))
        except ValueError:
            detail = content.decode("utf-8", "replace")
        detail = " ".join(detail.split())[:_MAX_ERROR_CHARS]
        return GenerationFailed(
            self._scrub(f"upstream {self._display_url} answered HTTP {status}: {detail}")
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for other fields, comments and blanks."""
    if not line.startswith("data:"):
        return None
    data = line[5:]
    return data[1:] if data.startswith(" ") else data


def _error_text(payload: object) -> str:
    """The message of an OpenAI (`error.message`), vLLM or TGI (`error`) error body."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return str(payload["message"])
        if isinstance(payload.get("detail"), str):
            return str(payload["detail"])
    return json.dumps(payload)[:_MAX_ERROR_CHARS]


def _token_count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _count_tokens(text: str) -> int:
    """Tokens in `text` by `serve_app.models.tokens.count_tokens`, else whitespace words."""
    try:
        module = importlib.import_module("serve_app.models.tokens")
    except ImportError:
        return len(text.split())
    counter = getattr(module, "count_tokens", None)
    if not callable(counter):
        return len(text.split())
    return int(cast(Callable[[str], int], counter)(text))


def _count_messages(messages: tuple[ChatMessage, ...]) -> int:
    return sum(_count_tokens(m.content) for m in messages)
