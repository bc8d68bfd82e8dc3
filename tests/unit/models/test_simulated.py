"""The simulated GPU LLM backend, on a fake clock (no real sleeps, no Ray)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from serve_app.models.backend import (
    Backend,
    BackendUnavailable,
    ChatMessage,
    Completion,
    Delta,
    GenerationFailed,
    GenerationRequest,
    LoadReport,
)
from serve_app.models.simulated import SimulatedLLM
from serve_app.models.tokens import count_chat_tokens, count_tokens
from serve_app.policy.schema import ModelSpec
from serve_app.pricing.book import ModelProfile

PREFILL_TOKENS_PER_S = 1000.0
MAX_BATCH = 8
COLD_START_S = 30.0


def make_profile(max_batch: int = MAX_BATCH, max_output_tokens: int = 1024) -> ModelProfile:
    spec = ModelSpec.model_validate(
        {
            "id": "sim-model",
            "backend": "simulated",
            "accelerator": "test",
            "usd_per_hour": 1.0,
            "quality_tier": 1,
            "throughput": {
                "prefill_tokens_per_s": PREFILL_TOKENS_PER_S,
                "decode_tokens_per_s_at_batch_1": 50,
                "max_concurrent_sequences": max_batch,
                "decode_tokens_per_s_at_max_batch": max(50, 50 * max_batch / 2),
            },
            "cold_start_s": COLD_START_S,
            "context_window_tokens": 4096,
            "max_output_tokens": max_output_tokens,
        }
    )
    return ModelProfile.from_spec(spec)


class FakeTime:
    """Virtual time: `sleep(d)` wakes at now + d, and time jumps to the next wake-up once
    every other task is blocked. Records every sleep requested; no real time passes."""

    SETTLE_ROUNDS = 30
    """Event-loop rounds that let every woken task run on until it blocks again."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer_added = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), wake))
        self._timer_added.set()
        await wake

    async def _tick(self) -> None:
        while True:
            await settle(self.SETTLE_ROUNDS)
            if not self._timers:
                self._timer_added.clear()
                await self._timer_added.wait()
                continue
            deadline = self._timers[0][0]
            self.now = max(self.now, deadline)
            while self._timers and self._timers[0][0] <= deadline:
                _, _, wake = heapq.heappop(self._timers)
                if not wake.done():
                    wake.set_result(None)


def make_backend(
    fake: FakeTime | None = None,
    *,
    max_batch: int = MAX_BATCH,
    max_output_tokens: int = 1024,
    **kwargs: Any,
) -> SimulatedLLM:
    fake = fake or FakeTime()
    kwargs.setdefault("natural_output_tokens", None)
    return SimulatedLLM(
        make_profile(max_batch, max_output_tokens),
        sleep=fake.sleep,
        clock=fake.clock,
        **kwargs,
    )


