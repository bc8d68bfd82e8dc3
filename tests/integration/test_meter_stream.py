"""The meter stream writer against a real Redis server (no Ray): shards, batching,
outages (meters spooled, then replayed, none lost), shutdown, crashed writers' spools.

The shared session Redis is used in database 9, so the aggregator's tests (database 0)
never read these meters. Outage tests run their own embedded Redis. Waits are hang
detectors with generous limits, never speed checks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from serve_app.admission.breaker import CircuitBreaker
from serve_app.local.redis_server import EmbeddedRedis, free_port
from serve_app.metering.entry import (
    MeterBatch,
    batch_item,
    decode_meters,
    encode_batch,
    parse_summary,
)
from serve_app.metering.meter import Meter
from serve_app.metering.spool import MeterSpool
from serve_app.metering.stream import MeterStreamWriter, shard_of, stream_key
from tests.factories import blackhole_port, make_meter

pytestmark = pytest.mark.integration
DB = 9


def _meter(tenant: str, n: int = 0) -> Meter:
    return make_meter(
        stripe_customer_id="cus_it", policy_version="it.1", request_id=f"req-{n}", tenant_id=tenant
    )


def _prefix() -> str:
    return f"ms-{uuid.uuid4().hex[:8]}"


def _db_url(url: str) -> str:
    return urlsplit(url)._replace(path=f"/{DB}").geturl()


def _client(url: str, timeout_s: float = 2.0) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


async def _until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)


async def _stream(client: aioredis.Redis, shard: int, prefix: str) -> list[Meter]:
    """This test's meters in one shard's stream, in stream order. Checks every entry on
    the way: its three fields, and a summary that describes exactly its meters."""
    entries: Any = await client.xrange(stream_key(shard))
    meters = []
    for _, fields in entries:
        assert set(fields) == {b"b", b"s", b"m"}
        in_entry = decode_meters(fields[b"m"])
        item = batch_item(fields)
        assert item is not None
        assert item[1] == parse_summary(encode_batch(in_entry, shard).summary)
        meters += [m for m in in_entry if m.tenant_id.startswith(prefix)]
    return meters


class CountingClient:
    """Wraps a client: counts pipelined round trips and the XADDs they carry."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.round_trips = 0
        self.xadds = 0

    def pipeline(self, transaction: bool = True) -> CountingPipeline:
        return CountingPipeline(self, self.client.pipeline(transaction=transaction))

    async def aclose(self) -> None:
        await self.client.aclose()


class CountingPipeline:
    def __init__(self, owner: CountingClient, pipe: Any) -> None:
        self.owner = owner
        self.pipe = pipe

    async def __aenter__(self) -> CountingPipeline:
        await self.pipe.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pipe.__aexit__(*exc)

    def xadd(self, key: str, fields: dict[str, Any]) -> None:
        self.owner.xadds += 1
        self.pipe.xadd(key, fields)

    async def execute(self) -> list[Any]:
        self.owner.round_trips += 1
        result: list[Any] = await self.pipe.execute()
        return result


# -- against the shared Redis ---------------------------------------------------------


def test_meters_land_in_their_shard_streams_as_decodable_json(
    redis_url: str, tmp_path: Path
) -> None:
    async def run() -> None:
        client = _client(_db_url(redis_url))
        prefix = _prefix()
        writer = MeterStreamWriter(client, MeterSpool(tmp_path), shards=3, flush_interval_s=0.001)
        writer.start()
        emitted = [_meter(f"{prefix}-t{i % 17}", i) for i in range(600)]
        for i, meter in enumerate(emitted):
            writer.emit(meter)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await writer.stop()
        assert writer.written == 600
        assert writer.spooled == writer.buffered == 0

        seen: list[Meter] = []
        for shard in range(3):
            in_shard = await _stream(client, shard, prefix)
            assert all(shard_of(m.tenant_id, 3) == shard for m in in_shard)
            seen += in_shard
        assert sorted(seen, key=lambda m: m.meter_id) == sorted(emitted, key=lambda m: m.meter_id)
        # each shard keeps the emit order of its meters
        for shard in range(3):
            mine = [m for m in emitted if shard_of(m.tenant_id, 3) == shard]
            assert await _stream(client, shard, prefix) == mine
        raw: Any = await client.xrange(stream_key(0), count=1)
        assert b"\n" not in raw[0][1][b"m"]  # compact JSON
        await client.aclose()

    asyncio.run(run())


