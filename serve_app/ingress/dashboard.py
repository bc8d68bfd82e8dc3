"""The live margin dashboard: a page and the document it draws.

    GET /dashboard              the page (HTML, no key: it holds no data)
    GET /dashboard/<asset>      its script and style sheet (static/, no key)
    GET /v1/admin/dashboard     the figures, JSON (admin key, `Authorization: Bearer`)

The page asks for the admin key in a form, keeps it in the tab's sessionStorage (never
in a URL, never in a cookie), and asks for the document every few seconds. Plots are
SVG drawn by the page's own script (no charting library, nothing from a CDN).

The document (`dashboard_models.Dashboard` describes it field by field) is built from
what the ingress already has: the live cluster state, the live figures (`figures.py`:
realized margin, per-plan decisions, revenue and credits, billing health) and the
current policy (floors, plans). The same figures are exported as Ray metrics.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serve_app.errors import NotFound
from serve_app.ingress import openapi
from serve_app.ingress.documents import usd
from serve_app.ingress.figures import Billing, LiveFigures, margin_or_none
from serve_app.ingress.tally import Buckets, model_field, plan_field
from serve_app.ingress.views import Views
from serve_app.pricing import Action, WindowMargin

PAGE_PATH = "/dashboard"
DATA_PATH = "/v1/admin/dashboard"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
STALE_BILLING_S = 15.0
"""Billing health older than this is read again for the document."""
SHARD_FIELDS = (
    "shard",
    "open_windows",
    "outbox",
    "dead_letters",
    "stream_pending",
    "oldest_unsynced_age_s",
)
TRAILING_BUCKETS = 6
"""A bucket's margin in the history is the one of the minute ending with it."""