def request(
    content: str = "Tell me about batching.", max_tokens: int = 10, **kwargs: Any
) -> GenerationRequest:
    return GenerationRequest(
        request_id="req",
        messages=(ChatMessage("system", "You are terse."), ChatMessage("user", content)),
        max_tokens=max_tokens,
        **kwargs,
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


async def collect(backend: SimulatedLLM, req: GenerationRequest) -> list[Delta]:
    return [delta async for delta in backend.stream(req)]


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- construction and cold start ---------------------------------------------------------


def test_is_a_backend() -> None:
    assert isinstance(make_backend(), Backend)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_scale": -0.1},
        {"failure_rate": -0.1},
        {"failure_rate": 1.5},
        {"natural_output_tokens": (0, 10)},
        {"natural_output_tokens": (20, 10)},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        make_backend(**kwargs)


def test_unavailable_before_start() -> None:
    async def scenario() -> None:
        backend = make_backend(time_scale=0.5)
        assert backend.load() == LoadReport(
            running=0,
            queued=0,
            warm=False,
            start_remaining_s=COLD_START_S * 0.5,
            extra={"decoding": 0.0},
        )
        with pytest.raises(BackendUnavailable):
            await backend.generate(request())
        with pytest.raises(BackendUnavailable):
            await collect(backend, request())

    run(scenario)


def test_cold_start_reports_remaining_time_then_warms() -> None:
    async def scenario() -> None:
        now = [100.0]
        gate = asyncio.Event()
        requested: list[float] = []

        async def gated_sleep(seconds: float) -> None:
            requested.append(seconds)
            await gate.wait()

        backend = SimulatedLLM(
            make_profile(), time_scale=0.1, sleep=gated_sleep, clock=lambda: now[0]
        )
        starters = [asyncio.create_task(backend.start()) for _ in range(3)]
        await settle()
        assert requested == [pytest.approx(COLD_START_S * 0.1)]  # one shared cold start
        remaining = []
        for elapsed in (0.0, 1.0, 2.5, 5.0):
            now[0] = 100.0 + elapsed
            report = backend.load()
            assert not report.warm
            remaining.append(report.start_remaining_s)
            with pytest.raises(BackendUnavailable):
                await backend.generate(request())
        assert remaining == pytest.approx([3.0, 2.0, 0.5, 0.0])

        gate.set()
        await asyncio.gather(*starters)
        report = backend.load()
        assert report.warm
        assert report.start_remaining_s == 0.0
        await backend.start()  # already warm: returns at once
        assert len(requested) == 1
        await backend.close()

    run(scenario)


# -- outputs and usage -------------------------------------------------------------------


def test_generate_reports_real_usage() -> None:
    async def scenario() -> None:
        backend = make_backend(time_scale=0)
        await backend.start()
        req = request("How do GPUs batch requests together?", max_tokens=37)
        completion = await backend.generate(req)
        assert completion.output_tokens == 37
        assert count_tokens(completion.text) == 37
        assert completion.input_tokens == count_chat_tokens(req.messages)
        assert completion.finish_reason == "length"
        assert completion.ttft_s == 0.0
        assert completion.total_s == 0.0
        assert await backend.generate(req) == completion  # deterministic
        await backend.close()

    run(scenario)


def test_stream_yields_one_delta_per_token_and_usage_last() -> None:
    async def scenario() -> None:
        backend = make_backend(time_scale=0)
        await backend.start()
        req = request(max_tokens=12)
        deltas = await collect(backend, req)
        assert len(deltas) == 12
        assert all(count_tokens(d.text) == 1 for d in deltas)
        assert all(
            d.finish_reason is None and d.input_tokens is None and d.output_tokens is None
            for d in deltas[:-1]
        )
        last = deltas[-1]
        assert last.finish_reason == "length"
        assert last.input_tokens == count_chat_tokens(req.messages)
        assert last.output_tokens == 12
        completion = await backend.generate(req)
        assert completion.text == "".join(d.text for d in deltas)
        await backend.close()

    run(scenario)


def test_natural_length_stops_early_and_is_deterministic() -> None:
    async def scenario() -> None:
        backend = make_backend(time_scale=0, natural_output_tokens=(16, 64))
        await backend.start()
        lengths = set()
        for i in range(20):
            req = request(f"question number {i}", max_tokens=1000)
            completion = await backend.generate(req)
            assert completion.finish_reason == "stop"
            assert 16 <= completion.output_tokens <= 64
            assert count_tokens(completion.text) == completion.output_tokens
            assert await backend.generate(req) == completion
            lengths.add(completion.output_tokens)
            capped = await backend.generate(request(f"question number {i}", max_tokens=5))
            assert (capped.finish_reason, capped.output_tokens) == ("length", 5)
        assert len(lengths) > 5
        seeded = [
            await backend.generate(request("same", max_tokens=1000, seed=s)) for s in (1, 2, 3)
        ]
        assert len({c.text for c in seeded}) == 3
        await backend.close()

    run(scenario)


def test_output_is_capped_by_the_models_max_output_tokens() -> None:
    async def scenario() -> None:
        backend = make_backend(time_scale=0, max_output_tokens=20)
        await backend.start()
        completion = await backend.generate(request(max_tokens=500))
        assert (completion.finish_reason, completion.output_tokens) == ("length", 20)
        with pytest.raises(ValueError, match="max_tokens"):
            await backend.generate(request(max_tokens=0))
        await backend.close()

    run(scenario)


# -- batching, queueing and timing -------------------------------------------------------


def test_batch_never_exceeds_max_under_300_concurrent_requests() -> None:
    async def scenario() -> None:
        fake = FakeTime()
        backend = make_backend(fake)
        await backend.start()
        reports: list[LoadReport] = []
        fake.on_sleep = lambda _: reports.append(backend.load())
        reqs = [request(f"request {i}", max_tokens=1 + i % 17) for i in range(300)]
        streamed, generated = await asyncio.gather(
            asyncio.gather(*(collect(backend, r) for r in reqs[::2])),
            asyncio.gather(*(backend.generate(r) for r in reqs[1::2])),
        )
        for req, deltas in zip(reqs[::2], streamed, strict=True):
            assert len(deltas) == req.max_tokens
            assert deltas[-1].output_tokens == req.max_tokens
            assert deltas[-1].input_tokens == count_chat_tokens(req.messages)
        for req, completion in zip(reqs[1::2], generated, strict=True):
            assert completion.output_tokens == req.max_tokens
            assert count_tokens(completion.text) == req.max_tokens
            assert completion.input_tokens == count_chat_tokens(req.messages)
        assert max(r.running for r in reports) == MAX_BATCH
        assert max(r.extra["decoding"] for r in reports) <= MAX_BATCH
        assert max(r.queued for r in reports) >= 300 - MAX_BATCH - 1
        assert all(r.warm for r in reports)
        assert backend.load() == LoadReport(0, 0, True, extra={"decoding": 0.0})
        await backend.close()

    run(scenario)


def test_queue_is_fifo() -> None:
    async def scenario() -> None:
        backend = make_backend(max_batch=1)
        await backend.start()
        finished: list[int] = []

        async def one(i: int) -> None:
            await backend.generate(request(f"r{i}", max_tokens=3))
            finished.append(i)

        tasks = []
        for i in range(10):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)  # arrive in order
        await asyncio.gather(*tasks)
        assert finished == list(range(10))
        await backend.close()

    run(scenario)


