"""A local server run as a child process: started, waited for until it answers, and
stopped by its own PID (terminate, then kill after `STOP_TIMEOUT_S`). Used for the
embedded Redis and the Stripe emulator.

The child runs in a session of its own, so a Ctrl-C in the terminal (SIGINT to the
foreground process group) reaches `rtcts run` only, which stops its children in order:
Redis must outlive the app that flushes meters into it. On Linux the child also gets
SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), so it never outlives a killed parent.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers rtcts starts itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for between fork and exec that makes the child get SIGTERM when the
    thread that started it dies (Linux; None elsewhere). libc is looked up here, in the
    parent: the child only calls a function pointer."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_signal() -> None:  # pragma: no cover - runs in the child
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return set_signal


class ChildServer:
    """Subclasses give the command, a readiness check and the error to raise."""

    name = "server"
    error: type[Exception] = RuntimeError

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def stdin_text(self) -> str | None:
        """Text written to the child's standard input at start (then closed); None: none.
        For what must not be on a command line, which any local user can read."""
        return None

    def ready(self) -> bool:
        raise NotImplementedError

    def spawn(self, log_path: Path | None = None) -> None:
        """Start the command; `wait_ready` waits until it answers. The child dies with
        the thread that calls this (`PR_SET_PDEATHSIG`): call it from one that lasts."""
        text = self.stdin_text()
        stdin = None if text is None else subprocess.PIPE
        log: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            log = open(log_path, "ab")  # noqa: SIM115 - closed once the child has it
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=stdin,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        finally:
            if not isinstance(log, int):
                log.close()
        if text is not None:
            assert self._process.stdin is not None
            self._process.stdin.write(text.encode())
            self._process.stdin.close()

    def launch(self, log_path: Path | None = None, hint: str = "") -> None:
        """Start the command and wait until `ready()`; raise `error` if it never is."""
        self.spawn(log_path)
        self.wait_ready(hint)

    def wait_ready(self, hint: str = "") -> None:
        self._wait(self.ready, hint)

    def _wait(self, ready: Callable[[], bool], hint: str) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self.error(f"{self.name} exited with code {self._process.returncode}{hint}")
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise self.error(f"{self.name} did not answer on port {self.port}{hint}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start(self) -> Self:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
