"""Billing through the real app: served requests become verified meters, reach the
Stripe emulator through the aggregator, and show in usage, admin and reconciliation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, auth, chat_body, wait_until

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _billing(url: str, plan: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/usage", headers=auth(plan))
    assert response.status_code == 200, response.text
    billing: dict[str, Any] = response.json()["billing"]
    return billing


def test_served_requests_are_billed_synced_and_reconciled(
    app_url: str, redis_url: str, stripe_url: str
) -> None:
    before = Decimal(_billing(app_url, "flex")["billed_usd"])
    billed = Decimal(0)
    for _ in range(5):
        r = httpx.post(
            f"{app_url}/v1/chat/completions", json=chat_body("small"), headers=auth("flex")
        )
        assert r.status_code == 200
        billed += Decimal(r.json()["rtcts"]["billed_usd"])

    def synced() -> dict[str, Any] | None:
        b = _billing(app_url, "flex")
        done = Decimal(b["billed_usd"]) >= before + billed and Decimal(b["pending_usd"]) == 0
        return b if done else None

    billing = wait_until(synced, timeout_s=60, every_s=0.5)
    assert Decimal(billing["billed_usd"]) == before + billed  # to the micro-dollar
    assert billing["synced_to_stripe_usd"] == billing["billed_usd"]

    totals = httpx.get(f"{stripe_url}/_emulator/totals").json()
    assert any(
        "cus_it_flex" in str(item) for item in (totals if isinstance(totals, list) else [totals])
    )

    health = httpx.get(f"{app_url}/v1/admin/billing", headers=ADMIN)
    assert health.status_code == 200
    (shard,) = health.json()["shards"]
    assert shard["dead_letters"] == 0
    assert httpx.get(f"{app_url}/v1/admin/billing", headers=auth("flex")).status_code == 403

    # Other tests' tenants may still have windows open or in the outbox: reconcile once
    # every window of the app is delivered (the report covers every customer).
    def delivered() -> bool:
        shards = httpx.get(f"{app_url}/v1/admin/billing", headers=ADMIN).json()["shards"]
        return all(s["open_windows"] == 0 and s["outbox"] == 0 for s in shards)

    wait_until(delivered, timeout_s=60, every_s=0.5)
    report = httpx.post(f"{app_url}/v1/admin/reconcile", headers=ADMIN, timeout=60)
    assert report.status_code == 200, report.text
    assert report.json()["ok"], [line for line in report.json()["lines"] if not line["ok"]]

    env = {**os.environ, "REDIS_URL": redis_url, "STRIPE_API_BASE": stripe_url}
    env.pop("STRIPE_API_KEY", None)
    outputs = []
    for flags in ([], ["--json"]):
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "rtcts"), "reconcile", *flags],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        outputs.append(cli.stdout)
    assert "no drift" in outputs[0]
    admin, printed = report.json(), json.loads(outputs[1])
    assert printed["ok"]
    assert printed.keys() == admin.keys()  # the same shape as the admin endpoint
    for lines in (admin["lines"], printed["lines"]):
        assert lines
        assert lines[0].keys() == printed["lines"][0].keys()
        for line in lines:  # every figure a whole number in the line's unit
            assert all(type(line[k]) is int for k in ("local", "stripe", "drift")), line
