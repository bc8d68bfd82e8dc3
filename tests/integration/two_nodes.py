"""The two-node scenario (issue #14 item 3), run in a process of its own by
`test_two_nodes.py`: `python -m tests.integration.two_nodes RESULT.json`. It writes what it
saw to RESULT.json; the test asserts on it.

A Ray cluster of its own on this machine: a head (`ray start --head --block`, GCS on a
free port, never 6379; every other port free too; its own temp dir and auth token) with
the custom resource `cpu_pool`, and a worker node (`ray start --address --block`) with
`gpu_l4`, standing for a node with one L4 GPU. Each node is a process group this script
owns, and every process of it (Ray workers run in groups of their own) carries the node's
mark in its environment: a node is stopped by SIGKILL to its group and to each marked
PID (a node lost, not shut down), never by `ray stop`, which would stop every Ray on the
machine.

The nodes' environment has no STRIPE_API_KEY nor any rtcts setting: only this driver has
them, and the app must carry them to its actors as arguments.

1. The app is deployed while only the head is up: the ingress, the aggregator and the
   head-pinned models (`backup`, `small`: `ray_resources: {cpu_pool: 0.1}`) start there;
   the model `gpu` (`ray_resources: {gpu_l4: 1}`) may scale to zero.
2. The worker node joins; a premium request for `gpu` starts its replica there.
3. Traffic: premium requests for `gpu` (long answers) and flex `auto` requests; the
   worker node's process group is SIGKILLed mid-traffic.
4. Outage: quotes and requests for `gpu` and `auto` on the flex and strict plans.
5. The worker node comes back; a premium request for `gpu` is served by it again.
6. Billing settles: each tenant's usage and the Stripe emulator's totals.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from rtcts_dev.stripe_emulator import EmulatorServer
from rtcts_dev.stripe_emulator.app import mask_key
from serve_app.local.child import free_port
from serve_app.local.redis_server import EmbeddedRedis

POLICY = Path(__file__).with_name("two_nodes_policy.yaml")
APP = "rtcts-2n"
KEYS = {"flex": "2n-flex", "strict": "2n-strict", "premium": "2n-premium"}
TENANTS = {"flex": "t2-flex", "strict": "t2-strict", "premium": "t2-premium"}
MARKER = "RTCTS_TWO_NODES_TEST_RUN"
"""In the nodes' environment (and so their workers'): finds what is left to kill."""
NODE_MARKER = "RTCTS_TWO_NODES_TEST_NODE"
"""Which node (and which start of it) a process belongs to: a lost node loses them all."""
NODE_HEALTH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
"""A lost node is declared dead in seconds, not Ray's default half minute."""
RAY = Path(sys.executable).with_name("ray")
CLIENT_TIMEOUT_S = 120.0
"""Longer than any request waits here (a cold start, a node's return)."""


def auth(plan: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[plan]}"}


def body(model: str, max_tokens: int = 8) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say something about GPUs."}],
        "max_tokens": max_tokens,
    }


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not within {timeout_s} s (last: {last!r})")


class RayNode:
    """One `ray start --block` in a process group of its own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], root: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        temp = self.root / f"{self.name}{self.starts}"  # short: Ray's socket paths live in it
        log = self.log_path.open("wb")
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        command = [str(RAY), "start", "--block", "--disable-usage-stats", f"--temp-dir={temp}"]
        self.process = subprocess.Popen(
            [*command, *ports, *self.args],
            env={**self.env, NODE_MARKER: self.mark},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def mark(self) -> str:
        return f"{self.env[MARKER]}-{self.name}{self.starts}"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}{self.starts}.log"

    def up(self, timeout_s: float = 240.0, tries: int = 3) -> None:
        """Start the node until it says it runs. On a busy machine a raylet can give up
        waiting for its agents (15 s, not configurable) and `ray start` then exits: that
        start is retried, in a fresh temp dir."""
        for _ in range(tries):
            self.start()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if b"Ray runtime started" in self.log_path.read_bytes():
                    return
                if self.process is not None and self.process.poll() is not None:
                    break  # this start failed: try again
                time.sleep(0.5)
            else:
                raise TimeoutError(f"Ray node {self.name}: not started within {timeout_s} s")
            self.kill()
        raise RuntimeError(f"Ray node {self.name}: {tries} starts failed ({self.log_path})")

    def kill(self) -> None:
        """SIGKILL the node's process group and every process of the node (its Ray
        workers run in groups of their own): the node is lost, as if powered off."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        kill_marked(NODE_MARKER, self.mark)


