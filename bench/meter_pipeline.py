"""Benchmark: the meter pipeline, from the ingress's append to Stripe's acknowledgement.

Issue targets:

1. sustained **>= 50,000 meters/s** from append (the ingress's `MeterStreamWriter`) to
   aggregated window (folded by the aggregator's `AggregatorLoop`) on this machine;
2. the **p99 lag** from request end (`Meter.ended_at_ms`) to Stripe's acknowledgement
   of the windows the meter landed in, with the default window settings
   (`AggregatorConfig`: `window_s=60`, `grace_s=10`): measured, no target number.

Part `throughput` (per shard count, 1 and 2 by default): a fresh embedded redis-server
(`EmbeddedRedis`, a temporary directory, a free port; append-only file on, as in the
app); N meters of ~100 tenants are built up front (not timed), then

- one producer process appends them with `MeterStreamWriter` (`batch_size` per flush,
  one EVAL of `APPEND_LUA` per shard and flush) as fast as it takes them: the producer
  keeps at most a few batches buffered (`emit` in batch-sized chunks) and then awaits
  `stop()`, which flushes the rest;
- one process per shard runs `AggregatorLoop(ledger, sink=None, ...)` (read, fold,
  close; no Stripe) until its shard's meters are all folded.

Reported: the append rate (N / first `emit` to `stop()` returned), the fold rate
(N / first to last fold, over all shards), the end-to-end sustained rate (N / first
`emit` to last fold: the target's number), the CPU each process spent per meter
(producer, aggregators, redis-server from `INFO cpu`, and what other processes on the
shared machine took, from /proc/stat), where the aggregator's wall time went (read +
decode, fold, close), and Redis's own per-command time (`INFO commandstats`). At the end
the Redis state is checked against what was produced: every meter folded once
(tenant `meters`/`failed` counters), billed micro-USD and tokens of the open windows
plus the closed ledger equal to the sums of the produced meters, nothing pending.

Part `lag`: a fresh redis-server, the Stripe emulator (`EmulatorServer`, a thread) and
an `AggregatorLoop` with the real `StripeSink` (v1 meter events; the other loop settings
are `AggregatorConfig`'s defaults) in this process; a producer process appends a steady
`--rate` meters/s through `MeterStreamWriter` for `--duration-s` (default: one window
length, so every position in a window is equally likely and two windows close), with
`ended_at_ms` the moment each meter is emitted. The sink is wrapped to record when each
identifier's send came back DELIVERED (the batch's return, so a few ms late at most).
A meter's lag is the later acknowledgement of its two windows (billed micro-USD and
tokens) minus its `ended_at_ms`. Expected: lag = (window end + grace - ended_at) +
delivery delay, uniform over [grace_s, window_s + grace_s] plus a small delay, so p99
≈ 0.99 · window_s + grace_s + delay. The run waits until every window is closed and
delivered, then checks that Stripe's totals equal the produced sums exactly.

    .venv/bin/python bench/meter_pipeline.py                          # both parts, ~3 min
    .venv/bin/python bench/meter_pipeline.py --part throughput --meters 200000
    .venv/bin/python bench/meter_pipeline.py --part lag --window-s 5 --grace-s 1 --duration-s 30
    .venv/bin/python bench/meter_pipeline.py --json                   # machine-readable

A benchmark, not a test: it always exits 0 and prints PASS or FAIL against the target.
Never uses port 6379: every redis-server and the emulator get free ports, and every
server it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import redis as redis_sync
import redis.asyncio as aioredis
from stats import percentile  # bench/stats.py: bench/ is on sys.path when run as a script

from rtcts_dev.stripe_emulator import EMULATOR_API_KEY, EmulatorServer
from serve_app.local.redis_server import EmbeddedRedis
from serve_app.metering.aggregator import AggregatorConfig, AggregatorLoop
from serve_app.metering.entry import batch_item
from serve_app.metering.ledger import GROUP, FoldItem, MeterLedger, ShardKeys
from serve_app.metering.meter import Meter, new_meter_id
from serve_app.metering.stream import MeterStreamWriter, shard_of
from serve_app.metering.stripe_sink import StripeSink
from serve_app.metering.types import (
    METER_EVENT_BILLED,
    METER_EVENT_TOKENS,
    METER_EVENTS,
    OutboxEntry,
    SendResult,
    SendStatus,
)
from serve_app.metering.windows import identifier, window_start_s

TARGET_PER_S = 50_000
DEFAULTS = AggregatorConfig(redis_url="redis://unused")
"""The aggregator's default settings (window_s, grace_s, batch_size, block_ms, ...)."""
FORK = mp.get_context("fork")
"""Children are forked before any event loop or thread runs here, so they inherit the
pre-built meters instead of unpickling them."""
HIGH_WATER_BATCHES = 4
"""The producer keeps at most this many batches buffered in the writer."""
THROUGHPUT_TIMEOUT_S = 600.0


