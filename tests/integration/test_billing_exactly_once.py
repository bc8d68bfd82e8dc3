"""Exactly once to Stripe, end to end on real parts: meters written to a real Redis
stream, the detached aggregator actor on real Ray (killed with SIGKILL again and
again), the real stripe SDK, the local Stripe emulator (with injected faults)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtcts_dev.stripe_emulator import EmulatorServer
from serve_app.local.redis_server import EmbeddedRedis
from serve_app.metering.aggregator import AggregatorConfig, ensure_aggregators
from serve_app.metering.meter import Meter, new_meter_id
from serve_app.metering.stream import MeterStreamWriter
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS
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


def _produce(
    url: str, spool: Path, seconds: float, rate: int, stats: dict[str, int]
) -> list[Meter]:
    """Steady load: `rate` meters a second for `seconds`, through the ingress's writer."""
    rng = random.Random(11)
    meters: list[Meter] = []

    async def run() -> None:
        writer = MeterStreamWriter.from_url(url, spool)
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
    redis: EmbeddedRedis,
    tmp_path: Path,
    *,
    fail_rate: float,
    kills: int,
    redis_outage: bool = False,
) -> None:
    import ray

    with EmulatorServer(fail_rate=fail_rate, timeout_s=0.5 if fail_rate else 0.0, seed=5) as stripe:
        config = AggregatorConfig(
            redis_url=redis.url,
            instance=f"it-{uuid.uuid4().hex[:8]}",
            window_s=1,
            grace_s=1,
            stripe_api_base=stripe.url,
            customers=tuple((cus, tenant) for tenant, cus in CUSTOMERS.items()),
        )
        (aggregator,) = ensure_aggregators(config)
        produced: list[Meter] = []
        stats: dict[str, int] = {}
        producer = threading.Thread(
            target=lambda: produced.extend(_produce(redis.url, tmp_path / "spool", 8.0, 400, stats))
        )
        producer.start()
        rng = random.Random(3)
        if redis_outage:  # Redis goes away mid-load and comes back with its data (AOF)
            time.sleep(2.0)
            redis.stop()
            time.sleep(1.5)
            redis.start()
        pids = set()
        for _ in range(kills):  # SIGKILL the actor's process at random moments
            time.sleep(rng.uniform(0.2, 0.7))
            pid = ray.get(aggregator.pid.remote(), timeout=60)
            pids.add(pid)
            os.kill(pid, signal.SIGKILL)
        producer.join()
        expected = _expected(produced)

        def converged() -> bool:
            return stripe.state.totals() == expected

        try:
            wait_until(converged, timeout_s=180, every_s=0.5)
        finally:
            health: dict[str, Any] = ray.get(aggregator.health.remote(), timeout=60)
            ray.kill(aggregator, no_restart=True)
        assert len(pids) >= kills  # every kill hit a fresh process
        if redis_outage:
            assert stats["spooled"] > 0  # the outage really sent meters to the spool
            assert stats["replayed"] >= stats["spooled"]
        assert health["dead_letters"] == 0
        # Each identifier went to Stripe with one value: what Stripe holds is exactly
        # the local ledger of delivered windows.
        events = {e["identifier"]: e["value"] for e in stripe.state.events()}
        assert len(events) == len(stripe.state.events())
        assert sum(events.values()) == sum(expected.values())


def test_killing_the_aggregator_again_and_again_loses_and_doubles_nothing(
    ray_serve: str, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    _run_scenario(ray_serve, redis, tmp_path, fail_rate=0.0, kills=10)


def test_stripe_failing_30_percent_of_calls_still_bills_exactly(
    ray_serve: str, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    _run_scenario(ray_serve, redis, tmp_path, fail_rate=0.3, kills=2)


def test_redis_restarted_mid_load_loses_nothing_and_spooled_meters_count_once(
    ray_serve: str, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    _run_scenario(ray_serve, redis, tmp_path, fail_rate=0.0, kills=1, redis_outage=True)
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # every spooled meter replayed