def test_a_burst_goes_out_in_one_round_trip_and_one_entry_per_shard_per_batch(
    redis_url: str, tmp_path: Path
) -> None:
    async def run() -> None:
        counting = CountingClient(_client(_db_url(redis_url)))
        prefix = _prefix()
        writer = MeterStreamWriter(counting, MeterSpool(tmp_path), shards=2, batch_size=256)
        writer.start()
        tenants = [f"{prefix}-t{i}" for i in range(5)]
        for i in range(2000):  # one burst, no await in between
            writer.emit(_meter(tenants[i % 5], i))
        await _until(lambda: writer.written == 2000)
        assert counting.round_trips == writer.flushes == 8  # ceil(2000 / 256)
        shards_used = len({shard_of(t, 2) for t in tenants})
        assert counting.xadds == 8 * shards_used  # an entry per flush and shard
        stored = [m for shard in range(2) for m in await _stream(counting.client, shard, prefix)]
        assert len(stored) == 2000
        await writer.stop()
        await counting.aclose()

    asyncio.run(run())


def test_meters_trickling_in_wait_for_the_interval_and_share_a_round_trip(
    redis_url: str, tmp_path: Path
) -> None:
    async def run() -> None:
        counting = CountingClient(_client(_db_url(redis_url)))
        prefix = _prefix()
        # An interval far longer than the test: only stop() can flush.
        writer = MeterStreamWriter(counting, MeterSpool(tmp_path), flush_interval_s=3600)
        writer.start()
        for i in range(20):
            writer.emit(_meter(prefix, i))
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert counting.round_trips == 0
        assert writer.buffered == 20
        await writer.stop()  # flushes what is buffered
        assert counting.round_trips == 1
        assert writer.written == 20
        assert writer.buffered == 0
        assert len(await _stream(counting.client, 0, prefix)) == 20
        await counting.aclose()

    asyncio.run(run())


def test_stop_flushes_meters_emitted_before_start(redis_url: str, tmp_path: Path) -> None:
    prefix = _prefix()
    client = _client(_db_url(redis_url))
    writer = MeterStreamWriter(client, MeterSpool(tmp_path), flush_interval_s=3600)
    emitted = [_meter(prefix, i) for i in range(5)]
    for meter in emitted:  # no running loop: buffered
        writer.emit(meter)
    assert writer.buffered == 5

    async def run() -> None:
        await writer.stop()
        assert await _stream(client, 0, prefix) == emitted
        await client.aclose()

    asyncio.run(run())


