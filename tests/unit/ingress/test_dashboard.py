"""The live margin dashboard without Ray or Redis: the page and its assets need no key,
the figures need an admin key, and the figures are the requests that were served
(decisions, revenue, realized margin against the replica cost) on a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo, ReplicaInfo
from serve_app.ingress.app import build_asgi
from serve_app.ingress.compose import IngressArgs, IngressParts, Platform, compose
from serve_app.ingress.dashboard import PAGE_HEADERS
from serve_app.ingress.tally import BUCKET_S
from serve_app.pricing import Action
from serve_app.telemetry import LiveGauges, NoMetrics
from tests.fakes import FakeClock, FakeHandle
from tests.ingress_app import ADMIN_KEY, BASIC_KEY, POLICY, TENANT_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TENANT = {"Authorization": f"Bearer {TENANT_KEY}"}
SMALL = "llama-3.1-8b"
CHAT = {
    "model": SMALL,
    "messages": [{"role": "user", "content": "Tell me about GPUs."}],
    "max_tokens": 16,
}


class Gauges(NoMetrics):
    def __init__(self) -> None:
        self.seen: list[LiveGauges] = []

    def gauges(self, gauges: LiveGauges) -> None:
        self.seen.append(gauges)


def _parts(clock: FakeClock, metrics: Any = None) -> IngressParts:
    """Two ingress replicas (this one's share of the replica cost is half), every model
    one warm replica with two running, and the autoscaler's target is that one."""
    models = [m.id for m in POLICY.policy.models]

    async def fetch_reports() -> list[ReplicaReport]:
        return [ReplicaReport(m, f"{m}-r1", 2, 0, True, 0.0, clock()) for m in models]

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return {
            m: DeploymentInfo(m, "HEALTHY", 1, (ReplicaInfo(f"{m}-r1", "RUNNING", 1.0),))
            for m in models
        }

    platform = Platform(
        fetch_reports, fetch_deployments, metrics or NoMetrics(), lambda config: None, clock
    )
    args = IngressArgs(
        policy=POLICY.policy.model_dump(mode="json"),
        policy_source=POLICY.source,
        ingress_replicas=2,
    )
    return compose(args, dict.fromkeys(models, FakeHandle()), platform)


async def _refresh(parts: IngressParts) -> None:
    await parts.state.refresh_load()
    await parts.state.refresh_replicas()  # the live-state tick: figures.live_state
    assert parts.figures is not None
    task = parts.figures._task
    if task is not None:
        await task


def _client(parts: IngressParts) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build_asgi(parts))
    return httpx.AsyncClient(transport=transport, base_url="http://rtcts")


def test_the_page_and_its_assets_need_no_key_and_hold_no_data() -> None:
    async def run() -> None:
        parts = _parts(FakeClock())
        await _refresh(parts)
        async with _client(parts) as client:
            page = await client.get("/dashboard")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            for name, value in PAGE_HEADERS.items():
                assert page.headers[name] == value
            assert "script-src 'self'" in page.headers["content-security-policy"]
            html = page.text
            assert 'type="password"' in html  # the key is asked for in a form
            assert "http" not in html.replace("http-equiv", "")  # nothing from elsewhere
            assert SMALL not in html  # no figures
            assert "demo-pro" not in html  # no tenants
            script = await client.get("/dashboard/dashboard.js")
            assert script.status_code == 200
            assert script.headers["content-type"].startswith("text/javascript")
            assert "sessionStorage" in script.text
            assert "v1/admin/dashboard" in script.text
            assert "Authorization" in script.text
            style = await client.get("/dashboard/dashboard.css")
            assert style.headers["content-type"].startswith("text/css")
            missing = await client.get("/dashboard/secrets.txt")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"

    asyncio.run(run())


def test_the_figures_need_an_admin_key() -> None:
    async def run() -> None:
        parts = _parts(FakeClock())
        await _refresh(parts)
        async with _client(parts) as client:
            assert (await client.get("/v1/admin/dashboard")).status_code == 401
            bad = {"Authorization": "Bearer nope"}
            assert (await client.get("/v1/admin/dashboard", headers=bad)).status_code == 401
            tenant = await client.get("/v1/admin/dashboard", headers=TENANT)
            assert tenant.status_code == 403
            admin = await client.get("/v1/admin/dashboard", headers=ADMIN)
            assert admin.status_code == 200
            assert admin.headers["cache-control"] == "no-store"
            # The key goes in a header, never in the URL: a key in the query is no key.
            query = await client.get(f"/v1/admin/dashboard?key={ADMIN_KEY}")
            assert query.status_code == 401

    asyncio.run(run())


