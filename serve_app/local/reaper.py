"""The reaper: a small process that outlives `rtcts run` to stop what it started.

`rtcts run` starts it first, in a session of its own (so a signal to the terminal's
process group, Ctrl-C or `kill -KILL -- -PGID`, does not reach it), with a pipe on its
standard input whose other end only `rtcts run` holds. It reads lines from the pipe
(`path P`: a path to remove at the end) until the pipe closes, which happens when
`rtcts run` exits, however it exits, SIGKILL included. Then it stops every process with
the instance's mark (`instance.sweep`: SIGTERM, SIGKILL after a grace), removes the
paths it was told of and the run file if that still names this instance. After a clean
stop there is nothing left to stop, and it exits at once.

    python -m serve_app.local.reaper --mark MARK --data-dir DIR [--grace-s S]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from serve_app.local.instance import MARK_ENV, RunFile, remove_owned, sweep

GRACE_S = 3.0


class Reaper:
    """The `rtcts run` side: starts the reaper and tells it what to remove."""

    def __init__(self, mark: str, data_dir: Path, environ: dict[str, str]) -> None:
        env = {k: v for k, v in environ.items() if k != MARK_ENV}  # never sweeps itself
        self._process = subprocess.Popen(
            [sys.executable, "-m", "serve_app.local.reaper", "--mark", mark, "--data-dir",
             str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self._process.pid

    def remove_later(self, path: Path) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            stdin.write(f"path {path}\n".encode())
            stdin.flush()

    def close(self) -> None:
        """Everything is stopped: let the reaper check once more and exit."""
        if self._process.stdin is not None:
            self._process.stdin.close()


def reap(mark: str, data_dir: Path, lines: IO[str], grace_s: float = GRACE_S) -> None:
    """Wait for the end of `lines` (the parent is gone), then stop and remove what is left."""
    paths = [Path(line[5:].strip()) for line in lines if line.startswith("path ")]
    sweep(mark, grace_s=grace_s)
    for path in paths:
        remove_owned(path)
    RunFile(data_dir).release(mark)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.local.reaper")
    parser.add_argument("--mark", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--grace-s", type=float, default=GRACE_S)
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    reap(args.mark, args.data_dir, sys.stdin, args.grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
