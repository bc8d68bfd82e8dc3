"""The meter aggregator: a detached, named Ray actor per stream shard that folds verified
meters into windows, closes them into the outbox, and sends the outbox to Stripe.

The work is a plain asyncio loop (`AggregatorLoop`, testable without Ray) over the atomic
steps of `ledger.py`; the actor only hosts it in a thread of its own, so that a restart
(Ray restarts it forever, `max_restarts=-1`) resumes it from `__init__` with no call from
outside. Everything it knows lives in Redis: killed at any moment, it re-reads its
pending stream entries and resends its outbox with the same identifiers, so nothing is
lost or counted twice (Stripe dedups identifiers for at least 24 hours; an entry first
sent longer ago than the resend horizon is reconciled with Stripe instead of resent:
`outbox_horizon.py`). A Stripe set-up problem never stops folding and closing: only
sending waits (`sink_setup.py`). A redeploy with another configuration replaces the
actors (`ensure_aggregators`); identifiers change with it (`windows.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import ray

from serve_app.metering.ledger import MeterLedger
from serve_app.metering.outbox_horizon import HorizonCheck, Verdict, past_horizon
from serve_app.metering.sink_setup import SetupStatus, SinkSetup
from serve_app.metering.stripe_errors import backoff_s
from serve_app.metering.stripe_sink import LOCAL_TEST_KEY, StripeSink
from serve_app.metering.types import (
    METER_EVENTS,
    OutboxEntry,
    SendResult,
    SendStatus,
)

logger = logging.getLogger("rtcts.aggregator")

AGGREGATOR_NAME = "{instance}-meter-aggregator-{shard}"
AGGREGATOR_NAMESPACE = "rtcts"


@dataclass(frozen=True)
class AggregatorConfig:
    redis_url: str = field(repr=False)
    instance: str = "rtcts"
    """Names the actors (`<instance>-meter-aggregator-<shard>`): the app's name."""
    shards: int = 1
    window_s: int = 60
    grace_s: int = 10
    batch_size: int = 64
    """Stream entries per read; each carries one writer flush (up to its batch size)."""
    retention_s: int = 24 * 3600
    """How long folded meters stay in the stream (trimmed at each window boundary)."""
    block_ms: int = 100
    send_batch: int = 100
    stripe_api_base: str | None = None
    """A Stripe-compatible server (the bundled emulator by default); None with no
    `stripe_api_key` means no Stripe: windows wait in the outbox."""
    stripe_api_key: str | None = field(default=None, repr=False)
    """Stripe's key, passed in by whoever read the environment (never logged); the
    local test key is used against a Stripe-compatible `stripe_api_base` without one."""
    stripe_mode: str = "v1"
    """"v1": one meter event per window; "v2": meter event streams, 100 events a call."""
    customers: tuple[tuple[str, str], ...] = ()
    """(Stripe customer id, tenant id) of every tenant: checked or created at start-up."""
    setup_retry_max_s: float = 60.0
    """A failed Stripe set-up is retried with backoff up to this long apart (folding and
    closing go on meanwhile; sending waits: `sink_setup.py`)."""


class Sink(Protocol):
    async def send(self, entries: Sequence[OutboxEntry]) -> list[SendResult]: ...


CLOSE_SLACK_S = 0.2
"""Checked this long after a boundary, so a Redis clock slightly behind this machine's
still finds the window due (a skew beyond it delays the window by one period)."""


def next_close_s(now_s: float, window_s: int, grace_s: int) -> float:
    """The next time windows can become due: windows start at multiples of `window_s`
    and close `window_s + grace_s` later, so due times are `k * window_s + grace_s`."""
    k = math.floor((now_s - grace_s) / window_s) + 1
    return k * window_s + grace_s + CLOSE_SLACK_S