def test_emit_from_another_thread_hops_to_the_loop(redis_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        client = _client(_db_url(redis_url))
        prefix = _prefix()
        writer = MeterStreamWriter(client, MeterSpool(tmp_path))
        writer.start()
        emitted = [_meter(prefix, i) for i in range(50)]

        def emit_all() -> None:
            for meter in emitted:
                writer.emit(meter)

        thread = threading.Thread(target=emit_all)
        thread.start()
        await asyncio.to_thread(thread.join)
        await _until(lambda: writer.written == 50)
        await writer.stop()
        assert await _stream(client, 0, prefix) == emitted
        await client.aclose()

    asyncio.run(run())


def test_a_crashed_writers_spool_file_is_replayed_by_the_next_writer(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = _prefix()
    crashed = [_meter(prefix, i) for i in range(50)]
    leftover = tmp_path / "meters-31337-1795000000000-0badf00d-000000.jsonl"
    torn = encode_batch([_meter(prefix, 99)]).spool_line()[:40]
    lines = [encode_batch(crashed[i : i + 10]).spool_line() for i in range(0, 50, 10)]
    leftover.write_bytes(b"".join(lines) + torn)

    async def run() -> None:
        client = _client(_db_url(redis_url))
        spool = MeterSpool(tmp_path)
        writer = MeterStreamWriter(client, spool)
        writer.start()
        await _until(lambda: writer.replayed == 50 and not writer.health()["replaying"])
        assert not leftover.exists()
        assert spool.skipped_lines == 1
        await writer.stop()
        assert await _stream(client, 0, prefix) == crashed
        await client.aclose()

    asyncio.run(run())


def test_spooled_entries_of_a_shard_this_writer_lacks_stay_on_disk(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Written by a process with more shards: sending it to another shard could count it
    # twice (dedup is per shard), so the file waits for the old shard count.
    leftover = tmp_path / "meters-31337-1795000000000-0badf00d-000000.jsonl"
    leftover.write_bytes(encode_batch([_meter(_prefix())], shard=3).spool_line())

    async def run() -> MeterStreamWriter:
        client = _client(_db_url(redis_url))
        writer = MeterStreamWriter(client, MeterSpool(tmp_path), shards=2)
        writer.start()
        await _until(lambda: "keep the shard count" in caplog.text)
        await writer.stop()
        await client.aclose()
        return writer

    with caplog.at_level(logging.ERROR, logger="rtcts.metering.stream"):
        writer = asyncio.run(run())
    assert writer.replayed == 0
    assert leftover.exists()


# -- outages (own Redis servers) ------------------------------------------------------


def test_redis_down_meters_spooled_then_replayed_when_it_returns_none_lost(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    spool_dir = tmp_path / "spool"
    try:

        async def run() -> None:
            client = _client(server.url, timeout_s=0.5)
            spool = MeterSpool(spool_dir)
            writer = MeterStreamWriter(
                client,
                spool,
                timeout_s=0.5,
                flush_interval_s=0.002,
                breaker=CircuitBreaker(open_s=0.05),
            )
            writer.start()
            prefix = _prefix()
            emitted: list[Meter] = []

            async def emit(n: int) -> None:
                for i in range(n):
                    meter = _meter(f"{prefix}-t{i % 3}", len(emitted))
                    emitted.append(meter)
                    writer.emit(meter)  # never raises, never waits
                    if i % 20 == 0:
                        await asyncio.sleep(0.001)

            await emit(300)
            await _until(lambda: writer.written == 300)

            server.stop()
            await emit(200)
            await _until(lambda: writer.spooled >= 200 and writer.buffered == 0)
            path = spool.active_path
            assert path is not None
            size = path.stat().st_size
            await emit(200)  # still accepted; the file grows
            await _until(lambda: writer.spooled >= 400 and writer.buffered == 0)
            assert path.stat().st_size > size
            assert not writer.redis_up
            assert writer.outages == 1
            assert writer.written == 300

            server.start()  # same port and data: the stream persisted (appendonly)
            # No new traffic needed: the idle writer sees Redis back and replays.
            await _until(
                lambda: (
                    writer.replayed >= writer.spooled
                    and not writer.health()["replaying"]
                    and spool.pending() == []
                )
            )
            assert writer.redis_up
            spooled = writer.spooled
            await emit(300)
            await _until(lambda: writer.written == 600)
            assert writer.spooled == spooled
            await writer.stop()
            assert list(spool_dir.glob("*.jsonl")) == []

            stored = await _stream(client, 0, prefix)
            assert {m.meter_id for m in stored} == {m.meter_id for m in emitted}  # none lost
            assert len(stored) >= writer.written + writer.replayed  # a timed-out batch may repeat
            health = writer.health()
            assert health["dropped"] == 0
            assert health["spool_errors"] == 0
            await client.aclose()

        asyncio.run(run())
    finally:
        server.stop()


def test_stop_while_redis_is_down_spools_everything_for_the_next_process(
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    port = free_port()  # nothing listens yet: connections are refused
    prefix = _prefix()
    emitted = [_meter(prefix, i) for i in range(30)]

    async def first_process() -> None:
        client = _client(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        writer = MeterStreamWriter(client, MeterSpool(spool_dir), flush_interval_s=3600)
        writer.start()
        for meter in emitted:
            writer.emit(meter)
        await writer.stop()
        assert writer.spooled == 30
        assert writer.written == 0
        assert writer.buffered == 0
        writer.emit(_meter(prefix, 30))  # after stop: straight to the spool, not lost
        assert writer.spooled == 31
        await client.aclose()

    asyncio.run(first_process())
    spooled = [
        MeterBatch.from_spool_line(line)
        for p in spool_dir.glob("*.jsonl")
        for line in p.read_bytes().splitlines(keepends=True)
    ]
    assert sum(e.count for e in spooled) == 31

    with EmbeddedRedis(tmp_path / "redis", port=port) as server:

        async def next_process() -> None:
            client = _client(server.url)
            writer = MeterStreamWriter(client, MeterSpool(spool_dir))
            writer.start()
            await _until(lambda: writer.replayed == 31 and not writer.health()["replaying"])
            await writer.stop()
            stored = await _stream(client, 0, prefix)
            assert [m.meter_id for m in stored[:30]] == [m.meter_id for m in emitted]
            assert len(stored) == 31
            await client.aclose()

        asyncio.run(next_process())
    assert list(spool_dir.glob("*.jsonl*")) == []


class FlakySpool(MeterSpool):
    """A spool whose disk is full for its first `failures` appends."""

    failures = 2

    def append(self, batches: Sequence[MeterBatch]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().append(batches)


def test_redis_down_and_disk_full_keeps_meters_in_memory_until_one_returns(
    tmp_path: Path,
) -> None:
    emitted = [_meter(_prefix(), i) for i in range(50)]

    async def run() -> None:
        client = _client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
        spool = FlakySpool(tmp_path)
        writer = MeterStreamWriter(client, spool, flush_interval_s=0.001)
        writer.start()
        for meter in emitted:
            writer.emit(meter)
        await _until(lambda: writer.spooled == 50)
        assert writer.spool_errors == 2
        assert writer.dropped == 0
        assert writer.buffered == 0
        await writer.stop()
        await client.aclose()

    asyncio.run(run())
    files = sorted(tmp_path.glob("*.jsonl"))  # one writer: names sort in creation order
    lines = [line for p in files for line in p.read_bytes().splitlines(keepends=True)]
    entries = [MeterBatch.from_spool_line(line) for line in lines]
    assert [m for e in entries for m in decode_meters(e.meters)] == emitted  # in order, once
    assert len({e.batch_id for e in entries}) == len(entries)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    with blackhole_port() as port:
        yield port


def test_a_hung_redis_never_blocks_emit_and_timed_out_batches_are_spooled(
    blackhole: int, tmp_path: Path
) -> None:
    async def run() -> None:
        client = _client(f"redis://127.0.0.1:{blackhole}/0", timeout_s=5)
        writer = MeterStreamWriter(
            client, MeterSpool(tmp_path), timeout_s=0.05, flush_interval_s=0.001
        )
        writer.start()
        prefix = _prefix()
        for i in range(100):
            writer.emit(_meter(prefix, i))
            await asyncio.sleep(0)
        # Hang detector: without the writer's own bound each flush would wait 5 s.
        await asyncio.wait_for(writer.stop(), 10)
        assert writer.spooled == 100
        assert writer.written == 0
        assert writer.failures.get("TimeoutError", 0) >= 1
        await client.aclose()

    asyncio.run(run())
