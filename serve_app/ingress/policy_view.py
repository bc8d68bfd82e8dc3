"""One policy version as the request path reads it, built once per (re)load.

Everything the ingress derives from a policy (the price book, the tenant directory,
each plan's limits, outage rule, quote limit and SLA credit) lives in one frozen
`PolicyView`. A reload builds a new one and swaps a single reference, so a request
sees one version from its decision to its bill: the `ChatCall` carries the plan terms
and credit it was decided under (in-flight requests finish at their quoted terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from serve_app.admission import AdmissionLimits
from serve_app.ingress.auth import TenantDirectory
from serve_app.policy import LoadedPolicy
from serve_app.pricing import PriceBook
from serve_app.pricing.book import usd_to_micro


@dataclass(frozen=True)
class PolicyView:
    loaded: LoadedPolicy
    book: PriceBook
    tenants: TenantDirectory
    limits: dict[str, AdmissionLimits]
    fail_open: dict[str, bool]
    quotes_per_minute: dict[str, int]
    credits: dict[str, Fraction]

    @property
    def version(self) -> str:
        return self.loaded.version

    @classmethod
    def of(cls, loaded: LoadedPolicy) -> PolicyView:
        plans = loaded.policy.plans
        return cls(
            loaded=loaded,
            book=PriceBook.from_policy(loaded.policy, loaded.version),
            tenants=TenantDirectory(loaded.policy.tenants),
            limits={
                p.id: AdmissionLimits(
                    p.limits.requests_per_minute,
                    p.limits.tokens_per_minute,
                    usd_to_micro(p.limits.monthly_budget_usd),
                )
                for p in plans
            },
            fail_open={p.id: p.limits.on_redis_outage == "fail_open" for p in plans},
            quotes_per_minute={
                p.id: p.limits.quotes_per_minute or p.limits.requests_per_minute for p in plans
            },
            credits={p.id: Fraction(p.sla.credit_fraction) for p in plans},
        )
