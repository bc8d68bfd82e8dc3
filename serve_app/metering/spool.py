"""The local meter spool: where verified meters go while Redis cannot take them.

An append-only file per writer
(`<dir>/meters-<pid>-<start ms>-<token>-<seq>-c<created ms>.jsonl`), one stream entry per
line (`MeterBatch.spool_line`: its shard, batch id, summary and the meters' JSON, the
very entry the writer failed to append). Each flush is written and fsync'ed before the
writer counts it as spooled. `replay` sends the entries of every
file no live process owns, in order, and deletes a file only after all of it was sent.
An entry may be sent twice, always with its batch id (the aggregator folds a batch id
once); a meter that reached the spool is never lost.

Age: the fold remembers a batch id for `FOLD_DEDUP_S` only (`horizons.py`). A spooled
batch may also be in the stream (a flush that timed out after its XADD landed); replayed
once the fold has forgotten its id, it would be billed twice. So a file older than
`SPOOL_MAX_AGE_S` (the horizon less a margin) is never replayed blind: replay moves it,
whole, to `<dir>/dead/` and logs an error naming it (nothing double counted, nothing
silently dropped: a person checks its batch ids against the ledger, then replays or
deletes it). A file is dated by its creation time, in its name; a writer starts a new
file once its active one is `ROTATE_S` old, so that date is at most `ROTATE_S` before any
entry in it (a file can only be dead-lettered too early, by that much, never too late).
A file named without its creation time (written before files carried it) is replayed as
before: its age is unknown.

Ownership: a writer holds an exclusive `flock` on its open file for as long as it
appends to it, and a replayer takes the same lock before touching a file. The lock
goes with the process, so a crashed writer's files become replayable at once, while a
live writer's file (in this process or another one sharing the directory) is never
replayed under it. A new file is created under a hidden temporary name, locked, and
only then renamed to its visible name, so no replayer can take a file between its
creation and its lock.

Guarantees, step by step (what holds if the process dies right after the step):

- `append` wrote and fsync'ed the batch: it survives the process and the machine
  (the file's directory entry was fsync'ed when the file was created).
- `append` died mid-write: the file ends in a torn line, which replay skips with a
  warning; the rest of the file is intact. A failed append (e.g. disk full) closes the
  file, so the caller's retry goes to a fresh file and never appends after a torn line.
- `replay` sent part of a file: the file is untouched; the next replay sends all of it
  again (duplicates, no loss).
- `replay` sent all of a file and renamed it `.done`: the next scan deletes the `.done`
  file without sending it again.
- `replay` unlinked the file: done.
- `replay` moved a file past its age to `dead/`: one rename, so the file is in the
  spool (dead-lettered by the next replay) or in `dead/`, never both, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from serve_app.metering.entry import MeterBatch
from serve_app.metering.horizons import SPOOL_MAX_AGE_S

logger = logging.getLogger("rtcts.metering.spool")

SUFFIX = ".jsonl"
DONE_SUFFIX = ".jsonl.done"
DEFAULT_REPLAY_BATCH = 64
DEAD_DIR = "dead"
"""Where files past `SPOOL_MAX_AGE_S` go, inside the spool directory."""
ROTATE_S = 3600.0
"""A file takes appends for at most this long, so its creation time dates every entry."""
_CREATED = re.compile(r"-c(\d+)" + re.escape(SUFFIX) + "$")

__all__ = ["DEAD_DIR", "ROTATE_S", "SPOOL_MAX_AGE_S", "EntrySender", "MeterSpool"]

EntrySender = Callable[[list[MeterBatch]], Awaitable[None]]
"""Sends entries to the stream; raises if any of them may not have landed."""


class MeterSpool:
    """The spool of one writer, and the replayer of every orphaned spool file beside it."""

    def __init__(
        self,
        directory: Path,
        *,
        prefix: str = "meters",
        max_age_s: float = SPOOL_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`max_age_s`: files created longer ago are dead-lettered, not replayed (keep it
        below the fold's dedup horizon). `clock`: seconds, for file dates and ages."""
        self.directory = directory
        self.prefix = prefix
        self.max_age_s = max_age_s
        self._clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stem = f"{prefix}-{os.getpid()}-{int(clock() * 1000)}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._opened_s = 0.0
        self.skipped_lines = 0
        """Lines replay could not read as an entry (a torn last line after a crash)."""
        self.dead_lettered = 0
        """Files replay moved to `dead/` (older than `max_age_s`)."""

    @property
    def active_path(self) -> Path | None:
        """The file appends go to now (None until the first append after a rotation)."""
        return self._path

    def append(self, batches: Sequence[MeterBatch]) -> None:
        """Append entries (one line each) and fsync. Raises OSError on failure, after
        closing the file, so the retry starts a fresh one."""
        data = b"".join(b.spool_line() for b in batches if b.count)
        if not data:
            return
        if self._file is not None and self._clock() - self._opened_s >= ROTATE_S:
            self.rotate()  # its creation time must date every entry in it
        try:
            file = self._file if self._file is not None else self._open_new()
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            # Dies here: the batch is on disk (file and its directory entry fsync'ed).
        except OSError:
            # Never append after a failed write or fsync (the kernel may have dropped the
            # unwritten pages, the file may end mid-line): the retry goes to a new file.
            self.rotate()
            raise

    def rotate(self) -> None:
        """Close the active file (releasing its lock): it becomes replayable, and the next
        append starts a new one."""
        file, self._file, self._path = self._file, None, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    close = rotate

    def pending(self) -> list[Path]:
        """Spool files waiting for replay (this writer's active file excluded), oldest
        first. Files other live processes hold are included; replay skips them."""
        found: list[tuple[int, str, Path]] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(self.prefix + "-") or not name.endswith(SUFFIX):
                    continue
                path = Path(entry.path)
                if path == self._path:
                    continue
                try:
                    found.append((entry.stat().st_mtime_ns, name, path))
                except FileNotFoundError:  # replayed by someone else meanwhile
                    continue
        return [path for _, _, path in sorted(found)]

    async def replay(self, send: EntrySender, *, batch_size: int = DEFAULT_REPLAY_BATCH) -> int:
        """Send the entries of every replayable file, in order, `batch_size` entries at a
        time; delete each file once all of it was sent. Returns how many meters were sent.

        Whatever `send` raises propagates; the file being replayed stays for next time.
        """
        self._remove_done_files()
        sent = 0
        for path in self.pending():
            sent += await self._replay_file(path, send, batch_size)
        return sent

    async def _replay_file(self, path: Path, send: EntrySender, batch_size: int) -> int:
        file = _open_locked(path)
        if file is None:  # a live writer owns it, or another replayer took it
            return 0
        sent = 0
        try:
            created_s = _created_s(path)
            if created_s is not None and self._clock() - created_s > self.max_age_s:
                await asyncio.to_thread(self._dead_letter, path, self._clock() - created_s)
                return 0
            while True:
                # Read and decode off the event loop: a batch is a millisecond or more.
                batch = await asyncio.to_thread(self._read_batch, file, path, batch_size)
                if not batch:
                    break
                await send(batch)
                sent += sum(b.count for b in batch)
                # Dies here: the file is intact; the next replay sends all of it again.
            done = path.with_name(path.name[: -len(SUFFIX)] + DONE_SUFFIX)
            os.replace(path, done)
            # Dies here: `.done` is deleted, never sent again, by the next scan.
            done.unlink()
        finally:
            file.close()
        if sent:
            logger.info("replayed %d spooled meters from %s", sent, path.name)
        return sent

    def _dead_letter(self, path: Path, age_s: float) -> None:
        """Move a file past its age to `dead/` (one rename, under the file's lock)."""
        dead = self.directory / DEAD_DIR
        dead.mkdir(exist_ok=True)
        entries, meters = _count(path)
        os.replace(path, dead / path.name)
        _fsync_dir(dead)
        _fsync_dir(self.directory)
        # Dies here: the file is in `dead/`, out of every replay's way.
        self.dead_lettered += 1
        logger.error(
            "spool file %s is %.1f h old, past the %.1f h replay limit (the aggregator may "
            "have forgotten its batch ids, so a replay could bill them twice): %d entries, "
            "%d meters NOT replayed, moved to %s; check their batch ids against the "
            "ledger, then replay or delete the file",
            path.name,
            age_s / 3600,
            self.max_age_s / 3600,
            entries,
            meters,
            dead / path.name,
        )

    def _read_batch(self, file: BinaryIO, path: Path, size: int) -> list[MeterBatch]:
        """Up to `size` entries from where `file` stands; [] at its end."""
        batch: list[MeterBatch] = []
        while len(batch) < size:
            line = file.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                batch.append(MeterBatch.from_spool_line(line))
            except (ValueError, UnicodeDecodeError) as exc:
                # A crash mid-append tears the last line; anything else is damage.
                # Either way, never crash the replay over one line.
                self.skipped_lines += 1
                logger.warning("skipping an unreadable line of spool %s (%s)", path.name, exc)
        return batch

    def _remove_done_files(self) -> None:
        """Delete `.done` files left by a replayer that died between rename and unlink,
        and the empty hidden files of writers that died while creating a file."""
        done = self.directory.glob(f"{self.prefix}-*{DONE_SUFFIX}")
        hidden = self.directory.glob(f".{self.prefix}-*{SUFFIX}.new")
        for path in [*done, *hidden]:
            file = _open_locked(path)
            if file is None:
                continue
            try:
                path.unlink(missing_ok=True)
            finally:
                file.close()

    def _open_new(self) -> BinaryIO:
        now_s = self._clock()
        name = f"{self._stem}-{self._seq:06d}-c{int(now_s * 1000)}{SUFFIX}"
        self._seq += 1
        hidden = self.directory / f".{name}.new"
        final = self.directory / name
        file = open(hidden, "ab")  # noqa: SIM115 - kept open across appends
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Dies here: a hidden, empty file no replayer looks at.
            os.replace(hidden, final)
            _fsync_dir(self.directory)
            # Dies here: an empty visible file; a replayer deletes it.
        except OSError:
            file.close()
            raise
        self._file, self._path, self._opened_s = file, final, now_s
        return file


def _created_s(path: Path) -> float | None:
    """A spool file's creation time, from its name; None for a name without it."""
    match = _CREATED.search(path.name)
    return None if match is None else int(match.group(1)) / 1000


def _count(path: Path) -> tuple[int, int]:
    """(entries, meters) in a spool file, for the log; unreadable lines are not counted."""
    entries = meters = 0
    with open(path, "rb") as file:
        for line in file:
            try:
                meters += MeterBatch.from_spool_line(line).count
            except (ValueError, UnicodeDecodeError):
                continue
            entries += 1
    return entries, meters


def _open_locked(path: Path) -> BinaryIO | None:
    """Open `path` for reading with an exclusive lock; None if it is held or gone."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    except OSError:
        file.close()
        raise
    if not path.exists():  # replayed and deleted between our open and our lock
        file.close()
        return None
    return file


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
