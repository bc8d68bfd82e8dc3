"""A `ray_serve_llm` model on real Ray Serve: Ray Serve LLM's `LLMServer` with the
simulated engine behind rtcts's ingress (tests/integration/ray_serve_llm_policy.yaml).

The app is deployed beside the session's main app, under its own name and route
prefix, with its own Redis and Stripe emulator (meter streams are per Redis). Its model
starts at zero replicas and drops an idle one after 2 s (`model_scale_down_s`). Order
matters: the first test finds the model cold, the last waits for it to go cold again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serve_app.local.redis_server import EmbeddedRedis
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

POLICY = Path(__file__).with_name("ray_serve_llm_policy.yaml")
APP_NAME = "rtcts-llm-it"
PREFIX = "/llm-it"
MODEL = "llm-sim"
KEY = {"Authorization": "Bearer it-llm"}
PRICE_MICRO_PER_TOKEN = (5, 50)
"""The plan's input and output prices, micro-USD per token (5 and 50 USD per 1M)."""
CREDIT = Decimal("0.1")
"""The plan's SLA credit fraction."""
STRIPE: dict[str, str] = {}
"""The module's Stripe emulator URL, under "url" (set by the `llm_url` fixture)."""


@pytest.fixture(scope="module")
def llm_url(ray_serve: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from rtcts_dev.stripe_emulator import EmulatorServer
    from serve_app.builder import build_app

    redis = EmbeddedRedis(tmp_path_factory.mktemp("llm-redis"))
    with redis, EmulatorServer() as stripe:
        STRIPE["url"] = stripe.url
        app = build_app(
            {
                "policy_path": str(POLICY),
                "app_name": APP_NAME,
                "natural_output": False,
                "redis_url": redis.url,
                "stripe_api_base": stripe.url,
                "data_dir": str(tmp_path_factory.mktemp("llm-data")),
                "window_s": 1,
                "grace_s": 1,
                "model_scale_down_s": 2,
            }
        )
        serve.run(app, name=APP_NAME, route_prefix=PREFIX)
        url = f"{ray_serve}{PREFIX}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 120)
        try:
            yield url
        finally:
            serve.delete(APP_NAME)
            _kill_aggregator()


def _kill_aggregator() -> None:
    """The app's detached aggregator outlives it: stopped before its Redis goes."""
    import ray

    from serve_app.metering.aggregator import AGGREGATOR_NAME, AGGREGATOR_NAMESPACE

    name = AGGREGATOR_NAME.format(instance=APP_NAME, shard=0)
    with contextlib.suppress(ValueError):  # ValueError: never created
        ray.kill(ray.get_actor(name, namespace=AGGREGATOR_NAMESPACE), no_restart=True)


def _cluster(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/cluster", headers=KEY, timeout=5)
    assert response.status_code == 200, response.text
    model: dict[str, Any] = response.json()["models"][MODEL]
    return model


def _live(url: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    response = httpx.post(f"{url}/v1/quote", json=body, headers=KEY, timeout=5)
    assert response.status_code == 200, response.text
    (candidate,) = response.json()["candidates"]
    live: dict[str, Any] = candidate["live"]
    return live


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="it-llm", max_retries=0, timeout=60)


BILLED: list[dict[str, Any]] = []
"""Every request the tests had served and billed: its `rtcts` block and usage."""


def _chat(url: str, max_tokens: int) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Count to {max_tokens}, please."}],
        "max_tokens": max_tokens,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=KEY, timeout=60)
    assert response.status_code == 200, response.text
    BILLED.append({**response.json()["rtcts"], "usage": response.json()["usage"]})
    return response


def test_the_cold_model_quotes_its_cold_start(llm_url: str) -> None:
    live = _live(llm_url)

    assert live["warm_replicas"] == 0
    assert live["cold_start_remaining_s"] == pytest.approx(2.0, abs=0.5)


def test_a_chat_scales_the_model_from_zero_and_is_served_by_llm_server(llm_url: str) -> None:
    response = _chat(llm_url, 6)

    body = response.json()
    assert response.headers["x-rtcts-model"] == MODEL
    assert body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["prompt_tokens"] > 0
    assert wait_until(lambda: _live(llm_url)["warm_replicas"] == 1, 30)


def test_streaming_through_the_openai_client(llm_url: str) -> None:
    chunks = list(
        _client(llm_url).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Stream, please."}],
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 7


def test_the_cluster_view_shows_the_engines_own_live_state(llm_url: str) -> None:
    done = threading.Event()

    def long_call() -> None:
        try:
            _chat(llm_url, 400)  # 400 tokens at 100 tokens/s: about 4 s on the replica
        finally:
            done.set()

    thread = threading.Thread(target=long_call)
    thread.start()

    def busy() -> dict[str, Any] | None:
        (replica,) = _cluster(llm_url)["replicas"]
        usage = replica["kv_cache_usage"]
        return replica if replica["running"] >= 1 and usage is not None and usage > 0 else None

    replica = wait_until(busy, 20, every_s=0.05)
    assert replica["warm"]
    assert 0 < replica["kv_cache_usage"] < 1  # the simulated engine's KV cache, not rtcts's
    thread.join(timeout=60)
    assert done.is_set()
    idle = wait_until(
        lambda: r if (r := _cluster(llm_url)["replicas"][0])["running"] == 0 else None, 10
    )
    assert idle["kv_cache_usage"] == 0


def test_meters_are_billed_at_the_price_card_and_reach_stripe(llm_url: str) -> None:
    for max_tokens in (3, 5, 9):
        _chat(llm_url, max_tokens)
    assert len(BILLED) >= 5
    input_price, output_price = PRICE_MICRO_PER_TOKEN
    for billed in BILLED:  # list price exactly tokens x price card; credit only on a miss
        usage = billed["usage"]
        expected = usage["prompt_tokens"] * input_price + usage["completion_tokens"] * output_price
        assert Decimal(billed["list_price_usd"]) * 1_000_000 == expected
        list_micro = Decimal(billed["list_price_usd"]) * 1_000_000
        credit_micro = Decimal(billed["credit_usd"]) * 1_000_000
        if billed["sla_met"]:
            assert credit_micro == 0
        else:  # the cold start's TTFT misses the SLA: the plan's credit, rounded half up
            assert credit_micro == (list_micro * CREDIT).quantize(Decimal(1), ROUND_HALF_UP)
        assert Decimal(billed["billed_usd"]) * 1_000_000 == list_micro - credit_micro

    served = sum(Decimal(b["billed_usd"]) for b in BILLED)

    def synced() -> dict[str, Any] | None:
        response = httpx.get(f"{llm_url}/v1/usage", headers=KEY, timeout=5)
        billing: dict[str, Any] = response.json()["billing"]
        done = Decimal(billing["synced_to_stripe_usd"]) >= served
        return billing if done and Decimal(billing["pending_usd"]) == 0 else None

    # The streamed request (test 3) is billed too: the ledger holds more than these.
    billing = wait_until(synced, timeout_s=60, every_s=0.5)
    assert Decimal(billing["billed_usd"]) == Decimal(billing["synced_to_stripe_usd"])
    assert Decimal(billing["billed_usd"]) >= served
    totals = httpx.get(f"{STRIPE['url']}/_emulator/totals", timeout=5).json()["totals"]
    stripe_micro = {
        row["event_name"]: row["value"] for row in totals if row["customer"] == "cus_it_llm"
    }
    assert stripe_micro["rtcts_billed_micro_usd"] == Decimal(billing["billed_usd"]) * 1_000_000
    assert stripe_micro["rtcts_tokens"] > sum(
        b["usage"]["prompt_tokens"] + b["usage"]["completion_tokens"] for b in BILLED
    )  # and the streamed request's


def test_the_model_scales_to_zero_and_back(llm_url: str) -> None:
    def cold() -> bool:
        model = _cluster(llm_url)
        return not model["replicas"] and model["running_replicas"] == 0

    wait_until(cold, timeout_s=60, every_s=0.5)
    assert _live(llm_url)["warm_replicas"] == 0

    response = _chat(llm_url, 4)
    assert response.json()["usage"]["completion_tokens"] == 4
    assert wait_until(lambda: _live(llm_url)["warm_replicas"] == 1, 30)
