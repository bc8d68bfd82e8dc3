"""The serving logic behind the HTTP routes: authenticate, price, route, serve, meter.

Routes (`app.py`) stay thin; everything here is plain async Python with its parts
injected (policy, cluster state, model handles, meter sink), so it can be read
top to bottom:

    chat:  auth -> count prompt tokens -> decide (pure, on the live snapshot)
           -> throttle / 402 / 503, or call the chosen model (in-flight counted)
           -> bill the verified tokens and latency -> meter -> response
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.admission import AdmissionGate, AdmissionUnavailable, Limits, Refused, Ticket
from serve_app.cluster.state import ClusterState
from serve_app.ingress import errors
from serve_app.ingress.auth import TenantDirectory
from serve_app.ingress.history import OutputHistory
from serve_app.ingress.protocol import (
    SSE_DONE,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    Usage,
    sse,
)
from serve_app.metering.meter import Meter, MeterSink, new_meter_id
from serve_app.metering.view import BillingView
from serve_app.models.backend import BackendError, Completion, Delta, GenerationRequest
from serve_app.models.tokens import count_chat_tokens
from serve_app.policy import LoadedPolicy, Tenant, hash_api_key
from serve_app.pricing import Decision, PriceBook, PriceRequest, Reason, decide, quote
from serve_app.pricing.billing import Bill, bill
from serve_app.pricing.book import usd_to_micro
from serve_app.pricing.cost import full_batch_service_s
from serve_app.pricing.types import CandidateQuote
from serve_app.telemetry import Metrics, NoMetrics, span_attributes, tracer, tracing

logger = logging.getLogger("rtcts.ingress")

REFERENCE_TOKENS = 1000
"""`/v1/cluster` prices a request of 1000 prompt and 1000 output tokens per model."""


class ModelHandle(Protocol):
    """The part of a Serve DeploymentHandle the service uses (a seam for tests)."""

    def options(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Served:
    """A finished generation, however it was delivered."""

    input_tokens: int
    output_tokens: int
    ttft_s: float
    total_s: float

    @property
    def tpot_s(self) -> float:
        return (
            (self.total_s - self.ttft_s) / (self.output_tokens - 1)
            if self.output_tokens > 1
            else 0.0
        )


class ChatService:
    """Everything the ingress does per request, for one policy version."""

    def __init__(
        self,
        policy: LoadedPolicy,
        state: ClusterState,
        handles: Mapping[str, ModelHandle],
        sink: MeterSink,
        metrics: Metrics | None = None,
        admission: AdmissionGate | None = None,
        billing: BillingView | None = None,
    ) -> None:
        self.policy = policy
        self.book = PriceBook.from_policy(policy.policy, policy.version)
        self.state = state
        self.tenants = TenantDirectory(policy.policy.tenants)
        # Handle options made once: `options()` builds a new handle on every call.
        self._generate_handles = {m: h.options(method_name="generate") for m, h in handles.items()}
        self._stream_handles = {
            m: h.options(method_name="stream", stream=True) for m, h in handles.items()
        }
        self._sink = sink
        self._metrics = metrics or NoMetrics()
        self._admission = admission
        self._billing = billing
        self._limits = {
            p.id: Limits(
                p.limits.requests_per_minute,
                p.limits.tokens_per_minute,
                usd_to_micro(p.limits.monthly_budget_usd),
            )
            for p in policy.policy.plans
        }
        self._fail_open = {
            p.id: p.limits.on_redis_outage == "fail_open" for p in policy.policy.plans
        }
        self._admins = frozenset(policy.policy.admin_api_key_sha256)
        self._background: set[asyncio.Task[None]] = set()
        self._history = OutputHistory()
        self._credit = {p.id: Fraction(p.sla.credit_fraction) for p in policy.policy.plans}

    # ------------------------------------------------------------------ auth, price

    def authenticate(self, authorization: str | None) -> Tenant:
        tenant = self.tenants.authenticate(authorization)
        if tenant is None:
            raise errors.unauthorized()
        return tenant

    def decide(self, tenant: Tenant, body: ChatCompletionRequest) -> tuple[PriceRequest, Decision]:
        request = PriceRequest(
            model=body.model,
            input_tokens=count_chat_tokens(body.to_messages()),
            max_tokens=body.output_cap(),
            output_history=self._history.of(tenant.id),
            max_price_micro=body.price_cap_micro(),
        )
        return request, decide(request, self.book, tenant.plan, self.state.snapshot())

    def quote(self, tenant: Tenant, body: ChatCompletionRequest) -> dict[str, Any]:
        request, decision = self.decide(tenant, body)
        return decision_json(decision, request)

    # ------------------------------------------------------------------ chat

    async def chat(
        self, tenant: Tenant, body: ChatCompletionRequest, request_id: str | None = None
    ) -> JSONResponse | StreamingResponse:
        """Serve one chat completion. `request_id` is Serve's (which also sends it back as
        `x-request-id`); without one, an id is made here and sent in that header."""
        own_id = request_id is None
        request_id = request_id or uuid.uuid4().hex
        if not tracing():  # no tracer provider: skip the (no-op) span's own cost
            price_request, decision = self.decide(tenant, body)
        else:
            with tracer.start_as_current_span("rtcts.decide") as span:
                price_request, decision = self.decide(tenant, body)
                span.set_attributes(
                    span_attributes(
                        {
                            "request_id": request_id,
                            "tenant": tenant.id,
                            "requested_model": body.model,
                            "model": decision.model_id,
                            "decision": decision.action.value,
                            "reason": decision.reason.value,
                            "price_micro": decision.price_micro,
                            "policy_version": decision.policy_version,
                        }
                    )
                )
        self._metrics.decision(
            decision.model_id or body.model, decision.action.value, decision.reason.value
        )
        await self._admit(tenant, request_id, decision, body.price_cap_micro())
        if decision.model_id is None or decision.chosen is None:
            raise _refusal(decision)
        model = self.book.models[decision.model_id]
        output_cap = min(
            body.output_cap() or model.max_output_tokens,
            model.max_output_tokens,
            max(1, model.context_window_tokens - price_request.input_tokens),
        )
        generation = GenerationRequest(
            request_id=request_id,
            messages=body.to_messages(),
            max_tokens=output_cap,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop_sequences(),
            seed=body.seed,
        )
        chosen = decision.chosen
        # How long it will hold a batch slot, for the queue wait of those behind it.
        service_s = full_batch_service_s(
            model, chosen.input_tokens, min(chosen.predicted_output_tokens, output_cap)
        )
        headers = quote_headers(decision)
        if own_id:
            headers["x-request-id"] = request_id
        if body.stream:
            return StreamingResponse(
                self._stream(tenant, body, decision, generation, service_s),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        completion = await self._generate(tenant, body, decision, generation, service_s)
        verified = Served(
            completion.input_tokens, completion.output_tokens, completion.ttft_s, completion.total_s
        )
        the_bill = self._settle(tenant, body, decision, request_id, verified)
        response = completion_json(
            request_id,
            decision.model_id,
            completion,
            verified_json(decision, the_bill, verified),
        )
        headers.update(bill_headers(decision.chosen, the_bill))
        return JSONResponse(response, headers=headers)

    async def _generate(
        self,
        tenant: Tenant,
        body: ChatCompletionRequest,
        decision: Decision,
        generation: GenerationRequest,
        service_s: float,
    ) -> Completion:
        model_id = decision.model_id or ""
        handle = self._generate_handles[model_id]
        self.state.begin(model_id, service_s)
        try:
            result: Completion = await handle.remote(generation)
            return result
        except BaseException as exc:
            self._fail(tenant, body, decision, generation.request_id, exc)
            raise _served_error(exc) from None
        finally:
            self.state.end(model_id, service_s)

    async def _stream(
        self,
        tenant: Tenant,
        body: ChatCompletionRequest,
        decision: Decision,
        generation: GenerationRequest,
        service_s: float,
    ) -> AsyncIterator[bytes]:
        model_id = decision.model_id or ""
        request_id = generation.request_id
        created = int(time.time())

        def chunk(**fields: Any) -> bytes:
            return sse(
                ChatCompletionChunk(
                    id=f"chatcmpl-{request_id}", created=created, model=model_id, **fields
                )
            )

        handle = self._stream_handles[model_id]
        self.state.begin(model_id, service_s)
        started = time.monotonic()
        first_token_at: float | None = None
        last: Delta | None = None
        stream = handle.remote(generation)
        try:
            yield chunk(choices=[ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
            async for delta in stream:
                if first_token_at is None:
                    first_token_at = time.monotonic()
                last = delta
                if delta.text:
                    yield chunk(choices=[ChunkChoice(delta=ChunkDelta(content=delta.text))])
            if last is None or last.finish_reason is None:
                raise BackendError("the stream ended without a finish reason")
        except BaseException as exc:
            # The client left or the model failed: stop the generation on the replica.
            cancel = getattr(stream, "cancel", None)
            if cancel is not None:
                cancel()
            self._fail(tenant, body, decision, request_id, exc)
            if isinstance(exc, Exception):
                yield _served_error(exc).to_sse()
                return
            raise
        finally:
            self.state.end(model_id, service_s)
        ended = time.monotonic()
        verified = Served(
            last.input_tokens or 0,
            last.output_tokens or 0,
            (first_token_at or ended) - started,
            ended - started,
        )
        the_bill = self._settle(tenant, body, decision, request_id, verified)
        yield chunk(choices=[ChunkChoice(delta=ChunkDelta(), finish_reason=last.finish_reason)])
        rtcts = verified_json(decision, the_bill, verified)
        if body.include_usage():
            yield chunk(
                choices=[],
                usage=Usage.of(verified.input_tokens, verified.output_tokens),
                rtcts=rtcts,
            )
        else:
            yield chunk(choices=[], rtcts=rtcts)
        yield SSE_DONE

    # ------------------------------------------------------------------ admission

    async def _admit(
        self, tenant: Tenant, request_id: str, decision: Decision, cap_micro: int | None
    ) -> None:
        """One Redis round trip: count the request; when it will be served, reserve its
        estimated tokens and worst-case price. Refusals become 429 / 402 / 503."""
        if self._admission is None:
            return
        chosen = decision.chosen
        ticket = Ticket(
            tenant_id=tenant.id,
            request_id=request_id,
            tokens=chosen.input_tokens + chosen.predicted_output_tokens if chosen else 0,
            amount_micro=_worst_case_micro(decision, cap_micro),
            reserve=chosen is not None,
        )
        try:
            result = await self._admission.admit(
                ticket, self._limits[tenant.plan], fail_open=self._fail_open[tenant.plan]
            )
        except AdmissionUnavailable:
            raise errors.admission_unavailable() from None
        if isinstance(result, Refused):
            raise errors.refused(result.code.value, result.retry_after_s)

    def _settle_admission(self, tenant: Tenant, request_id: str, tokens: int, billed: int) -> None:
        """Settle the reservation in the background (the gate retries if Redis is down)."""
        if self._admission is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._admission.settle(tenant.id, request_id, tokens, billed)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def usage(self, tenant: Tenant) -> dict[str, Any]:
        """The tenant's current window and month, limits and what is left."""
        if self._admission is None:
            raise errors.admission_unavailable()
        try:
            usage = await self._admission.usage(tenant.id)
        except AdmissionUnavailable:
            raise errors.admission_unavailable() from None
        limits = self._limits[tenant.plan]
        spent = usage.settled_micro + usage.reserved_micro
        billing: dict[str, Any] | None = None
        if self._billing is not None:
            money = await self._billing.tenant(tenant.id, tenant.stripe_customer_id)
            billing = {
                "billed_usd": _usd(money["billed_micro"]),
                "credited_usd": _usd(money["credited_micro"]),
                "synced_to_stripe_usd": _usd(money["synced_micro"]),
                "pending_usd": _usd(money["pending_micro"]),
                "billable_requests": money["billable_requests"],
                "failed_requests_not_billed": money["failed_requests"],
            }
        return {
            "object": "rtcts.usage",
            "tenant": tenant.id,
            "plan": tenant.plan,
            "window": {
                "seconds": 60,
                "requests": usage.requests_in_window,
                "requests_limit": limits.requests_per_minute,
                "requests_remaining": max(0, limits.requests_per_minute - usage.requests_in_window),
                "tokens": usage.tokens_in_window,
                "tokens_limit": limits.tokens_per_minute,
                "tokens_remaining": max(0, limits.tokens_per_minute - usage.tokens_in_window),
            },
            "month": {
                "month": usage.month,
                "settled_usd": _usd(usage.settled_micro),
                "reserved_usd": _usd(usage.reserved_micro),
                "budget_usd": _usd(limits.monthly_budget_micro),
                "remaining_usd": _usd(max(0, limits.monthly_budget_micro - spent)),
                "billed_requests": usage.billed_requests,
                "billed_tokens": usage.billed_tokens,
            },
            "billing": billing,
        }

    async def billing_health(self) -> dict[str, Any]:
        """Admin: per meter shard, open windows, outbox size, oldest unsynced age, dead letters."""
        if self._billing is None:
            raise errors.ApiError(404, "Billing is not configured.", code="billing_disabled")
        return {"object": "rtcts.billing", "shards": await self._billing.health()}

    async def reconcile(self, stripe_client: Any) -> dict[str, Any]:
        """Admin: the local ledger against Stripe's event summaries."""
        if self._billing is None:
            raise errors.ApiError(404, "Billing is not configured.", code="billing_disabled")
        report = await self._billing.reconcile(stripe_client)
        return report.to_dict()

    def admission_health(self) -> dict[str, object] | None:
        return None if self._admission is None else self._admission.health()

    def is_admin(self, authorization: str | None) -> bool:
        """Whether the header carries an admin key (constant-time digest comparison)."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = hash_api_key(key.strip())
        return any(hmac.compare_digest(digest, admin) for admin in self._admins)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return next((t for t in self.policy.policy.tenants if t.id == tenant_id), None)

    # ------------------------------------------------------------------ meters

    def _settle(
        self,
        tenant: Tenant,
        body: ChatCompletionRequest,
        decision: Decision,
        request_id: str,
        served: Served,
    ) -> Bill:
        chosen = decision.chosen
        assert chosen is not None  # only served requests are settled
        the_bill = bill(
            decision,
            self.book.plans[tenant.plan],
            input_tokens=served.input_tokens,
            output_tokens=served.output_tokens,
            ttft_s=served.ttft_s,
            tpot_s=served.tpot_s,
            credit_fraction=self._credit[tenant.plan],
            max_price_micro=body.price_cap_micro(),
        )
        self._history.observe(tenant.id, chosen.model_id, served.output_tokens)
        self._settle_admission(
            tenant, request_id, served.input_tokens + served.output_tokens, the_bill.billed_micro
        )
        self._metrics.billed(
            chosen.model_id,
            the_bill.billed_micro,
            chosen.cost_micro,
            _margin(the_bill.billed_micro, chosen.cost_micro),
        )
        self._sink.emit(
            self._meter(tenant, body, decision, request_id, served, the_bill, failure=None)
        )
        return the_bill

    def _fail(
        self,
        tenant: Tenant,
        body: ChatCompletionRequest,
        decision: Decision,
        request_id: str,
        exc: BaseException,
    ) -> None:
        """A served request failed or was cancelled: a non-billable meter, never a charge."""
        failure = "cancelled" if not isinstance(exc, Exception) else type(exc).__name__
        self._metrics.failure(decision.model_id or body.model)
        self._settle_admission(tenant, request_id, 0, 0)  # failed: release, never charge
        logger.warning("request %s on %s failed: %s", request_id, decision.model_id, failure)
        self._sink.emit(
            self._meter(tenant, body, decision, request_id, None, None, failure=failure)
        )

    def _meter(
        self,
        tenant: Tenant,
        body: ChatCompletionRequest,
        decision: Decision,
        request_id: str,
        served: Served | None,
        the_bill: Bill | None,
        failure: str | None,
    ) -> Meter:
        chosen = decision.chosen
        return Meter(
            meter_id=new_meter_id(),
            request_id=request_id,
            tenant_id=tenant.id,
            stripe_customer_id=tenant.stripe_customer_id,
            plan_id=tenant.plan,
            requested_model=body.model,
            served_model=decision.model_id or "",
            decision=decision.action.value,
            input_tokens=served.input_tokens if served else 0,
            output_tokens=served.output_tokens if served else 0,
            ttft_ms=round(served.ttft_s * 1000, 3) if served else 0.0,
            total_ms=round(served.total_s * 1000, 3) if served else 0.0,
            sla_met=the_bill.sla_met if the_bill else False,
            cost_micro=chosen.cost_micro if chosen and served else 0,
            list_price_micro=the_bill.list_price_micro if the_bill else 0,
            credit_micro=the_bill.credit_micro if the_bill else 0,
            billed_micro=the_bill.billed_micro if the_bill else 0,
            billable=the_bill is not None,
            policy_version=decision.policy_version,
            ended_at_ms=int(time.time() * 1000),
            failure=failure,
        )

    # ------------------------------------------------------------------ read-only views

    def models(self, tenant: Tenant) -> ModelList:
        plan = self.book.plans[tenant.plan]
        created = int(time.time())
        cards = [
            ModelCard(
                id=model_id,
                created=created,
                pricing={
                    "input_usd_per_1m_tokens": _usd(rates.input_micro_per_1m),
                    "output_usd_per_1m_tokens": _usd(rates.output_micro_per_1m),
                    "quality_tier": self.book.models[model_id].quality_tier,
                },
            )
            for model_id, rates in plan.rates.items()
        ]
        cards += [
            ModelCard(
                id=alias,
                created=created,
                pricing={"route_alias": [m for m in members if m in plan.rates]},
            )
            for alias, members in self.book.routes.items()
            if any(m in plan.rates for m in members)
        ]
        return ModelList(data=cards)

    def cluster(self, tenant: Tenant) -> dict[str, Any]:
        snapshot = self.state.snapshot()
        view = self.state.view()
        plan = self.book.plans[tenant.plan]
        reference = PriceRequest("", REFERENCE_TOKENS, max_tokens=REFERENCE_TOKENS)
        for model_id, entry in view.items():
            model = self.book.models[model_id]
            load = snapshot.load(model_id)
            entry["predicted"] = {
                "warm_replicas": sum(1 for r in load.replicas if r.warm),
                "starting_replicas": sum(1 for r in load.replicas if not r.warm),
                "queued": sum(r.queued for r in load.replicas),
                "running": sum(r.running for r in load.replicas),
                "failure_rate": load.failure_rate,
            }
            if model_id in plan.rates:
                q = quote(
                    PriceRequest(model_id, reference.input_tokens, max_tokens=REFERENCE_TOKENS),
                    model,
                    plan,
                    snapshot,
                )
                per_1m = q.cost_micro / (q.input_tokens + q.predicted_output_tokens)
                entry["cost_usd_per_1m_tokens"] = round(per_1m, 6)
                entry["reference_quote"] = candidate_json(q)
        return {"policy_version": self.policy.version, "models": view}


# ---------------------------------------------------------------------- rendering


def _usd(micro: int) -> str:
    return f"{micro / 1_000_000:.6f}"


def candidate_json(q: CandidateQuote) -> dict[str, Any]:
    return {
        "model": q.model_id,
        "quality_tier": q.quality_tier,
        "feasible": q.feasible,
        "why_not": [r.value for r in q.reasons],
        "predicted_ttft_ms": round(q.ttft_s * 1000, 3),
        "predicted_tpot_ms": round(q.tpot_s * 1000, 3),
        "predicted_total_ms": round(q.total_s * 1000, 3),
        "input_tokens": q.input_tokens,
        "predicted_output_tokens": q.predicted_output_tokens,
        "cost_usd": _usd(q.cost_micro),
        "price_usd": _usd(q.price_micro),
        "worst_case_price_usd": _usd(q.worst_case_price_micro),
        "margin": round(q.margin, 6),
        "live": {
            "queue_ahead": q.queue_ahead,
            "batch": q.batch,
            "warm_replicas": q.warm_replicas,
            "starting_replicas": q.starting_replicas,
            "cold_start_remaining_s": round(q.cold_start_remaining_s, 3),
        },
    }


def decision_json(decision: Decision, request: PriceRequest) -> dict[str, Any]:
    return {
        "object": "rtcts.quote",
        "decision": decision.action.value,
        "reason": decision.reason.value,
        "model": decision.model_id,
        "price_usd": _usd(decision.price_micro),
        "surcharge_multiplier": round(decision.surcharge_multiplier, 6),
        "retry_after_s": decision.retry_after_s,
        "policy_version": decision.policy_version,
        "input_tokens": request.input_tokens,
        "candidates": [candidate_json(q) for q in decision.candidates],
    }


def quote_headers(decision: Decision) -> dict[str, str]:
    chosen = decision.chosen
    assert chosen is not None
    return {
        "x-rtcts-model": chosen.model_id,
        "x-rtcts-decision": decision.action.value,
        "x-rtcts-reason": decision.reason.value,
        "x-rtcts-price-usd": _usd(decision.price_micro),
        "x-rtcts-cost-usd": _usd(chosen.cost_micro),
        "x-rtcts-margin": f"{_margin(decision.price_micro, chosen.cost_micro):.4f}",
        "x-rtcts-policy-version": decision.policy_version,
    }


def bill_headers(chosen: CandidateQuote, the_bill: Bill) -> dict[str, str]:
    return {
        "x-rtcts-price-usd": _usd(the_bill.billed_micro),
        "x-rtcts-margin": f"{_margin(the_bill.billed_micro, chosen.cost_micro):.4f}",
        "x-rtcts-sla-met": "true" if the_bill.sla_met else "false",
    }


def completion_json(
    request_id: str, model_id: str, completion: Completion, verified: dict[str, Any]
) -> dict[str, Any]:
    """`ChatCompletionResponse(...).model_dump(mode="json", exclude_none=True)`, built
    directly: the same JSON for a third of the cost (a test holds them equal)."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": completion.text},
        "finish_reason": completion.finish_reason,
    }
    prompt, output = completion.input_tokens, completion.output_tokens
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        },
        "rtcts": verified,
    }