def test_decode_step_takes_tpot_of_the_batch() -> None:
    async def scenario() -> None:
        fake = FakeTime()
        profile = make_profile()
        backend = make_backend(fake, time_scale=0.5)
        await backend.start()
        observed: list[tuple[float, float]] = []
        fake.on_sleep = lambda s: observed.append((s, backend.load().extra["decoding"]))
        reqs = [request("x" * (4 * (1 + i % 3)), max_tokens=5 + 3 * i) for i in range(20)]
        await asyncio.gather(*(backend.generate(r) for r in reqs))

        prefills = {count_chat_tokens(r.messages) / PREFILL_TOKENS_PER_S * 0.5 for r in reqs}
        steps = [(s, n) for s, n in observed if not any(s == pytest.approx(p) for p in prefills)]
        assert steps
        for seconds, batch in steps:
            assert batch >= 1
            assert seconds == pytest.approx(profile.tpot_s(int(batch)) * 0.5)
        assert {n for _, n in steps} >= {1.0, float(MAX_BATCH)}
        await backend.close()

    run(scenario)


def test_single_request_timing_follows_the_profile() -> None:
    async def scenario() -> None:
        fake = FakeTime()
        profile = make_profile()
        backend = make_backend(fake, time_scale=1.0)
        await backend.start()
        assert fake.sleeps == [COLD_START_S]
        req = request(max_tokens=25)
        completion = await backend.generate(req)
        prefill = completion.input_tokens / PREFILL_TOKENS_PER_S
        assert completion.ttft_s == pytest.approx(prefill)
        assert completion.total_s == pytest.approx(prefill + 24 * profile.tpot_s(1))
        assert fake.sleeps[1:] == pytest.approx([prefill] + [profile.tpot_s(1)] * 24)
        await backend.close()

    run(scenario)


