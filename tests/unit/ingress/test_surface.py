"""The OpenAI surface real clients send, through the real ingress app and the official
`openai` SDK (over Starlette's test client, no network): tools, several choices,
logprobs, `/v1/completions`, `/v1/embeddings`, and what a model cannot serve.

The app is `build_asgi` over parts wired by the real `compose()` on a small policy:
`tooled` serves every generation feature, `plain` only chat and completions (no tools,
no logprobs, one choice), `vec` only embeddings. Each model is a fake handle; meters
stay in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.ingress.app import build_asgi
from serve_app.ingress.compose import IngressArgs, IngressParts, Platform, compose
from serve_app.ingress.protocol import ChatCompletionResponse
from serve_app.metering.meter import MemorySink, Meter
from serve_app.models.backend import (
    ChoiceOutput,
    Completion,
    Delta,
    Embeddings,
    RequestRejected,
)
from serve_app.policy import hash_api_key, load_policy_dict
from serve_app.telemetry import NoMetrics
from tests.fakes import FakeHandle, model_dict, plan_dict, policy_dict

KEY = "surface-key"
STRICT_KEY = "surface-strict"
NOW = 1_000.0
CARD = {"input_usd_per_1m_tokens": 0.5, "output_usd_per_1m_tokens": 5}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL_COMPLETION = Completion(
    text="",
    finish_reason="tool_calls",
    input_tokens=60,
    output_tokens=9,
    ttft_s=0.1,
    total_s=0.3,
    choices=(ChoiceOutput(0, "", "tool_calls", tool_calls=(CALL,)),),
)
VECTORS = Embeddings(vectors=((0.25, -0.5, 1.0),), input_tokens=50_000, total_s=0.05)
POLICY = policy_dict(
    models=[
        model_dict("plain", capabilities=["chat", "completions"], usd_per_hour=0.01),
        model_dict("tooled", usd_per_hour=0.02),
        model_dict("vec", capabilities=["embeddings"], usd_per_hour=0.01),
    ],
    routes={"auto": ["plain", "tooled"], "vectors": ["vec"]},
    plans=[
        plan_dict(
            "std",
            prices_by_tier={1: CARD},
            on_infeasible=["reroute", "accept"],
            embedding_prices_by_model={"vec": {"input_usd_per_1m_tokens": 0.02}},
        ),
        plan_dict("strict", prices_by_tier={1: CARD}, on_infeasible=["accept"]),
    ],
    tenants=[
        {
            "id": "t-std",
            "plan": "std",
            "stripe_customer_id": "cus_std",
            "api_key_sha256": [hash_api_key(KEY)],
        },
        {
            "id": "t-strict",
            "plan": "strict",
            "stripe_customer_id": "cus_strict",
            "api_key_sha256": [hash_api_key(STRICT_KEY)],
        },
    ],
)


@dataclass
class Surface:
    parts: IngressParts
    handles: dict[str, FakeHandle]
    http: TestClient

    def sdk(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0
        )

    @property
    def meters(self) -> list[Meter]:
        sink = self.parts.sink
        assert isinstance(sink, MemorySink)
        return list(sink.meters)


@pytest.fixture
def surface() -> Iterator[Surface]:
    async def reports() -> list[ReplicaReport]:
        return [ReplicaReport(m, f"{m}-r1", 2, 0, True, 0.0, NOW) for m in ("plain", "tooled")] + [
            ReplicaReport("vec", "vec-r1", 2, 0, True, 0.0, NOW)
        ]

    async def deployments() -> dict[str, DeploymentInfo]:
        return {}

    def no_aggregators(config: object) -> None:
        raise AssertionError("no billing without Redis")

    platform = Platform(reports, deployments, NoMetrics(), no_aggregators, clock=lambda: NOW)
    loaded = load_policy_dict(POLICY)
    args = IngressArgs(policy=loaded.policy.model_dump(mode="json"))
    handles = {
        "plain": FakeHandle(),
        "tooled": FakeHandle(completion=TOOL_COMPLETION),
        "vec": FakeHandle(embeddings=VECTORS),
    }
    parts = compose(args, handles, platform)
    asyncio.run(parts.state.refresh_load())
    with TestClient(build_asgi(parts), raise_server_exceptions=False) as http:
        yield Surface(parts, handles, http)


def _chat(**fields: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        **fields,
    }


# ---------------------------------------------------------------------------- tools


def test_a_tool_call_round_trip_with_the_sdk(surface: Surface) -> None:
    client = surface.sdk()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER])
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # Routed to the model that serves tools; the tools reached it as sent.
    sent = surface.handles["tooled"].requests[-1]
    assert sent.tools == (WEATHER,)
    assert sent.tool_choice is None
    assert not surface.handles["plain"].requests
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    surface.handles["tooled"].completion = Completion("It is 21 C.", "stop", 80, 6, 0.1, 0.2)
    second = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "It is 21 C."
    history = surface.handles["tooled"].requests[-1].messages
    assert history[1].tool_calls[0]["id"] == "call_1"
    assert history[2].tool_call_id == "call_1"
    meters = surface.meters
    assert [m.billable for m in meters] == [True, True]
    assert meters[0].served_model == "tooled"
    # Billed on the engine's usage: 60 prompt tokens, 9 output tokens.
    assert (meters[0].input_tokens, meters[0].output_tokens) == (60, 9)


def test_tool_definitions_count_as_prompt_in_the_estimate(surface: Surface) -> None:
    plain = surface.http.post("/v1/quote", headers=_auth(), json=_chat())
    tooled = surface.http.post("/v1/quote", headers=_auth(), json=_chat(tools=[WEATHER]))
    assert tooled.json()["input_tokens"] > plain.json()["input_tokens"] + 10


def test_a_feature_no_candidate_serves_is_a_400_naming_field_and_model(
    surface: Surface,
) -> None:
    answer = surface.http.post(
        "/v1/chat/completions",
        headers=_auth(STRICT_KEY),
        json=_chat(model="plain", tools=[WEATHER]),
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "tools")
    assert "'plain'" in error["message"]
    for path, body, param in (
        ("/v1/embeddings", {"model": "plain", "input": "x"}, "model"),
        ("/v1/chat/completions", _chat(model="vec"), "model"),
        ("/v1/chat/completions", _chat(model="plain", logprobs=True), "logprobs"),
    ):
        answer = surface.http.post(path, headers=_auth(STRICT_KEY), json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param
    assert not surface.meters  # refused before anything was served


def test_tool_choice_none_sends_no_tools_to_a_model_without_them(surface: Surface) -> None:
    answer = surface.http.post(
        "/v1/chat/completions",
        headers=_auth(STRICT_KEY),
        json=_chat(model="plain", tools=[WEATHER], tool_choice="none"),
    )
    assert answer.status_code == 200, answer.text
    assert surface.handles["plain"].requests[-1].tools == ()


# ------------------------------------------------------------- choices, logprobs


def test_several_choices_multiply_the_reserved_output_and_are_all_returned(
    surface: Surface,
) -> None:
    completion = Completion(
        "A",
        "stop",
        20,
        30,
        0.1,
        0.5,
        choices=tuple(ChoiceOutput(i, f"answer {i}", "stop") for i in range(3)),
    )
    surface.handles["tooled"].completion = completion
    quote = surface.http.post(
        "/v1/quote", headers=_auth(), json=_chat(model="tooled", n=3, max_tokens=10)
    ).json()
    one = surface.http.post(
        "/v1/quote", headers=_auth(), json=_chat(model="tooled", max_tokens=10)
    ).json()
    (three,) = [c for c in quote["candidates"] if c["model"] == "tooled"]
    (single,) = [c for c in one["candidates"] if c["model"] == "tooled"]
    rate = 5 / 1e6  # USD per output token
    extra = float(three["worst_case_price_usd"]) - float(single["worst_case_price_usd"])
    assert extra == pytest.approx(20 * rate, abs=2e-6)  # two more choices of 10 tokens
    answer = surface.sdk().chat.completions.create(
        model="tooled", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=10
    )
    assert [c.message.content for c in answer.choices] == ["answer 0", "answer 1", "answer 2"]
    sent = surface.handles["tooled"].requests[-1]
    assert (sent.n, sent.max_tokens) == (3, 10)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 30


def test_a_price_cap_bounds_every_choice_together(surface: Surface) -> None:
    answer = surface.http.post(
        "/v1/chat/completions",
        headers=_auth(),
        json=_chat(model="tooled", n=4, max_tokens=200, max_price_usd="0.003"),
    )
    assert answer.status_code == 200, answer.text
    sent = surface.handles["tooled"].requests[-1]
    # The prediction (4 x 100 tokens) is within the cap, the worst case (4 x 200) is
    # not: 0.003 USD at 5 USD / 1M output tokens pays for < 600 output tokens in all.
    assert 140 <= sent.max_tokens < 150


def test_logprobs_reach_the_client(surface: Surface) -> None:
    logprobs = {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    }
    surface.handles["tooled"].completion = Completion(
        "Hi", "stop", 5, 1, 0.1, 0.1, choices=(ChoiceOutput(0, "Hi", "stop", logprobs=logprobs),)
    )
    answer = surface.sdk().chat.completions.create(
        model="tooled", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2
    )
    content = answer.choices[0].logprobs
    assert content is not None
    assert content.content is not None
    assert content.content[0].logprob == -0.1
    sent = surface.handles["tooled"].requests[-1]
    assert (sent.logprobs, sent.top_logprobs) == (True, 2)
    body = surface.http.post(
        "/v1/chat/completions", headers=_auth(), json=_chat(model="tooled", logprobs=True)
    ).json()
    ChatCompletionResponse.model_validate(body)


def test_a_stream_of_tool_call_pieces_and_two_choices_with_the_sdk(surface: Surface) -> None:
    surface.handles["tooled"].deltas = (
        Delta(
            "",
            index=0,
            tool_calls=(
                {**CALL, "index": 0, "function": {"name": "get_weather", "arguments": ""}},
            ),
        ),
        Delta("", index=0, tool_calls=({"index": 0, "function": {"arguments": '{"city":'}},)),
        Delta("Sun", index=1),
        Delta(
            "",
            index=0,
            tool_calls=({"index": 0, "function": {"arguments": ' "Paris"}'}},),
            finish_reason="tool_calls",
        ),
        Delta("ny.", index=1, finish_reason="stop", input_tokens=30, output_tokens=12),
    )
    stream = surface.sdk().chat.completions.create(
        model="tooled",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    arguments = ""
    finishes: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                arguments += (piece.function.arguments or "") if piece.function else ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert json.loads(arguments) == {"city": "Paris"}
    assert texts[1] == "Sunny."
    assert finishes == {0: "tool_calls", 1: "stop"}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 12)
    (meter,) = surface.meters
    assert (meter.billable, meter.output_tokens) == (True, 12)


# ------------------------------------------------------------------ completions


def test_text_completions_with_the_sdk(surface: Surface) -> None:
    surface.handles["tooled"].completion = Completion(
        "once",
        "length",
        8,
        6,
        0.1,
        0.2,
        choices=(ChoiceOutput(0, "once", "length"), ChoiceOutput(1, "upon", "length")),
    )
    # Two prompts are two choices: `plain` serves one choice only, so `auto` picks `tooled`.
    answer = surface.sdk().completions.create(
        model="auto", prompt=["Tell me", "a story"], max_tokens=3
    )
    assert [c.text for c in answer.choices] == ["once", "upon"]
    assert answer.object == "text_completion"
    assert answer.id.startswith("cmpl-")
    assert not surface.handles["plain"].requests
    sent = surface.handles["tooled"].requests[-1]
    assert (sent.prompt, sent.messages, sent.max_tokens) == (("Tell me", "a story"), (), 3)
    (meter,) = surface.meters
    assert (meter.input_tokens, meter.output_tokens) == (8, 6)
    # 8 prompt tokens at 0.5 USD and 6 output tokens at 5 USD per 1M: 34 micro-USD.
    assert (meter.billable, meter.billed_micro) == (True, 34)


def test_a_text_completion_streams(surface: Surface) -> None:
    surface.handles["plain"].deltas = (
        Delta("Once"),
        Delta(" upon", finish_reason="length", input_tokens=3, output_tokens=2),
    )
    chunks = list(
        surface.sdk().completions.create(
            model="plain",
            prompt="Tell me",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Once upon"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert all(c.object == "text_completion" for c in chunks)


def test_text_completion_fields_rtcts_does_not_serve_are_refused(surface: Surface) -> None:
    for fields, param in (
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": [1, 2, 3]}, "prompt"),
    ):
        body = {"model": "plain", "prompt": "x", **fields}
        answer = surface.http.post("/v1/completions", headers=_auth(), json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["param"], error["code"]) == (param, "unsupported_parameter")


# ------------------------------------------------------------------- embeddings


def test_embeddings_with_the_sdk_are_billed_per_input_token(surface: Surface) -> None:
    client = surface.sdk()
    default = client.embeddings.create(model="vectors", input=["a", "b"])  # base64 on the wire
    floats = client.embeddings.create(model="vec", input="a", encoding_format="float")
    assert [d.embedding for d in default.data] == [[0.25, -0.5, 1.0]] * 2
    assert floats.data[0].embedding == [0.25, -0.5, 1.0]
    assert default.usage.prompt_tokens == 50_000
    meters = surface.meters
    assert [(m.served_model, m.input_tokens, m.output_tokens) for m in meters] == [
        ("vec", 50_000, 0),
        ("vec", 50_000, 0),
    ]
    # 50,000 tokens at 0.02 USD per 1M: 1,000 micro-USD, no SLA credit.
    assert [m.billed_micro for m in meters] == [1_000, 1_000]
    assert all(m.sla_met and m.credit_micro == 0 for m in meters)
    sent = surface.handles["vec"].embedding_requests[0]
    assert sent.inputs == ("a", "b")


def test_the_model_list_shows_embedding_models_with_their_price(surface: Surface) -> None:
    listed = surface.http.get("/v1/models", headers=_auth()).json()["data"]
    cards = {card["id"]: card["pricing"] for card in listed}
    assert cards["vec"] == {"embedding_usd_per_1m_tokens": "0.020000", "quality_tier": 1}
    assert cards["vectors"] == {"route_alias": ["vec"]}
    assert cards["auto"] == {"route_alias": ["plain", "tooled"]}
    assert "embedding_usd_per_1m_tokens" not in cards["plain"]
    ids = [model.id for model in surface.sdk().models.list()]
    assert {"vec", "plain", "tooled"} <= set(ids)


def test_embedding_dimensions_and_token_inputs_reach_the_model(surface: Surface) -> None:
    answer = surface.http.post(
        "/v1/embeddings",
        headers=_auth(),
        json={"model": "vec", "input": [[1, 2], [3]], "dimensions": 2, "encoding_format": "float"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-rtcts-model"] == "vec"
    sent = surface.handles["vec"].embedding_requests[-1]
    assert (sent.inputs, sent.dimensions) == (((1, 2), (3,)), 2)
    assert [len(d["embedding"]) for d in answer.json()["data"]] == [2, 2]


# -------------------------------------------------------------------- rejections


def test_a_request_the_engine_rejects_is_a_400_and_never_billed(surface: Surface) -> None:
    surface.handles["tooled"].error = RequestRejected(
        "this schema is not supported", param="response_format"
    )
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    answer = surface.http.post(
        "/v1/chat/completions", headers=_auth(), json=_chat(model="tooled", response_format=fmt)
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("rejected_by_model", "response_format")
    assert "this schema is not supported" in error["message"]
    (meter,) = surface.meters
    assert (meter.billable, meter.failure) == (False, "RequestRejected")


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
