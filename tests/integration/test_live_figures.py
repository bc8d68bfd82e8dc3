"""The dashboard's figures on real Ray Serve and Redis: scraped from Ray's Prometheus
endpoint (the node's metrics export port, what any Prometheus scraping Ray reads), and
the dashboard document counting every ingress replica's requests (the app runs two)."""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from serve_app.ingress.tally import MemoryTallyStore, RedisTallyStore, Tally, plan_field
from tests.fakes import FakeClock
from tests.integration.conftest import ADMIN_KEY, auth, chat_body, wait_until
from tests.unit.test_grafana_dashboard import METRIC, queried

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
EVENTS_ONLY = {"rtcts_failures_total", "rtcts_sla_credit_usd_total"}
"""Recorded only once a model call fails or a request misses its SLA (none here)."""


def metrics_url() -> str:
    """Ray's Prometheus endpoint on this node (the session's Ray, started in-process)."""
    import ray

    node = ray._private.worker.global_worker.node
    assert node is not None, "Ray is not initialized in this process"
    return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"


Samples = list[tuple[str, dict[str, str], float]]


def scrape() -> Samples:
    samples: Samples = []
    for line in httpx.get(metrics_url(), timeout=10).text.splitlines():
        found = SAMPLE.match(line)
        if found and not line.startswith("#"):
            labels = dict(LABEL.findall(found.group("labels") or ""))
            samples.append((found.group("name"), labels, float(found.group("value"))))
    return samples


def values(samples: Samples, name: str, **labels: str) -> list[float]:
    return [
        v
        for n, got, v in samples
        if n == f"ray_{name}" and all(got.get(k) == want for k, want in labels.items())
    ]


def test_rays_metrics_endpoint_has_every_dashboard_figure(app_url: str) -> None:
    for plan, model in (("flex", "small"), ("premium", "mid"), ("flex", "auto")):
        answer = httpx.post(
            f"{app_url}/v1/chat/completions",
            json=chat_body(model),
            headers=auth(plan),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
    refused = httpx.post(
        f"{app_url}/v1/chat/completions",
        json=chat_body("small", max_price_usd=0),
        headers=auth("strict"),
        timeout=60,
    )
    assert refused.status_code == 402
    reconciled = httpx.post(f"{app_url}/v1/admin/reconcile", headers=ADMIN, timeout=60)
    assert reconciled.status_code == 200
    started = time.time()

    def complete() -> Samples:
        samples = scrape()
        names = {n for n, _, _ in samples}
        wanted = {
            "ray_rtcts_decisions_total",
            "ray_rtcts_billed_usd_total",
            "ray_rtcts_model_replicas",
            "ray_rtcts_billing_last_reconcile_timestamp_s",
            "ray_rtcts_realized_revenue_usd",
        }
        assert wanted <= names, wanted - names
        assert values(samples, "rtcts_model_replicas", model="small", state="target")
        assert values(samples, "rtcts_decisions_total", plan="strict")
        assert any(v > 0 for v in values(samples, "rtcts_realized_revenue_usd", model="small"))
        assert any(
            v >= started - 5 for v in values(samples, "rtcts_billing_last_reconcile_timestamp_s")
        )
        return samples

    samples = wait_until(complete, timeout_s=90, every_s=2)

    # Every metric the Grafana dashboard queries is exported (but the event-only ones).
    names = {n for n, _, _ in samples}
    for title, expr in queried():
        for name in METRIC.findall(expr):
            if re.sub(r"_(bucket|sum|count)$", "", name) not in EVENTS_ONLY:
                assert f"ray_{name}" in names, (title, name)

    # Decisions carry the plan; revenue is per plan and model.
    allowed = values(samples, "rtcts_decisions_total", plan="flex", decision="allow")
    assert sum(allowed) >= 2
    assert sum(values(samples, "rtcts_decisions_total", plan="strict", decision="throttle")) >= 1
    assert sum(values(samples, "rtcts_billed_usd_total", plan="premium", model="mid")) > 0
    # Live state: one warm replica of `small` at least; its target; its cost now.
    assert max(values(samples, "rtcts_model_replicas", model="small", state="warm")) >= 1
    assert max(values(samples, "rtcts_model_replicas", model="small", state="target")) >= 1
    assert max(values(samples, "rtcts_model_cost_usd_per_1m_tokens", model="small")) > 0
    assert max(values(samples, "rtcts_realized_replica_cost_usd", model="small")) > 0
    margins = values(samples, "rtcts_realized_margin", model="small")
    assert margins
    assert all(math.isnan(m) or m <= 1 for m in margins)
    assert set(values(samples, "rtcts_margin_floor", plan="flex")) == {0.2}
    # Billing health per meter shard, and the reconciliation just run.
    for gauge in ("outbox", "oldest_unsynced_age_s", "dead_letters", "open_windows"):
        assert values(samples, f"rtcts_billing_{gauge}", shard="0"), gauge
    assert set(values(samples, "rtcts_billing_last_reconcile_ok")) <= {0.0, 1.0}


def test_the_dashboard_counts_every_ingress_replicas_requests(app_url: str) -> None:
    """Two ingress replicas each count what they served; the document, whichever replica
    answers it, shows them all (the shared tally in Redis)."""

    def allowed(document: dict[str, Any]) -> int:
        flex = next(p for p in document["plans"] if p["plan"] == "flex")
        return int(sum(b["decisions"]["allow"] for b in flex["history"][-3:]))

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{app_url}/v1/chat/completions",
                        json=chat_body("small"),
                        headers=auth("flex"),
                    )
                    for _ in range(20)
                )
            )
        assert all(a.status_code == 200 for a in answers)

    asyncio.run(burst())

    def every_answer_sees_all() -> bool:
        documents = [
            httpx.get(f"{app_url}/v1/admin/dashboard", headers=ADMIN, timeout=30).json()
            for _ in range(6)
        ]
        assert all(d["scope"] == "all_ingress_replicas" for d in documents)
        return all(allowed(d) >= 20 for d in documents)

    wait_until(every_answer_sees_all, timeout_s=30, every_s=1)
    page = httpx.get(f"{app_url}/dashboard", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


def test_two_tallies_on_one_redis_add_up(redis_url: str) -> None:
    """What two replicas flush lands in the same buckets; each reads the sum."""
    import redis.asyncio as aioredis

    app = f"tally-{uuid.uuid4().hex[:8]}"
    clock = FakeClock(2_000.0)

    async def run() -> tuple[dict[int, dict[str, int]], dict[int, dict[str, int]]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            one = Tally(RedisTallyStore(client, app), clock=clock)
            two = Tally(RedisTallyStore(client, app), clock=clock)
            one.decision("flex", "allow")
            two.decision("flex", "allow")
            two.billed("flex", "small", 1_234, 0)
            await one.flush()
            await two.flush()
            ttl = await client.ttl(f"rtcts:dash:{{{app}}}:2000")
            assert 0 < ttl <= 900
            return await one.window(), await two.window()
        finally:
            await client.aclose()

    first, second = asyncio.run(run())
    assert first == second
    assert first[2_000][plan_field("flex", "allow")] == 2
    assert first[2_000][plan_field("flex", "billed")] == 1_234
    assert MemoryTallyStore.shared is False
    assert RedisTallyStore.shared is True
