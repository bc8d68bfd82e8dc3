"""The spans of a priced request, one per decision, each with the decision's attributes.

    rtcts.request     server span of POST /v1/chat/completions and /v1/quote (joins the
                      caller's trace when it sends a W3C `traceparent`; `request_span.py`)
      rtcts.quote     the pricing decision: tenant, plan, requested and chosen model,
                      decision, reason, price, cost, margin, policy version, request id
                      (opened by the service: `decision_attributes`)
      rtcts.admission the admission round trip: tenant, request id, window, tokens and
                      amount reserved, admitted or refused and why (`TracedGate`)
      rtcts.route     the call to the chosen model: model, request id, token cap, then
                      the tokens it served, or how it failed (`traced_handles`)
      rtcts.settle    the verified meter: billed, credited, cost, margin, SLA met,
                      failure (`TracedSink`)

Attribute names are `rtcts.<name>`; money is integer micro-USD (`*_micro`). Prompts,
outputs and keys are never attributes. Nothing here runs without a tracer provider:
the wrappers are only put in place when `telemetry.tracing()` holds at start-up (the
replica sets it up from the standard OTel variables first), and each checks it again
per call, so a process without tracing pays nothing on the request path.

No HTTP framework here: the request path imports this module (the server span, which
needs one, is `request_span.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from serve_app.admission import AdmissionGate, AdmissionLimits, Admitted, Refused, Ticket
from serve_app.metering.meter import Meter, MeterSink
from serve_app.pricing import Decision
from serve_app.telemetry import span_attributes, tracer, tracing

# ------------------------------------------------------------------ rtcts.quote


def decision_attributes(
    *, tenant_id: str, plan: str, requested_model: str, request_id: str, decision: Decision
) -> dict[str, str | int | float | bool]:
    """The attributes of a `rtcts.quote` span."""
    chosen = decision.chosen
    return span_attributes(
        {
            "request_id": request_id,
            "tenant": tenant_id,
            "plan": plan,
            "requested_model": requested_model,
            "model": decision.model_id,
            "decision": decision.action.value,
            "reason": decision.reason.value,
            "price_micro": decision.price_micro,
            "surcharge_multiplier": decision.surcharge_multiplier,
            "retry_after_s": decision.retry_after_s,
            "cost_micro": chosen.cost_micro if chosen else None,
            "incremental_cost_micro": chosen.incremental_cost_micro if chosen else None,
            "margin": round(chosen.margin, 6) if chosen else None,
            "candidates": len(decision.candidates),
            "policy_version": decision.policy_version,
        }
    )


# ------------------------------------------------------------------ rtcts.admission


class TracedGate(AdmissionGate):
    """The admission gate, each `admit` in a `rtcts.admission` span."""

    async def admit(
        self, ticket: Ticket, limits: AdmissionLimits, *, fail_open: bool
    ) -> Admitted | Refused:
        if not tracing():
            return await super().admit(ticket, limits, fail_open=fail_open)
        with tracer.start_as_current_span("rtcts.admission") as span:
            span.set_attributes(
                span_attributes(
                    {
                        "request_id": ticket.request_id,
                        "tenant": ticket.tenant_id,
                        "window": ticket.window,
                        "reserve": ticket.reserve,
                        "tokens": ticket.tokens,
                        "amount_micro": ticket.amount_micro,
                        "fail_open": fail_open,
                    }
                )
            )
            result = await super().admit(ticket, limits, fail_open=fail_open)
            if isinstance(result, Admitted):
                values: dict[str, Any] = {"admission": "admitted", "degraded": result.degraded}
            else:
                values = {
                    "admission": "refused",
                    "refusal": result.code.value,
                    "retry_after_s": result.retry_after_s,
                }
            span.set_attributes(span_attributes(values))
            return result


# ------------------------------------------------------------------ rtcts.route


def traced_handles(handles: Mapping[str, Any]) -> dict[str, Any]:
    """Model handles whose calls each run in a `rtcts.route` span."""
    return {model: _TracedHandle(handle, model) for model, handle in handles.items()}


class _TracedHandle:
    """The part of a Serve `DeploymentHandle` the service uses: `options(...)` and
    `remote(request)` (awaited, or iterated with `stream=True`)."""

    def __init__(self, handle: Any, model: str, method: str = "", stream: bool = False) -> None:
        self._handle = handle
        self._model = model
        self._method = method
        self._stream = stream

    def options(self, **kwargs: Any) -> _TracedHandle:
        return _TracedHandle(
            self._handle.options(**kwargs),
            self._model,
            kwargs.get("method_name", self._method),
            kwargs.get("stream", self._stream),
        )

    def remote(self, request: Any) -> Any:
        response = self._handle.remote(request)
        if not tracing():
            return response
        span = tracer.start_span(
            "rtcts.route",
            kind=SpanKind.CLIENT,
            attributes=span_attributes(
                {
                    "request_id": getattr(request, "request_id", None),
                    "model": self._model,
                    "method": self._method,
                    "stream": self._stream,
                    "max_tokens": getattr(request, "max_tokens", None),
                }
            ),
        )
        if self._stream:
            return _TracedStream(response, span)
        return _finished(response, span)


async def _finished(response: Awaitable[Any], span: Span) -> Any:
    try:
        completion = await response
    except BaseException as exc:
        _failed(span, exc)
        raise
    span.set_attributes(
        span_attributes(
            {
                "outcome": "served",
                "input_tokens": getattr(completion, "input_tokens", None),
                "output_tokens": getattr(completion, "output_tokens", None),
                "finish_reason": getattr(completion, "finish_reason", None),
            }
        )
    )
    span.end()
    return completion


def _failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, Exception):
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("rtcts.outcome", "failed")
    else:
        span.set_attribute("rtcts.outcome", "cancelled")
    span.end()


class _TracedStream:
    """A model's stream of deltas; the span ends with the stream, however it ends."""

    def __init__(self, stream: Any, span: Span) -> None:
        self._stream = stream
        self._iterator: Any = None
        self._span = span
        self._deltas = 0
        self._last: Any = None
        self._open = True

    def __aiter__(self) -> _TracedStream:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._stream.__aiter__()
        try:
            delta = await self._iterator.__anext__()
        except StopAsyncIteration:
            self._end({"outcome": "served"})
            raise
        except BaseException as exc:
            if self._open:
                self._open = False
                _failed(self._span, exc)
            raise
        self._deltas += 1
        self._last = delta
        return delta

    def _end(self, values: dict[str, Any]) -> None:
        if not self._open:
            return
        self._open = False
        last = self._last
        values |= {
            "deltas": self._deltas,
            "input_tokens": getattr(last, "input_tokens", None),
            "output_tokens": getattr(last, "output_tokens", None),
            "finish_reason": getattr(last, "finish_reason", None),
        }
        self._span.set_attributes(span_attributes(values))
        self._span.end()

    def cancel(self) -> None:
        self._end({"outcome": "cancelled"})
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            cancel()


