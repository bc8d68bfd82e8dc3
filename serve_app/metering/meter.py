"""The verified meter of one request, and the sink interface the ingress hands it to.

Money is integer micro-USD. A failed request produces a non-billable meter
(`billable=False`, billed 0): it counts for the failure rate, never for a charge.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Protocol


def new_meter_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (time-ordered, unique): 48-bit ms timestamp, version, 74 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


@dataclass(frozen=True, slots=True)
class Meter:
    """One verified record of a finished request."""

    meter_id: str
    request_id: str
    tenant_id: str
    stripe_customer_id: str
    plan_id: str
    requested_model: str
    served_model: str
    decision: str
    input_tokens: int
    output_tokens: int
    ttft_ms: float
    total_ms: float
    sla_met: bool
    cost_micro: int
    list_price_micro: int
    credit_micro: int
    billed_micro: int
    billable: bool
    policy_version: str
    ended_at_ms: int
    failure: str | None = None
    client_request_id: str | None = None
    """The client's `X-Request-ID`, as sent (recorded for support, never a key)."""
    abandoned: bool = False
    """The client left a stream part-way: billed for the tokens delivered to it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MeterSink(Protocol):
    """Where the ingress hands verified meters. `emit` must not block the event loop."""

    def emit(self, meter: Meter) -> None: ...


class MemorySink:
    """Keeps the last meters in memory (for `make run` until the Redis stream lands)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.meters: deque[Meter] = deque(maxlen=maxlen)

    def emit(self, meter: Meter) -> None:
        self.meters.append(meter)
