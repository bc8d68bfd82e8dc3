"""The request path: authenticate, price, admit, serve, settle. Values in, values out.

Nothing here knows HTTP: the service returns the values of `call.py` or raises the
errors of `serve_app.errors`; the routes (`app.py`) hand them to `render.py`.

    start:    auth -> count prompt tokens -> decide (pure, on the live snapshot)
              -> admit (one Redis round trip) -> refuse, or a `ChatCall`
    complete: call the chosen model (in-flight counted) -> settle -> `ChatResult`
    stream:   `StreamOpened`, `StreamText`..., then `StreamEnd` or `StreamFailed`
    embed:    the same for `/v1/embeddings` -> `EmbeddingResult`

Chat, text completions (`/v1/completions`) and embeddings take the same path: the body
says its endpoint, the features it asks for, its choices and its prompt tokens
(`protocol.py`, `protocol_endpoints.py`), so the decision, admission, settlement and
metering are one.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from serve_app.admission import AdmissionGate, AdmissionLimits, Admitted, Refused, Ticket
from serve_app.cluster.state import ClusterState
from serve_app.errors import (
    BackendError,
    BudgetExceeded,
    GenerationFailed,
    MarginThrottled,
    NoCapacity,
    PriceCapExceeded,
    RateLimited,
    Unauthorized,
)
from serve_app.ingress.call import (
    ChatCall,
    ChatResult,
    EmbeddingResult,
    PricedBody,
    Quoted,
    Served,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    StreamOpened,
    StreamText,
)
from serve_app.ingress.history import OutputHistory
from serve_app.ingress.margins import MarginWindows
from serve_app.ingress.policy_view import PolicyView
from serve_app.ingress.protocol_endpoints import EmbeddingsRequest
from serve_app.ingress.pump import DeltaPump
from serve_app.ingress.settlement import Settlement
from serve_app.ingress.traces import decision_attributes
from serve_app.models.backend import (
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
)
from serve_app.models.tokens import count_tokens
from serve_app.policy import LoadedPolicy, Tenant
from serve_app.pricing import Decision, PriceBook, PriceRequest, Reason, decide
from serve_app.pricing.billing import output_tokens_within
from serve_app.pricing.cost import full_batch_service_s
from serve_app.telemetry import Metrics, tracer, tracing

logger = logging.getLogger("rtcts.ingress")


class ModelHandle(Protocol):
    """The part of a Serve DeploymentHandle the service uses (a seam for tests)."""

    def options(self, **kwargs: Any) -> Any: ...


class ChatService:
    """Everything the ingress does per priced request, on the current policy version
    (`swap` replaces it: a request reads the version once, at its decision)."""

    def __init__(
        self,
        view: PolicyView,
        state: ClusterState,
        handles: Mapping[str, ModelHandle],
        settlement: Settlement,
        history: OutputHistory,
        metrics: Metrics,
        admission: AdmissionGate | None = None,
        windows: MarginWindows | None = None,
    ) -> None:
        self._view = view
        self._windows = windows
        self.state = state
        # Handle options made once: `options()` builds a new handle on every call.
        self._generate_handles = {m: h.options(method_name="generate") for m, h in handles.items()}
        self._stream_handles = {
            m: h.options(method_name="stream", stream=True) for m, h in handles.items()
        }
        self._embed_handles = {m: h.options(method_name="embed") for m, h in handles.items()}
        self._settlement = settlement
        self._history = history
        self._metrics = metrics
        self._admission = admission

    def swap(self, view: PolicyView) -> None:
        """Serve new requests on `view`; requests already decided keep their terms."""
        self._view = view

    @property
    def view(self) -> PolicyView:
        return self._view

    @property
    def policy(self) -> LoadedPolicy:
        return self._view.loaded

    @property
    def book(self) -> PriceBook:
        return self._view.book

    # ------------------------------------------------------------------ auth, price

    async def admit_quote(self, tenant: Tenant) -> None:
        """Count a quote in the tenant's quote window (`quotes_per_minute`, else the
        request limit): pricing is work, and a quote reads a body of up to 4 MiB.
        `RateLimited` when over; nothing is reserved."""
        if self._admission is None:
            return
        view = self._view
        limits = view.limits[tenant.plan]
        per_minute = view.quotes_per_minute[tenant.plan]
        ticket = Ticket(tenant.id, uuid.uuid4().hex, 0, 0, reserve=False, window="quote")
        result = await self._admission.admit(
            ticket,
            AdmissionLimits(per_minute, limits.tokens_per_minute, limits.monthly_budget_micro),
            fail_open=view.fail_open[tenant.plan],
        )
        if isinstance(result, Admitted) and result.output_history:
            self._history.adopt(tenant.id, result.output_history)
        if isinstance(result, Refused):
            raise RateLimited(result.code.value, result.retry_after_s)

    def authenticate(self, authorization: str | None) -> Tenant:
        tenant = self._view.tenants.authenticate(authorization)
        if tenant is None:
            raise Unauthorized("Invalid API key")
        return tenant

    def quote(self, tenant: Tenant, body: PricedBody, view: PolicyView | None = None) -> Quoted:
        """The decision for this request now: the same pure function chat uses."""
        book = (view or self._view).book
        request = PriceRequest(
            model=body.model,
            input_tokens=body.prompt_tokens(),
            max_tokens=body.output_cap() or None,
            output_history=self._history.of(tenant.id),
            max_price_micro=body.price_cap_micro(),
            endpoint=body.endpoint,
            features=body.features(),
            choices=body.choices(),
        )
        windows = None if self._windows is None else self._windows.margins()
        snapshot = self.state.snapshot()
        return Quoted(request, decide(request, book, tenant.plan, snapshot, windows=windows))

    # ------------------------------------------------------------------ chat

    async def start(
        self,
        tenant: Tenant,
        body: PricedBody,
        client_request_id: str | None = None,
        arrived_s: float | None = None,
    ) -> ChatCall:
        """Decide and admit a chat request: the call to serve, or a refusal raised.

        The request id is made here, always: it is the admission member, the settle key
        and the meter's id, so a client cannot pick it (ten requests sent with one
        `X-Request-ID` are ten requests). The client's id is only recorded.
        `arrived_s` (monotonic) is when the request reached the ingress: its latency,
        queue and cold start included, is measured from there."""
        arrived_s = time.monotonic() if arrived_s is None else arrived_s
        request_id = uuid.uuid4().hex
        view = self._view  # one policy version from this decision to the bill
        quoted = self._traced_quote(tenant, body, request_id, view)
        decision = quoted.decision
        self._metrics.decision(
            decision.model_id or body.model,
            decision.action.value,
            decision.reason.value,
            tenant.plan,
        )
        if decision.model_id is None or decision.chosen is None:
            await self._admit(tenant, request_id, decision, None, 0, view)
            raise refusal(decision)
        model = view.book.models[decision.model_id]
        plan = view.book.plans[tenant.plan]
        cap_micro = body.price_cap_micro()
        chosen = decision.chosen
        input_tokens = quoted.request.input_tokens
        if isinstance(body, EmbeddingsRequest):
            output_cap = 0
            work: GenerationRequest | EmbeddingRequest = body.embedding(request_id)
        else:
            choices = body.choices()
            per_choice = min(
                body.output_cap() or model.max_output_tokens,
                model.max_output_tokens,
                max(1, model.context_window_tokens - input_tokens),
            )
            if cap_micro is not None:
                # The cap bounds the worst case: generation stops where the cap is spent
                # (every choice's output together).
                within = output_tokens_within(decision, plan, cap_micro) // choices
                per_choice = min(per_choice, within)
                if per_choice < 1:
                    raise PriceCapExceeded(decision.price_micro, cap_micro)
            output_cap = per_choice * choices
            work = body.generation(request_id, per_choice, model.capabilities)
        await self._admit(tenant, request_id, decision, cap_micro, output_cap, view)
        return ChatCall(
            tenant=tenant,
            body=body,
            decision=decision,
            plan=plan,
            credit=view.credits[tenant.plan],
            request_id=request_id,
            generation=work,
            service_s=full_batch_service_s(
                model, chosen.input_tokens, min(chosen.predicted_output_tokens, output_cap)
            ),
            arrived_s=arrived_s,
            client_request_id=client_request_id,
        )

    def _traced_quote(
        self, tenant: Tenant, body: PricedBody, request_id: str, view: PolicyView
    ) -> Quoted:
        if not tracing():  # no tracer provider: skip the (no-op) span's own cost
            return self.quote(tenant, body, view)
        with tracer.start_as_current_span("rtcts.quote") as span:  # traces.py lists the spans
            quoted = self.quote(tenant, body, view)
            span.set_attributes(
                decision_attributes(
                    tenant_id=tenant.id,
                    plan=tenant.plan,
                    requested_model=body.model,
                    request_id=request_id,
                    decision=quoted.decision,
                )
            )
            return quoted

    async def complete(self, call: ChatCall) -> ChatResult:
        """Serve the call in one piece: billed and metered, or a `BackendError` raised
        (metered as failed, nothing billed)."""
        handle = self._generate_handles[call.model_id]
        self.state.begin(call.model_id, call.service_s)
        try:
            completion: Completion = await handle.remote(call.generation)
        except BaseException as exc:
            self._settlement.fail(call, exc)
            raise served_error(exc) from None
        finally:
            self.state.end(call.model_id, call.service_s)
        # From arrival: the wait before the replica began (queue, cold start) counts.
        total_s = max(time.monotonic() - call.arrived_s, completion.total_s)
        waited_s = total_s - completion.total_s
        served = Served(
            completion.input_tokens,
            completion.output_tokens,
            waited_s + completion.ttft_s,
            total_s,
        )
        return ChatResult(call, completion, served, self._settlement.settle(call, served))

    async def stream(self, call: ChatCall) -> AsyncGenerator[StreamEvent, None]:
        """Serve the call as a stream of events.

        The model's deltas are read at the model's pace (`DeltaPump`), so latency is the
        model's from the request's arrival, never the reader's. Closing this iterator
        (the client left) stops the generation on the replica; what was delivered is
        billed (a partial meter), and a client that left before the first token pays
        nothing. A model failure is never billed."""
        self.state.begin(call.model_id, call.service_s)
        pump = DeltaPump(self._stream_handles[call.model_id].remote(call.generation))
        delivered: list[str] = []
        delivered_at = call.arrived_s
        try:
            yield StreamOpened()
            async for at, delta in pump:
                piece = _piece(delta)
                if piece is not None:
                    # Counted as delivered once handed to the transport (the yield).
                    delivered.append(_text_of(delta))
                    delivered_at = at
                    yield piece
            last = pump.last
            if last is None or last.finish_reason is None:
                raise BackendError("the stream ended without a finish reason")
        except BaseException as exc:
            pump.cancel()
            if isinstance(exc, Exception):  # the model failed
                self._settlement.fail(call, exc)
                yield StreamFailed(served_error(exc))
                return
            self._settlement.abandon(call, self._delivered(call, pump, delivered, delivered_at))
            raise
        finally:
            self.state.end(call.model_id, call.service_s)
        served = Served(
            last.input_tokens or 0,
            last.output_tokens or 0,
            (pump.first_at or call.arrived_s) - call.arrived_s,
            (pump.last_at or call.arrived_s) - call.arrived_s,
        )
        bill = self._settlement.settle(call, served)
        yield StreamEnd(last.finish_reason, served, bill, last.index)

    async def embed(self, call: ChatCall) -> EmbeddingResult:
        """Serve an embeddings call: billed per input token and metered, or a
        `BackendError` raised (metered as failed, nothing billed)."""
        self.state.begin(call.model_id, call.service_s)
        try:
            embeddings: Embeddings = await self._embed_handles[call.model_id].remote(
                call.generation
            )
        except BaseException as exc:
            self._settlement.fail(call, exc)
            raise served_error(exc) from None
        finally:
            self.state.end(call.model_id, call.service_s)
        total_s = max(time.monotonic() - call.arrived_s, embeddings.total_s)
        served = Served(embeddings.input_tokens, 0, total_s, total_s)
        return EmbeddingResult(call, embeddings, served, self._settlement.settle(call, served))

    @staticmethod
    def _delivered(
        call: ChatCall, pump: DeltaPump, texts: list[str], last_at: float
    ) -> Served | None:
        """What an abandoned stream delivered (None before its first token). Output is
        counted by rtcts's tokenizer, at most what the model reported; the prompt is the
        model's count when it finished, else rtcts's own."""
        if not texts:
            return None
        last = pump.last
        output = count_tokens("".join(texts))
        if last is not None and last.output_tokens is not None:
            output = min(output, last.output_tokens)
        input_tokens = last.input_tokens if last and last.input_tokens else None
        first = pump.first_at or call.arrived_s
        return Served(
            input_tokens or call.chosen.input_tokens,
            max(1, output),
            first - call.arrived_s,
            max(last_at, first) - call.arrived_s,
        )

    # ------------------------------------------------------------------ admission

    async def _admit(
        self,
        tenant: Tenant,
        request_id: str,
        decision: Decision,
        cap_micro: int | None,
        output_cap: int,
        view: PolicyView,
    ) -> None:
        """One Redis round trip: count the request; when it will be served, reserve its
        worst case (prompt plus every output token it may generate, and its worst-case
        price), settled later to the verified figures. Refusals are raised
        (`RateLimited`, `BudgetExceeded`; `AdmissionUnavailable` when Redis is down and
        the plan fails closed)."""
        if self._admission is None:
            return
        chosen = decision.chosen
        ticket = Ticket(
            tenant_id=tenant.id,
            request_id=request_id,
            tokens=chosen.input_tokens + output_cap if chosen else 0,
            amount_micro=worst_case_micro(decision, cap_micro),
            reserve=chosen is not None,
        )
        result = await self._admission.admit(
            ticket, view.limits[tenant.plan], fail_open=view.fail_open[tenant.plan]
        )
        if isinstance(result, Admitted) and result.output_history:
            # Every replica's view of the tenant's outputs: the next quote, here or on
            # any replica that admitted the tenant since, predicts from the same figures.
            self._history.adopt(tenant.id, result.output_history)
        if isinstance(result, Refused):
            if result.code.value == "budget_exceeded":
                raise BudgetExceeded("Your monthly budget would be exceeded by this request.")
            raise RateLimited(result.code.value, result.retry_after_s)


def _piece(delta: Delta) -> StreamText | None:
    """The event of a model's delta: its text, tool-call pieces or logprobs, and the
    end of its choice unless it is the stream's last (that one is `StreamEnd`'s)."""
    last = delta.output_tokens is not None
    finish = None if last else delta.finish_reason
    if not (delta.text or delta.tool_calls or delta.logprobs or finish):
        return None
    return StreamText(delta.text, delta.index, delta.tool_calls, delta.logprobs, finish)


def _text_of(delta: Delta) -> str:
    """What a delta delivers, as text: its content and its tool calls' names and
    arguments (an abandoned stream is billed for it)."""
    text = delta.text
    for call in delta.tool_calls:
        function = call.get("function") or {}
        text += " ".join(str(function.get(key) or "") for key in ("name", "arguments"))
    return text


def worst_case_micro(decision: Decision, cap_micro: int | None) -> int:
    """The most this request can be billed: worst-case tokens at the decision's terms."""
    chosen = decision.chosen
    if chosen is None:
        return 0
    scaled = math.ceil(chosen.worst_case_price_micro * decision.surcharge_multiplier)
    return scaled if cap_micro is None else min(scaled, cap_micro)


def refusal(decision: Decision) -> Exception:
    """The error for a decision that serves nothing."""
    if decision.reason is Reason.NO_CAPACITY:
        return NoCapacity()
    if decision.reason is Reason.PRICE_CAP_EXCEEDED:
        return PriceCapExceeded(min((q.price_micro for q in decision.candidates), default=None))
    return MarginThrottled(decision.retry_after_s or 1.0, decision.reason.value)


def served_error(exc: BaseException) -> BackendError:
    """A failure of the chosen model, as the client will see it: nothing is billed."""
    if isinstance(exc, BackendError):
        return exc
    return GenerationFailed("the model replica failed while serving the request")
