"""`rtcts run` starts, and stops clean, as a user runs it (issues #16 and #11 item 13).

Each run is a real `rtcts run` in a process group of its own, stopped with SIGINT to
the whole group (what a terminal's Ctrl-C sends) or killed with SIGKILL. A stop must
end within 15 s and leave nothing of the instance: no process carrying its mark (found
the way rtcts finds them, serve_app/local/instance.py), no HAProxy state directory, no
run file, and the public port free. After a SIGKILL, a new `rtcts run` on the same
port must serve. Slow (a local Ray per run): four runs in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.local.instance import LinuxProcesses, marked, sweep
from tests.integration.conftest import free_port, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STOP_LIMIT_S = 15.0
PRO = {"Authorization": "Bearer rtcts-demo-pro"}


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float = 180) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"rtcts run exited early:\n{self.text()}")
            return needle in self.text()

        wait_until(seen, timeout_s=timeout_s, every_s=0.1)

    def mark(self) -> str:
        run_file = self.data_dir / "run.json"
        wait_until(run_file.exists, timeout_s=30, every_s=0.05)
        return str(json.loads(run_file.read_text())["mark"])

    def haproxy_dir(self) -> Path | None:
        found = re.search(r"files in (\S+)", self.text())
        return None if found is None else Path(found.group(1))

    def interrupt_group(self) -> float:
        """SIGINT to the whole process group; seconds until `rtcts run` has exited."""
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_LIMIT_S + 30)
        return time.monotonic() - started


@contextmanager
def rtcts_run(
    tmp_path: Path, name: str, port: int, *args: str, data_dir: Path | None = None
) -> Iterator[Run]:
    data_dir = data_dir or tmp_path / f"data-{name}"
    env = {**os.environ, "RTCTS_HTTP_PORT": str(port), "RTCTS_DATA_DIR": str(data_dir)}
    for variable in ("REDIS_URL", "RAY_ADDRESS", "RTCTS_POLICY_PATH", "STRIPE_API_KEY"):
        env.pop(variable, None)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "rtcts"), "run", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = Run(process, log, data_dir, port)
    try:
        yield run
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_nothing_left(run: Run, mark: str, haproxy_dir: Path | None) -> None:
    """No process with the mark, no state directory, no run file, the port free."""
    left = marked(mark, LinuxProcesses())
    if left:
        sweep(mark, grace_s=1)  # leave nothing to the next test either
    assert left == [], f"processes left: {left}\n{run.text()}"
    assert haproxy_dir is None or not haproxy_dir.exists()
    assert not (run.data_dir / "run.json").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{run.url}/healthz", timeout=2)


def assert_stopped_in_time(run: Run, took_s: float) -> None:
    assert run.process.poll() is not None, f"still running after {took_s:.1f} s\n{run.text()}"
    assert took_s <= STOP_LIMIT_S, f"stopped after {took_s:.1f} s\n{run.text()}"
    assert run.process.returncode == 0, run.text()
    assert "rtcts: stopped in" in run.text()


@pytest.mark.parametrize("moment", ["Stripe emulator: started", "app: deploying"])
def test_ctrl_c_during_start_up_stops_within_15_s(tmp_path: Path, moment: str) -> None:
    """Ctrl-C while Ray starts (a C call the main thread cannot leave) and while the
    replicas are being created."""
    with rtcts_run(tmp_path, "start", free_port()) as run:
        mark = run.mark()
        run.wait_for(moment)
        took = run.interrupt_group()
        assert_stopped_in_time(run, took)
        assert "rtcts is serving" not in run.text()
        assert_nothing_left(run, mark, run.haproxy_dir())


def _slow_scale_up_policy(tmp_path: Path) -> tuple[Path, str]:
    """The default policy with a 600 s cold start for the model that scales from zero
    (30 s simulated at rtcts run's default --cold-start-scale 0.05), and that model."""
    policy = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    scaled = next(m for m in policy["models"] if m["autoscaling"]["min_replicas"] == 0)
    scaled["cold_start_s"] = 600
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path, scaled["id"]


def test_ctrl_c_under_load_during_a_scale_up_stops_within_15_s(tmp_path: Path) -> None:
    policy, scaled = _slow_scale_up_policy(tmp_path)
    with rtcts_run(tmp_path, "load", free_port(), "--policy", str(policy)) as run:
        mark = run.mark()
        run.wait_for("Ctrl-C stops everything")
        requests = [("llama-3.1-8b", 400)] * 40 + [(scaled, 8)] * 2
        answers: list[object] = []
        load = threading.Thread(target=lambda: answers.extend(asyncio.run(_send(run, requests))))
        load.start()

        def loaded_and_scaling() -> bool:
            models = httpx.get(f"{run.url}/v1/cluster", headers=PRO, timeout=5).json()["models"]
            busy = models["llama-3.1-8b"]["predicted"]["running"] > 0
            return busy and bool(models[scaled]["starting_replicas"])

        wait_until(loaded_and_scaling, timeout_s=60, every_s=0.2)

        def priced_start_s() -> float:
            """The starting replica's cold start left, as the pricing sees it."""
            models = httpx.get(f"{run.url}/v1/cluster", headers=PRO, timeout=5).json()["models"]
            return max((r["start_remaining_s"] for r in models[scaled]["replicas"]), default=0)

        # The simulated start takes 30 s; the pricing counts down the policy's 600 s.
        assert wait_until(lambda: priced_start_s() > 100, timeout_s=30, every_s=0.2)
        took = run.interrupt_group()
        load.join(timeout=90)
        assert_stopped_in_time(run, took)
        assert_nothing_left(run, mark, run.haproxy_dir())
        assert len(answers) == len(requests)


async def _send(run: Run, requests: list[tuple[str, int]]) -> list[object]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{run.url}/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "Tell me about GPUs."}],
                        "max_tokens": max_tokens,
                    },
                    headers=PRO,
                )
                for model, max_tokens in requests
            ),
            return_exceptions=True,
        )


def test_sigkill_of_the_group_then_rtcts_run_serves_on_the_same_port(tmp_path: Path) -> None:
    """Everything dies with a killed `rtcts run` (the reaper); the next one on the same
    port and data directory serves, and its first request goes to a warm model: nothing
    waits on start-up once it says it serves."""
    port = free_port()
    data_dir = tmp_path / "data"
    with rtcts_run(tmp_path, "killed", port, data_dir=data_dir) as killed:
        first_mark = killed.mark()
        killed.wait_for("Ctrl-C stops everything")
        os.killpg(killed.process.pid, signal.SIGKILL)
        killed.process.wait()
    with rtcts_run(tmp_path, "next", port, data_dir=data_dir) as run:
        mark = run.mark()
        run.wait_for("Ctrl-C stops everything")
        assert marked(first_mark, LinuxProcesses()) == []
        ready = httpx.get(f"{run.url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        quote = httpx.post(f"{run.url}/v1/quote", json=body, headers=PRO, timeout=30).json()
        chosen = next(c for c in quote["candidates"] if c["model"] == quote["model"])
        assert chosen["live"]["warm_replicas"] >= 1, quote
        assert chosen["live"]["cold_start_remaining_s"] == 0, quote
        chat = httpx.post(f"{run.url}/v1/chat/completions", json=body, headers=PRO, timeout=30)
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-rtcts-model"] == quote["model"]
        took = run.interrupt_group()
        assert_stopped_in_time(run, took)
        assert_nothing_left(run, mark, run.haproxy_dir())
