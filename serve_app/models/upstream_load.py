"""An upstream server's load: its Prometheus `/metrics` page, polled, and the requests
this replica has in flight to it.

`UpstreamLoad` reads the page on each poll, parses the lines that name a load metric
(`prometheus.py`) and keeps the last reading; `report()` turns it into the `LoadReport`
the pricing core reads. A server without a usable page, or whose reading went stale, is
reported from the requests in flight alone. The upstream backend (`upstream.py`) owns
the HTTP client and the polling task.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import httpx

from serve_app.models.backend import LoadReport
from serve_app.models.prometheus import (
    LOAD_METRIC_NAMES,
    MetricsParseError,
    UnrecognizedMetrics,
    parse_metrics,
    vllm_load,
)

__all__ = ["UpstreamLoad"]

logger = logging.getLogger(__name__)

_LOAD_NAMES = tuple(sorted(LOAD_METRIC_NAMES))


def load_lines(page: str) -> str:
    """The sample lines of a metrics page that mention a load metric, in page order.

    A vLLM page has ~400 sample lines (histograms, process metrics); parsing each with
    `prometheus_client` costs ~5 ms of CPU, ten polls a second. Its few load lines,
    found by plain substring search, cost ~0.1 ms (docs/benchmarks.md, "rtcts against
    LiteLLM"). A line that merely mentions a name (another metric's label value) is
    parsed too and read by its own name, so nothing is lost or misread."""
    found: dict[int, str] = {}
    for name in _LOAD_NAMES:
        at = page.find(name)
        while at >= 0:
            start = page.rfind("\n", 0, at) + 1
            end = page.find("\n", at)
            end = len(page) if end < 0 else end
            line = page[start:end]
            if not line.lstrip().startswith("#"):
                found[start] = line
            at = page.find(name, end)
    return "\n".join(found[start] for start in sorted(found))


class UpstreamLoad:
    """The last `/metrics` reading of one upstream server, and how to take the next.

    `poll_s` is how often the page is read (a reading goes stale after ten polls, at
    least 1 s); `timeout_s` bounds one read. `display_url` and `scrub` name the server
    in logs without its secrets; `clock` ages the readings.
    """

    def __init__(
        self,
        *,
        poll_s: float,
        timeout_s: float,
        display_url: str,
        scrub: Callable[[str], str],
        clock: Callable[[], float],
    ) -> None:
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._stale_after_s = max(1.0, 10 * poll_s)
        self._display_url = display_url
        self._scrub = scrub
        self._clock = clock
        self._enabled = True
        self._engine_load: tuple[int, int, float | None] | None = None
        self._read_at = -math.inf

    def report(self, inflight: int, *, warm: bool) -> LoadReport:
        """The server's load from fresh metrics, else this replica's requests in flight.

        Metrics lag by up to one poll, so the report never shows fewer requests than
        this replica has in flight: the shortfall counts as queued when the server
        reports a queue, as running otherwise.
        """
        local = inflight
        engine = self._engine_load
        age_s = self._clock() - self._read_at
        if engine is None or age_s > self._stale_after_s:
            return LoadReport(
                running=local,
                queued=0,
                warm=warm,
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
            warm=warm,
            kv_cache_usage=kv,
            extra={
                "local_inflight": float(local),
                "metrics_age_s": max(0.0, age_s),
            },
        )

    async def poll_once(self, client: httpx.AsyncClient | None) -> bool:
        """Read `/metrics` once; False when the server has no usable page (stop polling).

        A 404, a load line that does not parse, or a page without a known engine's
        load metrics turns metrics off for good (other lines are not read); a network
        error or 5xx is left to the next poll (the last reading goes stale after ten
        polls, at least 1 s).
        """
        if not self._enabled or client is None:
            return False
        try:
            response = await client.get("/metrics", timeout=self._timeout_s)
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
                self._engine_load = vllm_load(parse_metrics(load_lines(response.text)))
                self._read_at = self._clock()
                return True
            except (MetricsParseError, UnrecognizedMetrics) as exc:
                reason = self._scrub(str(exc))
        self._enabled = False
        self._engine_load = None
        logger.info(
            "upstream %s has no usable /metrics (%s); counting requests in flight locally",
            self._display_url,
            reason,
        )
        return False

    async def poll_forever(self, client: httpx.AsyncClient) -> None:
        """Poll every `poll_s` until the page turns out unusable (cancel to stop)."""
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                if not await self.poll_once(client):
                    return
            except Exception:  # keep polling whatever one poll hits
                logger.exception("upstream %s: metrics poll failed", self._display_url)
