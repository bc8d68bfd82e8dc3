"""Read-only views of the billing state for the HTTP edge and the CLI: a tenant's
billed, credited, synced and pending amounts; outbox, lag and dead letters per shard;
the local ledger of what was delivered (for reconciliation)."""

from __future__ import annotations

import time
from typing import Any

from serve_app.metering.horizons import DAY_S, RECONCILE_HORIZON_S
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.reconcile import DriftReport, reconcile
from serve_app.metering.stream import shard_of
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENTS

LAST_RECONCILE = "last_reconcile"
"""The status entry (shard 0's, `MeterLedger.set_status`) of the last reconciliation."""


class BillingView:
    def __init__(self, client: Any, shards: int, *, window_s: int, grace_s: int) -> None:
        self._shards = shards
        self._ledgers = [
            MeterLedger(client, shard, window_s=window_s, grace_s=grace_s)
            for shard in range(shards)
        ]

    async def tenant(self, tenant_id: str, customer_id: str) -> dict[str, int]:
        """Micro-USD: billed (folded from meters), credited (SLA credits), synced
        (delivered to Stripe), pending (folded, not yet delivered); and meter counts."""
        ledger = self._ledgers[shard_of(tenant_id, self._shards)]
        totals = await ledger.tenant_totals(tenant_id)
        synced = (await ledger.totals("synced")).get(f"{customer_id}|{METER_EVENT_BILLED}", 0)
        return {
            "billed_micro": totals["billed"],
            "credited_micro": totals["credited"],
            "synced_micro": synced,
            "pending_micro": max(0, totals["billed"] - synced),
            "billable_requests": totals["meters"],
            "failed_requests": totals["failed"],
        }

    async def health(self) -> list[dict[str, Any]]:
        now = time.time()
        shards = []
        for ledger in self._ledgers:
            health = await ledger.health()
            start = health.pop("oldest_unsynced_window_start")
            health["oldest_unsynced_age_s"] = None if start is None else round(now - start, 1)
            shards.append(health)
        return shards

    async def delivered(self, start_s: int, end_s: int) -> dict[tuple[str, str], int]:
        """The local ledger over `[start_s, end_s)`: (customer, event) -> total delivered."""
        totals: dict[tuple[str, str], int] = {}
        for ledger in self._ledgers:
            for entry in await ledger.sent(start_s, end_s):
                key = (entry.stripe_customer_id, entry.event_name)
                totals[key] = totals.get(key, 0) + entry.value
        return totals

    async def reconcile(self, stripe_client: Any, days: int = 30) -> DriftReport:
        """Compare what was delivered over the last `days` (at most the reconciliation
        horizon, 35 days: Stripe's own limit) with Stripe's event summaries (the local
        ledger is the source of truth; Stripe keeps identifiers ~24 h only)."""
        days = max(1, min(days, RECONCILE_HORIZON_S // DAY_S))
        now = int(time.time())
        end = (now // 60 + 1) * 60
        start = (now - days * 86400) // 60 * 60
        local = await self.delivered(start, end)
        report = await reconcile(
            stripe_client, local, start_time=start, end_time=end, event_names=METER_EVENTS
        )
        await self._ledgers[0].set_status(
            LAST_RECONCILE,
            {
                "at": now,
                "days": days,
                "ok": report.ok,
                "lines": len(report.lines),
                "drifted": len(report.drifted),
            },
        )
        return report

    async def last_reconcile(self) -> dict[str, Any] | None:
        """When the last reconciliation ran (unix seconds, `at`), over how many `days`,
        and what it found (`ok`: no drift; `lines`, `drifted`); None if none ran."""
        return await self._ledgers[0].status(LAST_RECONCILE)
