"""The meter stream: verified meters appended to Redis Streams, batched and pipelined.

Contract with the aggregator (keep it exact):

- stream keys `rtcts:meters:{s<i>}`, one per shard i in 0..N-1 (a hash tag per shard, so
  each stream lives in one Redis Cluster slot); a meter goes to shard
  `crc32(tenant_id) % N` (`shard_of`, `stream_key`);
- each entry is one batch of meters of one shard: its id, the fold summary and the
  meters themselves (`serve_app/metering/entry.py`);
- duplicate batches are allowed (the aggregator folds a batch id once), losses are not.
  Entries are never trimmed here: an unread entry is unbilled meters.

`MeterStreamWriter` is the ingress's `MeterSink`. `emit` only appends to a buffer; a
background task flushes every `flush_interval_s`, or as soon as `batch_size` meters
wait, in one pipelined round trip: one XADD per shard, whatever the number of meters.
When Redis fails the batch goes to the local spool (`MeterSpool`) as the very entries it
was about to send (same batch ids), and is replayed in the background once Redis answers
again: after a successful flush, on `start()` (files a crashed process left), and while
idle (a ping every `IDLE_CHECK_S` while spooled meters wait, every `rescan_s` otherwise),
so recovery needs no traffic.

Guarantees (what holds if the process dies right after each step):

- `emit` returned: the meter is in memory only. A hard kill (SIGKILL, OOM, power) loses
  what is buffered, at most `flush_interval_s` plus one round trip of meters; a
  graceful `stop()` flushes everything first.
- a flush got Redis's answer: the batch is in the stream (as durable as Redis's own
  persistence, e.g. appendonly).
- a flush failed or timed out: the batch is appended to the spool and fsync'ed before
  the next flush starts; a timed-out batch may also have landed, so replay may
  duplicate it (same batch id: the aggregator folds it once).
- spool and Redis both failed (disk full during an outage): the batch goes back to the
  front of the buffer and is retried; only past `max_buffered` meters in memory are the
  oldest dropped, counted in `dropped` and logged as errors.
- replay of the spool: see `serve_app/metering/spool.py` (a file is deleted only after
  all of it was sent; a file older than the fold's dedup horizon allows is moved to the
  spool's `dead/` folder with an error logged, never replayed blind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from serve_app.admission.breaker import CircuitBreaker
from serve_app.errors import (  # re-exported: defined in the one error tree
    MeterStreamError as MeterStreamError,
)
from serve_app.metering.entry import (
    STREAM_PREFIX as STREAM_PREFIX,
    MeterBatch,
    encode_batches,
    shard_of as shard_of,
    stream_key as stream_key,
)
from serve_app.metering.meter import Meter
from serve_app.metering.spool import MeterSpool
from serve_app.metering.stream_replay import ReplayInterrupted, SpoolReplayer

logger = logging.getLogger("rtcts.metering.stream")

DEFAULT_SHARDS = 1
DEFAULT_BATCH_SIZE = 256
DEFAULT_FLUSH_INTERVAL_S = 0.01
DEFAULT_TIMEOUT_S = 2.0
"""Bounds one flush, event-loop delays included (as in admission): generous on purpose,
because a flush that timed out may have landed and is then spooled as well."""
DEFAULT_MAX_BUFFERED = 500_000
DEFAULT_RESCAN_S = 30.0
SPOOL_RETRY_S = 0.5
IDLE_CHECK_S = 1.0
"""While spooled meters wait and no meter comes in, how often to check for Redis."""
STOP_REPLAY_WAIT_S = 5.0


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError, asyncio.TimeoutError, MeterStreamError)


_REDIS_ERRORS = _redis_errors()


class MeterStreamWriter:
    """The ingress's meter sink: buffers, batches and appends meters to the stream;
    spools to local disk while Redis is unavailable and replays when it is back.

    Call `start()` on the event loop that calls `emit` (the first `emit` on a running
    loop starts it too), and `await stop()` on shutdown: it flushes everything.
    `emit` may also be called from another thread; it then hops to the loop.
    """

    def __init__(
        self,
        client: Any,
        spool: MeterSpool,
        *,
        shards: int = DEFAULT_SHARDS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        breaker: CircuitBreaker | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        replay_batch_size: int | None = None,
        rescan_s: float = DEFAULT_RESCAN_S,
        owns_client: bool = False,
    ) -> None:
        """`client`: a redis.asyncio Redis (or RedisCluster) with socket timeouts.
        `replay_batch_size`: spooled entries sent per round trip. `rescan_s`: how often
        to look for spool files that other (crashed) processes left in the spool's
        directory."""
        if shards < 1 or batch_size < 1 or max_buffered < batch_size:
            raise ValueError("shards and batch_size must be ≥ 1, max_buffered ≥ batch_size")
        self._client = client
        self._spool = spool
        self._shards = shards
        self._keys = [stream_key(i) for i in range(shards)]
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._timeout_s = timeout_s
        self._breaker = breaker or CircuitBreaker()
        self._max_buffered = max_buffered
        self._owns_client = owns_client

        self._buffer: list[Meter] = []
        self._unsent: list[MeterBatch] = []
        """Entries neither Redis nor the spool took: sent first by the next flush."""
        self._first_at = 0.0
        """When the oldest buffered meter arrived (monotonic): a flush is due
        `flush_interval_s` after it."""
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._after_stop_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._replayer = SpoolReplayer(
            spool,
            self._send_replayed,
            shards=shards,
            batch_size=replay_batch_size or 64,
            rescan_s=rescan_s,
        )

        self._inflight = 0
        self._written = 0
        self._spooled = 0
        self.flushes = 0
        self.failed_flushes = 0
        self.outages = 0
        self.spool_errors = 0
        self.dropped = 0
        self.failures: dict[str, int] = {}
        """Failed Redis calls by exception type."""

    @classmethod
    def from_url(
        cls,
        url: str,
        spool_dir: Path,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **options: Any,
    ) -> MeterStreamWriter:
        """A writer with its own client (closed by `stop()`) and a spool in `spool_dir`;
        `url` names a Redis or a Redis Cluster (`serve_app/redis_client.py`)."""
        from serve_app.redis_client import redis_client

        client = redis_client(url, timeout_s=timeout_s)
        return cls(client, MeterSpool(spool_dir), timeout_s=timeout_s, owns_client=True, **options)

    # -- counters -----------------------------------------------------------------

    @property
    def written(self) -> int:
        """Meters appended to the stream by flushes (replays not included)."""
        return self._written

    @property
    def spooled(self) -> int:
        """Meters appended to the local spool (Redis unavailable)."""
        return self._spooled

    @property
    def replayed(self) -> int:
        """Meters sent from spool files to the stream."""
        return self._replayer.replayed

    @property
    def buffered(self) -> int:
        """Meters in memory: waiting for a flush, or in a flush not yet answered."""
        return len(self._buffer) + sum(b.count for b in self._unsent) + self._inflight

    @property
    def redis_up(self) -> bool:
        return not self._breaker.is_open

    def health(self) -> dict[str, object]:
        return {
            "redis_up": self.redis_up,
            "written": self._written,
            "spooled": self._spooled,
            "replayed": self._replayer.replayed,
            "buffered": self.buffered,
            "flushes": self.flushes,
            "failed_flushes": self.failed_flushes,
            "outages": self.outages,
            "spool_errors": self.spool_errors,
            "spool_skipped_lines": self._spool.skipped_lines,
            "spool_dead_lettered": self._spool.dead_lettered,
            "dropped": self.dropped,
            "replaying": self._replayer.running,
            "failed_calls": dict(self.failures),
        }

    # -- the sink -----------------------------------------------------------------

    def emit(self, meter: Meter) -> None:
        """Hand a verified meter over. Never raises, never blocks on I/O (except after
        `stop()`: a straggler is then written to the spool at once)."""
        try:
            if self._stopped:
                self._emit_after_stop(meter)
                return
            if self._thread_id is not None and threading.get_ident() != self._thread_id:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.emit, meter)
                return
            buffer = self._buffer
            buffer.append(meter)
            if len(buffer) == 1:
                self._first_at = time.monotonic()
                if self._task is None:
                    self._start_if_on_loop()
                self._wake.set()
            elif len(buffer) >= self._batch_size:
                if len(buffer) > self._max_buffered:
                    self._drop_oldest()
                self._wake.set()
        except Exception:  # pragma: no cover - the contract is "never raises"
            logger.exception("meter %s could not be buffered", meter.meter_id)

    def _start_if_on_loop(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # buffered until start()
        self.start()

    def _emit_after_stop(self, meter: Meter) -> None:
        # A request that finished after shutdown began: write it straight to the spool
        # (blocking, but rare); the next process replays it.
        self._spool_now([meter])

    def _spool_now(self, meters: list[Meter]) -> None:
        with self._after_stop_lock:  # emit may come from several threads by now
            try:
                self._spool.append(self._encode(meters))
                self._spool.rotate()  # unlocked: the next process may replay it at once
            except OSError:
                self.dropped += len(meters)
                logger.exception("%d meters emitted after stop could not be spooled", len(meters))
            else:
                self._spooled += len(meters)

    def _drop_oldest(self) -> None:
        excess = len(self._buffer) - self._max_buffered
        del self._buffer[:excess]
        self.dropped += excess
        logger.error(
            "meter buffer full (%d): Redis and the spool both fail; dropped %d oldest meters",
            self._max_buffered,
            excess,
        )

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the flush task on the running loop (replays spool files first)."""
        if self._task is not None:
            return
        if self._stopped:
            raise RuntimeError("a stopped MeterStreamWriter cannot start again")
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._wake = asyncio.Event()
        if self._buffer:
            self._wake.set()
        self._task = self._loop.create_task(self._run(), name="rtcts-meter-stream")

    async def stop(self) -> None:
        """Flush every buffered meter (to Redis, else to the spool), then stop."""
        if self._stopped:
            return
        self._stopping = True
        self._wake.set()
        if self._task is None and self._buffer:
            self.start()  # never started: flush what was emitted
        if self._task is not None:
            await self._task
        if self._replayer.task is not None:
            # It stops between two batches (`_stopping`); the rest stays for next time.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._replayer.task, STOP_REPLAY_WAIT_S)
        self._stopped = True
        if self._buffer:  # emitted while the last replay batch was in flight
            leftovers, self._buffer = self._buffer, []
            self._spool_now(leftovers)
        self._spool.close()
        if self._owns_client:
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._client.aclose()

    # -- the flush loop -----------------------------------------------------------

    async def _run(self) -> None:
        self._maybe_replay()
        while True:
            if not self._buffer and not self._unsent:
                if self._stopping:
                    return
                self._wake.clear()
                # Idle: still look now and then whether Redis is back (spool waiting) or
                # another process left spool files, so a replay needs no new traffic.
                idle_s = IDLE_CHECK_S if self._replayer.pending else self._replayer.rescan_s
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle_s)
                if not self._buffer and not self._stopping:
                    await self._idle_check()
                continue
            if not self._stopping and not self._unsent and len(self._buffer) < self._batch_size:
                due = self._first_at + self._flush_interval_s - time.monotonic()
                if due > 0:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), due)
            try:
                await self._flush()
            except Exception:  # pragma: no cover - a bug must not end the flush loop
                logger.exception("meter flush failed unexpectedly")
                await asyncio.sleep(SPOOL_RETRY_S)

    async def _flush(self) -> None:
        """One flush: to the stream in one round trip, else to the spool. Entries that
        neither took (Redis and disk both failing) are retried first, as they are: a
        timed-out append may have landed, so they keep their batch ids."""
        if self._unsent:
            batches, self._unsent = self._unsent, []
        else:
            meters = self._buffer[: self._batch_size]
            del self._buffer[: self._batch_size]
            batches = self._encode(meters)
        count = sum(b.count for b in batches)
        self._inflight = count
        spool_failed = False
        try:
            if self._breaker.allow():
                try:
                    await asyncio.wait_for(self._send(batches), self._timeout_s)
                except _REDIS_ERRORS as exc:
                    self._down(exc)
                else:
                    # Dies here: the batch is in the stream.
                    self.flushes += 1
                    self._written += count
                    self._up()
                    return
            self.failed_flushes += 1
            try:
                await asyncio.to_thread(self._spool.append, batches)
            except OSError as exc:
                spool_failed = True
                self._spool_failed(batches, count, exc)
            else:
                # Dies here: the entries are fsync'ed in the spool (and maybe in the stream).
                self._spooled += count
                self._replayer.pending = True
        finally:
            self._inflight = 0
        if spool_failed and not self._stopping:
            await asyncio.sleep(SPOOL_RETRY_S)  # Redis and disk both failing: don't spin

    def _encode(self, meters: list[Meter]) -> list[MeterBatch]:
        """One entry per shard present in `meters` (a meter that cannot be encoded, a
        programming error, is dropped and logged, never the batch)."""
        batches, bad = encode_batches(meters, self._shards)
        for meter in bad:
            self.dropped += 1
            logger.error("meter %s cannot be encoded; dropped", meter.meter_id)
        return batches

    def _spool_failed(self, batches: list[MeterBatch], count: int, exc: OSError) -> None:
        self.spool_errors += 1
        if self._stopping:
            self.dropped += count
            logger.error(
                "stopping with Redis and the spool unavailable (%s): %d meters lost", exc, count
            )
            return
        logger.error("meter spool failed (%s): %d meters kept in memory", exc, count)
        self._unsent = batches  # retried by the next flush, before any new meter

    async def _send(self, batches: list[MeterBatch]) -> None:
        """Append entries in one pipelined round trip (an XADD each); raises unless every
        one landed."""
        async with self._client.pipeline(transaction=False) as pipe:
            for batch in batches:
                if batch.count:
                    pipe.xadd(self._keys[batch.shard], batch.fields())
            results = await pipe.execute()
        if len(results) != sum(1 for b in batches if b.count) or not all(results):
            raise MeterStreamError(f"{len(batches)} entries sent, Redis answered {results}")

    # -- replay -------------------------------------------------------------------

    async def _idle_check(self) -> None:
        """No meters to flush: ping Redis if a replay is due, and replay once it answers."""
        if not self._replayer.due() or not self._breaker.allow():
            return
        try:
            await asyncio.wait_for(self._client.ping(), self._timeout_s)
        except _REDIS_ERRORS as exc:
            self._down(exc)
        else:
            self._up()

    def _maybe_replay(self) -> None:
        """After a successful flush (and on start): replay spool files in the background,
        if some may be waiting."""
        assert self._loop is not None
        self._replayer.start(self._loop)

    async def _send_replayed(self, batches: list[MeterBatch]) -> None:
        if self._stopping or not self._breaker.allow():
            raise ReplayInterrupted
        try:
            await asyncio.wait_for(self._send(batches), self._timeout_s)
        except _REDIS_ERRORS as exc:
            self._down(exc)
            raise ReplayInterrupted from exc
        self._mark_up()  # this may have been the breaker's probe

    # -- Redis up / down ----------------------------------------------------------

    def _down(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.failures[name] = self.failures.get(name, 0) + 1
        if self._breaker.failure():
            self.outages += 1
            logger.warning("Redis unreachable (%s): meters go to the local spool", name)

    def _up(self) -> None:
        self._mark_up()
        self._maybe_replay()

    def _mark_up(self) -> None:
        if self._breaker.success():
            logger.warning("Redis reachable again: meters back on the stream; replaying")
