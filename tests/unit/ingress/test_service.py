"""The ingress's request path end to end, wired by the real `compose()` with a fake
platform (fake model handles, a real `ClusterState` fed by fake fetchers), its
`MemorySink` and `policies/default.yaml`; answers rendered as the routes render them
(no Ray, no network, no sleeps)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.cluster.snapshot import Scaling
from serve_app.cluster.state import ClusterState
from serve_app.ingress import errors
from serve_app.ingress.app import answer_chat
from serve_app.ingress.compose import IngressArgs, IngressParts, Platform, compose
from serve_app.ingress.documents import completion_json, decision_json
from serve_app.ingress.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ResponseMessage,
    Usage,
)
from serve_app.ingress.service import ChatService
from serve_app.metering.meter import MemorySink, Meter
from serve_app.models.backend import (
    BackendUnavailable,
    Completion,
    Delta,
    GenerationFailed,
    GenerationRequest,
)
from serve_app.policy import Tenant, load_policy_file
from serve_app.telemetry import NoMetrics
from tests.fakes import COMPLETION, FakeHandle

POLICY = load_policy_file(Path(__file__).resolve().parents[3] / "policies" / "default.yaml")
SCALING = {
    m.id: Scaling(
        m.cold_start_s,
        m.autoscaling.target_ongoing_requests,
        m.autoscaling.min_replicas,
        m.autoscaling.max_replicas,
    )
    for m in POLICY.policy.models
}
NOW = 1_000.0
MODEL = "qwen2.5-32b"  # warm and half busy below: plan pro allows it as requested
PRO = "Bearer rtcts-demo-pro"
BASIC = "Bearer rtcts-demo-basic"

# Pro, tier 2: $0.50 in / $3.50 out per 1M tokens: 20 * 0.5 + 50 * 3.5 = 185 micro-USD.
COMPLETION_BILL_MICRO = 185


def _report(model_id: str, running: int) -> ReplicaReport:
    return ReplicaReport(model_id, f"{model_id}-r1", running, 0, True, 0.0, NOW)


@dataclass
class Harness:
    parts: IngressParts
    handle: FakeHandle
    in_flight_seen: list[int] = field(default_factory=list)
    in_flight_service_seen: list[float] = field(default_factory=list)

    def observe(self, request: GenerationRequest) -> None:
        """The ingress's in-flight count for the model as the call reaches the replica."""
        self.in_flight_seen.append(_in_flight(self.state))
        self.in_flight_service_seen.append(self.state.view()[MODEL]["in_flight_service_s"])

    @property
    def service(self) -> ChatService:
        return self.parts.service

    @property
    def state(self) -> ClusterState:
        return self.parts.state

    @property
    def sink(self) -> MemorySink:
        sink = self.parts.sink
        assert isinstance(sink, MemorySink)
        return sink

    def tenant(self, authorization: str = PRO) -> Tenant:
        return self.service.authenticate(authorization)

    def quote(self, tenant: Tenant, body: ChatCompletionRequest) -> dict[str, Any]:
        """`POST /v1/quote`'s JSON."""
        return decision_json(self.service.quote(tenant, body))

    async def chat(self, tenant: Tenant, body: ChatCompletionRequest) -> Response:
        """`POST /v1/chat/completions`'s answer, as the route builds it."""
        return await answer_chat(self.service, tenant, body, None)

    @property
    def meters(self) -> list[Meter]:
        return list(self.sink.meters)


def _harness(
    handle: FakeHandle | None = None, *, warm: bool = True, metrics: Any = None
) -> Harness:
    """The service on the default policy. Warm: one replica each of the 8B (8 running)
    and the 32B (16 running) has reported; else nothing has (every model cold)."""

    async def fetch_reports() -> list[ReplicaReport]:
        return [_report("llama-3.1-8b", 8), _report(MODEL, 16)]

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return {}

    def no_aggregators(config: object) -> None:
        raise AssertionError("no billing without Redis")

    platform = Platform(
        fetch_reports, fetch_deployments, metrics or NoMetrics(), no_aggregators, clock=lambda: NOW
    )
    args = IngressArgs(policy=POLICY.policy.model_dump(mode="json"), policy_source=POLICY.source)
    handle = handle or FakeHandle()
    parts = compose(args, dict.fromkeys(SCALING, handle), platform)
    if warm:
        asyncio.run(parts.state.refresh_load())
    harness = Harness(parts, handle)
    handle.on_call = harness.observe
    return harness


