"""What one `rtcts run` started, found again by a mark in its environment.

Every process `rtcts run` starts inherits `RTCTS_RUN_INSTANCE=<mark>` from it, the mark
being random per run: the embedded Redis, the Stripe emulator, Ray's processes, Serve's
actors and the HAProxy that Serve starts (a process inherits its parent's environment
through fork and exec). Read back from `/proc/<pid>/environ`, the mark is how a stop,
the reaper (`reaper.py`) and a later `rtcts run` find everything one instance started,
and nothing else: a process without the mark was not started by that instance and is
never signalled. `rtcts run` itself does not carry it (it sets it after its own exec).

The run file (`<data_dir>/run.json`) says which instance holds a data directory: its
pid and that process's start time (so a reused pid is not taken for it), its mark, and
the paths it made outside the data directory (HAProxy's state directory). A new
`rtcts run` that finds the file of a dead instance stops what that instance left and
removes those paths (`claim`); one that finds a live instance refuses to start.

Linux only (`/proc`); elsewhere nothing is found and nothing is signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from serve_app.errors import LocalServiceError

MARK_ENV = "RTCTS_RUN_INSTANCE"
RUN_FILE = "run.json"
OWNED_PREFIX = "rtcts-"
"""A recorded path is removed only if its name starts with this (what rtcts makes)."""


class ProcessTable(Protocol):
    """The seam to the operating system's processes (tests pass a fake)."""

    def pids(self) -> list[int]: ...

    def environ(self, pid: int) -> bytes:
        """The process's initial environment, NUL-separated; b"" if unreadable or gone."""
        ...

    def start_time(self, pid: int) -> int | None:
        """When the process started (clock ticks since boot); None if gone or a zombie."""
        ...

    def signal(self, pid: int, signum: int) -> None:
        """Send a signal; a process that is already gone is no error."""
        ...


class LinuxProcesses:
    """The real process table, read from `/proc`."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def pids(self) -> list[int]:
        try:
            return [int(p.name) for p in self.root.iterdir() if p.name.isdigit()]
        except OSError:
            return []

    def environ(self, pid: int) -> bytes:
        try:
            return (self.root / str(pid) / "environ").read_bytes()
        except OSError:
            return b""

    def start_time(self, pid: int) -> int | None:
        try:
            stat = (self.root / str(pid) / "stat").read_text()
        except OSError:
            return None
        # Fields after the command name (which may hold spaces and parentheses).
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):  # a zombie has exited: only its parent's wait is left
            return None
        return int(fields[19])

    def signal(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def new_mark() -> str:
    return secrets.token_hex(8)


def marked(mark: str, table: ProcessTable, exclude: Iterable[int] = ()) -> list[int]:
    """Live processes whose environment carries `mark`."""
    needle = f"{MARK_ENV}={mark}".encode()
    skip = set(exclude)
    return [
        pid
        for pid in table.pids()
        if pid not in skip
        and needle in table.environ(pid).split(b"\0")
        and table.start_time(pid) is not None
    ]


def sweep(
    mark: str,
    *,
    table: ProcessTable | None = None,
    grace_s: float = 2.0,
    exclude: Iterable[int] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Stop every process with `mark` (never this one): SIGTERM, then SIGKILL for those
    still alive after `grace_s`. Processes that appear meanwhile (a parent starting a
    child as it dies) are signalled too. Returns the pids signalled."""
    table = table or LinuxProcesses()
    skip = {os.getpid(), *exclude}
    signalled: list[int] = []
    deadline = clock() + grace_s
    while True:
        alive = marked(mark, table, skip)
        fresh = [pid for pid in alive if pid not in signalled]
        for pid in fresh:
            table.signal(pid, signal.SIGTERM)
        signalled += fresh
        if not alive:
            return signalled
        if clock() >= deadline:
            break
        sleep(0.05)
    for pid in marked(mark, table, skip):
        table.signal(pid, signal.SIGKILL)
        if pid not in signalled:
            signalled.append(pid)
    return signalled


@dataclass(frozen=True)
class RunRecord:
    """One `rtcts run` instance, as its run file holds it."""

    pid: int
    start_time: int | None
    mark: str
    paths: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Leftovers:
    """What `claim` cleaned up after a dead instance."""

    pid: int
    processes: int
    paths: tuple[str, ...]


class RunFile:
    """`<data_dir>/run.json`: which instance holds the data directory (see the module doc)."""

    def __init__(self, data_dir: Path, table: ProcessTable | None = None) -> None:
        self.path = data_dir / RUN_FILE
        self.table = table or LinuxProcesses()

    def read(self) -> RunRecord | None:
        try:
            data = json.loads(self.path.read_text())
            return RunRecord(
                pid=int(data["pid"]),
                start_time=None if data["start_time"] is None else int(data["start_time"]),
                mark=str(data["mark"]),
                paths=tuple(str(p) for p in data.get("paths", ())),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, record: RunRecord) -> None:
        """Atomically (a temporary file renamed over it), readable by its owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
        os.replace(temporary, self.path)

    def alive(self, record: RunRecord) -> bool:
        started = self.table.start_time(record.pid)
        return started is not None and started == record.start_time

    def claim(
        self, mark: str, *, sweep_grace_s: float = 3.0, pid: int | None = None
    ) -> Leftovers | None:
        """Record this instance as the holder; first stop what a dead holder left (its
        marked processes, its recorded paths). Raises `LocalServiceError` for a live one."""
        pid = os.getpid() if pid is None else pid
        leftovers = None
        previous = self.read()
        if previous is not None and previous.pid != pid:
            if self.alive(previous):
                raise LocalServiceError(
                    f"another rtcts run (pid {previous.pid}) uses {self.path.parent}; stop "
                    "it first, or give this one its own RTCTS_DATA_DIR"
                )
            stopped = sweep(previous.mark, table=self.table, grace_s=sweep_grace_s)
            removed = tuple(p for p in previous.paths if remove_owned(Path(p)))
            leftovers = Leftovers(previous.pid, len(stopped), removed)
        self.write(RunRecord(pid, self.table.start_time(pid), mark))
        return leftovers

    def add_path(self, mark: str, path: Path) -> None:
        """Record a path this instance made, to be removed if it dies without doing so."""
        record = self.read()
        if record is not None and record.mark == mark:
            self.write(RunRecord(record.pid, record.start_time, mark, (*record.paths, str(path))))

    def release(self, mark: str) -> None:
        """Remove the file if it still names this instance."""
        record = self.read()
        if record is not None and record.mark == mark:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def remove_owned(path: Path) -> bool:
    """Remove a directory rtcts made (its name starts with `rtcts-`); True if removed."""
    if not path.name.startswith(OWNED_PREFIX) or not path.is_dir():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


@dataclass
class Started:
    """What one `rtcts run` started and must stop: its mark, its run file, the paths it
    made (also recorded in the run file) and the processes a sweep must spare (its
    reaper, which carries no mark anyway)."""

    mark: str
    run_file: RunFile
    paths: list[Path] = field(default_factory=list)
    spared: list[int] = field(default_factory=list)

    def add_path(self, path: Path) -> None:
        self.paths.append(path)
        self.run_file.add_path(self.mark, path)

    def stop_all(self, grace_s: float) -> None:
        """Every process with the mark (`sweep`), then the paths: nothing uses them then."""
        sweep(self.mark, grace_s=grace_s, exclude=self.spared)
        for path in self.paths:
            remove_owned(path)

    def release(self) -> None:
        self.run_file.release(self.mark)
