"""The spans of a priced request (ingress/traces.py), through the real ingress app with
an in-memory exporter: one trace per request, a span per decision with its attributes,
the caller's trace joined, nothing at all without a tracer provider."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from starlette.testclient import TestClient

from serve_app.admission import AdmissionLimits, Admitted, Refused, Ticket
from serve_app.admission.types import RefusalCode
from serve_app.ingress.app import build_asgi
from serve_app.ingress.request_span import TracedIngressASGI
from serve_app.ingress.traces import TracedGate, _TracedHandle
from serve_app.models.backend import BackendUnavailable, Delta
from tests.fakes import FakeHandle
from tests.ingress_app import TENANT_KEY, ingress_app, ingress_parts

TENANT = {"Authorization": f"Bearer {TENANT_KEY}"}
CHAT = {
    "model": "llama-3.1-8b",
    "messages": [{"role": "user", "content": "Tell me about GPUs."}],
    "max_tokens": 16,
}
MODULES = (
    "serve_app.telemetry",
    "serve_app.ingress.service",
    "serve_app.ingress.traces",
    "serve_app.ingress.request_span",
)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider for this test only (the global one can be set once a process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    tracer = provider.get_tracer("rtcts")
    for module in MODULES:
        monkeypatch.setattr(f"{module}.tracer", tracer)
    yield exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found = {s.name: s for s in exporter.get_finished_spans()}
    assert len(found) == len(exporter.get_finished_spans()), "one span of each name"
    return found


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _client(handle: FakeHandle | None = None) -> TestClient:
    return TestClient(ingress_app(ingress_parts(handle=handle)), raise_server_exceptions=False)


def test_a_chat_is_one_trace_with_a_span_per_decision(spans: InMemorySpanExporter) -> None:
    with _client() as client:
        answer = client.post("/v1/chat/completions", json=CHAT, headers=TENANT)
    assert answer.status_code == 200
    found = _by_name(spans)
    assert set(found) == {"rtcts.request", "rtcts.quote", "rtcts.route", "rtcts.settle"}
    request = found["rtcts.request"]
    assert request.context is not None
    for name in ("rtcts.quote", "rtcts.route", "rtcts.settle"):
        span = found[name]
        assert span.context is not None
        assert span.context.trace_id == request.context.trace_id, name
        assert span.parent is not None
        assert span.parent.span_id == request.context.span_id, name
    assert _attrs(request)["http.response.status_code"] == 200

    verified = answer.json()["rtcts"]
    request_id = answer.headers["x-rtcts-request-id"]
    quote = _attrs(found["rtcts.quote"])
    assert quote["rtcts.request_id"] == request_id
    assert quote["rtcts.tenant"] == "demo-pro"
    assert quote["rtcts.plan"] == "pro"
    assert quote["rtcts.requested_model"] == "llama-3.1-8b"
    assert quote["rtcts.model"] == verified["model"]
    assert quote["rtcts.decision"] == verified["decision"]
    assert quote["rtcts.reason"] == verified["reason"]
    assert quote["rtcts.price_micro"] == round(float(verified["quoted_price_usd"]) * 1e6)
    assert quote["rtcts.cost_micro"] == round(float(verified["cost_usd"]) * 1e6)
    assert -10 < quote["rtcts.margin"] <= 1
    assert quote["rtcts.policy_version"] == verified["policy_version"]

    route = _attrs(found["rtcts.route"])
    assert route["rtcts.request_id"] == request_id
    assert route["rtcts.model"] == verified["model"]
    assert route["rtcts.outcome"] == "served"
    assert route["rtcts.output_tokens"] == answer.json()["usage"]["completion_tokens"]

    settle = _attrs(found["rtcts.settle"])
    assert settle["rtcts.request_id"] == request_id
    assert settle["rtcts.billed_micro"] == round(float(verified["billed_usd"]) * 1e6)
    assert settle["rtcts.cost_micro"] == round(float(verified["cost_usd"]) * 1e6)
    assert settle["rtcts.margin"] == pytest.approx(verified["margin"])
    assert settle["rtcts.sla_met"] == verified["sla_met"]
    assert settle["rtcts.plan"] == "pro"
    assert not any("content" in key or "key" in key for key in settle)  # no prompt, no key


def test_the_callers_traceparent_is_the_parent(spans: InMemorySpanExporter) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**TENANT, "traceparent": f"00-{trace_id}-{parent_id}-01"}
    with _client() as client:
        assert client.post("/v1/quote", json=CHAT, headers=headers).status_code == 200
    (request,) = spans.get_finished_spans()  # a quote is priced, not admitted or served
    assert request.name == "rtcts.request"
    assert request.context is not None
    assert request.parent is not None
    assert format(request.context.trace_id, "032x") == trace_id
    assert format(request.parent.span_id, "016x") == parent_id


def test_a_stream_ends_its_route_span_and_settles_inside_the_request(
    spans: InMemorySpanExporter,
) -> None:
    with _client() as client:
        answer = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=TENANT)
    assert answer.status_code == 200
    assert "[DONE]" in answer.text
    found = _by_name(spans)
    request = found["rtcts.request"]
    assert request.context is not None
    route = found["rtcts.route"]
    assert _attrs(route)["rtcts.stream"] is True
    assert _attrs(route)["rtcts.outcome"] == "served"
    assert _attrs(route)["rtcts.deltas"] == 3
    settle = found["rtcts.settle"]
    assert settle.parent is not None
    assert settle.parent.span_id == request.context.span_id


def test_a_failed_model_call_is_an_error_span_and_a_failed_meter(
    spans: InMemorySpanExporter,
) -> None:
    with _client(FakeHandle(error=BackendUnavailable("down"))) as client:
        answer = client.post("/v1/chat/completions", json=CHAT, headers=TENANT)
    assert answer.status_code >= 500
    found = _by_name(spans)
    route = found["rtcts.route"]
    assert route.status.status_code is StatusCode.ERROR
    assert _attrs(route)["rtcts.outcome"] == "failed"
    settle = _attrs(found["rtcts.settle"])
    assert settle["rtcts.billable"] is False
    assert settle["rtcts.failure"] == "BackendUnavailable"
    assert settle["rtcts.billed_micro"] == 0


def test_without_a_tracer_provider_nothing_is_wrapped_or_recorded() -> None:
    parts = ingress_parts(handle=FakeHandle(deltas=[Delta("a", finish_reason="stop")]))
    app = build_asgi(parts)
    assert not isinstance(app, TracedIngressASGI)
    handles = parts.service._generate_handles.values()
    assert not any(isinstance(h, _TracedHandle) for h in handles)
    assert parts.sink is not None


class FakeStore:
    def __init__(self, result: Admitted | Refused) -> None:
        self.result = result

    async def admit(self, ticket: Ticket, limits: AdmissionLimits) -> Admitted | Refused:
        return self.result

    async def eviction_policy(self) -> str:
        return "noeviction"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Admitted(1, 100, 0, 500), {"rtcts.admission": "admitted", "rtcts.degraded": False}),
        (
            Refused(RefusalCode.RATE_LIMITED, 2.5),
            {
                "rtcts.admission": "refused",
                "rtcts.refusal": "rate_limited",
                "rtcts.retry_after_s": 2.5,
            },
        ),
    ],
)
def test_each_admission_is_a_span_with_its_answer(
    spans: InMemorySpanExporter, result: Admitted | Refused, expected: dict[str, Any]
) -> None:
    gate = TracedGate(FakeStore(result))  # type: ignore[arg-type]
    ticket = Ticket("demo-pro", "req-1", tokens=120, amount_micro=900)
    limits = AdmissionLimits(60, 10_000, 1_000_000)
    assert asyncio.run(gate.admit(ticket, limits, fail_open=True)) == result
    (span,) = spans.get_finished_spans()
    assert span.name == "rtcts.admission"
    attrs = _attrs(span)
    assert attrs["rtcts.request_id"] == "req-1"
    assert attrs["rtcts.tenant"] == "demo-pro"
    assert attrs["rtcts.tokens"] == 120
    assert attrs["rtcts.amount_micro"] == 900
    assert attrs["rtcts.window"] == "req"
    for key, value in expected.items():
        assert attrs[key] == value
