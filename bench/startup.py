"""Benchmark: `make run` from the command to "serving", the first request after it, and
the stop after a Ctrl-C (issue #16).

Target (issue): "serving" within 20 s of `make run` on an installed checkout of the
2-core reference machine, and the first request sent then answered without waiting on
start-up. Each run starts `make run` in a process group of its own (a fresh data
directory, the given port), times the "rtcts is serving" line, sends one chat request
(`auto`, pro key) at once and times it, then sends SIGINT to the group (a terminal's
Ctrl-C) and times the exit. The start-up lines of the median run are printed too.

    .venv/bin/python bench/startup.py                    # 3 runs of `make run`, port 8000
    .venv/bin/python bench/startup.py --runs 5 --port 18000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
TARGET_SERVING_S = 20.0
SERVING = "rtcts is serving on"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}


def one_run(command: list[str], port: int, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rtcts-bench-") as tmp:
        env = {**os.environ, "RTCTS_HTTP_PORT": str(port), "RTCTS_DATA_DIR": f"{tmp}/data"}
        for name in ("REDIS_URL", "RAY_ADDRESS", "RTCTS_POLICY_PATH"):
            env.pop(name, None)
        log = Path(tmp) / "run.log"
        started = time.monotonic()
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            serving_s = None
            while time.monotonic() - started < timeout_s and process.poll() is None:
                if SERVING in log.read_text(errors="replace"):
                    serving_s = time.monotonic() - started
                    break
                time.sleep(0.05)
            first_s = status = None
            if serving_s is not None:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                sent = time.monotonic()
                response = httpx.post(
                    url, json=CHAT, headers={"Authorization": "Bearer rtcts-demo-pro"}, timeout=60
                )
                first_s, status = time.monotonic() - sent, response.status_code
                if status != 200:
                    print(f"first request: {status} {response.text[:500]}", file=sys.stderr)
            stopping = time.monotonic()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
                stop_s: float | None = time.monotonic() - stopping
            except subprocess.TimeoutExpired:
                stop_s = None
            text = log.read_text(errors="replace")
            if serving_s is None:
                print(f"no 'serving' line; the run's last lines:\n{text[-2000:]}", file=sys.stderr)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    lines = [line for line in text.splitlines() if line.startswith("  [")]
    return {
        "serving_s": serving_s,
        "first_request_s": first_s,
        "first_request_status": status,
        "stop_s": stop_s,
        "exit_code": process.returncode,
        "start_up_lines": lines,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout-s", type=float, default=180.0)
    parser.add_argument("--command", default="make run", help="what to start (make run)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    runs = [one_run(args.command.split(), args.port, args.timeout_s) for _ in range(args.runs)]
    serving = [r["serving_s"] for r in runs if r["serving_s"] is not None]
    median = statistics.median(serving) if serving else None
    verdict = (
        "PASS"
        if median is not None and len(serving) == len(runs) and median <= TARGET_SERVING_S
        else "FAIL"
    )
    result = {"command": args.command, "load_average_before": load, "runs": runs,
              "median_serving_s": median, "verdict": verdict}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"`{args.command}` x{args.runs} (load average before: {load:.2f})")
    print(f"{'run':>3}  {'serving':>8}  {'first request':>13}  {'stop':>6}  exit")
    for i, r in enumerate(runs, 1):
        serving_text = "-" if r["serving_s"] is None else f"{r['serving_s']:.1f} s"
        first = "-" if r["first_request_s"] is None else (
            f"{r['first_request_s'] * 1000:.0f} ms {r['first_request_status']}"
        )  # fmt: skip
        stop = "-" if r["stop_s"] is None else f"{r['stop_s']:.1f} s"
        print(f"{i:>3}  {serving_text:>8}  {first:>13}  {stop:>6}  {r['exit_code']}")
    if median is not None:
        middle = min(runs, key=lambda r: abs((r["serving_s"] or 1e9) - median))
        print("start-up lines of the median run:")
        print("\n".join(middle["start_up_lines"]))
    print(f"median to serving: {median if median is None else round(median, 1)} s "
          f"(target <= {TARGET_SERVING_S:.0f} s): {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