def test_concurrent_latencies_match_the_pricing_model() -> None:
    """Two full batches: TTFT = wait + i / P and total = TTFT + (o − 1) · TPOT(B)."""

    async def scenario() -> None:
        fake = FakeTime()
        profile = make_profile()
        backend = make_backend(fake)
        await backend.start()
        began = fake.now
        n = 30
        reqs = [request("same prompt", max_tokens=n) for _ in range(2 * MAX_BATCH)]
        completions = await asyncio.gather(*(backend.generate(r) for r in reqs))
        prefill = completions[0].input_tokens / PREFILL_TOKENS_PER_S
        service = prefill + (n - 1) * profile.tpot_s(MAX_BATCH)
        for c in completions[:MAX_BATCH]:
            assert c.ttft_s == pytest.approx(prefill)
            assert c.total_s == pytest.approx(service)
        for c in completions[MAX_BATCH:]:  # waited for the first batch to finish
            assert c.ttft_s == pytest.approx(service + prefill)
            assert c.total_s == pytest.approx(2 * service)
        assert fake.now - began == pytest.approx(2 * service)
        await backend.close()

    run(scenario)


def test_coarse_timers_do_not_slow_decoding_down() -> None:
    """A step shorter than a timer tick still decodes at the scaled rate on average."""

    class CoarseTime(FakeTime):
        TICK_S = 0.001

        async def sleep(self, seconds: float) -> None:
            await super().sleep(max(seconds, self.TICK_S))

    async def scenario() -> None:
        fake = CoarseTime()
        profile = make_profile()
        time_scale = 0.0125  # one decode step at batch 1 = 0.25 ms, a quarter tick
        backend = make_backend(fake, time_scale=time_scale)
        await backend.start()
        n = 401
        completion = await backend.generate(request(max_tokens=n))
        decode = (n - 1) * profile.tpot_s(1) * time_scale
        assert completion.total_s - completion.ttft_s == pytest.approx(decode, abs=0.001)
        await backend.close()

    run(scenario)


def test_time_scale_zero_never_sleeps_and_idle_loop_does_not_spin() -> None:
    async def scenario() -> None:
        fake = FakeTime()
        backend = make_backend(fake, time_scale=0)
        await backend.start()
        await asyncio.gather(*(backend.generate(request(max_tokens=9)) for _ in range(30)))
        assert fake.sleeps == []

        fake_1 = FakeTime()
        busy = make_backend(fake_1, time_scale=1)
        await busy.start()
        await busy.generate(request(max_tokens=4))
        sleeps_after = len(fake_1.sleeps)
        await settle(200)
        assert len(fake_1.sleeps) == sleeps_after  # idle scheduler waits, no steps
        await asyncio.gather(backend.close(), busy.close())

    run(scenario)


# -- abandonment, failures and close -----------------------------------------------------


def test_closing_a_stream_early_frees_its_slot() -> None:
    async def scenario() -> None:
        backend = make_backend(max_batch=2)
        await backend.start()
        first = backend.stream(request("a", max_tokens=100))
        second = backend.stream(request("b", max_tokens=100))
        await first.__anext__()
        await second.__anext__()
        queued = asyncio.create_task(backend.generate(request("c", max_tokens=3)))
        await settle()
        assert (backend.load().running, backend.load().queued) == (2, 1)

        await first.aclose()  # client disconnected
        assert backend.load().queued == 0
        assert (await queued).output_tokens == 3
        assert backend.load().running == 1
        await second.aclose()
        assert backend.load() == LoadReport(0, 0, True, extra={"decoding": 0.0})
        await backend.close()

    run(scenario)


