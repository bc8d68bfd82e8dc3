"""Item 12 (part): quotes are admitted against a per-tenant limit.

Before the fix, `POST /v1/quote` skipped admission entirely: any number of 4 MiB bodies
were parsed and priced for free. Now each quote counts in the tenant's quote window
(`quotes_per_minute`, else the request limit), apart from its requests.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.errors import RateLimited
from tests.adversarial.harness import adversary, body
from tests.fakes import FakeHandle

pytestmark = pytest.mark.integration


def test_quotes_over_the_limit_are_refused_and_do_not_use_up_requests(redis_url: str) -> None:
    async def run() -> None:
        adv = await adversary(
            redis_url, FakeHandle(), limits={"requests_per_minute": 2, "quotes_per_minute": 3}
        )
        service = adv.parts.service
        for _ in range(3):
            await service.admit_quote(adv.tenant)
        for _ in range(2):
            with pytest.raises(RateLimited) as refused:
                await service.admit_quote(adv.tenant)
            assert refused.value.code == "rate_limited"
            assert refused.value.retry_after_s is not None
        # Requests have a window of their own: both still pass.
        await adv.chat(body(max_tokens=10))
        await adv.chat(body(max_tokens=10))

    asyncio.run(run())