def verified_json(decision: Decision, the_bill: Bill, served: Served) -> dict[str, Any]:
    chosen = decision.chosen
    assert chosen is not None
    return {
        "decision": decision.action.value,
        "reason": decision.reason.value,
        "model": chosen.model_id,
        "quoted_price_usd": _usd(decision.price_micro),
        "list_price_usd": _usd(the_bill.list_price_micro),
        "credit_usd": _usd(the_bill.credit_micro),
        "billed_usd": _usd(the_bill.billed_micro),
        "cost_usd": _usd(chosen.cost_micro),
        "margin": round(_margin(the_bill.billed_micro, chosen.cost_micro), 6),
        "sla_met": the_bill.sla_met,
        "ttft_ms": round(served.ttft_s * 1000, 3),
        "total_ms": round(served.total_s * 1000, 3),
        "policy_version": decision.policy_version,
    }


def _margin(price_micro: int, cost_micro: int) -> float:
    return (price_micro - cost_micro) / price_micro if price_micro else 0.0


def _worst_case_micro(decision: Decision, cap_micro: int | None) -> int:
    """The most this request can be billed: worst-case tokens at the decision's terms."""
    chosen = decision.chosen
    if chosen is None:
        return 0
    scaled = math.ceil(chosen.worst_case_price_micro * decision.surcharge_multiplier)
    return scaled if cap_micro is None else min(scaled, cap_micro)


def _refusal(decision: Decision) -> errors.ApiError:
    if decision.reason is Reason.NO_CAPACITY:
        return errors.no_capacity()
    if decision.reason is Reason.PRICE_CAP_EXCEEDED:
        cheapest = min((q.price_micro for q in decision.candidates), default=None)
        return errors.price_cap_exceeded(cheapest)
    return errors.throttled(decision.retry_after_s or 1.0, decision.reason.value)


def _served_error(exc: BaseException) -> errors.ApiError:
    """A failure of the chosen model: the client gets a clear error, nothing is billed."""
    if isinstance(exc, BackendError | errors.ApiError):
        return errors.error_for(exc)
    return errors.error_for(BackendError("the model replica failed while serving the request"))
