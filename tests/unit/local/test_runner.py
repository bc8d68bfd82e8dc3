"""`rtcts run`'s pieces that need no Ray: the stop's clock and signals, the banner (no
password in it), the port check and the cold-start lines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serve_app.errors import LocalServiceError
from serve_app.local import stopping
from serve_app.local.child import free_port
from serve_app.local.runner import Running, _cold_start_notes, _require_free_port, banner
from serve_app.local.stopping import Stopper, StopRequested
from serve_app.policy import load_policy_file

ROOT = Path(__file__).resolve().parents[3]


def stopper(forced: list[str]) -> Stopper:
    return Stopper(threading.Event(), forced.append, lambda line: None, sleep=lambda s: None)


def test_a_signal_during_start_up_abandons_it_once() -> None:
    forced: list[str] = []
    stop = stopper(forced)
    with pytest.raises(StopRequested):
        stop._on_signal(signal.SIGINT, None)
    assert stop.event.is_set()
    stop._on_signal(signal.SIGINT, None)  # the stop itself is not interrupted
    with pytest.raises(StopRequested):
        stop.check()  # a start-up step that swallowed it still stops there


def test_a_signal_while_serving_only_asks_for_the_stop() -> None:
    stop = stopper([])
    stop.starting = False
    stop._on_signal(signal.SIGTERM, None)
    assert stop.event.is_set()


def test_a_stop_that_runs_out_of_time_is_forced() -> None:
    forced: list[str] = []
    stop = stopper(forced)
    stop.begin()
    stop.begin()  # one clock, however often the stop begins
    stop.join()
    assert forced == ["still stopping after 13 s"]


def test_a_second_signal_forces_the_stop_at_once() -> None:
    forced: list[str] = []
    said: list[str] = []
    done = threading.Event()

    def force(why: str) -> None:
        forced.append(why)
        done.set()

    stop = Stopper(threading.Event(), force, said.append, sleep=lambda s: None)
    read, write = os.pipe()
    thread = threading.Thread(target=stop._read_signals, args=(read,), daemon=True)
    thread.start()
    os.write(write, bytes([signal.SIGINT, signal.SIGINT]))  # one Ctrl-C, seen twice
    assert done.wait(5)
    assert said == ["rtcts: stopping (Ctrl-C again to force) ..."]
    assert forced == ["still stopping after 13 s"]  # the clock, not "asked twice"
    forced.clear()
    done.clear()
    saved, stopping.SECOND_SIGNAL_S = stopping.SECOND_SIGNAL_S, 0.0
    try:
        os.write(write, bytes([signal.SIGINT]))
        os.close(write)
        assert done.wait(5)
    finally:
        stopping.SECOND_SIGNAL_S = saved
    assert forced == ["asked twice"]


def test_the_banner_masks_the_redis_password() -> None:
    loaded = load_policy_file(ROOT / "policies" / "default.yaml")
    running = Running(
        url="http://127.0.0.1:8000",
        redis_url="redis://:s3cret-pw@127.0.0.1:6390/0",
        redis_embedded=True,
        dashboard_url=None,
        stripe_url="http://127.0.0.1:9",
        stripe_emulated=True,
        ready_after_s=12.34,
    )
    text = banner(running, loaded, 1.0)
    assert "s3cret-pw" not in text
    assert "Redis:          redis://***@127.0.0.1:6390/0  (embedded)" in text
    assert text.startswith("rtcts is serving on http://127.0.0.1:8000 after 12.3 s")


def test_a_taken_port_fails_before_anything_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LocalServiceError, match=f"port {port} on 127.0.0.1 is in use"):
            _require_free_port("127.0.0.1", port)


def test_cold_start_lines_give_the_policy_figure_and_the_simulated_one() -> None:
    loaded = load_policy_file(ROOT / "policies" / "default.yaml")
    notes = _cold_start_notes(loaded, time_scale=1.0, cold_start_scale=0.05)
    assert notes["qwen2.5-32b"] == " (cold start 60 s, simulated in 3.0 s)"
    assert _cold_start_notes(loaded, time_scale=1.0, cold_start_scale=1.0) == {}


SPY = """
import os, sys

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "ray":
            print("ray imported with", os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED"),
                  flush=True)
            raise ImportError("stop here: the test is over")
        return None

sys.meta_path.insert(0, Spy())
from serve_app.cli import main
main(["run"])
"""


def test_fast_mode_is_set_before_ray_is_imported(tmp_path: Path) -> None:
    """Serve reads RAY_SERVE_THROUGHPUT_OPTIMIZED when it is imported: set later, the
    driver binds handles with actor calls, not gRPC (half the speed, issue #13)."""
    env = {
        "PATH": os.environ["PATH"],
        "RTCTS_DATA_DIR": str(tmp_path),
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: Ray's import stops the run
        "STRIPE_API_KEY": "sk_test_unused",
        "RTCTS_HTTP_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-c", SPY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert "ray imported with 1" in done.stdout, done.stdout + done.stderr
