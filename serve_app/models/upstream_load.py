"""An upstream server's load: its Prometheus `/metrics` page, polled, and the requests
this replica has in flight to it.

`UpstreamLoad` reads the page (parsed by `prometheus.py`) on each poll and keeps the
last reading; `report()` turns it into the `LoadReport` the pricing core reads. A
server without a usable page, or whose reading went stale, is reported from the
requests in flight alone. The upstream backend (`upstream.py`) owns the HTTP client
and the polling task.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import httpx

from serve_app.models.backend import LoadReport
from serve_app.models.prometheus import (
    MetricsParseError,
    UnrecognizedMetrics,
    parse_metrics,
    vllm_load,
)

__all__ = ["UpstreamLoad"]

logger = logging.getLogger(__name__)


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

        A 404, a page that does not parse, or one without a known engine's load
        metrics turns metrics off for good; a network error or 5xx is left to the
        next poll (the last reading goes stale after ten polls, at least 1 s).
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
                self._engine_load = vllm_load(parse_metrics(response.text))
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
