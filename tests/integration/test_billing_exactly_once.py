"""Exactly once to Stripe, end to end on real parts: meters written to a real Redis
stream, the detached aggregator actor on real Ray (killed with SIGKILL again and
again), the real stripe SDK, the local Stripe emulator (with injected faults).

The aggregator-kill and Stripe-fault scenarios run on one Redis and on a Redis Cluster
(3 masters, 3 replicas; three meter shards, so the streams live on two masters); on the
cluster, masters also fail over mid-load (one replica promoted by CLUSTER FAILOVER, one
master SIGKILLed and replaced by its replica), and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rtcts_dev.stripe_emulator import EmulatorServer
from serve_app.local.redis_server import EmbeddedRedis
from serve_app.metering.aggregator import AggregatorConfig, ensure_aggregators
from serve_app.metering.meter import Meter, new_meter_id
from serve_app.metering.stream import MeterStreamWriter
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS
from tests.cluster_redis import RedisClusterServers
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration
CUSTOMERS = {"t-a": "cus_a", "t-b": "cus_b", "t-c": "cus_c"}


def _meter(rng: random.Random) -> Meter:
    tenant = rng.choice(sorted(CUSTOMERS))
    billable = rng.random() > 0.05
    billed = rng.randint(1, 5000) if billable else 0
    return Meter(
        meter_id=new_meter_id(),
        request_id=uuid.uuid4().hex,
        tenant_id=tenant,
        stripe_customer_id=CUSTOMERS[tenant],
        plan_id="p",
        requested_model="m",
        served_model="m",
        decision="allow",
        input_tokens=rng.randint(1, 300),
        output_tokens=rng.randint(1, 300),
        ttft_ms=1.0,
        total_ms=2.0,
        sla_met=True,
        cost_micro=1,
        list_price_micro=billed,
        credit_micro=0,
        billed_micro=billed,
        billable=billable,
        policy_version="v",
        ended_at_ms=int(time.time() * 1000),
    )


def _expected(meters: list[Meter]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for m in meters:
        if m.billable:
            for event, value in (
                (METER_EVENT_BILLED, m.billed_micro),
                (METER_EVENT_TOKENS, m.input_tokens + m.output_tokens),
            ):
                key = (m.stripe_customer_id, event)
                totals[key] = totals.get(key, 0) + value
    return totals


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@dataclass(frozen=True)
class Store:
    """Where the meters go: a URL, and the meter shards to spread them over."""

    url: str
    shards: int = 1
    cluster: RedisClusterServers | None = None


def _emptied(cluster: RedisClusterServers) -> Store:
    """The session's cluster, healthy and empty (the streams' keys are fixed names)."""
    cluster.wait_healthy()
    for port in cluster.master_ports():
        cluster.node(port).flushall()
    return Store(cluster.url, shards=3, cluster=cluster)


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh Redis, or the session's Redis Cluster emptied."""
    if request.param == "cluster":
        yield _emptied(request.getfixturevalue("redis_cluster"))
        return
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield Store(server.url)


