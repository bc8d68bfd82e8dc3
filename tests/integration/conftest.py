"""Real Ray Serve for integration tests: one local Ray and one rtcts app per session.

The app runs in Serve's throughput-optimized mode (rtcts's default) on a free port,
from tests/integration/policy.yaml (fast simulated models, short cold starts).
Everything is shut down at the end of the session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.local.child import free_port
from tests.cluster_redis import RedisClusterServers

POLICY = Path(__file__).with_name("policy.yaml")
APP_NAME = "rtcts-it"
KEYS = {
    name: f"it-{name}"
    for name in ("flex", "strict", "premium", "limited", "budget", "closed", "tokens", "hostile")
}
"""API keys by plan name (and "tokens": a premium tenant of one test alone)."""
ADMIN_KEY = "it-admin"


def wait_until(check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[str]:
    """A local Ray with Serve on a free port; yields the base URL."""
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # Fast mode serves each ingress replica's port directly, and Serve then holds a
    # stopping ingress replica 30 s for the proxy to drain it: every app a test module
    # deletes waited that long, with no proxy in front to drain.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, namespace="rtcts-tests")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A local Redis Cluster (3 masters, 3 replicas: `tests/cluster_redis.py`), started
    on first use; `.url` is its `redis+cluster://` URL. A test that changes its topology
    leaves it healthy again (`wait_healthy`)."""
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def stripe_url() -> Iterator[str]:
    """The local Stripe emulator (in a thread) that the app's aggregator bills."""
    from rtcts_dev.stripe_emulator import EmulatorServer

    with EmulatorServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def app_url(
    ray_serve: str, redis_url: str, stripe_url: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The rtcts app deployed from the integration policy, live state flowing."""
    from ray import serve

    from serve_app.builder import build_app

    serve.run(
        build_app(
            {
                "policy_path": str(POLICY),
                "natural_output": False,
                "app_name": APP_NAME,
                "redis_url": redis_url,
                "ingress_replicas": 2,
                "data_dir": str(tmp_path_factory.mktemp("rtcts-data")),
                "stripe_api_base": stripe_url,
                "window_s": 1,
                "grace_s": 1,
            }
        ),
        name=APP_NAME,
        route_prefix="/",
    )

    def ready() -> bool:
        health = httpx.get(f"{ray_serve}/healthz", timeout=5).json()
        cluster = httpx.get(f"{ray_serve}/v1/cluster", headers=auth("flex"), timeout=5).json()
        warm = [m for m in cluster["models"].values() if any(r["warm"] for r in m["replicas"])]
        return health["load_age_s"] is not None and len(warm) >= 2

    wait_until(ready, timeout_s=120)
    return ray_serve


def auth(plan: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[plan]}"}


def chat_body(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say something short about GPUs."}],
        "max_tokens": max_tokens,
        **extra,
    }
