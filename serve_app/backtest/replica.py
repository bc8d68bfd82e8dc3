"""One simulated GPU replica in simulated time: the math of `serve_app/models/simulated.py`,
driven by events instead of asyncio sleeps.

- **Cold start.** A replica is paid from its creation; it takes requests once
  `cold_start_s` has passed (`warm`).
- **Slots and queue.** At most `max_concurrent_sequences` (B) requests hold a slot
  (prefilling or decoding); the others wait in the replica's FIFO queue and take a slot
  as soon as one frees.
- **Prefill.** A request that gets a slot spends `input_tokens / prefill_tokens_per_s`
  on its prompt and produces its first token: TTFT = wait + i / P. Prefill does not
  slow the decoding batch (as in the simulated backend).
- **Continuous batching.** With n sequences decoding, each gets one token every
  `tpot_s(n)` = (1 + α(n − 1)) / r1 seconds, so the replica decodes Θ(n) tokens/s; a
  sequence joins the batch after its prefill and leaves after its last token: total =
  TTFT + (o − 1) · TPOT. The simulated backend takes discrete steps of `tpot_s(n)`;
  here the batch advances continuously at the same rate (a "virtual token clock" that
  runs at 1 / tpot_s(n) tokens per second), so the next completion is one event, not
  one event per step. For a lone request and for a batch that starts together the two
  are the same formula; a sequence that joins mid-step starts at once here instead of
  at the next step (at most one TPOT earlier).
- **Failures.** A request drawn to fail (`Job.fail_at`, as the simulated backend draws
  it: after 1 to 4 tokens, or at prefill for a one-token answer) leaves the batch after
  `fail_at` decode steps and frees its slot; it is not billed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from serve_app.pricing.book import ModelProfile
from serve_app.pricing.types import ReplicaLoad

PREFILL_DONE: Final = 0
DECODE_DUE: Final = 1
REPLICA_WARM: Final = 2
TICK: Final = 3

_EPS_TOKENS = 1e-6


class EventQueue:
    """Events in simulated time: (time, sequence, kind, subject, version) in a heap;
    the sequence number keeps equal times in insertion order (deterministic)."""

    __slots__ = ("heap", "seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Any, int]] = []
        self.seq = 0

    def push(self, t: float, kind: int, subject: Any, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, subject, version))


class Job:
    """One served request from its routing to its end."""

    __slots__ = (
        "arrival_s",
        "decision",
        "decode_tokens",
        "failed",
        "first_token_s",
        "index",
        "input_tokens",
        "model_id",
        "output_tokens",
        "replica",
        "start_s",
    )

    def __init__(
        self,
        index: int,
        arrival_s: float,
        model_id: str,
        input_tokens: int,
        output_tokens: int,
        fail_at: int | None,
        decision: Any,
    ) -> None:
        self.index = index
        """Position of the request in the workload (also its tie-breaker)."""
        self.arrival_s = arrival_s
        self.model_id = model_id
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        """Tokens it produces when it succeeds (at least 1)."""
        self.failed = fail_at is not None
        self.decode_tokens = (output_tokens - 1) if fail_at is None else fail_at
        """Decode steps it takes; a failure at prefill is -1."""
        if fail_at == 0:
            self.decode_tokens = -1
        self.decision = decision
        """What the policy decided (kept for billing)."""
        self.start_s = -1.0
        self.first_token_s = -1.0
        self.replica: Replica | None = None


def fail_at(output_tokens: int, draw: float, failure_rate: float, pick: float) -> int | None:
    """Where a request fails, as `SimulatedLLM._plan` draws it: with probability
    `failure_rate` (`draw` uniform in [0, 1)), after 1 to min(4, o − 1) tokens
    (`pick` uniform in [0, 1) chooses), or at prefill when o is 1; None: it succeeds."""
    if failure_rate <= 0 or draw >= failure_rate:
        return None
    if output_tokens <= 1:
        return 0
    return 1 + int(pick * min(4, output_tokens - 1))


class Replica:
    """One replica's slots, queue and decoding batch (see the module docstring).

    `done(job, now)` is called when a job ends (finished or failed), after its slot has
    gone to the next job of the replica's queue.
    """

    __slots__ = (
        "_tpot",
        "_view",
        "created_s",
        "decoding",
        "done",
        "draining",
        "events",
        "max_batch",
        "model_id",
        "prefill_rate",
        "queue",
        "ready_s",
        "removed_s",
        "slots_used",
        "v",
        "v_s",
        "version",
        "warm",
    )

    def __init__(
        self,
        profile: ModelProfile,
        events: EventQueue,
        now: float,
        done: Callable[[Job, float], None],
        *,
        warm: bool = False,
    ) -> None:
        self.model_id = profile.id
        self.events = events
        self.done = done
        self.max_batch = profile.max_concurrent_sequences
        self.prefill_rate = profile.prefill_tokens_per_s
        self._tpot = [0.0] + [profile.tpot_s(n) for n in range(1, self.max_batch + 1)]
        self.created_s = now
        self.warm = warm
        self.ready_s = now if warm else now + profile.cold_start_s
        self.draining = False
        self.removed_s: float | None = None
        self.slots_used = 0
        self.queue: deque[Job] = deque()
        self.decoding: list[tuple[float, int, Job]] = []
        self.v = 0.0
        """Tokens each decoding sequence has received since the replica began (virtual)."""
        self.v_s = now
        self.version = 0
        self._view: ReplicaLoad | None = None
        if not warm:
            events.push(self.ready_s, REPLICA_WARM, self)

    @property
    def ongoing(self) -> int:
        return self.slots_used + len(self.queue)

    def view(self, now: float) -> ReplicaLoad:
        """What the replica reports: slots held, queue, warm or the start it has left
        (kept until the replica changes; a starting one's changes with time)."""
        view = self._view
        if view is None or not self.warm:
            view = self._view = ReplicaLoad(
                self.slots_used,
                len(self.queue),
                self.warm,
                0.0 if self.warm else max(0.0, self.ready_s - now),
            )
        return view

    def became_warm(self) -> None:
        self.warm = True
        self._view = None

    def admit(self, job: Job, now: float) -> None:
        """Take a job routed here: a slot if one is free, else the queue."""
        job.replica = self
        self._view = None
        if self.slots_used < self.max_batch:
            self._start(job, now)
        else:
            self.queue.append(job)

    def _start(self, job: Job, now: float) -> None:
        self.slots_used += 1
        job.start_s = now
        self.events.push(now + job.input_tokens / self.prefill_rate, PREFILL_DONE, job)

    def prefill_done(self, job: Job, now: float) -> None:
        """The prompt is read and the first token out; the job joins the batch."""
        if job.decode_tokens >= 0:
            job.first_token_s = now
        if job.decode_tokens <= 0:
            self._end(job, now)
            return
        self._advance(now)
        heapq.heappush(self.decoding, (self.v + job.decode_tokens, job.index, job))
        self._reschedule(now)

    def decode_due(self, version: int, now: float) -> None:
        """The batch's next completion, if nothing changed since it was scheduled."""
        if version != self.version:
            return
        self._advance(now)
        decoding = self.decoding
        limit = self.v + _EPS_TOKENS
        ended = []
        while decoding and decoding[0][0] <= limit:
            ended.append(heapq.heappop(decoding)[2])
        self._reschedule(now)
        for job in ended:
            self._end(job, now)

    def _advance(self, now: float) -> None:
        n = len(self.decoding)
        if n:
            self.v += (now - self.v_s) / self._tpot[n]
        self.v_s = now

    def _reschedule(self, now: float) -> None:
        self.version += 1
        if self.decoding:
            due = now + (self.decoding[0][0] - self.v) * self._tpot[len(self.decoding)]
            self.events.push(due, DECODE_DUE, self, self.version)

    def _end(self, job: Job, now: float) -> None:
        self._view = None
        self.slots_used -= 1
        if self.queue:
            self._start(self.queue.popleft(), now)
        self.done(job, now)
