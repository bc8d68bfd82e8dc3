"""The real ingress ASGI app without Ray: `build_asgi()` over parts wired by the real
`compose()` on `policies/default.yaml`, with a fake platform (every model reports one
warm, lightly loaded replica; a fixed clock; no metrics) and fake model handles.

Without `redis_url` there is no admission (`/v1/usage` answers 503) and meters stay in
memory; with it, admission is real, and with `billing` too, the meter stream, the
billing view and the admin routes are (the aggregators are not started: nothing bills).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.types import Receive, Scope, Send

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.ingress.app import build_asgi
from serve_app.ingress.asgi import IngressASGI
from serve_app.ingress.compose import BillingArgs, IngressArgs, IngressParts, Platform, compose
from serve_app.metering.aggregator import AggregatorConfig
from serve_app.metering.ledger import MeterLedger
from serve_app.policy import load_policy_file
from serve_app.telemetry import NoMetrics
from tests.fakes import FakeHandle

POLICY = load_policy_file(Path(__file__).resolve().parents[1] / "policies" / "default.yaml")
NOW = 1_000.0
TENANT_KEY = "rtcts-demo-pro"
BASIC_KEY = "rtcts-demo-basic"
ADMIN_KEY = "rtcts-demo-admin"


def _platform(groups: bool) -> Platform:
    models = [m.id for m in POLICY.policy.models]

    async def fetch_reports() -> list[ReplicaReport]:
        return [ReplicaReport(m, f"{m}-r1", 2, 0, True, 0.0, NOW) for m in models]

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return {}

    def start_aggregators(config: AggregatorConfig) -> None:
        """The aggregators are Ray actors, not started here; with `groups`, what they do
        first is: each shard's consumer group is created (the billing view reads it)."""
        if groups:
            asyncio.run(_create_groups(config))

    return Platform(fetch_reports, fetch_deployments, NoMetrics(), start_aggregators, lambda: NOW)


async def _create_groups(config: AggregatorConfig) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(config.redis_url)
    try:
        for shard in range(config.shards):
            ledger = MeterLedger(client, shard, window_s=config.window_s, grace_s=config.grace_s)
            await ledger.ensure_group()
    finally:
        await client.aclose()


def redis_db(url: str, db: int) -> str:
    """`url` on another database of the same Redis (tests that write rtcts's shared keys,
    the meter stream, keep them apart from the other tests of the session)."""
    parts = urlsplit(url)
    if parts.scheme in {"redis", "rediss"}:
        return urlunsplit(parts._replace(path=f"/{db}"))
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
    return urlunsplit(parts._replace(query=f"{query}&db={db}" if query else f"db={db}"))


def ingress_parts(
    *,
    handle: FakeHandle | None = None,
    redis_url: str | None = None,
    billing: BillingArgs | None = None,
    groups: bool = True,
) -> IngressParts:
    """One ingress replica's parts (not started), every model served by `handle`. With
    `billing`, each meter shard's consumer group is created unless `groups` is False."""
    args = IngressArgs(
        policy=POLICY.policy.model_dump(mode="json"),
        policy_source=POLICY.source,
        redis_url=redis_url,
        billing=billing,
    )
    handle = handle or FakeHandle()
    handles = dict.fromkeys((m.id for m in POLICY.policy.models), handle)
    return compose(args, handles, _platform(groups))


def ingress_app(parts: IngressParts) -> IngressASGI:
    """The replica's ASGI app, its live state refreshed once (the background refresh is
    not started: the fake platform's state never changes)."""
    asyncio.run(parts.state.refresh_load())
    return build_asgi(parts)


@contextmanager
def serving(parts: IngressParts) -> Iterator[str]:
    """The replica's app on uvicorn, on a free port of 127.0.0.1 in a daemon thread; its
    parts started by the ASGI lifespan (on the server's loop), stopped at the end.
    Yields the base URL."""
    app = ingress_app(parts)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                parts.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await parts.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(asgi, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ingress", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the ingress app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
