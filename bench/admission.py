"""Benchmark: one admission round trip (the admit Lua script: sliding-window requests,
tokens, budget, reservation) against a real redis-server on loopback.

Target (issue): p99 <= 1 ms on loopback Redis. Each admit is timed on its own from the
client (asyncio, redis-py), then settled, as the ingress does; a second scenario runs
16 concurrent clients to show the round trip under load.

    .venv/bin/python bench/admission.py                 # embedded redis-server
    .venv/bin/python bench/admission.py --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from stats import percentile  # bench/stats.py: bench/ is on sys.path when run as a script

from serve_app.admission import AdmissionLimits, Admitted, RedisAdmission, Ticket
from serve_app.local.redis_server import EmbeddedRedis

TARGET_P99_US = 1000.0
LIMITS = AdmissionLimits(
    requests_per_minute=10**9, tokens_per_minute=10**12, monthly_budget_micro=10**15
)


async def _worker(store: RedisAdmission, tenant: str, count: int, out: list[float]) -> None:
    for _ in range(count):
        ticket = Ticket(tenant, uuid.uuid4().hex, tokens=500, amount_micro=1000)
        start = time.perf_counter_ns()
        result = await store.admit(ticket, LIMITS)
        out.append((time.perf_counter_ns() - start) / 1000)
        assert isinstance(result, Admitted)
        await store.settle(tenant, ticket.request_id, 480, 900)


async def _scenario(url: str, clients: int, per_client: int) -> list[float]:
    client = aioredis.Redis.from_url(url, max_connections=clients + 4)
    store = RedisAdmission(client)
    await _worker(store, "bench-warmup", 500, [])
    timings: list[float] = []
    tenants = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(clients)]
    await asyncio.gather(*(_worker(store, t, per_client, timings) for t in tenants))
    await client.aclose()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="default: an embedded redis-server")
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = None if args.redis_url else EmbeddedRedis(Path(tmp)).start()
        url = args.redis_url or (server.url if server else "")
        try:
            rows = []
            for name, clients in (("sequential", 1), ("16 concurrent", 16)):
                t = asyncio.run(_scenario(url, clients, args.iterations // clients))
                pcts = (percentile(t, 50), percentile(t, 90), percentile(t, 99))
                rows.append((name, len(t), *pcts, statistics.fmean(t)))
        finally:
            if server:
                server.stop()
    print(f"admission round trip: Python {sys.version.split()[0]}, {url.split('@')[-1]}")
    print(f"{'scenario':<16}{'n':>8}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}  (µs)")
    for name, n, p50, p90, p99, mean in rows:
        print(f"{name:<16}{n:>8}{p50:>9.0f}{p90:>9.0f}{p99:>9.0f}{mean:>9.0f}")
    p99 = rows[0][4]
    verdict = "PASS" if p99 <= TARGET_P99_US else "FAIL"
    print(f"{verdict}: sequential p99 {p99:.0f} µs (target <= {TARGET_P99_US:.0f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
