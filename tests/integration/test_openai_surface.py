"""The OpenAI surface real clients send, end to end with the official `openai` SDK:
a tool call round trip, `n` choices, logprobs, `/v1/completions` and `/v1/embeddings`,
each billed at the price its engine-reported usage implies.

One app beside the session's main one (its own name, route prefix, Redis and Stripe
emulator), serving two backends:
- `openai_upstream` models on a small local OpenAI-compatible server
  (tests/openai_server.py), whose token counts are its own: `up-chat`, `up-embed` called
  by the ingress itself (the default dispatch), `ud-chat`, `ud-embed` through a Serve
  deployment (`dispatch: deployment`);
- `ray_serve_llm` models (`llm-chat`, `llm-embed`): Ray Serve LLM's `LLMServer` with the
  simulated engine.
Each test runs on both. Prices (micro-USD per token): 5 in, 50 out, 20 per token
embedded; no SLA credit, so what is billed is exactly the usage's price.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from serve_app.local.redis_server import EmbeddedRedis
from serve_app.policy import hash_api_key
from tests.integration.conftest import wait_until
from tests.openai_server import OpenAIServer, serving

pytestmark = pytest.mark.integration

APP_NAME = "rtcts-surface-it"
PREFIX = "/surface-it"
KEY = "it-surface"
IN_MICRO, OUT_MICRO, EMBED_MICRO = 5, 50, 20
BACKENDS = ("openai_upstream", "upstream_via_deployment", "ray_serve_llm")
"""`openai_upstream` called by the ingress itself (its default dispatch), the same through
a Serve deployment (`dispatch: deployment`), and Ray Serve LLM."""
NAMES = {"openai_upstream": "up", "upstream_via_deployment": "ud", "ray_serve_llm": "llm"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1}},
            "required": ["city"],
        },
    },
}


def _model(model_id: str, backend: str, upstream: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": model_id,
        "backend": backend,
        "accelerator": "test",
        "usd_per_hour": 0.1,
        "quality_tier": 1,
        "throughput": {
            "prefill_tokens_per_s": 20000,
            "decode_tokens_per_s_at_batch_1": 200,
            "max_concurrent_sequences": 8,
            "decode_tokens_per_s_at_max_batch": 800,
        },
        "cold_start_s": 1,
        "context_window_tokens": 4096,
        "max_output_tokens": 256,
        "default_output_tokens": 16,
        "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 8},
        **extra,
    }
    if backend == "upstream_via_deployment":
        spec.update(backend="openai_upstream", dispatch="deployment")
    if spec["backend"] == "openai_upstream":
        spec["upstream_url"] = upstream
    else:
        spec["ray_serve_llm"] = {"engine": "simulated", "stream_batching_interval_ms": 0}
    return spec


def _policy(upstream: str) -> dict[str, Any]:
    embed = {"capabilities": ["embeddings"]}
    return {
        "version": "it-surface-1",
        "models": [
            model
            for backend in BACKENDS
            for model in (
                _model(_chat_model(backend), backend, upstream),
                _model(_embed_model(backend), backend, upstream, **embed),
            )
        ],
        "plans": [
            {
                "id": "surface",
                "prices_by_tier": {
                    1: {"input_usd_per_1m_tokens": IN_MICRO, "output_usd_per_1m_tokens": OUT_MICRO}
                },
                "embedding_prices_by_model": {
                    _embed_model(b): {"input_usd_per_1m_tokens": EMBED_MICRO} for b in BACKENDS
                },
                "margin_floor": 0.2,
                "on_infeasible": ["reroute", "accept"],
                "sla": {"ttft_target_ms": 5000, "tpot_target_ms": 1000, "credit_fraction": 0},
                "limits": {
                    "requests_per_minute": 100000,
                    "tokens_per_minute": 100000000,
                    "monthly_budget_usd": 1000,
                },
            }
        ],
        "tenants": [
            {
                "id": "t-surface",
                "plan": "surface",
                "stripe_customer_id": "cus_it_surface",
                "api_key_sha256": [hash_api_key(KEY)],
            }
        ],
    }


@dataclass
class Surface:
    url: str
    upstream: OpenAIServer
    billed: list[Decimal] = field(default_factory=list)
    """What every request was billed, as the tests expect it from the usage."""

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=60)

    def expect(self, prompt: int, completion: int, *, embedding: bool = False) -> Decimal:
        micro = prompt * (EMBED_MICRO if embedding else IN_MICRO) + completion * OUT_MICRO
        price = Decimal(micro).scaleb(-6)
        self.billed.append(price)
        return price


@pytest.fixture(scope="module")
def surface(ray_serve: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surface]:
    from ray import serve

    from rtcts_dev.stripe_emulator import EmulatorServer
    from serve_app.builder import build_app

    redis = EmbeddedRedis(tmp_path_factory.mktemp("surface-redis"))
    with serving() as (upstream_url, upstream), redis, EmulatorServer() as stripe:
        app = build_app(
            {
                "policy": _policy(upstream_url),
                "app_name": APP_NAME,
                "redis_url": redis.url,
                "stripe_api_base": stripe.url,
                "data_dir": str(tmp_path_factory.mktemp("surface-data")),
                "window_s": 1,
                "grace_s": 1,
            }
        )
        serve.run(app, name=APP_NAME, route_prefix=PREFIX)
        url = f"{ray_serve}{PREFIX}"
        try:
            wait_until(lambda: _warm(url) == 2 * len(BACKENDS), 180)
            yield Surface(url, upstream)
        finally:
            serve.delete(APP_NAME)
            _kill_aggregator()


def _warm(url: str) -> int:
    response = httpx.get(f"{url}/v1/cluster", headers=_auth(), timeout=5)
    if response.status_code != 200:
        return 0
    models = response.json()["models"].values()
    return sum(any(r["warm"] for r in m["replicas"]) for m in models)


def _kill_aggregator() -> None:
    """The app's detached aggregator outlives it: stopped before its Redis goes."""
    import ray

    from serve_app.metering.aggregator import AGGREGATOR_NAME, AGGREGATOR_NAMESPACE

    name = AGGREGATOR_NAME.format(instance=APP_NAME, shard=0)
    with contextlib.suppress(ValueError):  # ValueError: never created
        ray.kill(ray.get_actor(name, namespace=AGGREGATOR_NAMESPACE), no_restart=True)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _chat_model(backend: str) -> str:
    return f"{NAMES[backend]}-chat"