def test_the_figures_are_the_requests_served_and_the_replicas_paid() -> None:
    async def run() -> None:
        clock = FakeClock(1_000.0)
        gauges = Gauges()
        parts = _parts(clock, gauges)
        await _refresh(parts)
        clock.now += 10  # every model's one replica paid for 10 s
        await _refresh(parts)
        billed: list[int] = []
        async with _client(parts) as client:
            for _ in range(3):
                answer = await client.post("/v1/chat/completions", json=CHAT, headers=TENANT)
                assert answer.status_code == 200, answer.text
                billed.append(round(float(answer.json()["rtcts"]["billed_usd"]) * 1e6))
            basic = {"Authorization": f"Bearer {BASIC_KEY}"}
            refused = await client.post(
                "/v1/chat/completions", json={**CHAT, "max_price_usd": 0}, headers=basic
            )
            assert refused.status_code == 402
            document = (await client.get("/v1/admin/dashboard", headers=ADMIN)).json()

        assert document["object"] == "rtcts.dashboard"
        assert document["scope"] == "this_ingress_replica"  # no Redis: this replica's own
        assert document["bucket_s"] == BUCKET_S
        assert document["billing"] is None
        assert document["unread"] == []
        models = {m["model"]: m for m in document["models"]}
        small = models[SMALL]
        assert small["replicas"] == {"warm": 1, "starting": 0, "target": 1}
        assert (small["queued"], small["running"]) == (0, 2)
        assert small["cost_usd_per_1m_tokens"] > 0
        # Revenue: what the three requests billed; replica cost: one replica for 10 s at
        # the model's $/hour, half of it (this replica's share of two).
        usd_per_s = next(m for m in POLICY.policy.models if m.id == SMALL).usd_per_hour / 3600
        cost_micro = round(10 * usd_per_s * 1e6 * 0.5)
        revenue_micro = sum(billed)
        realized = small["realized"]
        assert round(float(realized["revenue_usd"]) * 1e6) == revenue_micro
        assert round(float(realized["replica_cost_usd"]) * 1e6) == cost_micro
        assert realized["margin"] == pytest.approx((revenue_micro - cost_micro) / revenue_micro)
        assert small["margin_floors"] == {"basic": 0.35, "pro": 0.3}
        assert len(small["history"]) == document["window_s"] // BUCKET_S
        assert small["history"][-1]["t"] == 1_010
        assert small["history"][-1]["margin_1m"] == pytest.approx(realized["margin"])
        big = models["llama-3.1-70b"]
        assert big["realized"]["margin"] is None  # paid for, nothing billed: no margin

        plans = {p["plan"]: p for p in document["plans"]}
        pro = plans["pro"]
        assert pro["decisions"] == {a.value: 3 if a is Action.ALLOW else 0 for a in Action}
        assert pro["requests_billed"] == 3
        assert round(float(pro["revenue_usd"]) * 1e6) == revenue_micro
        assert pro["sla_credits_usd"] == "0.000000"
        assert pro["history"][-1]["decisions"]["allow"] == 3
        assert sum(plans["basic"]["decisions"].values()) == 1  # the refused one counts too

        # The same figures reach the metrics at the next tick.
        await _refresh(parts)
        last = gauges.seen[-1]
        figures = {m.model: m for m in last.models}
        assert figures[SMALL].realized_margin == pytest.approx(realized["margin"])
        assert figures[SMALL].target_replicas == 1
        assert figures[SMALL].cost_usd_per_1m_tokens == small["cost_usd_per_1m_tokens"]
        assert last.floors == {"basic": 0.35, "pro": 0.3}
        assert last.billing is None

    asyncio.run(run())


def test_counts_leave_the_window_after_five_minutes() -> None:
    async def run() -> None:
        clock = FakeClock(1_000.0)
        parts = _parts(clock)
        await _refresh(parts)
        async with _client(parts) as client:
            answer = await client.post("/v1/chat/completions", json=CHAT, headers=TENANT)
            assert answer.status_code == 200
            clock.now += 290
            kept = (await client.get("/v1/admin/dashboard", headers=ADMIN)).json()
            clock.now += 20
            gone = (await client.get("/v1/admin/dashboard", headers=ADMIN)).json()
        assert {p["plan"]: p for p in kept["plans"]}["pro"]["decisions"]["allow"] == 1
        assert {p["plan"]: p for p in gone["plans"]}["pro"]["decisions"]["allow"] == 0

    asyncio.run(run())
