"""The backtest's replica against the simulated backend (`serve_app/models/simulated.py`):
the same profile gives the same timings, for one request and for full batches."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.backtest.replica import EventQueue, Replica, fail_at
from serve_app.models.tokens import count_chat_tokens
from tests.unit.backtest.harness import Timing, drive, job
from tests.unit.models.test_simulated import (
    MAX_BATCH,
    PREFILL_TOKENS_PER_S,
    FakeTime,
    make_backend,
    make_profile,
    request,
)


def _replica(timing: Timing, warm: bool = True) -> tuple[EventQueue, Replica]:
    events = EventQueue()
    return events, Replica(make_profile(), events, 0.0, timing.done, warm=warm)


def test_one_request_as_the_simulated_backend_times_it() -> None:
    req = request(max_tokens=25)

    async def simulated() -> tuple[float, float]:
        fake = FakeTime()
        backend = make_backend(fake)
        await backend.start()
        completion = await backend.generate(req)
        await backend.close()
        return completion.ttft_s, completion.total_s

    sim_ttft, sim_total = asyncio.run(simulated())
    timing = Timing()
    events, replica = _replica(timing)
    input_tokens = count_chat_tokens(req.messages)
    drive(events, [(0.0, job(0, 0.0, input_tokens, 25))], replica.admit)

    profile = make_profile()
    assert timing.ttft(0) == pytest.approx(sim_ttft)
    assert timing.total(0) == pytest.approx(sim_total)
    assert timing.total(0) == pytest.approx(
        input_tokens / PREFILL_TOKENS_PER_S + 24 * profile.tpot_s(1)
    )


def test_two_full_batches_as_the_simulated_backend_times_them() -> None:
    """The first B requests decode together at TPOT(B); the next B wait for their slots."""
    n = 30
    reqs = [request("same prompt", max_tokens=n) for _ in range(2 * MAX_BATCH)]

    async def simulated() -> list[tuple[float, float]]:
        fake = FakeTime()
        backend = make_backend(fake)
        await backend.start()
        done = await asyncio.gather(*(backend.generate(r) for r in reqs))
        await backend.close()
        return [(c.ttft_s, c.total_s) for c in done]

    expected = asyncio.run(simulated())
    timing = Timing()
    events, replica = _replica(timing)
    input_tokens = count_chat_tokens(reqs[0].messages)
    drive(
        events,
        [(0.0, job(i, 0.0, input_tokens, n)) for i in range(2 * MAX_BATCH)],
        replica.admit,
    )
    got = [(timing.ttft(i), timing.total(i)) for i in range(2 * MAX_BATCH)]
    assert [x for pair in got for x in pair] == pytest.approx([x for p in expected for x in p])
    service = input_tokens / PREFILL_TOKENS_PER_S + (n - 1) * make_profile().tpot_s(MAX_BATCH)
    assert got[-1][1] == pytest.approx(2 * service)


def test_a_joining_sequence_slows_the_batch_to_tpot_of_two() -> None:
    """One sequence decodes alone at TPOT(1), then with a second at TPOT(2)."""
    profile = make_profile()
    timing = Timing()
    events, replica = _replica(timing)
    prefill = 100 / PREFILL_TOKENS_PER_S
    second_at = prefill + 10 * profile.tpot_s(1)  # first has 10 of its 40 decode tokens
    drive(
        events,
        [(0.0, job(0, 0.0, 100, 41)), (second_at - prefill, job(1, second_at - prefill, 100, 11))],
        replica.admit,
    )
    # Both decode together for the second's 10 tokens, then the first finishes alone.
    together = 10 * profile.tpot_s(2)
    assert timing.total(1) == pytest.approx(prefill + together)
    assert timing.ended[0] == pytest.approx(second_at + together + 20 * profile.tpot_s(1))


def test_the_queue_is_fifo_and_takes_freed_slots() -> None:
    timing = Timing()
    events, replica = _replica(timing)
    jobs = [(0.0, job(i, 0.0, 100, 5 + (MAX_BATCH - i))) for i in range(MAX_BATCH)]
    jobs += [(0.01, job(MAX_BATCH + k, 0.01, 100, 5)) for k in range(3)]
    drive(events, jobs, replica.admit)
    starts = [timing.jobs[MAX_BATCH + k].start_s for k in range(3)]
    assert starts == sorted(starts)
    # The queued ones start when the shortest of the first batch end, in that order.
    firsts = sorted(timing.ended[i] for i in range(MAX_BATCH))
    assert starts == pytest.approx(firsts[:3])


def test_a_failed_request_frees_its_slot_after_its_failing_step() -> None:
    profile = make_profile()
    timing = Timing()
    events, replica = _replica(timing)
    drive(events, [(0.0, job(0, 0.0, 100, 50, fail_at=3))], replica.admit)
    assert timing.jobs[0].failed
    assert timing.total(0) == pytest.approx(100 / PREFILL_TOKENS_PER_S + 3 * profile.tpot_s(1))
    assert replica.slots_used == 0


def test_failures_are_drawn_as_the_simulated_backend_draws_them() -> None:
    assert fail_at(50, draw=0.5, failure_rate=0.1, pick=0.0) is None
    assert fail_at(50, draw=0.05, failure_rate=0.1, pick=0.0) == 1
    assert fail_at(50, draw=0.05, failure_rate=0.1, pick=0.99) == 4
    assert fail_at(3, draw=0.05, failure_rate=0.1, pick=0.99) == 2  # at most o − 1
    assert fail_at(1, draw=0.05, failure_rate=0.1, pick=0.5) == 0  # at prefill
    assert fail_at(50, draw=0.0, failure_rate=0.0, pick=0.0) is None


def test_a_cold_replica_warms_after_its_cold_start() -> None:
    timing = Timing()
    events, replica = _replica(timing, warm=False)
    assert not replica.warm
    assert replica.ready_s == pytest.approx(30.0)
    view = replica.view(10.0)
    assert not view.warm
    assert view.start_remaining_s == pytest.approx(20.0)
    drive(events, [], replica.admit)
    assert replica.warm
    assert replica.view(31.0).start_remaining_s == 0.0
