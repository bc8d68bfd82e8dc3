"""A backend that forwards to an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp).

`OpenAIUpstream` posts each request to the server's `/v1/chat/completions` (a text
completion to `/v1/completions`, embeddings to `/v1/embeddings`) straight to an httpx
transport (`_Poster`: the `httpx.AsyncClient` layers around a request cost as much CPU as
the request), streaming with server-sent events (the bodies it sends and reads, every
OpenAI field included: `openai_wire.py`), and reads the server's load from its
Prometheus `/metrics` page with an `httpx.AsyncClient` on the same transport, polled in
the background (`upstream_load.py`). The network layer is aiohttp's
(`aiohttp_transport.py`: httpx's own costs ~5x the CPU per request); tests inject
theirs. A server without a readable `/metrics` page is priced from the requests this
replica has in flight to it.

Errors map onto the backend hierarchy: the server unreachable or timing out before
it answers → `BackendUnavailable`; the server refusing the request as invalid (HTTP
400, 404, 413, 422: a field it does not serve, a prompt too long for it) →
`RequestRejected` with its message, answered 400 to the client; another HTTP error
status, a malformed body or a stream that stops before its end → `GenerationFailed`.
The API key travels only in the `Authorization` header and is scrubbed from every
message this module writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from serve_app.models.aiohttp_transport import AiohttpTransport
from serve_app.models.backend import (
    BackendError,
    BackendUnavailable,
    ChoiceOutput,
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    LoadReport,
    RequestRejected,
)
from serve_app.models.openai_wire import (
    EMBEDDINGS_PATH,
    FAILED_FINISH_REASONS,
    Reply,
    embedding_body,
    error_detail,
    error_param,
    parse_chunk,
    parse_completion,
    parse_embeddings,
    request_body,
    request_path,
    sse_data,
    token_usage,
    tool_calls_text,
)
from serve_app.models.upstream_load import UpstreamLoad

__all__ = ["OpenAIUpstream"]

logger = logging.getLogger(__name__)
REJECTED_STATUSES = frozenset({400, 404, 413, 422})
"""Statuses by which a server refuses the request itself (answered 400 to the client)."""


class OpenAIUpstream:
    """A `Backend` that forwards to an OpenAI-compatible HTTP server.

    `base_url` is the server's root (`http://host:8000`); a trailing `/v1` is accepted
    and dropped. `model` is the name sent as `model` when the request names no
    `upstream_model`; without either, the first model the server lists at start is
    used. `timeout_s` bounds each network wait of a request (connecting: at most
    10 s), not its whole length. `metrics_poll_s` is how often `/metrics` is read;
    `start_timeout_s` bounds how long `start()` retries until the server answers.
    `transport` replaces the network (default: `AiohttpTransport`; tests pass
    `httpx.MockTransport`); `clock` times requests and ages metrics readings.
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
        self._probe_timeout_s = min(timeout_s, 10.0)
        self._start_timeout_s = start_timeout_s
        self._transport = transport
        self._clock = clock

        self._client: httpx.AsyncClient | None = None
        """For start-up probes and `/metrics`; requests go through `_poster`."""
        self._poster: _Poster | None = None
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._inflight = 0
        self._load = UpstreamLoad(
            poll_s=metrics_poll_s,
            timeout_s=min(timeout_s, 5.0),
            display_url=self._display_url,
            scrub=self._scrub,
            clock=clock,
        )

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
        timeout = httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 10.0))
        transport = self._transport or AiohttpTransport()
        self._client = httpx.AsyncClient(
            base_url=self._base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._poster = _Poster(transport, self._base_url, headers, timeout)
        try:
            await self._wait_until_up()
            polling = await self.poll_metrics_once()
        except BaseException:
            await self._client.aclose()
            self._client = self._poster = None
            raise
        if polling:
            self._poller = asyncio.create_task(
                self._load.poll_forever(self._client), name="upstream-metrics"
            )
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
        self._poster = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---------------------------------------------------------------- load

    def load(self) -> LoadReport:
        """The server's load from fresh metrics, else this replica's requests in flight.

        Never fewer requests than this replica has in flight (see `UpstreamLoad.report`).
        """
        return self._load.report(self._inflight, warm=self._started)

    async def poll_metrics_once(self) -> bool:
        """Read `/metrics` once; False when the server has no usable page (stop polling).

        See `UpstreamLoad.poll_once`: a 404 or an unusable page turns metrics off for
        good; a network error or 5xx is left to the next poll.
        """
        return await self._load.poll_once(self._client)

    # ---------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> Completion:
        """Post the request without streaming; usage from the server, else counted."""
        poster = self._require_poster()
        body = request_body(request, self._model, stream=False)
        started = self._clock()
        self._inflight += 1
        try:
            try:
                response = await poster.post(request_path(request), body, read=True)
            except httpx.TransportError as exc:
                raise self._unavailable(exc) from None
        finally:
            self._inflight -= 1
        total_s = max(0.0, self._clock() - started)
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content)
        try:
            reply = parse_completion(response.content)
        except ValueError as exc:
            raise self._malformed(str(exc)) from None
        choices = tuple(
            ChoiceOutput(
                c.index, c.text, self._finish_reason(c.finish_reason), c.tool_calls, c.logprobs
            )
            for c in reply.choices
        )
        output = "".join(c.text + tool_calls_text(c.tool_calls) for c in choices)
        input_tokens, output_tokens = token_usage(
            reply.usage, request.messages, output, request.prompt or ()
        )
        plain = len(choices) == 1 and not choices[0].tool_calls and choices[0].logprobs is None
        return Completion(
            text=choices[0].text,
            finish_reason=choices[0].finish_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            ttft_s=total_s,
            total_s=total_s,
            choices=() if plain else choices,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Post with `stream: true`; one Delta per piece of each choice (text, tool-call
        pieces, logprobs), then the choices' ends.

        Finish reasons are held to the end: each choice's end is a Delta of its own, the
        last one with the usage (the server's, else counted). A stream that ends before
        `[DONE]` without a finish reason, or breaks off, raises `GenerationFailed`.
        """
        poster = self._require_poster()
        body = request_body(request, self._model, stream=True)
        started = self._clock()
        ttft_s: float | None = None
        self._inflight += 1
        try:
            try:
                response = await poster.post(request_path(request), body, read=False)
            except httpx.TransportError as exc:
                raise self._unavailable(exc) from None
            try:
                if response.status_code >= 400:
                    raise self._status_error(response.status_code, await response.aread())
                pieces: list[str] = []
                finishes: dict[int, object] = {}
                usage: object = None
                done = False
                async for line in response.aiter_lines():
                    data = sse_data(line)
                    if data is None:
                        continue
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    chunk = self._chunk(data)
                    if chunk.usage:
                        usage = chunk.usage
                    for piece in chunk.choices:
                        if piece.finish_reason is not None:
                            finishes[piece.index] = piece.finish_reason
                        if piece.text or piece.tool_calls or piece.logprobs:
                            if ttft_s is None:
                                ttft_s = self._clock() - started
                            pieces.append(piece.text + tool_calls_text(piece.tool_calls))
                            yield Delta(
                                text=piece.text,
                                index=piece.index,
                                tool_calls=piece.tool_calls,
                                logprobs=piece.logprobs,
                            )
                if not done and not finishes:
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
        ends = sorted(finishes.items()) or [(0, None)]
        input_tokens, output_tokens = token_usage(
            usage, request.messages, "".join(pieces), request.prompt or ()
        )
        logger.debug(
            "upstream %s request %s: ttft %.3fs total %.3fs",
            self._display_url,
            request.request_id,
            ttft_s if ttft_s is not None else -1.0,
            self._clock() - started,
        )
        for index, finish in ends[:-1]:
            yield Delta(text="", index=index, finish_reason=self._finish_reason(finish))
        index, finish = ends[-1]
        yield Delta(
            text="",
            index=index,
            finish_reason=self._finish_reason(finish),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Post to `/v1/embeddings` (floats); the server's usage, else counted."""
        poster = self._require_poster()
        started = self._clock()
        self._inflight += 1
        try:
            try:
                response = await poster.post(
                    EMBEDDINGS_PATH, embedding_body(request, self._model), read=True
                )
            except httpx.TransportError as exc:
                raise self._unavailable(exc) from None
        finally:
            self._inflight -= 1
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content)
        try:
            vectors, usage = parse_embeddings(response.content)
        except ValueError as exc:
            raise self._malformed(str(exc)) from None
        if len(vectors) != len(request.inputs):
            raise self._malformed(f"{len(vectors)} vectors for {len(request.inputs)} inputs")
        texts = tuple(x for x in request.inputs if isinstance(x, str))
        input_tokens, _ = token_usage(usage, (), "", texts)
        if not isinstance(usage, dict) or "prompt_tokens" not in usage:
            input_tokens += sum(len(x) for x in request.inputs if isinstance(x, tuple))
        return Embeddings(vectors, input_tokens, max(0.0, self._clock() - started))

    def _chunk(self, data: str) -> Reply:
        try:
            chunk = parse_chunk(data)
        except ValueError as exc:
            raise self._malformed(str(exc)) from None
        if chunk.error is not None:
            raise GenerationFailed(
                self._scrub(f"upstream {self._display_url} failed mid-stream: {chunk.error}")
            )
        return chunk

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

    def _require_poster(self) -> _Poster:
        if self._closed:
            raise BackendUnavailable("upstream backend is closed")
        if not self._started or self._poster is None:
            raise BackendUnavailable("upstream backend is not started")
        return self._poster

    def _finish_reason(self, finish: object) -> FinishReason:
        if finish == "length":
            return "length"
        if finish in ("tool_calls", "function_call"):
            return "tool_calls"
        if finish in FAILED_FINISH_REASONS:
            raise GenerationFailed(
                f"upstream {self._display_url} ended the generation with {finish!r}"
            )
        return "stop"

    def _malformed(self, detail: str) -> GenerationFailed:
        return GenerationFailed(
            self._scrub(f"upstream {self._display_url} sent a malformed answer: {detail}")
        )

    def _unavailable(self, exc: httpx.TransportError) -> BackendUnavailable:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
        return BackendUnavailable(
            self._scrub(f"upstream {self._display_url} {kind}: {type(exc).__name__}: {exc}")
        )

    def _status_error(self, status: int, content: bytes) -> BackendError:
        detail = error_detail(content)
        if status in REJECTED_STATUSES:
            # The client's request: the server's own words (scrubbed), never its URL.
            return RequestRejected(self._scrub(detail), param=error_param(content))
        return GenerationFailed(
            self._scrub(f"upstream {self._display_url} answered HTTP {status}: {detail}")
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _Poster:
    """POSTs a JSON body straight to the transport.

    What `httpx.AsyncClient` adds around a request (merging the URL with `base_url`,
    cookies, redirects, auth flows, event hooks) cost as much CPU as the rest of the
    call in the ingress's profile (issue #13), and none of it applies to a server that
    answers each POST in place. The URL of each path is parsed once; headers and
    timeouts are the client's."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        headers: dict[str, str],
        timeout: httpx.Timeout,
    ) -> None:
        self._transport = transport
        self._base_url = base_url
        self._headers = {**headers, "Content-Type": "application/json"}
        self._extensions = {"timeout": timeout.as_dict()}
        self._urls: dict[str, httpx.URL] = {}

    async def post(self, path: str, body: object, *, read: bool) -> httpx.Response:
        """The response; its body read when `read` (else the caller reads and closes it)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._base_url + path)
        request = httpx.Request(
            "POST",
            url,
            headers=self._headers,
            content=json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode(),
            extensions=self._extensions,
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        if read:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response
