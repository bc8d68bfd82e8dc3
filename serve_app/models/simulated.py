"""A simulated GPU LLM: one replica's engine, timed by the model's throughput profile.

The simulation follows the pricing model (docs/pricing-model.md), so measured
latencies and load agree with what the pricing core predicts:

- **Cold start.** `start()` takes `cold_start_s`; until it returns the backend is not
  warm, `load()` reports the remaining start, and requests raise `BackendUnavailable`.
- **Slots and queue.** At most `max_concurrent_sequences` (B) requests hold a slot
  (prefilling or decoding); the others wait in a FIFO queue and take a slot as soon as
  one frees. `load().running` counts slots held, `load().queued` the queue.
- **Prefill.** A request that gets a slot spends `input_tokens / prefill_tokens_per_s`
  on its prompt and produces its first output token, so TTFT = wait + i / P and the
  other o − 1 tokens come from decode steps: total = TTFT + (o − 1) · TPOT(n) (the
  pricing model's o · TPOT is one step more, so its prediction errs on the safe side).
- **Continuous batching.** One scheduler loop decodes in steps: each step takes
  `tpot_s(n)` = (1 + α(n − 1)) / r1 for the n sequences decoding when it begins and
  gives each of them one token, so the replica's aggregate rate is Θ(n) and each
  sequence slows down as the batch grows. Sequences join at the next step after their
  prefill and leave as soon as they finish; the loop sleeps on an event when idle.
  A step that overslept (timers are coarse: ~1 ms) shortens the next ones, so the
  steps keep their scaled rate on average even when a step is shorter than a timer tick.
- **Output.** Decided up front and deterministically by `simulated_output.py`: text
  of a natural length (a function of the prompt and `seed`, uniform in
  `natural_output_tokens`, default 16..512; `None` always fills the cap) cut at
  `min(max_tokens, max_output_tokens)`; `stop`, tool calls, JSON response formats,
  logprobs and `n` choices (each on a batch slot of its own) as that module says.
  Token counts are real (`serve_app.models.tokens`): the prompt, tool definitions
  included, is counted with `count_chat_tokens`, the output is the tokens generated.
- **Embeddings.** `embed` holds one slot for the prefill of its inputs and returns
  deterministic unit vectors.
- **Failure injection.** With probability `failure_rate` a request fails after a few
  tokens with `GenerationFailed` (and frees its slot); `fail_all` fails every request.

**Time scale.** Every simulated duration (cold start, prefill, decode step) is
multiplied by `time_scale` before it is slept: 1 is real time, 0.01 runs 100 times
faster, 0 never sleeps (it only yields to the event loop). Reported times (Completion
`ttft_s`/`total_s`, `start_remaining_s`) are what the injected `clock` measured, so at
time scale 1 they are the simulated GPU's own and at other scales what a client sees.
`sleep` and `clock` are injectable so tests can run on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

from serve_app.models.backend import (
    BackendError,
    BackendUnavailable,
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    LoadReport,
    RequestRejected,
)
from serve_app.models.deltas import ChoiceCollector
from serve_app.models.json_instance import SchemaUnsupported
from serve_app.models.simulated_output import PlannedChoice, embedding_vector, plan_output
from serve_app.models.tokens import count_chat_tokens, count_prompt_tokens, count_tokens
from serve_app.pricing.book import ModelProfile

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

DEFAULT_NATURAL_OUTPUT_TOKENS: Final = (16, 512)
MAX_TOKENS_BEFORE_FAILURE: Final = 4
"""An injected failure strikes after 1 to this many tokens (fewer when the output is short)."""
EMBEDDING_DIMENSIONS: Final = 256
"""Length of a simulated embedding when the request sets no `dimensions`."""


class _Sequence:
    """One request from the moment it holds a slot until it is finished or dropped."""

    __slots__ = ("done", "fail_at", "finish_reason", "input_tokens", "outbox", "produced", "texts")

    def __init__(
        self,
        texts: list[str],
        finish_reason: FinishReason,
        input_tokens: int,
        fail_at: int | None,
    ) -> None:
        self.texts = texts
        self.finish_reason = finish_reason
        self.input_tokens = input_tokens
        self.fail_at = fail_at
        """Index of the token at which the request fails, if it is to fail."""
        self.produced = 0
        self.done = False
        self.outbox: asyncio.Queue[str | BackendError] = asyncio.Queue()


class SimulatedLLM:
    """A `Backend` that simulates one GPU replica of a model (see the module docstring)."""

    def __init__(
        self,
        profile: ModelProfile,
        *,
        time_scale: float = 1.0,
        failure_rate: float = 0.0,
        rng_seed: int | None = None,
        natural_output_tokens: tuple[int, int] | None = DEFAULT_NATURAL_OUTPUT_TOKENS,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must lie in [0, 1], got {failure_rate}")
        if natural_output_tokens is not None and not (
            1 <= natural_output_tokens[0] <= natural_output_tokens[1]
        ):
            raise ValueError(
                f"natural_output_tokens must be 1 <= low <= high, got {natural_output_tokens}"
            )
        self.profile = profile
        self.time_scale = time_scale
        self.failure_rate = failure_rate
        self._natural = natural_output_tokens
        self._rng = random.Random(rng_seed)
        self._sleep = sleep
        self._clock = clock

        self._warm = False
        self._closed = False
        self._start_task: asyncio.Task[None] | None = None
        self._start_began: float | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

        self._slots_used = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        """Requests waiting for slots, with how many each needs (one per choice)."""
        self._active: set[_Sequence] = set()
        """Sequences holding a slot (prefilling or decoding)."""
        self._batch: dict[_Sequence, None] = {}
        """Sequences decoding, in joining order."""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (sleeps the scaled cold start); concurrent calls share one start."""
        if self._closed:
            raise BackendUnavailable("backend is closed")
        if self._warm:
            return
        if self._start_task is None:
            self._start_began = self._clock()
            self._start_task = asyncio.ensure_future(self._cold_start())
        try:
            await asyncio.shield(self._start_task)
        except asyncio.CancelledError:
            if self._closed and self._start_task.cancelled():
                raise BackendUnavailable("backend closed while starting") from None
            raise
        if not self._warm:
            raise BackendUnavailable("backend closed while starting")

    async def _cold_start(self) -> None:
        await self._pause(self.profile.cold_start_s * self.time_scale)
        if self._closed:
            return
        self._scheduler = asyncio.ensure_future(self._schedule())
        self._warm = True

    async def close(self) -> None:
        """Stop the scheduler; every waiting or in-flight request fails with BackendUnavailable."""
        self._closed = True
        self._warm = False
        self._fail_everything(lambda: BackendUnavailable("backend is closed"))
        for task in (self._scheduler, self._start_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def fail_all(self, reason: str) -> None:
        """Fail every waiting and in-flight request with GenerationFailed(reason)."""
        self._fail_everything(lambda: GenerationFailed(reason))

    # -- load --------------------------------------------------------------------------

    def load(self) -> LoadReport:
        """Slots held (prefilling + decoding), queue length, warmth; O(1)."""
        remaining = 0.0
        if not self._warm and not self._closed:
            cold = self.profile.cold_start_s * self.time_scale
            if self._start_began is None:
                remaining = cold
            else:
                remaining = max(0.0, cold - (self._clock() - self._start_began))
        return LoadReport(
            running=self._slots_used,
            queued=len(self._waiters),
            warm=self._warm,
            start_remaining_s=remaining,
            extra={"decoding": float(len(self._batch))},
        )

    # -- generation --------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Completion:
        """Generate the whole answer; ttft_s and total_s are measured on the clock."""
        began = self._clock()
        ttft_s: float | None = None
        choices: dict[int, ChoiceCollector] = {}
        last: Delta | None = None
        async with contextlib.aclosing(self.stream(request)) as deltas:
            async for delta in deltas:
                if ttft_s is None:
                    ttft_s = self._clock() - began
                choices.setdefault(delta.index, ChoiceCollector()).add(delta)
                last = delta
        if (
            last is None
            or ttft_s is None
            or last.input_tokens is None
            or last.output_tokens is None
            or any(c.finish_reason is None for c in choices.values())
        ):
            raise GenerationFailed("stream ended without its final delta")  # not reached
        outputs = tuple(choices[i].output(i) for i in sorted(choices))
        plain = len(outputs) == 1 and not outputs[0].tool_calls and outputs[0].logprobs is None
        return Completion(
            text=outputs[0].text,
            finish_reason=outputs[0].finish_reason,
            input_tokens=last.input_tokens,
            output_tokens=last.output_tokens,
            ttft_s=ttft_s,
            total_s=self._clock() - began,
            choices=() if plain else outputs,
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """One Delta per token (a tool's name comes whole, with its last token); each
        choice's last Delta has its finish_reason, the stream's last one the usage.

        The choices decode side by side, one batch slot each (taken together, so two
        requests never wait on each other's half-held slots). Stopping early (aclose,
        cancellation) frees the request's slots at once.
        """
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if not self._warm:
            raise BackendUnavailable("backend is closed" if self._closed else "model not loaded")
        planned, seqs = self._plan(request)
        await self._acquire_slots(len(seqs))
        if self._closed:  # closed while this request was being handed its slots
            self._release_slots(len(seqs))
            raise BackendUnavailable("backend is closed")
        self._active.update(seqs)
        try:
            await self._pause(
                seqs[0].input_tokens / self.profile.prefill_tokens_per_s * self.time_scale
            )
            for seq in seqs:
                if not seq.done:
                    self._emit(seq)  # prefill yields the first token
                if not seq.done:
                    self._batch[seq] = None
            self._wake.set()
            output_tokens = sum(len(seq.texts) for seq in seqs)
            read = [0] * len(seqs)
            remaining = list(range(len(seqs)))
            while remaining:
                for index in list(remaining):
                    seq = seqs[index]
                    item = await seq.outbox.get()
                    if isinstance(item, BackendError):
                        raise item
                    position = read[index]
                    read[index] += 1
                    fields = planned[index].delta_fields(position)
                    if read[index] == len(seq.texts):
                        remaining.remove(index)
                        fields["finish_reason"] = seq.finish_reason
                        if not remaining:
                            fields["input_tokens"] = seq.input_tokens
                            fields["output_tokens"] = output_tokens
                    if fields:
                        yield Delta(**{"text": "", **fields, "index": planned[index].index})
        finally:
            for seq in seqs:
                self._drop(seq)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Deterministic unit vectors (`dimensions`, else `EMBEDDING_DIMENSIONS`), after a
        prefill of every input's tokens on one batch slot."""
        if not self._warm:
            raise BackendUnavailable("backend is closed" if self._closed else "model not loaded")
        began = self._clock()
        tokens = sum(len(x) if isinstance(x, tuple) else count_tokens(x) for x in request.inputs)
        await self._acquire_slots(1)
        try:
            await self._pause(tokens / self.profile.prefill_tokens_per_s * self.time_scale)
        finally:
            self._release_slots(1)
        size = request.dimensions or EMBEDDING_DIMENSIONS
        return Embeddings(
            tuple(embedding_vector(item, size) for item in request.inputs),
            tokens,
            self._clock() - began,
        )

    def _plan(self, request: GenerationRequest) -> tuple[list[PlannedChoice], list[_Sequence]]:
        """Every choice's output, decided up front and deterministically
        (`simulated_output.py`), and one sequence per choice."""
        if request.choices > self.profile.max_concurrent_sequences:
            raise RequestRejected(
                f"{request.choices} choices exceed the model's batch of "
                f"{self.profile.max_concurrent_sequences} sequences",
                param="n",
            )
        if request.prompt is not None:
            input_tokens = count_prompt_tokens(request.prompt)
        else:
            input_tokens = count_chat_tokens(request.messages, request.tools)
        cap = min(request.max_tokens, self.profile.max_output_tokens)
        try:
            planned = plan_output(request, cap=cap, natural=self._natural)
        except SchemaUnsupported as exc:
            raise RequestRejected(
                f"the simulated model cannot follow this json_schema: {exc}",
                param="response_format",
            ) from None
        fail_at: int | None = None
        n_tokens = len(planned[0].pieces)
        if self.failure_rate > 0 and self._rng.random() < self.failure_rate:
            fail_at = (
                self._rng.randint(1, min(MAX_TOKENS_BEFORE_FAILURE, n_tokens - 1))
                if n_tokens > 1
                else 0
            )
        seqs = [
            _Sequence(p.pieces, p.finish_reason, input_tokens, fail_at if i == 0 else None)
            for i, p in enumerate(planned)
        ]
        return planned, seqs

    # -- slots -------------------------------------------------------------------------

    async def _acquire_slots(self, count: int) -> None:
        """Take `count` free slots at once, or wait in FIFO order until they are handed over."""
        free = self.profile.max_concurrent_sequences - self._slots_used
        if count <= free and not self._waiters:
            self._slots_used += count
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, count)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slots(count)  # handed the slots just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()  # a smaller request behind may fit now
            raise

    def _release_slots(self, count: int) -> None:
        """Free `count` slots and hand them to the waiters in order, while they fit."""
        self._slots_used -= count
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            waiter, count = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if count > self.profile.max_concurrent_sequences - self._slots_used:
                return
            self._waiters.popleft()
            self._slots_used += count
            waiter.set_result(None)

    def _drop(self, seq: _Sequence) -> None:
        """The sequence is over (finished, failed or abandoned): leave batch, free slot."""
        seq.done = True
        self._batch.pop(seq, None)
        if seq in self._active:
            self._active.discard(seq)
            self._release_slots(1)

    def _fail(self, seq: _Sequence, error: BackendError) -> None:
        seq.outbox.put_nowait(error)
        self._drop(seq)

    def _fail_everything(self, error: Callable[[], BackendError]) -> None:
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error())
        for seq in list(self._active):
            self._fail(seq, error())

    # -- decoding ----------------------------------------------------------------------

    def _emit(self, seq: _Sequence) -> None:
        """Produce the sequence's next token (or its injected failure)."""
        if seq.produced == seq.fail_at:
            self._fail(seq, GenerationFailed(f"injected failure after {seq.produced} tokens"))
            return
        seq.outbox.put_nowait(seq.texts[seq.produced])
        seq.produced += 1
        if seq.produced == len(seq.texts):
            self._drop(seq)

    async def _schedule(self) -> None:
        """The continuous-batching loop: one decode step for the whole batch at a time."""
        lag = 0.0  # seconds the steps so far took beyond their scaled duration
        try:
            while True:
                if not self._batch:
                    lag = 0.0
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                step = list(self._batch)
                duration = self.profile.tpot_s(len(step)) * self.time_scale
                if duration > 0:
                    began = self._clock()
                    await self._pause(duration - lag)
                    lag += self._clock() - began - duration
                else:
                    await asyncio.sleep(0)
                for seq in step:
                    if not seq.done:
                        self._emit(seq)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave requests hanging
            self._warm = False
            message = f"scheduler crashed: {exc!r}"
            self._fail_everything(lambda: GenerationFailed(message))
            raise

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await self._sleep(seconds)
        else:
            await asyncio.sleep(0)