def _body(model: str = MODEL, **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me about GPUs."}],
            "max_tokens": 100,
            **extra,
        }
    )


def _in_flight(state: ClusterState, model: str = MODEL) -> int:
    count: int = state.view()[model]["in_flight_here"]
    return count


def _chat(h: Harness, body: ChatCompletionRequest, authorization: str = PRO) -> JSONResponse:
    response = asyncio.run(h.chat(h.tenant(authorization), body))
    assert isinstance(response, JSONResponse)
    return response


def _json(response: JSONResponse) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bytes(response.body))
    return data


async def _collect(response: StreamingResponse) -> list[str]:
    """The `data:` payloads of a streamed answer, in order."""
    raw = b""
    async for piece in response.body_iterator:
        raw += piece.encode() if isinstance(piece, str) else bytes(piece)
    return [event.removeprefix("data: ") for event in raw.decode().split("\n\n") if event]


def _stream(h: Harness, body: ChatCompletionRequest) -> tuple[StreamingResponse, list[str]]:
    async def run() -> tuple[StreamingResponse, list[str]]:
        response = await h.chat(h.tenant(), body)
        assert isinstance(response, StreamingResponse)
        return response, await _collect(response)

    return asyncio.run(run())


def _micro(usd: str) -> int:
    return int(Decimal(usd) * 1_000_000)


def _api_error(h: Harness, body: ChatCompletionRequest, authorization: str = PRO) -> Any:
    """The error answer the route sends for a refused or failed request."""
    with pytest.raises(Exception) as info:  # noqa: PT011 - any error, mapped below
        asyncio.run(h.chat(h.tenant(authorization), body))
    return errors.error_for(info.value)


# ------------------------------------------------------------------ non-streaming


def test_chat_returns_the_answer_with_pricing_headers_and_usage() -> None:
    h = _harness()
    response = _chat(h, _body())
    headers = response.headers
    assert response.status_code == 200
    assert headers["x-rtcts-request-id"]
    assert headers["x-rtcts-model"] == MODEL
    assert headers["x-rtcts-decision"] == "allow"
    assert headers["x-rtcts-price-usd"] == "0.000185"
    assert _micro(headers["x-rtcts-cost-usd"]) > 0
    assert -1 < float(headers["x-rtcts-margin"]) < 1
    assert headers["x-rtcts-sla-met"] == "true"
    body = _json(response)
    assert body["id"] == "chatcmpl-" + headers["x-rtcts-request-id"]
    assert body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "GPUs are fast."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70}
    assert body["rtcts"]["billed_usd"] == headers["x-rtcts-price-usd"]


def test_chat_calls_generate_with_the_output_cap() -> None:
    h = _harness()
    _chat(h, _body(max_completion_tokens=40))
    assert h.handle.calls_seen == [("generate", False)]
    (request,) = h.handle.requests
    assert request.max_tokens == 40
    assert request.messages[0].content == "Tell me about GPUs."


def test_served_chat_lands_a_billable_meter_matching_the_price_header() -> None:
    h = _harness()
    response = _chat(h, _body())
    (meter,) = h.meters
    assert meter.billable
    assert meter.failure is None
    assert meter.billed_micro == _micro(response.headers["x-rtcts-price-usd"])
    assert meter.billed_micro == COMPLETION_BILL_MICRO
    assert meter.request_id == response.headers["x-rtcts-request-id"]
    assert (meter.tenant_id, meter.stripe_customer_id, meter.plan_id) == (
        "demo-pro",
        "cus_demo_pro",
        "pro",
    )
    assert (meter.requested_model, meter.served_model, meter.decision) == (MODEL, MODEL, "allow")
    assert (meter.input_tokens, meter.output_tokens) == (20, 50)
    assert (meter.ttft_ms, meter.total_ms, meter.sla_met) == (200.0, 2000.0, True)
    assert meter.cost_micro == _micro(response.headers["x-rtcts-cost-usd"])
    assert meter.policy_version == POLICY.version


def test_missed_sla_is_billed_with_the_plans_credit() -> None:
    late = Completion("late", "stop", input_tokens=20, output_tokens=50, ttft_s=5.0, total_s=8.0)
    h = _harness(FakeHandle(completion=late))
    response = _chat(h, _body())
    # Pro credits 25%: 185 - round_half_up(46.25) = 139 micro-USD.
    assert response.headers["x-rtcts-price-usd"] == "0.000139"
    assert response.headers["x-rtcts-sla-met"] == "false"
    (meter,) = h.meters
    assert (meter.list_price_micro, meter.credit_micro, meter.billed_micro) == (185, 46, 139)
    assert not meter.sla_met