# -- meters --------------------------------------------------------------------------


def tenant_names(count: int) -> list[str]:
    return [f"tenant-{i:03d}" for i in range(count)]


def customer_of(tenant: str) -> str:
    return f"cus_{tenant.replace('-', '_')}"


def make_meter(rng: random.Random, tenant: str, ended_at_ms: int) -> Meter:
    """A verified meter shaped like the ingress's (~500 bytes of JSON); 5% failed."""
    billable = rng.random() >= 0.05
    input_tokens = rng.randint(1, 2000)
    output_tokens = rng.randint(1, 500)
    billed = (input_tokens * 3 + output_tokens * 15) if billable else 0
    return Meter(
        meter_id=new_meter_id(ended_at_ms),
        request_id=uuid.UUID(int=rng.getrandbits(128)).hex,
        tenant_id=tenant,
        stripe_customer_id=customer_of(tenant),
        plan_id="pro",
        requested_model="llama-3.1-8b-instruct",
        served_model="llama-3.1-8b-instruct",
        decision="allow",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_ms=round(rng.uniform(50, 900), 3),
        total_ms=round(rng.uniform(900, 9000), 3),
        sla_met=True,
        cost_micro=billed // 3,
        list_price_micro=billed,
        credit_micro=0,
        billed_micro=billed,
        billable=billable,
        policy_version="bench-v1",
        ended_at_ms=ended_at_ms,
        failure=None if billable else "upstream_error",
    )


