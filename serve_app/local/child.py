"""A local server run as a child process: started, waited for until it answers, and
stopped by its own PID (terminate, then kill after 10 s). Used for the embedded Redis
and the Stripe emulator."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers rtcts starts itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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

    def ready(self) -> bool:
        raise NotImplementedError

    def launch(self, log_path: Path | None = None, hint: str = "") -> None:
        """Start the command and wait until `ready()`; raise `error` if it never is."""
        if log_path is None:
            self._process = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        else:
            with open(log_path, "ab") as log:
                self._process = subprocess.Popen(self.command(), stdout=log, stderr=log)
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
            process.wait(timeout=10)
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