def kill_marked(name: str, value: str) -> list[int]:
    """SIGKILL every process whose environment has `name=value`; returns their PIDs."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{name}={value}".encode() in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


class Traffic:
    """Client threads that record every answer: (kind, status, JSON or text, headers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def call(self, kind: str, plan: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One chat completion, recorded; a client timeout is recorded as status 0 (its
        fate unknown: the billing checks then fail, as they should)."""
        record: dict[str, Any] = {"kind": kind, "plan": plan, "requested": payload["model"]}
        record["sent"] = time.monotonic()
        try:
            with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
                response = client.post(
                    f"{self.url}/v1/chat/completions", json=payload, headers=auth(plan)
                )
        except httpx.TimeoutException:
            record.update(status=0, error_code="client_timeout", at=time.monotonic())
        else:
            try:
                data: Any = response.json()
            except ValueError:
                data = {}
            data = data if isinstance(data, dict) else {}
            record.update(
                status=response.status_code,
                decision=response.headers.get("x-rtcts-decision"),
                model=response.headers.get("x-rtcts-model"),
                retry_after=response.headers.get("retry-after"),
                billed_usd=(data.get("rtcts") or {}).get("billed_usd"),
                error_code=(data.get("error") or {}).get("code"),
                at=time.monotonic(),
            )
        with self._lock:
            self.records.append(record)
        return record

    def loop(self, kind: str, plan: str, payload: dict[str, Any], stop: threading.Event) -> None:
        def run() -> None:
            while not stop.is_set():
                self.call(kind, plan, payload)

        thread = threading.Thread(target=run, name=kind, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=320)


def gpu_live(url: str) -> dict[str, Any]:
    cluster = httpx.get(f"{url}/v1/cluster", headers=auth("flex"), timeout=10).json()
    replicas = cluster["models"]["gpu"]["replicas"]
    return {"warm": sum(1 for r in replicas if r["warm"]), "replicas": len(replicas)}


def quote(url: str, plan: str, model: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/v1/quote", json=body(model), headers=auth(plan), timeout=30)
    data: dict[str, Any] = answer.json()
    gpu = [c for c in data.get("candidates", []) if c["model"] == "gpu"]
    return {
        "status": answer.status_code,
        "decision": data.get("decision"),
        "model": data.get("model"),
        "gpu": gpu[0] if gpu else None,
    }


def main(result_path: Path) -> None:
    """Run the scenario; write what was seen, also when it failed (with the error, and
    the nodes' logs kept in their temp dir)."""
    root = Path(tempfile.mkdtemp(prefix="r2n", dir="/tmp"))
    facts: dict[str, Any] = {"times": {}, "records": [], "root": str(root)}
    try:
        scenario(root, facts)
    except BaseException:
        facts["error"] = traceback.format_exc()
        raise
    else:
        shutil.rmtree(root, ignore_errors=True)
    finally:
        result_path.write_text(json.dumps(facts, indent=1), encoding="utf-8")


def scenario(root: Path, facts: dict[str, Any]) -> None:
    run = secrets.token_hex(8)
    token = secrets.token_hex(32)
    node_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "RTCTS_", "REDIS_", "RAY_ADDRESS"))
    }
    # Serve in rtcts's default (throughput-optimized) mode, whatever the caller's session.
    node_env.update(NODE_HEALTH, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    node_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    node_env[MARKER] = run
    stripe_key = f"sk_test_2n{secrets.token_hex(12)}"
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, STRIPE_API_KEY=stripe_key)
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    os.environ.pop("RAY_ADDRESS", None)
    import ray  # after the auth variables: Ray reads them when it is imported
    from ray import serve

    t0 = time.monotonic()

    def mark(name: str) -> None:
        facts["times"][name] = round(time.monotonic() - t0, 1)

    gcs_port = free_port()
    head = RayNode(
        "h",
        [
            "--head",
            f"--port={gcs_port}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            "--num-cpus=2",
            '--resources={"cpu_pool": 1}',
        ],
        node_env,
        root,
    )
    worker = RayNode(
        "w",
        [f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1", '--resources={"gpu_l4": 1}'],
        node_env,
        root,
    )
    with ExitStack() as stack:
        stack.callback(lambda: facts.setdefault("leftovers_killed", kill_marked(MARKER, run)))
        stack.callback(head.kill)
        stack.callback(worker.kill)
        redis = stack.enter_context(EmbeddedRedis(root / "redis"))
        stripe = stack.enter_context(EmulatorServer())
        head.up()
        ray.init(address=f"127.0.0.1:{gcs_port}", namespace="rtcts-2n", log_to_driver=False)
        stack.callback(ray.shutdown)
        (head_node,) = [n for n in ray.nodes() if "cpu_pool" in n["Resources"]]
        facts["driver_on_head"] = ray.get_runtime_context().get_node_id() == head_node["NodeID"]
        mark("head_up")

        from serve_app.builder import build_app

        http_port = free_port()
        serve.start(
            proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port}
        )
        url = f"http://127.0.0.1:{http_port}"
        serve.run(
            build_app(
                {
                    "policy_path": str(POLICY),
                    "app_name": APP,
                    "natural_output": False,
                    "redis_url": redis.url,
                    "data_dir": str(root / "data"),
                    "stripe_api_base": stripe.url,
                    "window_s": 1,
                    "grace_s": 1,
                    "cold_start_scale": 0.05,
                }
            ),
            name=APP,
            route_prefix="/",
        )
        wait_for(
            lambda: httpx.get(f"{url}/healthz", timeout=5).json()["load_age_s"] is not None,
            "live state",
            60,
        )
        mark("deployed")
        facts["quote_before_worker"] = quote(url, "flex", "gpu")

        worker.up()
        wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "the worker joins", 90)
        mark("worker_up")
        traffic = Traffic(url)
        facts["records"] = traffic.records  # the same list: filled as answers come
        first = traffic.call("warm-up", "premium", body("gpu", 8))
        facts["warm_up"] = first
        wait_for(lambda: gpu_live(url)["warm"] == 1, "gpu warm", 60)
        facts["gpu_l4_held"] = ray.available_resources().get("gpu_l4", 0.0) == 0.0
        facts["gpu_l4_total"] = ray.cluster_resources().get("gpu_l4", 0.0)
        facts["quote_warm"] = quote(url, "flex", "auto")
        mark("gpu_warm")

        stop_gpu, stop_auto = threading.Event(), threading.Event()
        for i in range(3):
            traffic.loop(f"gpu-{i}", "premium", body("gpu", 300), stop_gpu)
        traffic.loop("auto", "flex", body("auto", 8), stop_auto)
        wait_for(
            lambda: (
                sum(r["kind"].startswith("gpu-") and r["status"] == 200 for r in traffic.records)
                >= 3
            ),
            "gpu answers under load",
            90,
        )
        time.sleep(1.0)  # three long answers in flight on the worker node
        worker.kill()
        stop_gpu.set()
        killed_at = time.monotonic()
        mark("worker_killed")
        wait_for(
            lambda: len([n for n in ray.nodes() if n["Alive"]]) == 1,
            "the worker is declared dead",
            60,
        )
        wait_for(
            lambda: quote(url, "flex", "gpu")["gpu"]["live"]["warm_replicas"] == 0,
            "gpu quoted cold",
            60,
        )
        mark("outage_seen")
        facts["outage"] = {
            "quote_flex_gpu": quote(url, "flex", "gpu"),
            "quote_flex_auto": quote(url, "flex", "auto"),
            "quote_strict_gpu": quote(url, "strict", "gpu"),
            "gpu_l4_total": ray.cluster_resources().get("gpu_l4", 0.0),
        }
        for _ in range(3):
            traffic.call("outage-auto", "flex", body("auto"))
            traffic.call("outage-gpu", "flex", body("gpu"))
            traffic.call("outage-strict", "strict", body("gpu"))
        mark("outage_done")

        worker.up()
        wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "the worker rejoins", 90)
        mark("worker_back")
        facts["after_return"] = traffic.call("after", "premium", body("gpu", 8))
        wait_for(lambda: gpu_live(url)["warm"] == 1, "gpu warm again", 60)
        facts["gpu_l4_held_again"] = ray.available_resources().get("gpu_l4", 0.0) == 0.0
        for _ in range(3):
            traffic.call("after-auto", "flex", body("auto"))
        stop_auto.set()
        traffic.join()
        mark("traffic_done")
        facts["killed_in_flight"] = [
            r for r in traffic.records if r["kind"].startswith("gpu-") and r["at"] >= killed_at
        ]

        def settled() -> dict[str, Any] | None:
            usage = {}
            for plan in KEYS:
                answer = httpx.get(f"{url}/v1/usage", headers=auth(plan), timeout=10).json()
                usage[plan] = answer["billing"]
            counted = {
                plan: sum(
                    1 for r in traffic.records if r["plan"] == plan and r["status"] in (200, 502)
                )
                for plan in KEYS
            }
            done = all(
                u["pending_usd"] == "0.000000"
                and u["billable_requests"] + u["failed_requests_not_billed"] >= counted[plan]
                for plan, u in usage.items()
            )
            return usage if done else None

        facts["usage"] = wait_for(settled, "billing settled and synced", 120)
        mark("settled")
        facts["emulator_totals"] = [
            {"customer": c, "event": e, "value": v}
            for (c, e), v in sorted(stripe.state.totals().items())
        ]
        facts["emulator_keys"] = sorted(
            {r.get("api_key") for r in stripe.state.requests() if "meter_event" in r["operation"]}
            - {None}
        )
        facts["expected_key"] = mask_key(stripe_key)
        facts["tenants"] = TENANTS


if __name__ == "__main__":
    main(Path(sys.argv[1]))
