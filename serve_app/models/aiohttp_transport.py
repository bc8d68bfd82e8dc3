"""An httpx transport on aiohttp's client: the upstream backend's network layer.

`OpenAIUpstream` speaks to its server through httpx's transport interface (its requests
straight on the transport, its probes and `/metrics` polls through an
`httpx.AsyncClient`; tests inject `httpx.MockTransport`). httpx's own network
layer (httpcore, h11, anyio) costs about 0.6 ms of CPU per request on the 2-core
benchmark host, several times what the rest of a forwarded request costs the model
replica; aiohttp's client does the same network work for about a fifth of that
(docs/benchmarks.md, "rtcts against LiteLLM"). `AiohttpTransport` keeps httpx's client
and its seam and hands the network to one `aiohttp.ClientSession`:

- one keep-alive connection pool per transport (no limit on connections by default: the
  sending replica's `max_ongoing_requests`, the ingress's or a model deployment's,
  already bounds what it sends);
- httpx's timeouts per request: `connect` (plus `pool`) bounds getting a connection,
  `read` each wait for data, as httpx does;
- bodies are passed through as they come (aiohttp's decompression is off; httpx decodes
  `Content-Encoding`), streamed answers chunk by chunk as they arrive;
- aiohttp's errors come out as httpx's (`ConnectError`, `ConnectTimeout`, `ReadTimeout`,
  `ReadError`, `RemoteProtocolError`), so the backend maps them as before;
- the environment's proxy settings apply (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), read once
  per origin, as httpx's default client reads them once.

A connection is returned to the pool once its answer was read to the end, and closed
when the answer is dropped before that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp.helpers import get_env_proxy_for_url

__all__ = ["AiohttpTransport"]

_SKIPPED_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
"""Request headers aiohttp sets itself from the URL and the body."""


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncBaseTransport` on one `aiohttp.ClientSession`, created on first use
    (inside the running event loop) and closed by `aclose`. `limit` caps the open
    connections (0: no cap); `keepalive_s` is how long an idle one is kept."""

    def __init__(self, *, limit: int = 0, keepalive_s: float = 15.0) -> None:
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._proxies: dict[tuple[str, str, int | None], tuple[str | None, Any]] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # Not aiohttp's trust_env: it looks up .netrc and the proxy in a thread on every
            # request (~0.5 ms of CPU); the proxy is looked up once per origin (`_proxy`).
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        return self._session

    def _proxy(self, url: httpx.URL) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """The proxy the environment names for `url`'s origin (HTTP(S)_PROXY, NO_PROXY),
        looked up on first use and kept, as httpx reads it once per client."""
        origin = (url.scheme, url.host, url.port)
        found = self._proxies.get(origin)
        if found is None:
            try:
                proxy, auth = get_env_proxy_for_url(yarl.URL(str(url)))
                found = (str(proxy), auth)
            except LookupError:
                found = (None, None)
            self._proxies[origin] = found
        return found

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        limits = request.extensions.get("timeout") or {}
        connect, read = limits.get("connect"), limits.get("read")
        pool = limits.get("pool")
        key = (connect, read, pool)
        found = self._timeouts.get(key)
        if found is None:
            acquire = None if connect is None or pool is None else connect + pool
            found = aiohttp.ClientTimeout(
                total=None, connect=acquire, sock_connect=connect, sock_read=read
            )
            self._timeouts[key] = found
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        body = await request.aread()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in _SKIPPED_HEADERS
        ]
        proxy, proxy_auth = self._proxy(request.url)
        try:
            answer = await session.request(
                request.method,
                str(request.url),
                data=body or None,
                headers=headers,
                timeout=self._timeout(request),
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _httpx_error(exc, request, connecting=True) from exc
        return httpx.Response(
            answer.status,
            headers=list(answer.raw_headers),
            stream=_Body(answer, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (answer.reason or "").encode("latin-1", "replace"),
            },
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _Body(httpx.AsyncByteStream):
    """An aiohttp answer's body, as httpx reads it: chunks as they arrive."""

    def __init__(self, answer: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._answer = answer
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._answer.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _httpx_error(exc, self._request, connecting=False) from exc

    async def aclose(self) -> None:
        if self._answer.content.at_eof():
            self._answer.release()  # read to the end: the connection goes back to the pool
        else:
            self._answer.close()  # dropped early: the connection cannot be reused


def _httpx_error(
    exc: BaseException, request: httpx.Request, *, connecting: bool
) -> httpx.TransportError:
    """The httpx error for an aiohttp one (what httpx's own transport would raise)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        if connecting:
            message = f"Server disconnected without sending a response ({message})."
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return httpx.ReadError(message, request=request)
    return httpx.TransportError(message, request=request)
