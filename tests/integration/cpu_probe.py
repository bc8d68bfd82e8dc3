"""How much CPU the host gives a process right now: a probe for tests that compare
timings with a model (tests/integration/test_backtest_matches_live.py).

Run as a script in a process of its own (`python cpu_probe.py [SECONDS]`), it wakes
every `PERIOD_S`, does `WORK_S` of CPU work (measured on the thread's CPU clock) and
prints one line per wake-up: `T STRETCH LATE`, T the wake-up on the monotonic clock
(system-wide on Linux, so comparable with the caller's `time.monotonic()`), STRETCH the
wall time the work took over its CPU time, LATE how late the wake-up came (seconds).

On a host with a free core the work runs uninterrupted (stretch ≈ 1). When more tasks
want the CPUs than there are, the work shares a core: the stretch is about the number of
tasks per core (2 busy loops on 2 cores: ≈ 2; 8: ≈ 4.5). The work is 5 ms, longer than
the head start the kernel's scheduler gives a task that wakes up: a 1 ms probe ran
unhindered beside 8 busy loops on 2 cores, while the rtcts app beside it fell seconds
behind. `summarize` turns the lines of a time window into the CPU share the host gave
(CPU time over wall time of the work: 1 / mean stretch) and the coverage (wake-ups seen
over wake-ups due: a starved probe falls behind).

It imports nothing of the project (it starts in a few ms) and costs WORK_S / PERIOD_S
(5%) of one core. Nothing in it depends on rtcts's code, so a slow or broken rtcts
cannot make the host look busy. It stops after SECONDS (default 600) or on SIGTERM.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PERIOD_S = 0.1
WORK_S = 0.005


def work(seconds: float) -> tuple[float, float]:
    """Spin until the thread has had `seconds` of CPU: (wall, CPU) it took."""
    wall, cpu = time.perf_counter(), time.thread_time()
    x = 0
    while time.thread_time() - cpu < seconds:
        for i in range(200):
            x += i * i
    return time.perf_counter() - wall, time.thread_time() - cpu


def probe(duration_s: float) -> None:
    started = time.monotonic()
    due = started
    out = sys.stdout
    while time.monotonic() - started < duration_s:
        due += PERIOD_S
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        woke = time.monotonic()
        wall, cpu = work(WORK_S)
        out.write(f"{woke:.4f} {wall / cpu:.3f} {woke - due:.5f}\n")
        out.flush()
        if woke - due > 1.0:  # far behind (stopped or starved): do not try to catch up
            due = woke


@dataclass(frozen=True, slots=True)
class ProbeSummary:
    """The probe over one window of time."""

    window_s: float
    samples: int
    cpu_share: float
    """CPU time over wall time of the probe's work: 1 on a host with a free core."""
    coverage: float
    """Wake-ups seen over wake-ups due in the window: below 1 when the probe fell behind."""
    late_p99_s: float
    """The 99th percentile of how late a wake-up came."""

    def __str__(self) -> str:
        return (
            f"CPU share {self.cpu_share:.2f}, coverage {self.coverage:.2f}, "
            f"wake-up late p99 {self.late_p99_s * 1000:.0f} ms ({self.samples} samples "
            f"over {self.window_s:.1f} s)"
        )


def read_samples(path: Path) -> list[tuple[float, float, float]]:
    """The complete lines of a probe's output file."""
    samples = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            try:
                samples.append((float(parts[0]), float(parts[1]), float(parts[2])))
            except ValueError:
                continue
    return samples


def summarize(
    samples: Iterable[tuple[float, float, float]], start: float, end: float
) -> ProbeSummary:
    """The samples that woke within [start, end)."""
    inside = [s for s in samples if start <= s[0] < end]
    window = max(end - start, 1e-9)
    if not inside:
        return ProbeSummary(window, 0, 0.0, 0.0, float("inf"))
    late = sorted(s[2] for s in inside)
    return ProbeSummary(
        window,
        len(inside),
        1.0 / statistics.fmean(s[1] for s in inside),
        min(1.0, len(inside) * PERIOD_S / window),
        late[min(len(late) - 1, int(0.99 * len(late)))],
    )


if __name__ == "__main__":
    probe(float(sys.argv[1]) if len(sys.argv) > 1 else 600.0)
