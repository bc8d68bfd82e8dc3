"""Replay of the meter spool into the stream, in the background, once Redis answers.

The writer (`stream.py`) owns when to try: after a successful flush, on `start()` (files
a crashed process left), and while idle. This owns how: one task at a time, the spool's
files oldest first (`MeterSpool.replay`: a file is deleted only after all of it was
sent), interrupted between two batches when Redis fails again or the writer stops
(retried as soon as Redis answers), and a spool that cannot be read retried at the next
rescan, not every second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from serve_app.errors import MeterStreamError
from serve_app.metering.entry import MeterBatch
from serve_app.metering.spool import MeterSpool

logger = logging.getLogger("rtcts.metering.stream")


class ReplayInterrupted(Exception):
    """Stops a replay between two batches (Redis failed, or the writer is stopping)."""


class SpoolReplayer:
    def __init__(
        self,
        spool: MeterSpool,
        send: Callable[[list[MeterBatch]], Awaitable[None]],
        *,
        shards: int,
        batch_size: int,
        rescan_s: float,
    ) -> None:
        """`send` appends replayed batches to the stream, raising `ReplayInterrupted`
        when Redis failed or the writer is stopping."""
        self._spool = spool
        self._send = send
        self._shards = shards
        self._batch_size = batch_size
        self.rescan_s = rescan_s
        self.task: asyncio.Task[None] | None = None
        self.pending = True
        """Spool files may be waiting (ours, or left by a crashed process)."""
        self._next_rescan = 0.0
        self.replayed = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def due(self) -> bool:
        """Whether a replay should be tried now (files waiting, or a rescan is due)."""
        return not self.running and (self.pending or time.monotonic() >= self._next_rescan)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Replay in the background, if due."""
        if not self.due():
            return
        self.pending = False
        self._next_rescan = time.monotonic() + self.rescan_s
        # Our own file becomes replayable; appends from now on go to a new one.
        self._spool.rotate()
        self.task = loop.create_task(self._replay(), name="rtcts-meter-replay")

    async def _replay(self) -> None:
        try:
            await self._spool.replay(self._send_checked, batch_size=self._batch_size)
        except ReplayInterrupted:
            self.pending = True  # Redis failed: retried as soon as it answers
        except Exception:
            # The spool itself failed (a file we cannot read): retried at the next rescan.
            self._next_rescan = time.monotonic() + self.rescan_s
            logger.exception("meter spool replay failed; retried in %.0f s", self.rescan_s)

    async def _send_checked(self, batches: list[MeterBatch]) -> None:
        wrong = [b.shard for b in batches if b.shard >= self._shards]
        if wrong:
            # Written with more shards than this writer has: sending them elsewhere could
            # count them twice (dedup is per shard). The file stays (docs/decisions.md).
            raise MeterStreamError(
                f"spooled entries of shard {wrong[0]}, but this writer has {self._shards} "
                "shards: keep the shard count until the spool is empty"
            )
        await self._send(batches)
        self.replayed += sum(b.count for b in batches)
