"""Item 3: a stream is not free when the client hangs up before the end.

Before the fix, reading 99 of 100 chunks and closing gave a meter with
`billable=False`, billed 0, and the token reservation released. Now the tokens delivered
are billed (a partial meter, `abandoned`); a client that leaves before the first token
pays nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.responses import StreamingResponse

from serve_app.models.backend import Delta
from tests.adversarial.harness import adversary, body
from tests.fakes import FakeHandle

pytestmark = pytest.mark.integration

# One token a piece: words of at most four characters are one token each.
HUNDRED = (
    *(Delta(f" w{i % 10}") for i in range(99)),
    Delta(" end", finish_reason="stop", input_tokens=12, output_tokens=100),
)


async def _read_and_leave(response: StreamingResponse, chunks: int) -> None:
    iterator = response.body_iterator
    for _ in range(chunks):
        await iterator.__anext__()
    await iterator.aclose()  # type: ignore[attr-defined]


def test_reading_99_of_100_chunks_then_leaving_is_billed_for_99(redis_url: str) -> None:
    async def run() -> None:
        adv = await adversary(redis_url, FakeHandle(deltas=HUNDRED))
        response = await adv.chat(body(stream=True, max_tokens=200))
        assert isinstance(response, StreamingResponse)
        await _read_and_leave(response, 1 + 99)  # the role chunk, then 99 pieces of text
        await adv.settled()
        (meter,) = adv.meters
        assert meter.billable
        assert meter.abandoned
        assert meter.output_tokens == 99
        assert meter.billed_micro > 0
        usage = await adv.usage()
        assert usage.settled_micro == meter.billed_micro
        assert usage.reserved_micro == 0

    asyncio.run(run())


def test_leaving_before_the_first_token_costs_nothing(redis_url: str) -> None:
    async def run() -> None:
        adv = await adversary(redis_url, FakeHandle(deltas=HUNDRED, delay_s=0.5))
        response = await adv.chat(body(stream=True, max_tokens=200))
        assert isinstance(response, StreamingResponse)
        await _read_and_leave(response, 1)  # the role chunk only
        await adv.settled()
        (meter,) = adv.meters
        assert (meter.billable, meter.billed_micro, meter.failure) == (False, 0, "cancelled")
        assert (await adv.usage()).reserved_micro == 0

    asyncio.run(run())