def test_cancelling_requests_frees_slots_and_queue_places() -> None:
    async def scenario() -> None:
        backend = make_backend(max_batch=2)
        await backend.start()
        tasks = [
            asyncio.create_task(backend.generate(request(f"r{i}", max_tokens=200)))
            for i in range(5)
        ]
        await settle()
        assert (backend.load().running, backend.load().queued) == (2, 3)
        tasks[3].cancel()  # a queued one
        await settle()
        assert (backend.load().running, backend.load().queued) == (2, 2)
        tasks[0].cancel()  # a running one: the first queued request takes its slot
        await settle()
        assert (backend.load().running, backend.load().queued) == (2, 1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert backend.load() == LoadReport(0, 0, True, extra={"decoding": 0.0})
        await backend.close()

    run(scenario)


def test_injected_failures_raise_and_free_slots() -> None:
    async def scenario() -> None:
        backend = make_backend(max_batch=4, failure_rate=1.0, rng_seed=1)
        await backend.start()
        results = await asyncio.gather(
            *(backend.generate(request(f"r{i}", max_tokens=50)) for i in range(40)),
            return_exceptions=True,
        )
        assert all(isinstance(r, GenerationFailed) for r in results)
        assert backend.load() == LoadReport(0, 0, True, extra={"decoding": 0.0})

        received: list[Delta] = []

        async def consume() -> None:
            async for delta in backend.stream(request(max_tokens=50)):
                received.append(delta)

        with pytest.raises(GenerationFailed):
            await consume()
        assert 1 <= len(received) <= 4  # a few tokens, then the failure
        assert all(d.finish_reason is None for d in received)
        with pytest.raises(GenerationFailed):
            await backend.generate(request(max_tokens=1))  # fails before its only token
        assert backend.load().running == 0
        await backend.close()

    run(scenario)


def test_failure_rate_fails_a_share_of_requests() -> None:
    # Binomial bound: 2000 requests at rate 0.3 fail 600 ± 4.5σ (σ = √(2000·0.3·0.7) ≈
    # 20.5), so 508..692; the right rate leaves it about once in 150,000 seeds. A wrong
    # one does not pass: at 0.2, 400 ± 4.5·17.9 (320..480); at 0.4, 800 ± 4.5·21.9
    # (701..899).
    n_requests, rate = 2000, 0.3
    bound = 4.5 * math.sqrt(n_requests * rate * (1 - rate))

    async def scenario() -> None:
        backend = make_backend(time_scale=0, failure_rate=rate, rng_seed=42)
        await backend.start()
        results = await asyncio.gather(
            *(backend.generate(request(f"r{i}", max_tokens=8)) for i in range(n_requests)),
            return_exceptions=True,
        )
        failed = sum(isinstance(r, GenerationFailed) for r in results)
        assert abs(failed - n_requests * rate) <= bound
        assert all(
            isinstance(r, GenerationFailed) or (isinstance(r, Completion) and r.output_tokens == 8)
            for r in results
        )
        await backend.close()

    run(scenario)


def test_fail_all_fails_in_flight_and_waiting_requests() -> None:
    async def scenario() -> None:
        backend = make_backend(max_batch=2)
        await backend.start()
        tasks = [
            asyncio.create_task(backend.generate(request(f"r{i}", max_tokens=100)))
            for i in range(4)
        ]
        await settle()
        backend.fail_all("replica lost")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, GenerationFailed) for r in results)
        assert backend.load() == LoadReport(0, 0, True, extra={"decoding": 0.0})
        assert (await backend.generate(request(max_tokens=3))).output_tokens == 3
        await backend.close()

    run(scenario)


def test_close_fails_everything_and_refuses_new_work() -> None:
    async def scenario() -> None:
        backend = make_backend(max_batch=2)
        await backend.start()
        tasks = [
            asyncio.create_task(backend.generate(request(f"r{i}", max_tokens=100)))
            for i in range(4)
        ]
        await settle()
        await backend.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, BackendUnavailable) for r in results)
        report = backend.load()
        assert (report.running, report.queued, report.warm) == (0, 0, False)
        with pytest.raises(BackendUnavailable):
            await backend.generate(request())
        with pytest.raises(BackendUnavailable):
            await backend.start()

    run(scenario)


def test_close_during_cold_start() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def gated_sleep(seconds: float) -> None:
            await gate.wait()

        backend = SimulatedLLM(make_profile(), sleep=gated_sleep)
        starting = asyncio.create_task(backend.start())
        await settle()
        await backend.close()
        with pytest.raises(BackendUnavailable):
            await starting
        assert not backend.load().warm

    run(scenario)
