"""Read a model's stream at the model's pace, not the client's.

A `DeltaPump` reads the model's deltas in a task of its own into a queue, and stamps
when the first and the last arrived. So the latency that the SLA is checked on (and
that the meter records) is the model's, never the reader's: a client that reads slowly
does not make the request look late and earn a credit. The queue holds at most one
generation's pieces (bounded by the request's output cap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from serve_app.models.backend import Delta

_END = object()


class DeltaPump:
    """Iterate it for (arrival time, delta) pairs; `first_at`/`last_at` are the clock
    times at which the first and the last delta arrived from the model."""

    def __init__(
        self, stream: AsyncIterator[Delta], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.last: Delta | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async for delta in self._stream:
                now = self._clock()
                if self.first_at is None:
                    self.first_at = now
                self.last_at = now
                self.last = delta
                self._queue.put_nowait((now, delta))
        except Exception as exc:  # the model failed: the reader raises it in turn
            self._queue.put_nowait(exc)
            return
        self._queue.put_nowait(_END)

    def __aiter__(self) -> DeltaPump:
        return self

    async def __anext__(self) -> tuple[float, Delta]:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        stamped: tuple[float, Delta] = item
        return stamped

    def cancel(self) -> None:
        """Stop reading and stop the generation on the replica (safe to call twice)."""
        self._task.cancel()
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            cancel()