def _produce(
    store: Store, spool: Path, seconds: float, rate: int, stats: dict[str, int]
) -> list[Meter]:
    """Steady load: `rate` meters a second for `seconds`, through the ingress's writer."""
    rng = random.Random(11)
    meters: list[Meter] = []

    async def run() -> None:
        writer = MeterStreamWriter.from_url(store.url, spool, shards=store.shards)
        writer.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(rate // 20):
                meter = _meter(rng)
                meters.append(meter)
                writer.emit(meter)
            await asyncio.sleep(0.05)
        await writer.stop()
        stats.update(spooled=writer.spooled, replayed=writer.replayed)

    asyncio.run(run())
    return meters


def _run_scenario(
    ray_serve: str,
    store: Store,
    tmp_path: Path,
    *,
    fail_rate: float,
    kills: int,
    disrupt: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Meters for 8 s through the writer, the aggregators killed `kills` times, Redis
    disrupted by `disrupt` (2 s in) if given; then Stripe must hold exactly the meters'
    totals, each window once. Returns the writer's spooled/replayed counts."""
    import ray

    with EmulatorServer(fail_rate=fail_rate, timeout_s=0.5 if fail_rate else 0.0, seed=5) as stripe:
        config = AggregatorConfig(
            redis_url=store.url,
            instance=f"it-{uuid.uuid4().hex[:8]}",
            shards=store.shards,
            window_s=1,
            grace_s=1,
            stripe_api_base=stripe.url,
            customers=tuple((cus, tenant) for tenant, cus in CUSTOMERS.items()),
        )
        aggregators = ensure_aggregators(config)
        produced: list[Meter] = []
        stats: dict[str, int] = {}
        producer = threading.Thread(
            target=lambda: produced.extend(_produce(store, tmp_path / "spool", 8.0, 400, stats))
        )
        producer.start()
        rng = random.Random(3)
        if disrupt is not None:
            time.sleep(2.0)
            disrupt()
        pids = set()
        for i in range(kills):  # SIGKILL an actor's process at random moments
            time.sleep(rng.uniform(0.2, 0.7))
            pid = ray.get(aggregators[i % len(aggregators)].pid.remote(), timeout=60)
            pids.add(pid)
            os.kill(pid, signal.SIGKILL)
        producer.join()
        expected = _expected(produced)

        def converged() -> bool:
            return stripe.state.totals() == expected

        health: list[dict[str, Any]] = []
        try:
            wait_until(converged, timeout_s=180, every_s=0.5)
        finally:
            for aggregator in aggregators:
                health.append(ray.get(aggregator.health.remote(), timeout=60))
                ray.kill(aggregator, no_restart=True)
        assert len(pids) >= kills  # every kill hit a fresh process
        assert all(h["dead_letters"] == 0 for h in health)
        # Each identifier went to Stripe with one value: what Stripe holds is exactly
        # the local ledger of delivered windows.
        events = {e["identifier"]: e["value"] for e in stripe.state.events()}
        assert len(events) == len(stripe.state.events())
        assert sum(events.values()) == sum(expected.values())
    return stats


def test_killing_the_aggregator_again_and_again_loses_and_doubles_nothing(
    ray_serve: str, store: Store, tmp_path: Path
) -> None:
    _run_scenario(ray_serve, store, tmp_path, fail_rate=0.0, kills=10)


def test_stripe_failing_30_percent_of_calls_still_bills_exactly(
    ray_serve: str, store: Store, tmp_path: Path
) -> None:
    _run_scenario(ray_serve, store, tmp_path, fail_rate=0.3, kills=2)


def test_redis_restarted_mid_load_loses_nothing_and_spooled_meters_count_once(
    ray_serve: str, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    def outage() -> None:  # Redis goes away mid-load and comes back with its data (AOF)
        redis.stop()
        time.sleep(1.5)
        redis.start()

    stats = _run_scenario(
        ray_serve, Store(redis.url), tmp_path, fail_rate=0.0, kills=1, disrupt=outage
    )
    assert stats["spooled"] > 0  # the outage really sent meters to the spool
    assert stats["replayed"] >= stats["spooled"]
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # every spooled meter replayed


def test_masters_failing_over_mid_load_lose_and_double_no_meter(
    ray_serve: str, redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    """The master of shards 0 and 1 hands over to its replica (CLUSTER FAILOVER), then the
    master of shard 2 is SIGKILLed and its replica promoted by the cluster, while meters
    flow and the aggregators fold, close and send; the killed node comes back as a
    replica. Every meter reaches Stripe exactly once."""
    from serve_app.metering.stream import stream_key

    store = _emptied(redis_cluster)
    handed, killed = (redis_cluster.master_of(stream_key(s)) for s in (0, 2))
    assert handed != killed  # the shards' streams live on two masters

    def failovers() -> None:
        redis_cluster.failover(handed)
        time.sleep(1.0)
        redis_cluster.kill(killed)
        redis_cluster.wait_for(
            lambda: len(redis_cluster.master_ports()) == 3, "the killed master's replica promoted"
        )

    try:
        _run_scenario(ray_serve, store, tmp_path, fail_rate=0.0, kills=1, disrupt=failovers)
        promoted = redis_cluster.master_ports()
        assert handed not in promoted
        assert killed not in promoted
    finally:
        redis_cluster.restart(killed)
        redis_cluster.wait_healthy()
