"""The public port answers like the app (issue #11 item 15), checked through HAProxy on
the port `rtcts run` serves:

- a body over the ingress's limit gets 413 with the app's OpenAI-shaped body, whatever
  its size and whether the client reads the answer only after sending everything
  (an asyncio client loses an answer whose connection was reset under it);
- HAProxy's own 502, 503 and 504 are OpenAI-shaped JSON with their status;
- HAProxy's stats page and Prometheus endpoint listen on loopback only, and its admin
  socket is its owner's alone.

The 502/503/504 are made on the live HAProxy through its admin socket: every server of
the app's backend in maintenance (503, what no ingress replica gives), or the replica
server pointed at a local socket that closes without answering (502) or never answers
(504, after `timeout server`, set short here through Serve's variable).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import free_port, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY = {"Authorization": "Bearer rtcts-demo-pro"}
LIMIT = 4 * 1024 * 1024
SIZES_MB = (5, 8, 64)
TIMEOUT_SERVER_S = 4


@contextmanager
def rtcts_run(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "rtcts"), "run", "--time-scale", "0.01"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _chat(url: str, timeout_s: float = 30) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=KEY, timeout=timeout_s)


def _assert_openai_error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == type_, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def _oversized(url: str, megabytes: int) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        content=b"x" * (megabytes << 20),
        headers={**KEY, "Content-Type": "application/json"},
        timeout=60,
    )


async def _oversized_together(url: str, sizes: tuple[int, ...]) -> list[str]:
    """Each size at once from an asyncio client: the status, or the error's name."""

    async def one(client: httpx.AsyncClient, megabytes: int) -> str:
        try:
            response = await client.post(
                f"{url}/v1/chat/completions",
                content=b"x" * (megabytes << 20),
                headers={**KEY, "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        _assert_openai_error(response, 413, "invalid_request_error")
        return str(response.status_code)

    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(one(client, mb) for mb in sizes))


def _admin(sock_path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _app_backend(sock_path: Path) -> tuple[str, list[str]]:
    """The app's HAProxy backend and all its servers (replicas and Serve's fallback)."""
    rows = [r.split(",") for r in _admin(sock_path, "show stat").splitlines()]
    replicas = [r for r in rows if len(r) > 1 and r[1].startswith("SERVE_REPLICA_")]
    assert replicas, rows
    backend = replicas[0][0]
    servers = [r[1] for r in rows if r[0] == backend and r[1] not in ("FRONTEND", "BACKEND")]
    return backend, servers


@contextmanager
def bad_upstream(answer: bool) -> Iterator[int]:
    """A local TCP server that reads a request and closes without answering
    (`answer=False`), or holds it open without a word (`answer=True` never comes)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(1)
            with suppress(OSError):
                conn.recv(65536)
            if answer:
                held.append(conn)
            else:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for conn in held:
            conn.close()


def _haproxy_listening(state_dir: Path) -> set[tuple[str, int]]:
    """Every TCP address a haproxy process of this instance listens on."""
    found: set[tuple[str, int]] = set()
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "haproxy" not in (process.info["name"] or "") or str(state_dir) not in cmdline:
            continue
        for conn in process.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_public_port_answers_like_the_app(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RTCTS_HTTP_PORT": str(port),
        "RTCTS_DATA_DIR": str(tmp_path / "data"),
        "RTCTS_HAPROXY": "on",
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(TIMEOUT_SERVER_S),
    }
    for name in ("REDIS_URL", "RAY_ADDRESS", "RTCTS_POLICY_PATH", "RTCTS_FAST_MODE"):
        env.pop(name, None)
    log = tmp_path / "run.log"
    url = f"http://127.0.0.1:{port}"
    with rtcts_run(env, log):
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout_s=180)
        found = re.search(r"public port: +HAProxy \(.+?files in (\S+)", log.read_text())
        assert found, log.read_text()
        state_dir = Path(found.group(1))
        wait_until(lambda: _chat(url).status_code == 200, timeout_s=60)

        # Private: HAProxy listens on loopback only (public port, stats, metrics), and
        # its admin socket is its owner's alone.
        listening = _haproxy_listening(state_dir)
        assert ("127.0.0.1", port) in listening, listening
        assert len({p for _, p in listening}) >= 3, listening  # public, stats, metrics
        assert all(ip == "127.0.0.1" for ip, _ in listening), listening
        (admin_sock,) = state_dir.glob("*/admin.sock")
        assert stat.S_IMODE(admin_sock.stat().st_mode) & 0o077 == 0, oct(admin_sock.stat().st_mode)

        # 413 with the app's body at every size, read after the whole body was sent...
        for megabytes in SIZES_MB:
            error = _assert_openai_error(_oversized(url, megabytes), 413, "invalid_request_error")
            assert error["code"] == "payload_too_large"
            assert str(LIMIT) in error["message"]
        # ...and from an asyncio client sending them all at once.
        assert asyncio.run(_oversized_together(url, (*SIZES_MB, 16))) == ["413"] * 4
        assert _chat(url).status_code == 200  # the port still serves

        backend, servers = _app_backend(admin_sock)
        replica = next(s for s in servers if s.startswith("SERVE_REPLICA_"))
        others = [s for s in servers if s != replica]
        for server in others:
            _admin(admin_sock, f"set server {backend}/{server} state maint")

        # 502: the replica closes the connection without an answer.
        _admin(admin_sock, f"disable health {backend}/{replica}")
        with bad_upstream(answer=False) as upstream:
            _admin(admin_sock, f"set server {backend}/{replica} addr 127.0.0.1 port {upstream}")
            _assert_openai_error(_chat(url), 502, "server_error")
        # 504: the replica never answers.
        with bad_upstream(answer=True) as upstream:
            _admin(admin_sock, f"set server {backend}/{replica} addr 127.0.0.1 port {upstream}")
            _assert_openai_error(_chat(url, timeout_s=TIMEOUT_SERVER_S + 30), 504, "server_error")
        # 503: no server left (no ingress replica, Serve's fallback proxy down too).
        _admin(admin_sock, f"set server {backend}/{replica} state maint")
        _assert_openai_error(_chat(url), 503, "server_error")
