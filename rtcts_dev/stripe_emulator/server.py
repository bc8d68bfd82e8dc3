"""Run the emulator: in a background thread (tests) or as a child process (the CLI).

`EmulatorServer` binds its socket before the thread starts, so `.url` is known at once
(port 0 picks a free port) and nothing races for it. `EmulatorProcess` starts
`python -m rtcts_dev.stripe_emulator` like `EmbeddedRedis` starts redis-server, and
stops it by its PID.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import uvicorn

from rtcts_dev.stripe_emulator.app import create_app
from rtcts_dev.stripe_emulator.schemas import RequestValidator, load_schemas
from rtcts_dev.stripe_emulator.state import EmulatorState, Faults
from serve_app.errors import LocalServiceError
from serve_app.local.child import ChildServer

START_TIMEOUT_S = 15.0


class EmulatorError(LocalServiceError):
    """The Stripe emulator could not be started."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket. `proto=IPPROTO_TCP` matters: asyncio sets TCP_NODELAY only
    on such sockets, and without it every answer waits ~40 ms for a delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def build_server(
    state: EmulatorState, schema_dir: Path | None = None, log_level: str = "warning"
) -> uvicorn.Server:
    """A uvicorn server for the emulator app over `state`; run it with `sockets=[bind(...)]`."""
    schemas, source = load_schemas(schema_dir)
    app = create_app(state, RequestValidator(schemas), source)
    config = uvicorn.Config(
        app,
        loop="asyncio",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)


class EmulatorServer:
    """The emulator on 127.0.0.1 in a daemon thread; use as a context manager.

    `state` is the live `EmulatorState`: tests may read totals, events and the request
    log from it directly, or over HTTP (`/_emulator/...`).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        state_path: Path | None = None,
        fail_rate: float = 0.0,
        timeout_s: float = 0.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        schema_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.schema_dir = schema_dir
        self.state = EmulatorState(
            path=state_path,
            clock=clock,
            faults=Faults(fail_rate=fail_rate, timeout_s=timeout_s, seed=seed),
        )
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        self._sock = bind(self.host, self.port)
        self.port = int(self._sock.getsockname()[1])
        self._server = build_server(self.state, self.schema_dir)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"stripe-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"the Stripe emulator did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_emulator/health", timeout=0.5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class EmulatorProcess(ChildServer):
    """The emulator as a child process on 127.0.0.1; stopped by its PID."""

    name = "the Stripe emulator"
    error = EmulatorError

    def __init__(
        self,
        port: int | None = None,
        *,
        state_path: Path | None = None,
        fail_rate: float = 0.0,
        timeout_s: float = 0.0,
        seed: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(port)
        self.state_path = state_path
        self.fail_rate = fail_rate
        self.timeout_s = timeout_s
        self.seed = seed
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "rtcts_dev.stripe_emulator", "--port", str(self.port)]
        if self.state_path is not None:
            cmd += ["--state", str(self.state_path)]
        if self.fail_rate:
            cmd += ["--fail-rate", str(self.fail_rate), "--timeout-s", str(self.timeout_s)]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        return cmd

    def ready(self) -> bool:
        return healthy(self.url)

    def start(self) -> EmulatorProcess:
        self.launch(self.log_path)
        return self