def _embed_model(backend: str) -> str:
    return f"{NAMES[backend]}-embed"


def _billed(answer: Any) -> Decimal:
    """The `rtcts.billed_usd` of an SDK answer (an extra field of OpenAI's models)."""
    return Decimal((answer.model_extra or {})["rtcts"]["billed_usd"])


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tool_call_round_trip_with_the_sdk(surface: Surface, backend: str) -> None:
    client = surface.client()
    model = _chat_model(backend)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER], max_tokens=64
    )
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str)
    assert arguments["city"]
    assert first.usage is not None
    assert _billed(first) == surface.expect(
        first.usage.prompt_tokens, first.usage.completion_tokens
    )

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21}'},
    ]
    second = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER], max_tokens=16
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content
    assert second.usage is not None
    # The tool definitions and the call and result in the history are prompt, as the
    # engine counts them.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert _billed(second) == surface.expect(
        second.usage.prompt_tokens, second.usage.completion_tokens
    )
    if backend == "openai_upstream":
        sent = surface.upstream.last("/v1/chat/completions")
        assert sent["tools"] == [WEATHER]
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
        assert sent["messages"][2] == {
            "role": "tool",
            "content": '{"temperature_c": 21}',
            "tool_call_id": call.id,
        }


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_streamed_tool_call_with_the_sdk(surface: Surface, backend: str) -> None:
    stream = surface.client().chat.completions.create(
        model=_chat_model(backend),
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        stream_options={"include_usage": True},
    )
    name, arguments, finish, usage, rtcts = "", "", None, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        rtcts = (chunk.model_extra or {}).get("rtcts") or rtcts
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                if piece.function is not None:
                    name += piece.function.name or ""
                    arguments += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert isinstance(json.loads(arguments)["city"], str)
    assert finish == "tool_calls"
    assert usage is not None
    assert rtcts is not None
    assert Decimal(rtcts["billed_usd"]) == surface.expect(
        usage.prompt_tokens, usage.completion_tokens
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_choices_are_returned_and_billed_for_both(surface: Surface, backend: str) -> None:
    answer = surface.client().chat.completions.create(
        model=_chat_model(backend),
        messages=[{"role": "user", "content": "Say something about GPUs."}],
        n=2,
        max_tokens=6,
    )
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content for c in answer.choices)
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 6  # both choices' output
    assert _billed(answer) == surface.expect(
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_with_the_sdk(surface: Surface, backend: str) -> None:
    answer = surface.client().chat.completions.create(
        model=_chat_model(backend),
        messages=[{"role": "user", "content": "Say something about GPUs."}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=5,
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content
    assert "".join(t.token for t in logprobs.content) == answer.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in logprobs.content)
    assert answer.usage is not None
    assert _billed(answer) == surface.expect(
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_completions_with_the_sdk(surface: Surface, backend: str) -> None:
    client = surface.client()
    model = _chat_model(backend)
    answer = client.completions.create(
        model=model, prompt=["Once upon a time", "In a land"], n=2, max_tokens=4, logprobs=1
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert all(c.text and c.logprobs and c.logprobs.tokens for c in answer.choices)
    assert answer.usage is not None
    assert _billed(answer) == surface.expect(
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )
    chunks = list(
        client.completions.create(
            model=model,
            prompt="Once upon a time",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None
    rtcts = (chunks[-1].model_extra or {})["rtcts"]
    assert Decimal(rtcts["billed_usd"]) == surface.expect(
        usage.prompt_tokens, usage.completion_tokens
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_embeddings_with_the_sdk(surface: Surface, backend: str) -> None:
    client = surface.client()
    model = _embed_model(backend)
    inputs = ["GPUs are fast.", "Batches fill up when traffic grows."]
    default = client.embeddings.create(model=model, input=inputs)  # base64 on the wire
    floats = client.embeddings.create(model=model, input=inputs, encoding_format="float")
    assert len(default.data) == len(floats.data) == 2
    for packed, plain in zip(default.data, floats.data, strict=True):
        assert packed.embedding == pytest.approx(plain.embedding, rel=1e-6)  # float32
    assert all(len(d.embedding) > 1 for d in default.data)
    for answer in (default, floats):
        assert answer.usage.prompt_tokens > 0
        assert _billed(answer) == surface.expect(answer.usage.prompt_tokens, 0, embedding=True)
    if backend == "openai_upstream":
        assert surface.upstream.last("/v1/embeddings")["input"] == inputs


def test_the_ingress_calls_an_upstream_itself_unless_told_otherwise(surface: Surface) -> None:
    """`up-*` have no Serve deployment: the ingress is their one replica, warm, with the
    requests it has in flight; `ud-*` (dispatch: deployment) have their own."""
    from ray import serve

    deployments = serve.status().applications[APP_NAME].deployments
    assert not {"up-chat", "up-embed"} & deployments.keys()
    assert {"ud-chat", "ud-embed", "llm-chat", "llm-embed"} <= deployments.keys()
    models = httpx.get(f"{surface.url}/v1/cluster", headers=_auth(), timeout=5).json()["models"]
    (replica,) = models["up-chat"]["replicas"]
    assert replica["replica_id"].startswith("up-chat@")
    assert replica["warm"]
    assert models["up-chat"]["running_replicas"] == 1
    assert not models["ud-chat"]["replicas"][0]["replica_id"].startswith("ud-chat@")


def test_every_field_reaches_the_upstream_server(surface: Surface) -> None:
    answer = surface.client().chat.completions.create(
        model="up-chat",
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias={"42": -100},
        stop=["END"],
        seed=3,
        user="someone",
        max_tokens=8,
    )
    assert answer.usage is not None
    assert _billed(answer) == surface.expect(
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )
    sent = surface.upstream.last("/v1/chat/completions")
    expected = {
        "response_format": {"type": "json_object"},
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "logit_bias": {"42": -100},
        "stop": ["END"],
        "seed": 3,
        "user": "someone",
    }
    assert {k: sent.get(k) for k in expected} == expected


def test_a_request_the_upstream_refuses_is_a_clear_400_never_billed(surface: Surface) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        surface.client().chat.completions.create(
            model="up-chat",
            messages=[{"role": "user", "content": "hi"}],
            logit_bias={"999999": 5},
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("rejected_by_model", "logit_bias")
    assert "out of vocabulary" in error["message"]


def test_everything_billed_reaches_the_usage_and_stripe(surface: Surface) -> None:
    if not surface.billed:
        pytest.skip("no request was billed in this run")
    total = sum(surface.billed, Decimal(0))

    def synced() -> dict[str, Any] | None:
        response = httpx.get(f"{surface.url}/v1/usage", headers=_auth(), timeout=5)
        billing: dict[str, Any] = response.json()["billing"]
        done = Decimal(billing["billed_usd"]) == total and Decimal(billing["pending_usd"]) == 0
        assert done, (str(total), billing)
        return billing

    billing = wait_until(synced, timeout_s=60, every_s=0.5)
    assert billing["synced_to_stripe_usd"] == billing["billed_usd"]
    assert billing["failed_requests_not_billed"] >= 1  # the refused request