PAGE_HEADERS = {
    # The page runs its own script and talks to its own origin only.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static(name: str) -> bytes:
    return resources.files("serve_app.ingress").joinpath("static", name).read_bytes()


class DashboardRoutes:
    """The dashboard's routes over one replica's live figures and views."""

    def __init__(self, figures: LiveFigures, views: Views) -> None:
        self.figures = figures
        self.views = views
        self._page = _static("dashboard.html")
        self._assets = {name: _static(name) for name in ASSETS}

    def install(self, api: FastAPI) -> None:
        api.add_api_route(PAGE_PATH, self.page, methods=["GET"], include_in_schema=False)
        api.add_api_route(
            PAGE_PATH + "/{asset}", self.asset, methods=["GET"], include_in_schema=False
        )
        api.add_api_route(DATA_PATH, self.data, methods=["GET"], **openapi.ADMIN_DASHBOARD)

    async def page(self) -> Response:
        return Response(self._page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def asset(self, asset: str) -> Response:
        body = self._assets.get(asset)
        if body is None:
            raise NotFound(f"No dashboard asset '{asset}'.", code="not_found")
        return Response(body, media_type=ASSETS[asset], headers=PAGE_HEADERS)

    async def data(self, request: Request) -> JSONResponse:
        self.views.require_admin(request.headers.get("authorization"))
        document = await dashboard_document(self.figures, self.views)
        return JSONResponse(document, headers={"Cache-Control": "no-store"})


async def dashboard_document(figures: LiveFigures, views: Views) -> dict[str, Any]:
    """`GET /v1/admin/dashboard`: per model, per plan and billing (module docstring)."""
    unread: list[str] = []
    starts = figures.tally.starts()
    try:
        await figures.tally.flush()  # this replica's latest counts too
        buckets = await figures.tally.window()
    except Exception:  # Redis down: the live figures still show, the counts do not
        buckets, unread = {}, ["counts"]
    if figures.billing is None or figures.now() - figures.billing.read_at > STALE_BILLING_S:
        try:
            await figures.refresh_billing()  # the live-state loop has not (or cannot)
        except Exception:
            unread.append("billing")
    return {
        "object": "rtcts.dashboard",
        "generated_at": round(figures.now(), 3),
        "policy_version": views.policy.version,
        "bucket_s": figures.tally.bucket_s,
        "window_s": figures.tally.window_s,
        "scope": "all_ingress_replicas" if figures.tally.store.shared else "this_ingress_replica",
        "models": model_rows(figures, buckets, starts),
        "plans": plan_rows(figures, buckets, starts),
        "billing": billing_json(figures.billing),
        "unread": unread,
    }


def model_rows(figures: LiveFigures, buckets: Buckets, starts: list[int]) -> list[dict[str, Any]]:
    assert figures.state is not None
    book = figures.book
    snapshot = figures.state.snapshot()
    realized = figures.realized(buckets)
    per_1m = figures.cost_per_1m_usd(snapshot)
    targets = figures.target_replicas()
    costs = figures.replica_costs()
    rows = []
    for model_id in book.models:
        load = snapshot.load(model_id)
        warm = sum(1 for r in load.replicas if r.warm)
        revenue = [buckets.get(s, {}).get(model_field(model_id, "revenue"), 0) for s in starts]
        cost = [costs.get(s, {}).get(model_id, 0) for s in starts]
        history = []
        for i, start in enumerate(starts):
            first = max(0, i + 1 - TRAILING_BUCKETS)
            minute = WindowMargin(sum(revenue[first : i + 1]), sum(cost[first : i + 1]))
            history.append(
                {
                    "t": start,
                    "revenue_usd": usd(revenue[i]),
                    "replica_cost_usd": usd(cost[i]),
                    "margin_1m": margin_or_none(minute),
                }
            )
        window = realized[model_id]
        rows.append(
            {
                "model": model_id,
                "replicas": {
                    "warm": warm,
                    "starting": len(load.replicas) - warm,
                    "target": targets.get(model_id),
                },
                "queued": sum(r.queued for r in load.replicas),
                "running": sum(r.running for r in load.replicas),
                "cost_usd_per_1m_tokens": per_1m.get(model_id),
                "realized": {
                    "margin": margin_or_none(window),
                    "revenue_usd": usd(window.revenue_micro),
                    "replica_cost_usd": usd(window.cost_micro),
                },
                "margin_floors": {
                    p.id: p.margin_floor for p in book.plans.values() if model_id in p.rates
                },
                "history": history,
            }
        )
    return rows


def plan_rows(figures: LiveFigures, buckets: Buckets, starts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for plan in figures.book.plans.values():

        def count(start: int, what: str, plan_id: str = plan.id) -> int:
            return buckets.get(start, {}).get(plan_field(plan_id, what), 0)

        history = [
            {
                "t": s,
                "decisions": {a.value: count(s, a.value) for a in Action},
                "revenue_usd": usd(count(s, "billed")),
                "sla_credits_usd": usd(count(s, "credit")),
            }
            for s in starts
        ]
        rows.append(
            {
                "plan": plan.id,
                "margin_floor": plan.margin_floor,
                "decisions": {a.value: sum(count(s, a.value) for s in starts) for a in Action},
                "requests_billed": sum(count(s, "requests") for s in starts),
                "revenue_usd": usd(sum(count(s, "billed") for s in starts)),
                "sla_credits_usd": usd(sum(count(s, "credit") for s in starts)),
                "history": history,
            }
        )
    return rows


def billing_json(billing: Billing | None) -> dict[str, Any] | None:
    """Totals over the meter shards, each shard's health, the last reconciliation."""
    if billing is None:
        return None
    shards = billing.shards
    ages = [s["oldest_unsynced_age_s"] for s in shards if s["oldest_unsynced_age_s"] is not None]
    return {
        "oldest_unsynced_age_s": max(ages, default=None),
        "dead_letters": sum(int(s["dead_letters"]) for s in shards),
        "outbox": sum(int(s["outbox"]) for s in shards),
        "open_windows": sum(int(s["open_windows"]) for s in shards),
        "last_reconcile": billing.last_reconcile,
        "read_at": round(billing.read_at, 3),
        "shards": [{k: s.get(k) for k in SHARD_FIELDS} for s in shards],
    }
