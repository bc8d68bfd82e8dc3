"""Item 10: a spool file older than the fold-dedup horizon is not replayed blind.

The aggregator remembers a folded batch id for a fixed time (the fold-dedup horizon).
A spooled batch may also have landed in the stream (its flush timed out after the XADD
did land); replayed after the aggregator forgot its id, it would be folded, and billed,
twice. Before the fix spool replay had no age limit. Now such a file is moved to a
dead-letter folder beside the spool, with an error logged: nothing double counted,
nothing silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from serve_app.metering.entry import MeterBatch, encode_batch
from serve_app.metering.spool import MeterSpool
from tests.factories import make_meter

DAY_S = 86_400


class Collector:
    """A replay target that records the batch ids it is sent."""

    def __init__(self) -> None:
        self.batch_ids: list[str] = []

    async def __call__(self, entries: list[MeterBatch]) -> None:
        self.batch_ids += [e.batch_id for e in entries]


def _batch(n: int) -> MeterBatch:
    return encode_batch([make_meter(n, tenant_id=f"spool-age-{n}")])


def _spool_file(directory: Path, created_s: float, token: str, batch: MeterBatch) -> Path:
    """A file a crashed writer left, named as the writer names it: with its creation time."""
    path = directory / f"meters-4242-1795000000000-{token}-000000-c{int(created_s * 1000)}.jsonl"
    path.write_bytes(batch.spool_line())
    return path


def test_a_file_older_than_the_horizon_is_dead_lettered_and_a_fresh_one_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    old, fresh = _batch(1), _batch(2)
    old_path = _spool_file(tmp_path, now - 3 * DAY_S, "0000aaaa", old)
    fresh_path = _spool_file(tmp_path, now - 60, "0000bbbb", fresh)

    target = Collector()
    with caplog.at_level(logging.ERROR, logger="rtcts.metering.spool"):
        asyncio.run(MeterSpool(tmp_path).replay(target))

    assert old.batch_id not in target.batch_ids, "a batch past the fold-dedup horizon replayed"
    assert target.batch_ids == [fresh.batch_id]
    assert not fresh_path.exists()
    assert not old_path.exists()
    dead = [
        p for p in tmp_path.rglob("*") if p.is_file() and old.batch_id.encode() in p.read_bytes()
    ]
    assert dead, "the old entry was dropped instead of dead-lettered"
    assert dead[0].parent != tmp_path  # out of the replay's way
    assert old_path.name in caplog.text
    assert "dead" in caplog.text


def test_files_carry_their_creation_time_and_rotate_so_it_dates_every_entry(
    tmp_path: Path,
) -> None:
    from serve_app.metering.horizons import FOLD_DEDUP_S, SPOOL_MAX_AGE_S
    from serve_app.metering.spool import ROTATE_S

    clock_s = [1_900_000_000.0]
    spool = MeterSpool(tmp_path, clock=lambda: clock_s[0])
    first, second = _batch(1), _batch(2)
    spool.append([first])
    clock_s[0] += ROTATE_S + 1  # the active file is too old to take more entries
    spool.append([second])
    spool.rotate()
    assert len(spool.pending()) == 2

    clock_s[0] += SPOOL_MAX_AGE_S - ROTATE_S  # the first file expired, the second not yet
    target = Collector()
    assert asyncio.run(spool.replay(target)) == 1
    assert target.batch_ids == [second.batch_id]
    assert spool.dead_lettered == 1
    assert SPOOL_MAX_AGE_S < FOLD_DEDUP_S


def test_the_fold_dedup_and_the_spool_share_one_horizon() -> None:
    from serve_app.metering import ledger, spool
    from serve_app.metering.horizons import FOLD_DEDUP_S, SPOOL_MAX_AGE_S, SPOOL_REPLAY_MARGIN_S

    assert ledger.DEDUP_S == FOLD_DEDUP_S
    assert SPOOL_MAX_AGE_S == FOLD_DEDUP_S - SPOOL_REPLAY_MARGIN_S
    assert MeterSpool(Path("/tmp")).max_age_s == SPOOL_MAX_AGE_S
    assert spool.SPOOL_MAX_AGE_S is SPOOL_MAX_AGE_S
