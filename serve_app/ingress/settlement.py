"""After a served request: bill the verified tokens, settle admission, emit the meter.

Guarantees kept here, for every request that was admitted:
- exactly one meter is emitted: billable after a finished generation; billable for what
  was delivered (`abandoned`) when the client left a stream after its first token;
  non-billable (billed 0, with the failure's name) after a model failure or a cancel
  before the first token; never two;
- a cancel is not a model failure, nor a request the engine refused as invalid
  (`RequestRejected`): neither counts in the failure metric;
- the admission reservation is settled to the verified tokens and bill, or released
  (0, 0) after a failure, in the background (the gate retries while Redis is down);
- the bill is the pure `pricing.billing.bill` of the verified counts and latency.
"""

from __future__ import annotations

import asyncio
import logging
import time

from serve_app.admission import AdmissionGate
from serve_app.errors import RequestRejected
from serve_app.ingress.call import ChatCall, Served
from serve_app.ingress.history import OutputHistory
from serve_app.ingress.margins import MarginWindows
from serve_app.metering.meter import Meter, MeterSink, new_meter_id
from serve_app.policy.capabilities import Capability
from serve_app.pricing.billing import Bill, bill
from serve_app.telemetry import Metrics

logger = logging.getLogger("rtcts.ingress")


def margin(price_micro: int, cost_micro: int) -> float:
    """(price − cost) / price; 0 for a free request."""
    return (price_micro - cost_micro) / price_micro if price_micro else 0.0


class Settlement:
    """Bills, settles and meters finished or failed requests of one policy version."""

    def __init__(
        self,
        sink: MeterSink,
        metrics: Metrics,
        history: OutputHistory,
        admission: AdmissionGate | None,
        windows: MarginWindows | None = None,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._history = history
        self._admission = admission
        self._windows = windows
        self._background: set[asyncio.Task[None]] = set()

    def settle(self, call: ChatCall, served: Served) -> Bill:
        """A finished generation (or embedding): its bill, settled and metered. The
        tenant's output history learns each choice's output (embeddings have none)."""
        the_bill = self._bill(call, served)
        per_choice = served.output_tokens // max(1, call.body.choices())
        observed = call.decision.endpoint is not Capability.EMBEDDINGS
        if observed:
            self._history.observe(call.tenant.id, call.model_id, per_choice)
        self._record(call, served, the_bill, abandoned=False, observed_output=per_choice)
        return the_bill

    def abandon(self, call: ChatCall, delivered: Served | None) -> None:
        """The client left a stream: billed for what was delivered, at the same terms
        and SLA rule as a finished one; before the first token, nothing (a cancel)."""
        if delivered is None:
            self.fail(call, asyncio.CancelledError())
            return
        self._record(call, delivered, self._bill(call, delivered), abandoned=True)

    def _bill(self, call: ChatCall, served: Served) -> Bill:
        return bill(
            call.decision,
            call.plan,
            input_tokens=served.input_tokens,
            output_tokens=served.output_tokens,
            ttft_s=served.ttft_s,
            tpot_s=served.tpot_s,
            credit_fraction=call.credit,
            max_price_micro=call.body.price_cap_micro(),
        )

    def _record(
        self,
        call: ChatCall,
        served: Served,
        the_bill: Bill,
        *,
        abandoned: bool,
        observed_output: int = 0,
    ) -> None:
        chosen = call.chosen
        if self._windows is not None:
            self._windows.revenue(chosen.model_id, the_bill.billed_micro)
        self._settle_admission(
            call,
            served.input_tokens + served.output_tokens,
            the_bill.billed_micro,
            observed_output,
        )
        self._metrics.billed(
            chosen.model_id,
            the_bill.billed_micro,
            chosen.cost_micro,
            margin(the_bill.billed_micro, chosen.cost_micro),
            call.tenant.plan,
            the_bill.credit_micro,
        )
        self._sink.emit(meter_for(call, served, the_bill, failure=None, abandoned=abandoned))

    def fail(self, call: ChatCall, exc: BaseException) -> None:
        """A served request failed or was cancelled: a non-billable meter, never a charge."""
        cancelled = not isinstance(exc, Exception)
        failure = "cancelled" if cancelled else type(exc).__name__
        if isinstance(exc, RequestRejected):
            failure = "RequestRejected"  # the client's request, not the model's failure
        elif not cancelled:
            self._metrics.failure(call.model_id)
        self._settle_admission(call, 0, 0)  # failed: release, never charge
        logger.warning("request %s on %s failed: %s", call.request_id, call.model_id, failure)
        self._sink.emit(meter_for(call, None, None, failure=failure))

    def _settle_admission(
        self, call: ChatCall, tokens: int, billed_micro: int, output_tokens: int = 0
    ) -> None:
        """Settle the reservation in the background (the gate retries if Redis is down);
        a finished generation's output tokens feed the tenant's shared output history."""
        if self._admission is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._admission.settle(
                call.tenant.id,
                call.request_id,
                tokens,
                billed_micro,
                model_id=call.model_id if output_tokens else "",
                output_tokens=output_tokens,
            )
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def meter_for(
    call: ChatCall,
    served: Served | None,
    the_bill: Bill | None,
    failure: str | None,
    *,
    abandoned: bool = False,
) -> Meter:
    """The verified meter of a request: billable with its bill, or failed with nothing."""
    decision = call.decision
    chosen = decision.chosen
    return Meter(
        meter_id=new_meter_id(),
        request_id=call.request_id,
        tenant_id=call.tenant.id,
        stripe_customer_id=call.tenant.stripe_customer_id,
        plan_id=call.tenant.plan,
        requested_model=call.body.model,
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
        client_request_id=call.client_request_id,
        abandoned=abandoned,
    )