def make_meters(count: int, tenants: Sequence[str], seed: int) -> list[Meter]:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    return [make_meter(rng, rng.choice(tenants), now_ms + i // 1000) for i in range(count)]


@dataclass
class Expected:
    """What the aggregator must end up with, per shard and in total."""

    per_shard: list[int]
    billable: int = 0
    failed: int = 0
    billed_micro: int = 0
    tokens: int = 0

    @classmethod
    def of(cls, meters: Sequence[Meter], shards: int) -> Expected:
        out = cls(per_shard=[0] * shards)
        for m in meters:
            out.per_shard[shard_of(m.tenant_id, shards)] += 1
            if m.billable:
                out.billable += 1
                out.billed_micro += m.billed_micro
                out.tokens += m.input_tokens + m.output_tokens
            else:
                out.failed += 1
        return out


# -- measurement helpers -----------------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / ticks, total / ticks


def redis_cpu_s(client: redis_sync.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_stats(client: redis_sync.Redis) -> dict[str, tuple[int, float]]:
    """Redis's per-command (calls, total µs) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    out: dict[str, tuple[int, float]] = {}
    for name, value in stats.items():
        if isinstance(value, dict):
            out[name.removeprefix("cmdstat_")] = (int(value["calls"]), float(value["usec"]))
    return out


@contextlib.contextmanager
def py_spy(profile_dir: Path | None, pid: int, name: str) -> Iterator[None]:
    """Sample `pid` with py-spy (collapsed stacks in `profile_dir/name.txt`), if asked."""
    if profile_dir is None:
        yield
        return
    binary = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen(
        [
            *(str(binary), "record", "--pid", str(pid), "--rate", "200", "--format", "raw"),
            *("--nonblocking", "--output", str(profile_dir / f"{name}.txt")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.wait(timeout=30)  # py-spy stops by itself when the process exits


# -- part 1: throughput --------------------------------------------------------------


class TimedLedger(MeterLedger):
    """A `MeterLedger` that times its steps and stops the loop once `target` are folded."""

    def __init__(self, client: Any, shard: int, *, target: int, stop: asyncio.Event) -> None:
        super().__init__(client, shard, window_s=DEFAULTS.window_s, grace_s=DEFAULTS.grace_s)
        self.target = target
        self.stop = stop
        self.folded = 0
        self.steps = 0
        self.first_fold = math.nan
        self.last_fold = math.nan
        self.read_s = 0.0
        self.busy_read_s = 0.0
        self.fold_s = 0.0
        self.close_s = 0.0
        self.read_entries = 0

    async def read(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, FoldItem]]:
        start = time.monotonic()
        entries = await super().read(consumer, count, block_ms)
        spent = time.monotonic() - start
        self.read_s += spent
        if entries:
            self.busy_read_s += spent
            self.read_entries += len(entries)
        return entries

    async def fold(self, entries: list[tuple[str, FoldItem]]) -> int:
        if not entries:
            return 0
        start = time.monotonic()
        folded = await super().fold(entries)
        end = time.monotonic()
        self.fold_s += end - start
        self.steps += 1
        if self.folded == 0:
            self.first_fold = start
        self.folded += folded
        self.last_fold = end
        if self.folded >= self.target:
            self.stop.set()
        return folded

    async def close_due(self) -> int:
        start = time.monotonic()
        closed = await super().close_due()
        self.close_s += time.monotonic() - start
        return closed


def aggregator_main(
    url: str,
    shard: int,
    target: int,
    read_batch: int,
    block_ms: int,
    ready: MpEvent,
    out: Connection,
) -> None:
    async def run() -> dict[str, Any]:
        client = aioredis.Redis.from_url(url, socket_timeout=30)
        stop = asyncio.Event()
        ledger = TimedLedger(client, shard, target=target, stop=stop)
        await ledger.ensure_group()
        loop = AggregatorLoop(
            ledger, None, consumer=f"agg-{shard}", batch_size=read_batch, block_ms=block_ms
        )
        cpu0 = time.process_time()
        ready.set()
        runner = asyncio.create_task(loop.run(stop))
        try:
            await asyncio.wait_for(asyncio.shield(runner), THROUGHPUT_TIMEOUT_S)
        except TimeoutError:
            stop.set()
            await runner
        cpu = time.process_time() - cpu0
        await client.aclose()
        return {
            "shard": shard,
            "target": target,
            "folded": ledger.folded,
            "read": ledger.read_entries,
            "folds": ledger.steps,
            "first_fold": ledger.first_fold,
            "last_fold": ledger.last_fold,
            "read_s": ledger.read_s,
            "busy_read_s": ledger.busy_read_s,
            "fold_s": ledger.fold_s,
            "close_s": ledger.close_s,
            "cpu_s": cpu,
        }

    out.send(asyncio.run(run()))
    out.close()


def producer_main(
    url: str,
    spool_dir: str,
    meters: Sequence[Meter],
    shards: int,
    write_batch: int,
    go: MpEvent,
    out: Connection,
) -> None:
    async def run() -> dict[str, Any]:
        writer = MeterStreamWriter.from_url(
            url,
            Path(spool_dir),
            shards=shards,
            batch_size=write_batch,
            max_buffered=max(len(meters), write_batch),
            timeout_s=30.0,
        )
        writer.start()
        high_water = HIGH_WATER_BATCHES * write_batch
        go.wait()
        cpu0 = time.process_time()
        first = time.monotonic()
        for i in range(0, len(meters), write_batch):
            for meter in meters[i : i + write_batch]:
                writer.emit(meter)
            while writer.buffered >= high_water:
                await asyncio.sleep(0.0002)
        await writer.stop()
        last = time.monotonic()
        return {
            "first_append": first,
            "stopped": last,
            "cpu_s": time.process_time() - cpu0,
            "written": writer.written,
            "flushes": writer.flushes,
            "spooled": writer.spooled,
            "dropped": writer.dropped,
        }

    out.send(asyncio.run(run()))
    out.close()


@dataclass
class ThroughputResult:
    shards: int
    meters: int
    write_batch: int
    read_batch: int
    block_ms: int
    append_per_s: float
    fold_per_s: float
    sustained_per_s: float
    append_s: float
    end_to_end_s: float
    cpu_us_per_meter: dict[str, float]
    other_cores: float
    aggregator_wall: list[dict[str, float]]
    redis_commands: dict[str, dict[str, float]]
    writer: dict[str, int]
    checks: dict[str, bool]
    problems: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return all(self.checks.values())


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_meters(client: redis_sync.Redis, key: str) -> int:
    """Meters in a stream: the counts of every entry's summary."""
    total, start = 0, "-"
    while True:
        entries: Any = client.xrange(key, min=start, count=200)
        for entry_id, fields in entries:
            item = batch_item(fields)
            total += sum(g[3] + g[4] for g in item[1]) if item else 0
            start = "(" + text(entry_id)
        if len(entries) < 200:
            return total


def verify(
    client: redis_sync.Redis, shards: int, expected: Expected
) -> tuple[dict[str, bool], list[str]]:
    meters = failed = billed = tokens = ledger_billed = ledger_tokens = 0
    pending = appended = 0
    for shard in range(shards):
        k = ShardKeys(shard)
        for raw_field, raw_value in client.hgetall(k.tenants).items():
            name = text(raw_field).rsplit("|", 1)[1]
            if name == "meters":
                meters += int(raw_value)
            elif name == "failed":
                failed += int(raw_value)
        for raw_field, raw_value in client.hgetall(k.open).items():
            event = text(raw_field).rsplit("|", 2)[1]
            billed += int(raw_value) if event == METER_EVENT_BILLED else 0
            tokens += int(raw_value) if event == METER_EVENT_TOKENS else 0
        for raw_field, raw_value in client.hgetall(k.ledger).items():
            event = text(raw_field).rsplit("|", 1)[1]
            ledger_billed += int(raw_value) if event == METER_EVENT_BILLED else 0
            ledger_tokens += int(raw_value) if event == METER_EVENT_TOKENS else 0
        info = client.xpending(k.stream, GROUP)
        pending += int(info["pending"])
        appended += stream_meters(client, k.stream)
    checks = {
        "every meter appended once": appended == sum(expected.per_shard),
        "nothing pending": pending == 0,
        "billable meters folded once": meters == expected.billable,
        "failed meters counted once": failed == expected.failed,
        "billed: open + closed == produced": billed + ledger_billed == expected.billed_micro,
        "tokens: open + closed == produced": tokens + ledger_tokens == expected.tokens,
    }
    problems = []
    if not all(checks.values()):
        problems.append(
            f"appended {appended}/{sum(expected.per_shard)}, pending {pending}, "
            f"meters {meters}/{expected.billable}, failed {failed}/{expected.failed}, "
            f"billed {billed}+{ledger_billed}/{expected.billed_micro}, "
            f"tokens {tokens}+{ledger_tokens}/{expected.tokens}"
        )
    return checks, problems


def run_throughput(
    meters: Sequence[Meter],
    shards: int,
    write_batch: int,
    read_batch: int,
    block_ms: int,
    workdir: Path,
    profile_dir: Path | None,
    aof: bool = True,
) -> ThroughputResult:
    expected = Expected.of(meters, shards)
    run_dir = workdir / f"throughput-{shards}-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(run_dir / "redis") as server:
        client = redis_sync.Redis.from_url(server.url, socket_timeout=60)
        if not aof:
            client.config_set("appendonly", "no")
        readies: list[MpEvent] = []
        aggs: list[tuple[Any, Connection]] = []
        for shard in range(shards):
            ready = FORK.Event()
            recv, send = FORK.Pipe(duplex=False)
            proc = FORK.Process(
                target=aggregator_main,
                args=(
                    server.url,
                    shard,
                    expected.per_shard[shard],
                    read_batch,
                    block_ms,
                    ready,
                    send,
                ),
                name=f"aggregator-{shard}",
            )
            proc.start()
            send.close()
            readies.append(ready)
            aggs.append((proc, recv))
        go = FORK.Event()
        recv, send = FORK.Pipe(duplex=False)
        producer = FORK.Process(
            target=producer_main,
            args=(server.url, str(run_dir / "spool"), meters, shards, write_batch, go, send),
            name="producer",
        )
        producer.start()
        send.close()
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError("an aggregator did not start")
        time.sleep(0.5)  # let the producer reach go.wait() and the loops block on reads
        client.config_resetstat()
        redis0 = redis_cpu_s(client)
        busy0, total0 = machine_busy()
        with contextlib.ExitStack() as stack:
            stack.enter_context(py_spy(profile_dir, producer.pid or 0, f"producer-{shards}"))
            for shard, (proc, _) in enumerate(aggs):
                stack.enter_context(py_spy(profile_dir, proc.pid, f"aggregator-{shards}-{shard}"))
            go.set()
            prod: dict[str, Any] = recv.recv()
            agg_results: list[dict[str, Any]] = [conn.recv() for _, conn in aggs]
            busy1, total1 = machine_busy()
            redis_cpu = redis_cpu_s(client) - redis0
            commands = command_stats(client)
            producer.join(30)
            for proc, _ in aggs:
                proc.join(30)
        checks, problems = verify(client, shards, expected)
        client.close()

    n = len(meters)
    first_fold = min(a["first_fold"] for a in agg_results)
    last_fold = max(a["last_fold"] for a in agg_results)
    append_s = prod["stopped"] - prod["first_append"]
    e2e_s = last_fold - prod["first_append"]
    agg_cpu = sum(a["cpu_s"] for a in agg_results)
    ours = prod["cpu_s"] + agg_cpu + redis_cpu
    other_cores = max(0.0, (busy1 - busy0) - ours) / e2e_s
    cpu = {
        "producer": prod["cpu_s"] / n * 1e6,
        "aggregators": agg_cpu / n * 1e6,
        "redis": redis_cpu / n * 1e6,
        "total": ours / n * 1e6,
    }
    if any(a["folded"] < a["target"] for a in agg_results):
        problems.append("an aggregator timed out before folding its shard")
    wall = [
        {
            "shard": a["shard"],
            "folds": a["folds"],
            "meters_per_fold": a["folded"] / max(a["folds"], 1),
            "entries_per_fold": a["read"] / max(a["folds"], 1),
            "read_decode_s": a["busy_read_s"],
            "idle_read_s": a["read_s"] - a["busy_read_s"],
            "fold_s": a["fold_s"],
            "close_s": a["close_s"],
            "cpu_s": a["cpu_s"],
        }
        for a in agg_results
    ]
    redis_commands = {
        name: {"calls": calls, "us_per_meter": usec / n, "us_per_call": usec / max(calls, 1)}
        for name, (calls, usec) in sorted(commands.items(), key=lambda kv: -kv[1][1])
        if usec / n >= 0.01
    }
    del total0, total1
    return ThroughputResult(
        shards=shards,
        meters=n,
        write_batch=write_batch,
        read_batch=read_batch,
        block_ms=block_ms,
        append_per_s=n / append_s,
        fold_per_s=n / (last_fold - first_fold),
        sustained_per_s=n / e2e_s,
        append_s=append_s,
        end_to_end_s=e2e_s,
        cpu_us_per_meter=cpu,
        other_cores=other_cores,
        aggregator_wall=wall,
        redis_commands=redis_commands,
        writer={k: int(prod[k]) for k in ("written", "flushes", "spooled", "dropped")},
        checks=checks,
        problems=problems,
    )


# -- part 2: lag ---------------------------------------------------------------------


class AckRecorder:
    """Wraps the Stripe sink: the time (time.time) each identifier came back DELIVERED."""

    def __init__(self, sink: StripeSink) -> None:
        self.sink = sink
        self.acked: dict[str, float] = {}
        self.sends = 0
        self.not_delivered = 0

    async def send(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        results = await self.sink.send(entries)
        now = time.time()
        self.sends += 1
        for result in results:
            if result.status is SendStatus.DELIVERED:
                self.acked.setdefault(result.identifier, now)
            else:
                self.not_delivered += 1
        return results


def lag_producer_main(
    url: str,
    spool_dir: str,
    tenants: Sequence[str],
    rate: float,
    duration_s: float,
    seed: int,
    go: MpEvent,
    out: Connection,
) -> None:
    """A steady `rate` meters/s for `duration_s`; sends back (tenant, ended_at_ms,
    billable, billed, tokens) of each."""

    async def run() -> list[tuple[str, int, bool, int, int]]:
        rng = random.Random(seed)
        writer = MeterStreamWriter.from_url(url, Path(spool_dir))
        writer.start()
        go.wait()
        sent: list[tuple[str, int, bool, int, int]] = []
        total = int(rate * duration_s)
        start = time.monotonic()
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            meter = make_meter(rng, rng.choice(tenants), int(time.time() * 1000))
            writer.emit(meter)
            sent.append(
                (
                    meter.tenant_id,
                    meter.ended_at_ms,
                    meter.billable,
                    meter.billed_micro,
                    meter.input_tokens + meter.output_tokens,
                )
            )
        await writer.stop()
        return sent

    out.send(asyncio.run(run()))
    out.close()


@dataclass
class LagResult:
    window_s: int
    grace_s: int
    rate: float
    duration_s: float
    meters: int
    billable: int
    windows: int
    lag_s: dict[str, float]
    wait_for_close_s: dict[str, float]
    delivery_delay_s: dict[str, float]
    expected_p99_s: float
    sends: int
    not_delivered: int
    unmatched: int
    stripe_exact: bool
    total_s: float
    problems: list[str] = field(default_factory=list)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def run_lag(
    tenants: Sequence[str],
    window_s: int,
    grace_s: int,
    rate: float,
    duration_s: float,
    workdir: Path,
    seed: int,
) -> LagResult:
    started = time.monotonic()
    run_dir = workdir / f"lag-{uuid.uuid4().hex[:6]}"
    with EmbeddedRedis(run_dir / "redis") as server:
        go = FORK.Event()
        recv, send = FORK.Pipe(duplex=False)
        producer = FORK.Process(  # forked before the emulator's thread and the event loop
            target=lag_producer_main,
            args=(server.url, str(run_dir / "spool"), tenants, rate, duration_s, seed, go, send),
            name="lag-producer",
        )
        producer.start()
        send.close()
        with EmulatorServer() as stripe:
            result = asyncio.run(
                _lag(server.url, stripe, tenants, window_s, grace_s, rate, duration_s, go, recv)
            )
        producer.join(30)
    result.total_s = time.monotonic() - started
    return result


async def _lag(
    url: str,
    stripe: EmulatorServer,
    tenants: Sequence[str],
    window_s: int,
    grace_s: int,
    rate: float,
    duration_s: float,
    go: MpEvent,
    recv: Connection,
) -> LagResult:
    client = aioredis.Redis.from_url(url, socket_timeout=10)
    ledger = MeterLedger(client, 0, window_s=window_s, grace_s=grace_s)
    sink = StripeSink.connect(EMULATOR_API_KEY, stripe.url, mode=DEFAULTS.stripe_mode)
    await sink.ensure_setup([(customer_of(t), t) for t in tenants], METER_EVENTS)
    recorder = AckRecorder(sink)
    loop = AggregatorLoop(
        ledger,
        recorder,
        consumer="agg-0",
        batch_size=DEFAULTS.batch_size,
        block_ms=DEFAULTS.block_ms,
        send_batch=DEFAULTS.send_batch,
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    go.set()
    sent: list[tuple[str, int, bool, int, int]] = await asyncio.to_thread(recv.recv)
    # Every window closes at most window + grace after the last meter; then it is sent.
    deadline = time.monotonic() + window_s + grace_s + 120
    problems: list[str] = []
    while True:
        health = await ledger.health()
        if health["open_windows"] == 0 and health["outbox"] == 0 and health["stream_pending"] == 0:
            info = await client.xinfo_groups(ledger.keys.stream)
            if info and int(info[0].get("lag") or 0) == 0 and loop.folded >= len(sent):
                break
        if time.monotonic() > deadline:
            problems.append(f"not drained in time: {health}")
            break
        await asyncio.sleep(0.2)
    stop.set()
    await runner
    await sink.aclose()
    await client.aclose()

    lags: list[float] = []
    waits: list[float] = []
    unmatched = 0
    expected: dict[tuple[str, str], int] = {}
    closes: dict[str, float] = {}
    for tenant, ended_ms, billable, billed, tokens in sent:
        if not billable:
            continue
        start = window_start_s(ended_ms, window_s)
        acks = []
        for event, value in ((METER_EVENT_BILLED, billed), (METER_EVENT_TOKENS, tokens)):
            key = (customer_of(tenant), event)
            expected[key] = expected.get(key, 0) + value
            ident = identifier(
                tenant, event, start, window_s=window_s, grace_s=grace_s, layout=ledger.layout
            )
            closes[ident] = start + window_s + grace_s
            if ident in recorder.acked:
                acks.append(recorder.acked[ident])
        if len(acks) != 2:
            unmatched += 1  # folded into a later window (late) or never delivered
            continue
        lags.append(max(acks) - ended_ms / 1000)
        waits.append(start + window_s + grace_s - ended_ms / 1000)
    delays = [recorder.acked[i] - close for i, close in closes.items() if i in recorder.acked]
    stripe_exact = stripe.state.totals() == expected
    events = stripe.state.events()
    if len({e["identifier"] for e in events}) != len(events):
        stripe_exact = False
        problems.append("an identifier reached Stripe twice")
    if not stripe_exact:
        problems.append("Stripe's totals differ from the produced sums")
    if unmatched:
        problems.append(f"{unmatched} meters not matched to an acknowledged window")
    return LagResult(
        window_s=window_s,
        grace_s=grace_s,
        rate=rate,
        duration_s=duration_s,
        meters=len(sent),
        billable=sum(1 for s in sent if s[2]),
        windows=len(closes),
        lag_s=summary(lags) if lags else {},
        wait_for_close_s=summary(waits) if waits else {},
        delivery_delay_s=summary(delays) if delays else {},
        expected_p99_s=0.99 * window_s + grace_s,
        sends=recorder.sends,
        not_delivered=recorder.not_delivered,
        unmatched=unmatched,
        stripe_exact=stripe_exact,
        total_s=0.0,
        problems=problems,
    )


# -- report --------------------------------------------------------------------------


def print_throughput(results: Sequence[ThroughputResult]) -> None:
    print("\nThroughput: append -> aggregated window (meters/s)")
    header = "| shards | meters | append/s | fold/s | **sustained/s** | e2e s | verdict | checks |"
    print(header)
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        verdict = "PASS" if r.sustained_per_s >= TARGET_PER_S else "FAIL"
        print(
            f"| {r.shards} | {r.meters:,} | {r.append_per_s:,.0f} | {r.fold_per_s:,.0f} "
            f"| **{r.sustained_per_s:,.0f}** | {r.end_to_end_s:.2f} | {verdict} "
            f"| {'ok' if r.correct else 'FAILED'} |"
        )
    cpus = os.cpu_count() or 1
    print(
        "\nCPU µs per meter; ceiling = all cores busy at that cost; others = cores that other"
        " processes on the machine kept busy on average"
    )
    print("| shards | producer | aggregator(s) | redis-server | total | ceiling/s | others |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r.cpu_us_per_meter
        print(
            f"| {r.shards} | {c['producer']:.1f} | {c['aggregators']:.1f} | {c['redis']:.1f} "
            f"| {c['total']:.1f} | {cpus * 1e6 / c['total']:,.0f} | {r.other_cores:.2f} |"
        )
    print("\nAggregator wall time (s): busy reads incl. decode, folds, closes")
    print("| shards | shard | folds | meters/fold | read+decode | idle reads | fold | close |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for w in r.aggregator_wall:
            print(
                f"| {r.shards} | {w['shard']:.0f} | {w['folds']:.0f} | {w['meters_per_fold']:.0f} "
                f"| {w['read_decode_s']:.2f} | {w['idle_read_s']:.2f} | {w['fold_s']:.2f} "
                f"| {w['close_s']:.2f} |"
            )
    print("\nRedis time per meter by command (INFO commandstats; script calls nest)")
    for r in results:
        parts = [
            f"{name} {v['us_per_meter']:.2f} µs ({v['calls']:.0f} calls)"
            for name, v in r.redis_commands.items()
        ]
        print(f"- {r.shards} shard(s): " + ", ".join(parts))
    for r in results:
        for problem in r.problems:
            print(f"PROBLEM ({r.shards} shards): {problem}")


def print_lag(results: Sequence[LagResult]) -> None:
    print("\nLag: request end -> Stripe acknowledgement (s)")
    print("| window/grace | rate | duration | meters | windows | p50 | p90 | **p99** | max "
          "| ≈ expected p99 | delivery delay p50/p99/max | exact |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        lag, d = r.lag_s, r.delivery_delay_s
        if not lag:
            print(f"| {r.window_s}/{r.grace_s} | no acknowledged meters | {r.problems} |")
            continue
        print(
            f"| {r.window_s}/{r.grace_s} s | {r.rate:.0f}/s | {r.duration_s:.0f} s | {r.meters:,} "
            f"| {r.windows} | {lag['p50']:.2f} | {lag['p90']:.2f} | **{lag['p99']:.2f}** "
            f"| {lag['max']:.2f} | {r.expected_p99_s:.1f} + delay "
            f"| {d['p50']:.3f} / {d['p99']:.3f} / {d['max']:.3f} "
            f"| {'yes' if r.stripe_exact and not r.unmatched else 'NO'} |"
        )
    for r in results:
        for problem in r.problems:
            print(f"PROBLEM (lag {r.window_s}/{r.grace_s}): {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "throughput", "lag"), default="all")
    parser.add_argument("--meters", type=int, default=500_000, help="throughput: meters")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--shards", default="1,2", help="throughput: shard counts to run")
    parser.add_argument("--write-batch", type=int, default=1024, help="writer batch_size")
    parser.add_argument(
        "--read-batch", type=int, default=64, help="aggregator batch_size (stream entries)"
    )
    parser.add_argument("--block-ms", type=int, default=5, help="aggregator block_ms")
    parser.add_argument("--window-s", type=int, default=DEFAULTS.window_s)
    parser.add_argument("--grace-s", type=int, default=DEFAULTS.grace_s)
    parser.add_argument("--rate", type=float, default=200.0, help="lag: meters per second")
    parser.add_argument(
        "--duration-s", type=float, default=None, help="lag: load duration (default window_s)"
    )
    parser.add_argument(
        "--no-aof", action="store_true", help="throughput: turn Redis's append-only file off"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tenants = tenant_names(args.tenants)
    shard_counts = [int(s) for s in args.shards.split(",") if s.strip()]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": os.getloadavg(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    throughput: list[ThroughputResult] = []
    lag: list[LagResult] = []
    with tempfile.TemporaryDirectory(prefix="rtcts-bench-meters-") as tmp:
        workdir = Path(tmp)
        if args.part in ("all", "throughput"):
            built = time.monotonic()
            meters = make_meters(args.meters, tenants, args.seed)
            if not args.json:
                print(f"built {len(meters):,} meters in {time.monotonic() - built:.1f} s")
            for shards in shard_counts:
                result = run_throughput(
                    meters,
                    shards,
                    args.write_batch,
                    args.read_batch,
                    args.block_ms,
                    workdir,
                    args.profile,
                    aof=not args.no_aof,
                )
                throughput.append(result)
                if not args.json:
                    print(
                        f"{shards} shard(s): sustained {result.sustained_per_s:,.0f}/s "
                        f"(append {result.append_per_s:,.0f}/s, fold {result.fold_per_s:,.0f}/s)"
                    )
            del meters
        if args.part in ("all", "lag"):
            duration = args.duration_s if args.duration_s is not None else float(args.window_s)
            if not args.json:
                print(
                    f"lag: {args.rate:.0f} meters/s for {duration:.0f} s, window "
                    f"{args.window_s} s, grace {args.grace_s} s (then until all is delivered)"
                )
            lag.append(
                run_lag(
                    tenants, args.window_s, args.grace_s, args.rate, duration, workdir, args.seed
                )
            )
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["throughput"] = [asdict(r) for r in throughput]
    report["lag"] = [asdict(r) for r in lag]
    best = max((r.sustained_per_s for r in throughput), default=math.nan)
    verdict = "n/a" if not throughput else ("PASS" if best >= TARGET_PER_S else "FAIL")
    report["verdict"] = {
        "target_per_s": TARGET_PER_S,
        "best_sustained_per_s": best,
        "result": verdict,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    m = report["machine"]
    print(
        f"\n{m['cpus']} CPUs, Python {m['python']}, {m['platform']}; load average "
        f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end; {report['date']}"
    )
    if throughput:
        print_throughput(throughput)
        correct = all(r.correct for r in throughput)
        print(
            f"\nTarget sustained >= {TARGET_PER_S:,}/s: {verdict} (best {best:,.0f}/s); "
            f"correctness: {'ok' if correct else 'FAILED'}"
        )
    if lag:
        print_lag(lag)


if __name__ == "__main__":
    main()