# ------------------------------------------------------------------ rtcts.settle


class TracedSink:
    """A meter sink whose every meter is a `rtcts.settle` span (then passed on)."""

    def __init__(self, sink: MeterSink) -> None:
        self.sink = sink

    def emit(self, meter: Meter) -> None:
        if not tracing():
            self.sink.emit(meter)
            return
        with tracer.start_as_current_span("rtcts.settle") as span:
            span.set_attributes(meter_attributes(meter))
            self.sink.emit(meter)


def meter_attributes(meter: Meter) -> dict[str, str | int | float | bool]:
    billed = meter.billed_micro
    return span_attributes(
        {
            "request_id": meter.request_id,
            "meter_id": meter.meter_id,
            "tenant": meter.tenant_id,
            "plan": meter.plan_id,
            "requested_model": meter.requested_model,
            "model": meter.served_model,
            "decision": meter.decision,
            "billable": meter.billable,
            "list_price_micro": meter.list_price_micro,
            "credit_micro": meter.credit_micro,
            "billed_micro": billed,
            "cost_micro": meter.cost_micro,
            "margin": round((billed - meter.cost_micro) / billed, 6) if billed else None,
            "sla_met": meter.sla_met,
            "input_tokens": meter.input_tokens,
            "output_tokens": meter.output_tokens,
            "ttft_ms": meter.ttft_ms,
            "total_ms": meter.total_ms,
            "failure": meter.failure,
            "abandoned": meter.abandoned,
            "policy_version": meter.policy_version,
        }
    )


__all__ = [
    "TracedGate",
    "TracedSink",
    "decision_attributes",
    "meter_attributes",
    "traced_handles",
]
