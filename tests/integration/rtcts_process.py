"""`rtcts run` as a user starts it, for the tests that need the whole running app in
its own processes (its own local Ray, embedded Redis, the Stripe emulator, the default
policy and its demo keys): started in a new session, stopped with SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from serve_app.local.child import free_port
from tests.integration.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO_KEY = "rtcts-demo-pro"
ADMIN_KEY = "rtcts-demo-admin"


@dataclass(frozen=True)
class RunningApp:
    url: str
    log: Path


def _chat_ok(url: str) -> bool:
    answer = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
        timeout=30,
    )
    return answer.status_code == 200


@contextmanager
def rtcts_run(tmp_path: Path, env: Mapping[str, str] = {}, *args: str) -> Iterator[RunningApp]:
    """`rtcts run` on a free port with `env` added, serving once a chat is answered."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {
        **os.environ,
        "RTCTS_HTTP_PORT": str(port),
        "RTCTS_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    for name in ("REDIS_URL", "RAY_ADDRESS", "RTCTS_POLICY_PATH"):
        environment.pop(name, None)
    log = tmp_path / "run.log"
    command = [str(BIN / "rtcts"), "run", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout_s=240)
        wait_until(lambda: _chat_ok(url), timeout_s=120, every_s=1)
        yield RunningApp(url, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