def test_in_flight_is_counted_during_the_call_and_back_to_zero_after_success() -> None:
    h = _harness()
    _chat(h, _body())
    assert h.in_flight_seen == [1]
    assert _in_flight(h.state) == 0


def test_an_in_flight_request_holds_its_predicted_slot_time_for_the_queue_behind_it() -> None:
    from serve_app.pricing.cost import full_batch_service_s

    h = _harness()
    body = _body(max_completion_tokens=40)
    decision = h.service.quote(h.tenant(), body).decision
    chosen = decision.chosen
    assert chosen is not None
    model = h.service.book.models[chosen.model_id]
    expected = full_batch_service_s(
        model, chosen.input_tokens, min(chosen.predicted_output_tokens, 40)
    )
    _chat(h, body)
    assert h.in_flight_service_seen == [pytest.approx(expected, abs=1e-6)]
    assert h.state.view()[MODEL]["in_flight_service_s"] == 0


def test_served_output_feeds_the_next_prediction() -> None:
    h = _harness()
    _chat(h, _body())
    quote = h.quote(h.tenant(), _body())
    assert quote["candidates"][0]["predicted_output_tokens"] == 50


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (GenerationFailed("injected fault"), "GenerationFailed"),
        (RuntimeError("dead"), "RuntimeError"),
    ],
)
def test_failed_generation_is_a_502_and_a_non_billable_meter(
    error: Exception, failure: str
) -> None:
    h = _harness(FakeHandle(error=error))
    exc = _api_error(h, _body())
    assert (exc.status, exc.code) == (502, "model_failed")
    assert "dead" not in exc.message  # internal detail never reaches the client
    (meter,) = h.meters
    assert (meter.billable, meter.billed_micro, meter.list_price_micro) == (False, 0, 0)
    assert (meter.failure, meter.served_model, meter.tenant_id) == (failure, MODEL, "demo-pro")
    assert (meter.input_tokens, meter.output_tokens, meter.cost_micro) == (0, 0, 0)


def test_unavailable_backend_is_a_503_and_a_non_billable_meter() -> None:
    h = _harness(FakeHandle(error=BackendUnavailable("loading")))
    exc = _api_error(h, _body())
    assert (exc.status, exc.code) == (503, "model_unavailable")
    (meter,) = h.meters
    assert (meter.billable, meter.billed_micro, meter.failure) == (False, 0, "BackendUnavailable")


def test_in_flight_is_back_to_zero_after_a_failure() -> None:
    h = _harness(FakeHandle(error=RuntimeError("replica died")))
    _api_error(h, _body())
    assert h.in_flight_seen == [1]
    assert _in_flight(h.state) == 0


def test_failed_output_does_not_feed_the_history() -> None:
    h = _harness(FakeHandle(error=GenerationFailed("boom")))
    before = h.quote(h.tenant(), _body())["candidates"][0]["predicted_output_tokens"]
    _api_error(h, _body())
    after = h.quote(h.tenant(), _body())["candidates"][0]["predicted_output_tokens"]
    assert after == before


# ------------------------------------------------------------------ streaming


def test_stream_sends_role_text_finish_then_usage_with_rtcts_then_done() -> None:
    h = _harness()
    response, events = _stream(h, _body(stream=True, stream_options={"include_usage": True}))
    assert response.media_type == "text/event-stream"
    assert response.headers["x-rtcts-model"] == MODEL
    assert response.headers["x-rtcts-decision"] == "allow"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "GPUs are fast."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
    assert last["rtcts"]["model"] == MODEL
    assert last["rtcts"]["decision"] == "allow"
    assert {c["id"] for c in chunks} == {"chatcmpl-" + response.headers["x-rtcts-request-id"]}
    assert h.handle.calls_seen == [("stream", True)]


def test_stream_without_include_usage_still_ends_with_the_rtcts_object() -> None:
    h = _harness()
    _, events = _stream(h, _body(stream=True))
    last = json.loads(events[-2])
    assert "usage" not in last
    assert last["rtcts"]["billed_usd"]
    assert events[-1] == "[DONE]"


