"""The local meter spool (files only, no Redis) and the stream's meter encoding."""
# Spool tests append one entry per meter (`_entries`), so replay batch sizes count both.

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path

import pytest

from serve_app.metering.entry import MeterBatch, decode_meters, encode_batch
from serve_app.metering.meter import Meter
from serve_app.metering.spool import MeterSpool
from serve_app.metering.stream import shard_of, stream_key
from tests.factories import make_meter


def _meter(n: int = 0, tenant: str = "demo-pro", **overrides: object) -> Meter:
    return make_meter(n, tenant_id=tenant, input_tokens=200 + n, **overrides)


def _entries(meters: list[Meter]) -> list[MeterBatch]:
    return [encode_batch([m]) for m in meters]


def _line(meter: Meter) -> bytes:
    return encode_batch([meter]).spool_line()


class Collector:
    """A replay target that records the entries it is sent; can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.batches: list[list[Meter]] = []
        self.batch_ids: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    async def __call__(self, entries: list[MeterBatch]) -> None:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise ConnectionError("redis went away")
        self.batches.append([m for e in entries for m in decode_meters(e.meters)])
        self.batch_ids += [e.batch_id for e in entries]

    @property
    def meters(self) -> list[Meter]:
        return [m for batch in self.batches for m in batch]


def _replay(spool: MeterSpool, target: Collector, batch_size: int = 1024) -> int:
    return asyncio.run(spool.replay(target, batch_size=batch_size))


# -- encoding -------------------------------------------------------------------------


def _table(*meters: dict[str, object]) -> bytes:
    """An entry's `m` field for these meter objects: field names, then rows."""
    names = list(meters[0])
    return json.dumps([names, *([m[n] for n in names] for m in meters)]).encode()


def test_the_meters_field_is_the_field_names_then_one_row_per_meter() -> None:
    meters = [_meter(1, failure="replica_died", billable=False), _meter(2)]
    table = json.loads(encode_batch(meters).meters)
    assert table == [list(meters[0].to_dict()), *(list(m.to_dict().values()) for m in meters)]


@pytest.mark.parametrize("failure", [None, "timeout"])
def test_encode_decode_round_trip(failure: str | None) -> None:
    meters = [_meter(7, failure=failure, ttft_ms=0.0, total_ms=12.0), _meter(8)]
    data = encode_batch(meters).meters
    assert decode_meters(data) == meters
    assert decode_meters(data.decode()) == meters


def test_decode_accepts_integral_floats_and_ignores_unknown_fields() -> None:
    original = _meter(2)
    # another writer may send an integral float as an integer, or a field added later
    data = _table({**original.to_dict(), "ttft_ms": 120, "added_in_a_later_version": "x"})
    (meter,) = decode_meters(data)
    assert isinstance(meter.ttft_ms, float)
    assert meter == dataclasses.replace(original, ttft_ms=120.0)


