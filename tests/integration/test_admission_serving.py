"""Admission through the real app: two ingress replicas, real Redis, real Ray Serve."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    ADMIN_KEY,
    APP_NAME,
    POLICY,
    auth,
    chat_body,
    wait_until,
)

pytestmark = pytest.mark.integration


async def _burst(url: str, plan: str, count: int, **body: Any) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/chat/completions",
                    json=chat_body("small", **body),
                    headers=auth(plan),
                )
                for _ in range(count)
            )
        )


def _usage(url: str, plan: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/usage", headers=auth(plan))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def test_concurrent_requests_over_two_ingress_replicas_admit_exactly_the_limit(
    app_url: str,
) -> None:
    responses = asyncio.run(_burst(app_url, "limited", 200, max_tokens=1))
    limited = [r for r in responses if r.status_code == 429]
    served = sum(r.status_code == 200 for r in responses)
    others = [(r.status_code, r.text[:200]) for r in responses if r.status_code not in (200, 429)]
    assert not others, others
    assert served == 50
    assert len(limited) == 150
    for r in limited:
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
    assert _usage(app_url, "limited")["window"]["requests"] == 50


def test_budget_holds_under_concurrency(app_url: str) -> None:
    responses = asyncio.run(_burst(app_url, "budget", 100, max_tokens=8))
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 402]
    assert served
    assert refused
    others = [(r.status_code, r.text[:200]) for r in responses if r.status_code not in (200, 402)]
    assert not others, others
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    billed = sum(Decimal(r.json()["rtcts"]["billed_usd"]) for r in served)
    assert billed <= Decimal("0.02")

    def settled() -> dict[str, Any] | None:
        month = _usage(app_url, "budget")["month"]
        return month if Decimal(month["reserved_usd"]) == 0 else None

    month = wait_until(settled, timeout_s=10)
    assert Decimal(month["settled_usd"]) == billed
    assert month["billed_requests"] == len(served)


def test_tokens_settle_to_the_verified_count_streamed_or_not(app_url: str) -> None:
    # A tenant no other test uses: its month's tokens are this test's, all in the window.
    plain = httpx.post(
        f"{app_url}/v1/chat/completions",
        json=chat_body("mid", max_tokens=5),
        headers=auth("tokens"),
    )
    assert plain.status_code == 200
    usage_plain = plain.json()["usage"]["total_tokens"]
    streamed_usage: dict[str, Any] = {}
    with httpx.stream(
        "POST",
        f"{app_url}/v1/chat/completions",
        json=chat_body("mid", max_tokens=6, stream=True, stream_options={"include_usage": True}),
        headers=auth("tokens"),
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                streamed_usage = httpx.Response(200, content=line[6:]).json()["usage"]
    expected = usage_plain + streamed_usage["total_tokens"]
    before = _usage(app_url, "tokens")["month"]["billed_tokens"]
    assert before >= expected
    # Within the window, the tenant's token count is the verified counts, not estimates.
    window = wait_until(
        lambda: (w := _usage(app_url, "tokens")["window"])["tokens"] >= expected and w,
        timeout_s=10,
    )
    assert window["tokens"] == _usage(app_url, "tokens")["month"]["billed_tokens"]


def test_tenants_see_only_their_own_usage_and_admin_needs_the_admin_key(app_url: str) -> None:
    mine = _usage(app_url, "flex")
    assert mine["tenant"] == "t-flex"
    assert mine["window"]["requests_limit"] == 100000
    url = f"{app_url}/v1/admin/usage/t-budget"
    assert httpx.get(url, headers=auth("flex")).status_code == 403
    assert httpx.get(url, headers={"Authorization": "Bearer not-admin"}).status_code == 401
    assert httpx.get(url).status_code == 401
    admin = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin.status_code == 200
    assert admin.json()["tenant"] == "t-budget"
    missing = httpx.get(
        f"{app_url}/v1/admin/usage/nobody", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert missing.status_code == 404


def test_redis_outage_fails_open_or_closed_by_plan_and_recovers(
    ray_serve: str, tmp_path: Path
) -> None:
    from ray import serve

    from serve_app.builder import build_app
    from serve_app.local.redis_server import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis").start()
    name = f"{APP_NAME}-outage"
    try:
        serve.run(
            build_app(
                {
                    "policy_path": str(POLICY),
                    "natural_output": False,
                    "app_name": name,
                    "redis_url": redis.url,
                    "redis_timeout_s": 0.2,
                }
            ),
            name=name,
            route_prefix="/outage",
        )
        url = f"{ray_serve}/outage"

        def chat(plan: str) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/chat/completions",
                json=chat_body("small", max_tokens=2),
                headers=auth(plan),
                timeout=30,
            )

        wait_until(lambda: chat("flex").status_code == 200, timeout_s=60)
        assert chat("closed").status_code == 200

        redis.stop()
        # Fail-open keeps serving; fail-closed answers 503 at once; neither hangs
        # (httpx's 30 s timeout would fail the test).
        assert [chat("flex").status_code for _ in range(5)] == [200] * 5
        closed = chat("closed")
        assert closed.status_code == 503
        assert closed.json()["error"]["code"] == "admission_unavailable"
        assert httpx.get(f"{url}/v1/usage", headers=auth("flex")).status_code == 503

        redis.start()
        wait_until(
            lambda: httpx.get(f"{url}/v1/usage", headers=auth("flex")).status_code == 200,
            timeout_s=30,
        )
        assert chat("closed").status_code == 200
    finally:
        serve.delete(name)
        redis.stop()