def test_completed_stream_lands_a_billable_meter_matching_its_rtcts_object() -> None:
    h = _harness()
    _, events = _stream(h, _body(stream=True, stream_options={"include_usage": True}))
    rtcts = json.loads(events[-2])["rtcts"]
    (meter,) = h.meters
    assert meter.billable
    assert (meter.input_tokens, meter.output_tokens) == (20, 3)
    assert meter.billed_micro == _micro(rtcts["billed_usd"])
    # Pro, tier 2: 20 * 0.5 + 3 * 3.5 = 20.5 micro-USD, rounded half up.
    assert meter.billed_micro == 21


def test_in_flight_is_back_to_zero_after_a_stream_completes() -> None:
    h = _harness()
    _stream(h, _body(stream=True))
    assert h.in_flight_seen == [1]
    assert _in_flight(h.state) == 0


def test_stream_failing_midway_sends_an_error_event_and_a_non_billable_meter() -> None:
    h = _harness(FakeHandle(error=GenerationFailed("engine crashed"), fail_after=2))
    _, events = _stream(h, _body(stream=True, stream_options={"include_usage": True}))
    payloads = [json.loads(e) for e in events if e != "[DONE]"]
    assert payloads[-1]["error"]["code"] == "model_failed"
    assert not any("usage" in p or "rtcts" in p for p in payloads)
    (meter,) = h.meters
    assert (meter.billable, meter.billed_micro, meter.failure) == (False, 0, "GenerationFailed")
    assert _in_flight(h.state) == 0


def test_stream_ending_without_a_finish_reason_is_a_failure() -> None:
    h = _harness(FakeHandle(deltas=[Delta("cut"), Delta(" off")]))
    _, events = _stream(h, _body(stream=True))
    assert json.loads(events[-1])["error"]["code"] == "model_failed"
    (meter,) = h.meters
    assert (meter.billable, meter.failure) == (False, "BackendError")


def test_stream_abandoned_by_the_client_is_not_billed() -> None:
    h = _harness()

    async def run() -> None:
        response = await h.chat(h.tenant(), _body(stream=True))
        assert isinstance(response, StreamingResponse)
        iterator = response.body_iterator
        assert isinstance(iterator, AsyncIterator)
        await iterator.__anext__()  # the role chunk, then the client goes away
        await iterator.aclose()  # type: ignore[attr-defined]

    asyncio.run(run())
    (meter,) = h.meters
    assert (meter.billable, meter.billed_micro, meter.failure) == (False, 0, "cancelled")
    assert _in_flight(h.state) == 0


# ------------------------------------------------------------------ refusals


def test_throttled_decision_is_a_429_with_retry_after() -> None:
    h = _harness(warm=False)  # every model cold: the 8B's 25 s start breaks basic's SLA
    quote = h.quote(h.tenant(BASIC), _body("llama-3.1-8b"))
    assert quote["decision"] == "throttle"
    exc = _api_error(h, _body("llama-3.1-8b"), BASIC)
    assert (exc.status, exc.code, exc.type) == (429, "margin_throttled", "rate_limit_error")
    assert exc.headers["Retry-After"] == errors.retry_after_header(quote["retry_after_s"]) == "25"
    assert h.handle.requests == []
    assert h.meters == []
    assert _in_flight(h.state, "llama-3.1-8b") == 0


@pytest.mark.parametrize("authorization", [None, "", "Bearer nope", "Basic cnRjdHM=", "Bearer "])
def test_unknown_or_missing_key_is_a_401(authorization: str | None) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - mapped below
        _harness().service.authenticate(authorization)
    answer = errors.error_for(info.value)
    assert (answer.status, answer.code) == (401, "invalid_api_key")
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_demo_keys_authenticate_as_their_tenants() -> None:
    h = _harness()
    assert (h.tenant(PRO).id, h.tenant(BASIC).id) == ("demo-pro", "demo-basic")


# ------------------------------------------------------------------ quote vs chat


@pytest.mark.parametrize(
    ("authorization", "model"),
    [
        (PRO, MODEL),
        (PRO, "auto"),
        (PRO, "llama-3.1-8b"),  # below pro's floor: accepted
        (BASIC, MODEL),
        (BASIC, "economy"),
    ],
)
def test_quote_agrees_with_what_chat_then_does(authorization: str, model: str) -> None:
    h = _harness()
    quote = h.quote(h.tenant(authorization), _body(model))
    response = _chat(h, _body(model), authorization)
    assert response.headers["x-rtcts-model"] == quote["model"]
    assert response.headers["x-rtcts-decision"] == quote["decision"]
    assert response.headers["x-rtcts-reason"] == quote["reason"]
    rtcts = _json(response)["rtcts"]
    assert rtcts["quoted_price_usd"] == quote["price_usd"]
    assert h.meters[0].served_model == quote["model"]
    assert h.meters[0].requested_model == model