@pytest.mark.parametrize(
    "data",
    [
        b'[["meter_id","tenant_id"],["x"',  # torn
        b"[1,2]",
        b'{"meter_id":"x"}',
        b"not json",
        b"\xff\xfe",
        b'[["meter_id"],["x","extra value"]]',
        _table({**_meter(3).to_dict(), "input_tokens": "200"}),
        _table({**_meter(3).to_dict(), "billed_micro": True}),
        _table({**_meter(3).to_dict(), "billable": 1}),
        _table({k: v for k, v in _meter(3).to_dict().items() if k != "tenant_id"}),
    ],
)
def test_decode_rejects_what_is_not_meters(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every kind of damage is a ValueError
        decode_meters(data)


def test_stream_keys_carry_one_hash_tag_per_shard() -> None:
    assert stream_key(0) == "rtcts:meters:{s0}"
    assert stream_key(11) == "rtcts:meters:{s11}"


def test_shard_is_crc32_of_the_tenant_modulo_shards() -> None:
    import zlib

    for tenant in ("demo-pro", "acme", "tënant-ü", ""):
        assert shard_of(tenant, 1) == 0
        assert shard_of(tenant, 7) == zlib.crc32(tenant.encode()) % 7
    assert len({shard_of(f"t{i}", 4) for i in range(100)}) == 4


# -- spool ----------------------------------------------------------------------------


def test_appended_batches_are_on_disk_and_replay_in_order(tmp_path: Path) -> None:
    spool = MeterSpool(tmp_path)
    meters = [_meter(i) for i in range(10)]
    entries = _entries(meters)
    spool.append(entries[:3])
    spool.append(entries[3:])
    path = spool.active_path
    assert path is not None
    assert path.read_bytes() == b"".join(e.spool_line() for e in entries)

    spool.rotate()
    target = Collector()
    assert _replay(spool, target, batch_size=4) == 10
    assert target.meters == meters
    assert [len(b) for b in target.batches] == [4, 4, 2]
    assert target.batch_ids == [e.batch_id for e in entries]  # the same entries, same ids
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_append_fsyncs_the_file_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = MeterSpool(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool.append(_entries([_meter(1)]))
    spool.append(_entries([_meter(2)]))
    path = spool.active_path
    assert path is not None
    # file + its directory on creation, then the file on every append
    assert len(synced) == 3


def test_the_active_file_is_not_replayed_under_its_writer(tmp_path: Path) -> None:
    spool = MeterSpool(tmp_path)
    spool.append(_entries([_meter(1)]))
    target = Collector()
    assert _replay(spool, target) == 0
    assert spool.active_path is not None
    assert spool.active_path.exists()


def test_a_live_writer_in_another_spool_keeps_its_file(tmp_path: Path) -> None:
    live = MeterSpool(tmp_path)  # another process, alive: it holds the lock
    live.append(_entries([_meter(1)]))
    replayer = MeterSpool(tmp_path)
    assert _replay(replayer, Collector()) == 0
    live.append(_entries([_meter(2)]))  # still appending to the same file
    live.close()  # the process ends: its file becomes replayable
    target = Collector()
    assert _replay(replayer, target) == 2
    assert [m.input_tokens for m in target.meters] == [201, 202]


def test_files_left_by_another_process_are_found_and_replayed(tmp_path: Path) -> None:
    crashed = [_meter(i) for i in range(5)]
    leftover = tmp_path / "meters-4242-1795000000000-deadbeef-000000.jsonl"
    leftover.write_bytes(b"".join(_line(m) for m in crashed))
    other_prefix = tmp_path / "other-1-1-x-000000.jsonl"
    other_prefix.write_bytes(_line(_meter(99)))

    spool = MeterSpool(tmp_path)
    assert spool.pending() == [leftover]
    target = Collector()
    assert _replay(spool, target) == 5
    assert target.meters == crashed
    assert not leftover.exists()
    assert other_prefix.exists()  # not a meter spool of ours


def test_files_replay_oldest_first(tmp_path: Path) -> None:
    older = tmp_path / "meters-2-1-b-000000.jsonl"
    newer = tmp_path / "meters-1-1-a-000000.jsonl"
    older.write_bytes(_line(_meter(1)))
    newer.write_bytes(_line(_meter(2)))
    os.utime(older, ns=(1_000_000_000, 1_000_000_000))
    os.utime(newer, ns=(2_000_000_000, 2_000_000_000))
    target = Collector()
    _replay(MeterSpool(tmp_path), target)
    assert [m.input_tokens for m in target.meters] == [201, 202]


def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    meters = [_meter(i) for i in range(3)]
    torn = _line(_meter(9))[:57]  # the process died mid-write
    path = tmp_path / "meters-7-1-c-000000.jsonl"
    path.write_bytes(b"".join(_line(m) for m in meters) + torn)
    spool = MeterSpool(tmp_path)
    target = Collector()
    with caplog.at_level(logging.WARNING, logger="rtcts.metering.spool"):
        assert _replay(spool, target) == 3
    assert target.meters == meters
    assert spool.skipped_lines == 1
    assert "unreadable" in caplog.text
    assert not path.exists()


def test_damaged_and_blank_lines_in_the_middle_never_stop_a_replay(tmp_path: Path) -> None:
    a, b = _meter(1), _meter(2)
    path = tmp_path / "meters-7-1-d-000000.jsonl"
    path.write_bytes(_line(a) + b"\n\n{garbage\n" + _line(b))
    spool = MeterSpool(tmp_path)
    target = Collector()
    assert _replay(spool, target) == 2
    assert target.meters == [a, b]
    assert spool.skipped_lines == 1


def test_a_failed_send_keeps_the_file_and_the_next_replay_sends_all_of_it(
    tmp_path: Path,
) -> None:
    spool = MeterSpool(tmp_path)
    meters = [_meter(i) for i in range(6)]
    spool.append(_entries(meters))
    spool.rotate()
    failing = Collector(fail_on_call=2)
    with pytest.raises(ConnectionError):
        _replay(spool, failing, batch_size=4)
    assert failing.meters == meters[:4]  # the first batch went out
    assert len(spool.pending()) == 1

    target = Collector()
    assert _replay(spool, target, batch_size=4) == 6
    assert target.meters == meters  # again from the start: duplicates, no loss
    assert spool.pending() == []


def test_done_files_are_deleted_never_replayed(tmp_path: Path) -> None:
    # A replayer died after renaming a fully sent file to .done, before unlinking it.
    done = tmp_path / "meters-5-1-e-000000.jsonl.done"
    done.write_bytes(_line(_meter(1)))
    hidden = tmp_path / ".meters-5-1-e-000001.jsonl.new"  # died creating a file
    hidden.write_bytes(b"")
    spool = MeterSpool(tmp_path)
    target = Collector()
    assert _replay(spool, target) == 0
    assert target.meters == []
    assert not done.exists()
    assert not hidden.exists()


def test_a_replayed_file_is_not_replayed_twice(tmp_path: Path) -> None:
    spool = MeterSpool(tmp_path)
    spool.append(_entries([_meter(1), _meter(2)]))
    spool.rotate()
    first, second = Collector(), Collector()
    assert _replay(spool, first) == 2
    assert _replay(spool, second) == 0
    assert second.calls == 0


def test_a_file_another_replayer_holds_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "meters-3-1-f-000000.jsonl"
    path.write_bytes(_line(_meter(1)))
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert _replay(MeterSpool(tmp_path), Collector()) == 0
    assert _replay(MeterSpool(tmp_path), Collector()) == 1


def test_appends_after_a_rotation_go_to_a_new_file(tmp_path: Path) -> None:
    spool = MeterSpool(tmp_path)
    spool.append(_entries([_meter(1)]))
    first = spool.active_path
    spool.rotate()
    spool.append(_entries([_meter(2)]))
    second = spool.active_path
    assert first is not None
    assert second not in (None, first)
    assert spool.pending() == [first]
    spool.close()


def test_a_failed_append_closes_the_file_so_no_line_follows_a_torn_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = MeterSpool(tmp_path)
    spool.append(_entries([_meter(1)]))
    first = spool.active_path
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        spool.append(_entries([_meter(2)]))
    assert spool.active_path is None
    monkeypatch.setattr(os, "fsync", real_fsync)
    spool.append(_entries([_meter(2)]))  # the caller's retry
    assert spool.active_path not in (None, first)
    spool.close()
    target = Collector()
    _replay(MeterSpool(tmp_path), target)
    # meter 2 may be there twice (the failed append may have written it): never lost
    assert {m.input_tokens for m in target.meters} == {201, 202}