class AggregatorLoop:
    """Read, fold, close, deliver, forever; one shard."""

    def __init__(
        self,
        ledger: MeterLedger,
        sink: Sink | None,
        consumer: str,
        *,
        batch_size: int = 64,
        block_ms: int = 100,
        send_batch: int = 100,
        retention_s: int = 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        customers: Sequence[tuple[str, str]] = (),
        setup_retry_max_s: float = 60.0,
        peers: Sequence[MeterLedger] = (),
    ) -> None:
        """`customers` ((Stripe customer id, tenant id) pairs) are checked, with the
        meters, by the sink's set-up before anything is sent (`sink_setup.py`). `peers`:
        the other shards' ledgers, read when an entry past the resend horizon is
        reconciled (`outbox_horizon.py`). `wall` dates first send attempts."""
        self.ledger = ledger
        self.sink = sink
        self.setup = SinkSetup(
            sink,
            customers,
            METER_EVENTS,
            retry_max_s=setup_retry_max_s,
            clock=clock,
            wall=wall,
        )
        self._horizon = HorizonCheck(ledger, sink, peers)
        self._published: SetupStatus | None = None
        """The set-up status last written to Redis (for the billing health)."""
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.send_batch = send_batch
        self.retention_s = retention_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._retry: dict[str, tuple[int, float]] = {}
        """identifier -> (attempts so far, clock time of the next try)."""
        self._wall = wall
        self._next_close = 0.0
        """Wall time of the next window boundary (at start: now, to close what is due)."""
        self._outbox_ready = True
        """The outbox may hold entries to send (at start: a crash may have left some)."""
        self.folded = 0
        self.delivered = 0

    async def step(self) -> int:
        """One round: fold a batch; at a window boundary, close due windows; retry the
        Stripe set-up when due; deliver when something was closed or a retry is due.
        Returns the stream entries read. Folding, closing and trimming never wait on
        Stripe."""
        entries = await self.ledger.read(self.consumer, self.batch_size, self.block_ms)
        self.folded += await self.ledger.fold(entries)
        now = self._wall()
        if now >= self._next_close:
            if await self.ledger.close_due():
                self._outbox_ready = True
            await self.ledger.trim(self.retention_s)
            self._next_close = next_close_s(now, self.ledger.window_s, self.ledger.grace_s)
        if await self.setup.ensure():
            self._outbox_ready = True  # what may be sent changed
        if self.setup.status != self._published:
            await self.ledger.set_status("stripe_setup", self.setup.status.to_dict())
            self._published = self.setup.status
        now_mono = self._clock()
        if self._outbox_ready or any(t <= now_mono for _, t in self._retry.values()):
            self._outbox_ready = False
            await self.deliver()
        return len(entries)

    async def deliver(self) -> None:
        """Send what is due; entries first sent longer ago than the resend horizon are
        reconciled with Stripe instead (`outbox_horizon.py`)."""
        if self.sink is None:
            return  # no Stripe configured: windows wait in the outbox (visible in health)
        status = self.setup.status
        if status.hold_all:
            return  # set-up not done: everything waits (visible in health)
        now = self._clock()
        wall = self._wall()
        firsts = await self.ledger.first_attempts()
        due = [
            e
            for e in await self.ledger.outbox()
            if self._retry.get(e.identifier, (0, 0.0))[1] <= now
            and not status.holds(e.stripe_customer_id)
        ]
        expired = [e for e in due if past_horizon(firsts.get(e.identifier), wall)]
        if expired:
            await self._past_horizon(expired, firsts, wall)
            gone = {e.identifier for e in expired}
            due = [e for e in due if e.identifier not in gone]
        for start in range(0, len(due), self.send_batch):
            chunk = due[start : start + self.send_batch]
            # On record before it is sent: the horizon counts from the first attempt.
            await self.ledger.record_attempts(chunk, wall)
            results = await self.sink.send(chunk)
            for entry, result in zip(chunk, results, strict=True):
                await self._settle(entry, result)

    async def _past_horizon(
        self, expired: list[OutboxEntry], firsts: dict[str, int], wall: float
    ) -> None:
        outcomes = await self._horizon.settle(expired, firsts, wall)
        for entry in expired:
            verdict = outcomes[entry.identifier].verdict
            if verdict is Verdict.WAIT:
                self._backoff(entry)
                continue
            self._retry.pop(entry.identifier, None)
            if verdict is Verdict.DELIVERED:
                self.delivered += 1
            elif verdict is Verdict.REISSUE:
                self._outbox_ready = True  # renamed: sent afresh next round

    async def _settle(self, entry: OutboxEntry, result: SendResult) -> None:
        if result.status is SendStatus.DELIVERED:
            await self.ledger.mark_delivered(entry)
            self._retry.pop(entry.identifier, None)
            self.delivered += 1
        elif result.status is SendStatus.PERMANENT:
            logger.error("Stripe refused window %s for good: %s", entry.identifier, result.detail)
            await self.ledger.dead_letter(entry, result.detail)
            self._retry.pop(entry.identifier, None)
        else:
            self._backoff(entry)

    def _backoff(self, entry: OutboxEntry) -> None:
        attempts = self._retry.get(entry.identifier, (0, 0.0))[0] + 1
        self._retry[entry.identifier] = (attempts, self._clock() + backoff_s(attempts, self._rng))

    async def run(self, stop: asyncio.Event) -> None:
        await self.ledger.ensure_group()
        while not stop.is_set():
            try:
                read = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("aggregator step failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if read == 0 and self.sink is not None and self._retry:
                await asyncio.sleep(0.05)


def stripe_sink_for(api_base: str | None, api_key: str | None, mode: str = "v1") -> StripeSink:
    """A sink on Stripe (with `api_key`) or on a Stripe-compatible `api_base` (the
    emulator takes any test key: `LOCAL_TEST_KEY` when none is given)."""
    return StripeSink.connect(api_key or LOCAL_TEST_KEY, api_base, mode=mode)


def make_sink(config: AggregatorConfig) -> StripeSink | None:
    """The aggregator's sink (its set-up is the loop's: `sink_setup.py`); None when
    neither Stripe nor an emulator is configured."""
    if config.stripe_api_base is None and config.stripe_api_key is None:
        return None
    return stripe_sink_for(config.stripe_api_base, config.stripe_api_key, config.stripe_mode)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MeterAggregator:
    """Hosts one shard's `AggregatorLoop` in a thread; see the module docstring."""

    def __init__(self, config: AggregatorConfig, shard: int) -> None:
        self._config = config
        self._shard = shard
        self._loop_ref: AggregatorLoop | None = None
        self._stop: asyncio.Event | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=f"aggregator-{shard}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            try:
                asyncio.run(self._run())
                return
            except Exception:
                logger.exception("aggregator crashed; restarting its loop")
                time.sleep(1.0)

    async def _run(self) -> None:
        from serve_app.redis_client import redis_client

        client = redis_client(self._config.redis_url, timeout_s=5)
        config = self._config
        ledger = MeterLedger(
            client,
            self._shard,
            window_s=config.window_s,
            grace_s=config.grace_s,
            shards=config.shards,
            instance=config.instance,
        )
        self._loop_ref = AggregatorLoop(
            ledger,
            make_sink(config),
            consumer=f"agg-{self._shard}",
            batch_size=config.batch_size,
            block_ms=config.block_ms,
            send_batch=config.send_batch,
            retention_s=config.retention_s,
            customers=config.customers,
            setup_retry_max_s=config.setup_retry_max_s,
            peers=[
                MeterLedger(
                    client,
                    shard,
                    window_s=config.window_s,
                    grace_s=config.grace_s,
                    shards=config.shards,
                    instance=config.instance,
                )
                for shard in range(config.shards)
                if shard != self._shard
            ],
        )
        self._stop = asyncio.Event()
        self._event_loop = asyncio.get_running_loop()
        await self._loop_ref.run(self._stop)

    def pid(self) -> int:
        return os.getpid()

    def config(self) -> AggregatorConfig:
        """The configuration it runs (`ensure_aggregators` compares it with the app's)."""
        return self._config

    def health(self) -> dict[str, Any]:
        loop, event_loop = self._loop_ref, self._event_loop
        if loop is None or event_loop is None:
            return {"shard": self._shard, "running": False}
        future = asyncio.run_coroutine_threadsafe(loop.ledger.health(), event_loop)
        health = future.result(timeout=5)
        return {
            **health,
            "running": True,
            "folded": loop.folded,
            "delivered": loop.delivered,
            "stripe_setup": loop.setup.status.to_dict(),
        }

    def stop(self) -> None:
        if self._stop is not None and self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(self._stop.set)
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout=10)