def test_quote_runs_nothing_and_meters_nothing() -> None:
    h = _harness()
    quote = h.quote(h.tenant(), _body())
    assert (quote["object"], quote["decision"], quote["model"]) == ("rtcts.quote", "allow", MODEL)
    assert quote["policy_version"] == POLICY.version
    assert h.handle.requests == []
    assert h.meters == []
    assert _in_flight(h.state) == 0


# ------------------------------------------------------------------ metrics


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def decision(self, *args: Any) -> None:
        self.calls.append(("decision", args))

    def billed(self, *args: Any) -> None:
        self.calls.append(("billed", args))

    def failure(self, *args: Any) -> None:
        self.calls.append(("failure", args))

    def live_state(self, *args: Any) -> None:
        self.calls.append(("live_state", args))

    def gauges(self, *args: Any) -> None:
        self.calls.append(("gauges", args))


def test_metrics_record_decisions_bills_and_failures() -> None:
    metrics = RecordingMetrics()
    h = _harness(metrics=metrics)
    _chat(h, _body())
    metrics.calls = [c for c in metrics.calls if c[0] not in {"live_state", "gauges"}]
    assert metrics.calls[0] == ("decision", (MODEL, "allow", "requested_model_feasible", "pro"))
    kind, (model, billed, cost, margin, plan, credit) = metrics.calls[1]
    assert (kind, model, billed, plan, credit) == ("billed", MODEL, COMPLETION_BILL_MICRO, "pro", 0)
    assert 0 < cost < billed
    assert margin == pytest.approx((billed - cost) / billed)

    h.handle.error = GenerationFailed("boom")
    _api_error(h, _body())
    assert metrics.calls[-1] == ("failure", (MODEL,))


def test_completion_json_is_what_the_pydantic_response_model_dumps() -> None:
    verified = {"decision": "allow", "billed_usd": "0.000185", "margin": 0.5, "sla_met": True}
    built = completion_json("abc", MODEL, COMPLETION, verified)
    model = ChatCompletionResponse(
        id="chatcmpl-abc",
        created=built["created"],
        model=MODEL,
        choices=[
            Choice(
                message=ResponseMessage(content=COMPLETION.text),
                finish_reason=COMPLETION.finish_reason,
            )
        ],
        usage=Usage.of(COMPLETION.input_tokens, COMPLETION.output_tokens),
        rtcts=verified,
    )
    expected = model.model_dump(mode="json", exclude_none=True)
    assert built == expected
    assert json.dumps(built) == json.dumps(expected)  # same key order too


def test_chat_opens_a_span_only_when_a_tracer_provider_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serve_app import telemetry

    h = _harness()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert not telemetry.tracing()
    _chat(h, _body())
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(telemetry, "tracer", provider.get_tracer("rtcts"))
    monkeypatch.setattr("serve_app.ingress.service.tracer", telemetry.tracer)
    assert telemetry.tracing()
    _chat(h, _body())
    (span,) = exporter.get_finished_spans()
    assert span.name == "rtcts.quote"
    assert span.attributes is not None
    assert span.attributes["rtcts.decision"] == "allow"


def test_an_idle_warm_cluster_serves_a_basic_request_with_its_margin_headers() -> None:
    """Issue #12: on an idle cluster every allocated margin is far below the floor, and
    the first version refused every basic request (429 margin_throttled). The replicas
    are paid whether or not the request is served: it is served."""

    async def idle() -> list[ReplicaReport]:
        return [_report("llama-3.1-8b", 0), _report(MODEL, 0)]

    h = _harness()
    h.parts.state._fetch_reports = idle
    asyncio.run(h.state.refresh_load())
    quote = h.quote(h.tenant(BASIC), _body())
    assert float(quote["candidates"][0]["margin"]) < 0  # the allocated figure
    response = _chat(h, _body(), BASIC)
    assert response.status_code == 200
    assert response.headers["x-rtcts-decision"] == "allow"
    assert "x-rtcts-margin" in response.headers
    assert "x-rtcts-cost-usd" in response.headers
