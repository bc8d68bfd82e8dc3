"""Tenant admission in Redis: sliding-window request limit, token limit, monthly budget
with reserve-then-settle, all atomic (Lua scripts in `lua/`), with a fail-open local
fallback and a circuit breaker."""

from serve_app.admission.gate import AdmissionGate
from serve_app.admission.redis_store import RedisAdmission
from serve_app.admission.types import (
    AdmissionError,
    AdmissionLimits,
    AdmissionUnavailable,
    Admitted,
    RefusalCode,
    Refused,
    TenantUsage,
    Ticket,
)

__all__ = [
    "AdmissionError",
    "AdmissionGate",
    "AdmissionLimits",
    "AdmissionUnavailable",
    "Admitted",
    "RedisAdmission",
    "RefusalCode",
    "Refused",
    "TenantUsage",
    "Ticket",
]
