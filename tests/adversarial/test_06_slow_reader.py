"""Item 6: a client that reads slowly does not earn an SLA credit.

Before the fix, time to first token and total time were measured while the generator
waited on the consumer, so a slow reader got `sla_met=false` and a credit for a model
that answered on time.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.responses import StreamingResponse

from serve_app.models.backend import Delta
from tests.adversarial.harness import adversary, body
from tests.fakes import FakeHandle

pytestmark = pytest.mark.integration

TWENTY = (
    *(Delta(f" w{i}") for i in range(19)),
    Delta(" end", finish_reason="stop", input_tokens=12, output_tokens=20),
)


def test_a_slow_reader_of_a_fast_model_is_billed_in_full(redis_url: str) -> None:
    async def run() -> None:
        adv = await adversary(redis_url, FakeHandle(deltas=TWENTY))
        tpot_target_s = adv.parts.service.book.plans["pro"].tpot_target_s
        response = await adv.chat(body(stream=True, max_tokens=100))
        assert isinstance(response, StreamingResponse)
        events: list[str] = []
        async for piece in response.body_iterator:
            events.append(piece if isinstance(piece, str) else bytes(piece).decode())
            await asyncio.sleep(2 * tpot_target_s)  # reads at half the model's pace
        rtcts = json.loads(events[-2].removeprefix("data: "))["rtcts"]
        (meter,) = adv.meters
        assert meter.sla_met
        assert rtcts["sla_met"]
        assert meter.credit_micro == 0

    asyncio.run(run())
