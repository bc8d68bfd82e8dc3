"""Item 1: the client does not pick the admission key.

Before the fix, the ingress used the client's `X-Request-ID` as the sliding-window
member and the settle key: ten requests sent with one id under a 3-a-minute limit were
all admitted, and every settle after the first was a no-op, so reservations piled up.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.errors import RateLimited
from tests.adversarial.harness import adversary, body
from tests.fakes import FakeHandle

pytestmark = pytest.mark.integration


def test_one_client_id_ten_times_is_ten_requests_under_the_limit(redis_url: str) -> None:
    async def run() -> None:
        adv = await adversary(redis_url, FakeHandle(), limits={"requests_per_minute": 3})
        answers: list[object] = []
        for _ in range(10):
            try:
                answers.append(await adv.chat(body(max_tokens=50), client_request_id="same"))
            except RateLimited as refused:
                answers.append(refused)
        await adv.settled()
        served = [a for a in answers if not isinstance(a, RateLimited)]
        assert len(served) == 3
        assert sum(isinstance(a, RateLimited) for a in answers) == 7
        # Every served request settled its own reservation: nothing is left reserved.
        usage = await adv.usage()
        assert usage.reserved_micro == 0
        assert usage.billed_requests == 3
        meters = adv.meters
        assert len({m.request_id for m in meters}) == 3
        assert {m.client_request_id for m in meters} == {"same"}
        assert all(m.request_id != "same" for m in meters)

    asyncio.run(run())
