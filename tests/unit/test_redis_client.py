"""The Redis client factory (`serve_app/redis_client.py`) and the Redis Cluster rule that
every Lua script and MULTI/EXEC touches keys of one slot (checked here on the keys the
real code passes, recorded by a fake client: no Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.crc import key_slot

from serve_app.admission import RedisAdmission
from serve_app.admission.redis_store import ADMIT_LUA
from serve_app.admission.types import AdmissionLimits, Ticket
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.types import METER_EVENT_BILLED, OutboxEntry
from serve_app.metering.windows import open_field
from serve_app.redis_client import (
    cluster_seeds,
    is_cluster_url,
    redis_client,
    stream_read_keys,
)


def test_cluster_urls_are_told_apart_by_their_scheme() -> None:
    assert is_cluster_url("redis+cluster://h:7000")
    assert is_cluster_url("REDISS+CLUSTER://h:7000")
    assert not is_cluster_url("redis://h:6379/0")
    assert not is_cluster_url("rediss://h:6379")


def test_a_cluster_url_gives_its_first_seed_with_credentials_and_the_others() -> None:
    first, others = cluster_seeds("redis+cluster://u:p%40w@a:7000,b:7001,[::1]:7002/0?x=1")
    assert first == "redis://u:p%40w@a:7000/0?x=1"
    assert others == [("b", 7001), ("::1", 7002)]
    assert cluster_seeds("rediss+cluster://h:7000") == ("rediss://h:7000", [])


@pytest.mark.parametrize("url", ["redis://h:1", "redis+cluster://h", "redis+cluster://h:1,b"])
def test_a_malformed_cluster_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"Redis Cluster URL|host:port"):
        cluster_seeds(url)


def test_the_factory_makes_a_cluster_client_for_a_cluster_url() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    async def make() -> tuple[Any, Any, Any]:
        cluster = redis_client("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001", timeout_s=2)
        single = redis_client("redis://:pw@127.0.0.1:6379/0", timeout_s=2)
        pooled = redis_client("redis://127.0.0.1:6379/0", max_connections=8, blocking=True)
        return cluster, single, pooled

    cluster, single, pooled = asyncio.run(make())  # nothing connects before a command
    assert isinstance(cluster, RedisCluster)
    assert {n.port for n in cluster.startup_nodes} == {7000, 7001}
    assert cluster.connection_kwargs["password"] == "pw"
    assert isinstance(single, Redis)
    assert single.connection_pool.connection_kwargs["socket_timeout"] == 2
    assert pooled.connection_pool.max_connections == 8


def test_stream_reads_have_their_keys_found_without_asking_a_node() -> None:
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 64, "BLOCK", 100, "STREAMS", "k{s0}", ">")
    assert stream_read_keys(read) == ["k{s0}"]
    assert stream_read_keys((b"XREAD", b"STREAMS", b"a", b"b", b"0", b"0")) == [b"a", b"b"]
    assert stream_read_keys(("XADD", "a", "*", "f", "v")) is None  # not a stream read
    assert stream_read_keys(("XREAD", "CLAIM", "5", "STREAMS", "a", "0")) is None  # unknown
    assert stream_read_keys(("XREAD", "STREAMS", "a", "b", "0")) is None  # odd: malformed


# -- every script and transaction on one slot ------------------------------------------


class Recorder:
    """A fake redis.asyncio client that records the keys of each atomic unit: a script
    call, or a MULTI/EXEC pipeline."""

    def __init__(self) -> None:
        self.units: list[tuple[str, list[str]]] = []
        self.fields: list[bytes] = []

    def register_script(self, source: str) -> Any:
        admit = source == ADMIT_LUA  # answers like a granted admission; others: a count

        async def call(*, keys: list[str], args: list[Any]) -> Any:
            self.units.append((f"script {source.splitlines()[0]}", list(keys)))
            return [1, 0, 0, 0, 0, []] if admit else 1

        return call

    async def hkeys(self, key: str) -> list[bytes]:
        return self.fields

    def pipeline(self, *, transaction: bool) -> Any:
        recorder = self

        class Pipe:
            def __init__(self) -> None:
                self.keys: list[str] = []

            async def __aenter__(self) -> Pipe:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            def __getattr__(self, command: str) -> Any:
                def queue(key: str, *args: Any, **kwargs: Any) -> None:
                    self.keys.append(key)

                return queue

            async def execute(self) -> list[Any]:
                if transaction:
                    recorder.units.append(("MULTI/EXEC", self.keys))
                return []

        return Pipe()


def _one_slot(units: list[tuple[str, list[str]]]) -> None:
    assert units
    for what, keys in units:
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, f"{what} touches {len(slots)} slots: {keys}"


def test_admission_scripts_touch_one_slot_per_tenant() -> None:
    fake = Recorder()
    store = RedisAdmission(fake)
    limits = AdmissionLimits(10, 10, 10)

    async def run() -> None:
        for tenant in ("acme", "t-1", "x.y:z"):
            await store.admit(Ticket(tenant, "r1", 5, 5, True), limits)
            await store.settle(tenant, "r1", 5, 5, model_id="m", output_tokens=3)

    asyncio.run(run())
    assert len(fake.units) == 6
    _one_slot(fake.units)


def test_meter_scripts_and_transactions_touch_one_slot_per_shard() -> None:
    fake = Recorder()
    entry = OutboxEntry(
        identifier="id-1",
        event_name=METER_EVENT_BILLED,
        stripe_customer_id="cus_a",
        value=5,
        timestamp=1_800_000_000,
        tenant_id="t",
        window_start=1_800_000_000,
    )

    async def run() -> None:
        for shard in range(4):
            ledger = MeterLedger(fake, shard, window_s=60, grace_s=10, shards=4)
            fake.fields = [open_field("t", METER_EVENT_BILLED, 1_800_000_000, 60, 10).encode()]
            await ledger.fold([("1-0", ("b" * 32, []))])
            await ledger.close_due()
            await ledger.mark_delivered(entry)
            await ledger.dead_letter(entry, "why")
            await ledger.reissue(entry, "id-2")

    asyncio.run(run())
    assert len(fake.units) == 4 * 5
    _one_slot(fake.units)