REPLACE_TRIES = 20
"""Rounds `ensure_aggregators` tries per shard (a killed actor's name frees in a moment)."""


def ensure_aggregators(config: AggregatorConfig, *, timeout_s: float = 60.0) -> list[Any]:
    """The aggregator actors of every shard, detached, each running `config`.

    An aggregator already running (get-if-exists) with another configuration (a redeploy
    with another window size, shard count, Stripe base or key, customer list), or too old
    to say, is killed and created again with `config`. That is safe at any moment:
    everything it knows lives in Redis; the new one reads the pending stream entries of
    the same consumer, closes the open windows (each keeps its own shape and closes under
    its own identifier), and resends the outbox with the identifiers frozen there.
    An aggregator that does not answer within `timeout_s` is left as it is (logged):
    replacing an actor that may be starting would only restart it.

    Called once per ingress replica at construction, before it serves; an aggregator of
    a shard beyond `config.shards` (the count went down) is left running: it drains its
    stream and outbox under its own configuration.
    """
    return [_ensure_one(config, shard, timeout_s) for shard in range(config.shards)]


def _ensure_one(config: AggregatorConfig, shard: int, timeout_s: float) -> Any:
    from ray.exceptions import GetTimeoutError, RayActorError

    name = AGGREGATOR_NAME.format(instance=config.instance, shard=shard)
    for _ in range(REPLACE_TRIES):
        actor = MeterAggregator.options(  # type: ignore[attr-defined]
            name=name,
            namespace=AGGREGATOR_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(config, shard)
        try:
            running = ray.get(actor.config.remote(), timeout=timeout_s)
        except GetTimeoutError:
            logger.warning(
                "aggregator %s did not say its configuration within %.0f s; left as it is",
                name,
                timeout_s,
            )
            return actor
        except RayActorError:
            time.sleep(0.2)  # dead or being killed (by another replica): get or create anew
            continue
        except Exception:
            running = None  # an aggregator from before `config()` existed
        if running == config:
            return actor
        logger.warning(
            "replacing aggregator %s: its configuration differs (%s)",
            name,
            ", ".join(config_differences(running, config)) or "unknown",
        )
        ray.kill(actor, no_restart=True)
        time.sleep(0.2)
    raise RuntimeError(f"aggregator {name} could not be replaced with the app's configuration")


def config_differences(running: AggregatorConfig | None, wanted: AggregatorConfig) -> list[str]:
    """Names of the fields that differ (never their values: two of them are secrets)."""
    if running is None:
        return ["unknown configuration"]
    names = [f.name for f in fields(AggregatorConfig)]
    return [n for n in names if getattr(running, n) != getattr(wanted, n)]
