"""Benchmark: what the priced ingress costs over a pass-through ingress, on real Ray Serve.

Issue targets, with a zero-delay simulated model (time_scale 0) so that only the
serving path is measured:

1. the full priced path (auth, live-state pricing, routing, meter hand-off) keeps
   >= 0.8x the throughput of a pass-through ingress to the same model, both in Serve's
   throughput-optimized ("fast") mode, at every concurrency;
2. it adds <= 2 ms to the p50 latency at concurrency 8;
3. the priced path in fast mode serves >= 5x the throughput of the pass-through app
   in Serve's default mode (max_ongoing_requests=64), at concurrency 32.

Two apps run side by side in one Ray Serve instance in fast mode: `bench-priced` at
/priced (`serve_app.builder.build_app` with a policy written here) and `bench-plain` at
/plain (an ingress written here that forwards the body to a handle of the same
`ModelServer` class: no auth, no pricing, no live state, no meters; on the same HTTP
layer as the priced ingress, `serve_app.ingress.asgi.IngressASGI`). Both fast-mode
apps get the same Serve logging options from the builder (access log lines off unless
RTCTS_ACCESS_LOG=1); the default-mode pass-through app keeps Serve's defaults (access
log lines on). Each app is measured through up to three entries:

- `haproxy`: HAProxy on the port given to `serve.start`, balancing over the ingress
  replicas' direct ports (Serve's `RAY_SERVE_ENABLE_HA_PROXY=1`, set up exactly as
  `rtcts run` does when a haproxy binary is installed: what it prints as its URL);
- `proxy`: Serve's HTTP proxy (the port given to `serve.start` without HAProxy, which
  is what `rtcts run` serves without a haproxy binary; with HAProxy, the fallback proxy
  Serve keeps as HAProxy's backup server, on its own port);
- `direct`: the ingress replica's own HTTP port. Fast mode turns on Serve's direct
  ingress: every ingress replica serves HTTP itself and the controller publishes the
  replica ports as target groups, for a load balancer in front (HAProxy).

With the `haproxy` entry (the default when a haproxy binary is found), the whole fast
phase runs in Serve's HAProxy mode, so all three entries share one Ray; without it,
the fast phase runs as before HAProxy was added (proxy and direct).

Measurement cells (app x entry x concurrency) are interleaved, repeated, and the
median of the repeats is kept. The default-mode pass-through app runs afterwards in a
subprocess (`--phase default-plain`) with its own Ray, because Serve reads
RAY_SERVE_THROUGHPUT_OPTIMIZED when its processes start; default mode has no direct
ingress, so it is measured through the proxy only.

The load generator is an asyncio HTTP/1.1 keep-alive client on raw streams (one
connection per worker; httpx costs several times more CPU per request, which on a
2-core machine would mostly measure the client; `--client httpx` uses it anyway). Its
CPU is reported apart from the CPU of the Ray node (gcs, raylet and every worker:
proxy, replicas, controller, registry), read from /proc before and after each cell and
divided by the requests completed.

    .venv/bin/python bench/ingress_overhead.py                      # 5 s cells, 3 repeats
    .venv/bin/python bench/ingress_overhead.py --duration 3 --repeats 2
    .venv/bin/python bench/ingress_overhead.py --json               # machine-readable
    .venv/bin/python bench/ingress_overhead.py --entries proxy direct   # no HAProxy mode

A benchmark, not a test: it always exits 0 and prints PASS or FAIL against each target.
Ray never gets port 6379: ray.init picks free ports and Serve gets a free port.
"""

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from procs import cpu_s, descendants  # bench/procs.py (bench/ is on sys.path as a script)
from stats import percentile  # bench/stats.py: bench/ is on sys.path when run as a script

from serve_app.models.backend import ChatMessage, GenerationRequest
from serve_app.policy import hash_api_key

FAST_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
PRICED_APP, PRICED_PREFIX = "bench-priced", "/priced"
PLAIN_APP, PLAIN_PREFIX = "bench-plain", "/plain"
CHAT_PATH = "/v1/chat/completions"
API_KEY = "rtcts-bench-key"
MODEL_ID = "sim"
PLAIN_MODEL_ID = "sim-plain"
"""The pass-through app's copy of the model spec, under another id: every replica reports
its load to the one registry by model id, and the priced app must not count the
pass-through app's replica as its own capacity."""
MAX_TOKENS = 8
CONCURRENCIES = (1, 8, 32)
ENTRIES = ("haproxy", "proxy", "direct")
DEFAULT_MODE_MAX_ONGOING = 64

TARGET_THROUGHPUT_RATIO = 0.8
TARGET_ADDED_P50_MS = 2.0
TARGET_ADDED_P50_AT = 8
TARGET_FAST_VS_DEFAULT = 5.0
TARGET_FAST_VS_DEFAULT_AT = 32

REQUEST_BODY = json.dumps(
    {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Say something short about GPUs."}],
        "max_tokens": MAX_TOKENS,
    }
).encode()

# One model on one replica (fixed: min = max = 1), a batch of 32 sequences so that
# max_ongoing_requests = 2 x 32 = 64 (builder.model_deployment_options), the same as the
# default-mode comparison. Prices far above cost, margin floor 0 and a generous SLA keep
# every request feasible: every priced request must come back 200 with decision allow.
MODEL_SPEC: dict[str, Any] = {
    "id": MODEL_ID,
    "backend": "simulated",
    "accelerator": "bench",
    "usd_per_hour": 1.0,
    "quality_tier": 1,
    "throughput": {
        "prefill_tokens_per_s": 50000,
        "decode_tokens_per_s_at_batch_1": 100,
        "max_concurrent_sequences": 32,
        "decode_tokens_per_s_at_max_batch": 1600,
    },
    "cold_start_s": 1,
    "context_window_tokens": 8192,
    "max_output_tokens": 1024,
    "default_output_tokens": 64,
    "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 32},
}
POLICY: dict[str, Any] = {
    "schema_version": 1,
    "version": "bench-ingress-1",
    "models": [MODEL_SPEC],
    "plans": [
        {
            "id": "bench",
            "prices_by_tier": {
                1: {"input_usd_per_1m_tokens": 1000, "output_usd_per_1m_tokens": 1000}
            },
            "margin_floor": 0,
            "on_infeasible": ["throttle"],
            "sla": {"ttft_target_ms": 600000, "tpot_target_ms": 60000, "credit_fraction": 0},
            "limits": {
                "requests_per_minute": 100_000_000,
                "tokens_per_minute": 1_000_000_000,
                "monthly_budget_usd": 1_000_000,
            },
        }
    ],
    "tenants": [
        {
            "id": "bench-tenant",
            "plan": "bench",
            "stripe_customer_id": "cus_bench",
            "api_key_sha256": [hash_api_key(API_KEY)],
        }
    ],
}


# --------------------------------------------------------------------------- the two apps


def plain_ingress() -> Any:
    """The pass-through ingress deployment: read the body, call the model, answer.

    The same HTTP layer as the priced ingress (`serve_app.ingress.asgi.IngressASGI`: the
    chat route as plain ASGI, anything else in an empty FastAPI app), so that the two
    differ only by what rtcts does per request. Built in a function so that Ray pickles
    the class by value, however this file was loaded."""
    from ray import serve

    from serve_app.ingress.app import MAX_BODY_BYTES
    from serve_app.ingress.asgi import IngressASGI, read_body

    class PlainIngress:
        def __init__(self, model: Any) -> None:
            self._model = model.options(method_name="generate")

        def __serve_build_asgi_app__(self) -> IngressASGI:
            return IngressASGI(FastAPI(docs_url=None), {("POST", CHAT_PATH): self.chat})

        async def chat(self, scope: Any, receive: Any) -> JSONResponse:
            body = json.loads(await read_body(scope, receive, MAX_BODY_BYTES))
            request_id = uuid.uuid4().hex
            completion = await self._model.remote(
                GenerationRequest(
                    request_id=request_id,
                    messages=tuple(
                        ChatMessage(role=m["role"], content=m["content"]) for m in body["messages"]
                    ),
                    max_tokens=int(body["max_tokens"]),
                )
            )
            return JSONResponse(
                {
                    "id": f"chatcmpl-{request_id}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": completion.text},
                            "finish_reason": completion.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": completion.input_tokens,
                        "completion_tokens": completion.output_tokens,
                        "total_tokens": completion.input_tokens + completion.output_tokens,
                    },
                }
            )

    return serve.deployment(serve.ingress()(PlainIngress))


def access_log_setting() -> bool:
    """Serve's access log lines for the fast-mode apps: rtcts's setting (RTCTS_ACCESS_LOG,
    off unless set), the same for both so that the comparison is fair."""
    from serve_app.settings import Settings

    return Settings.from_env().access_log


def plain_app(max_ongoing: int | None, access_log: bool | None = None) -> Any:
    """The pass-through app: PlainIngress -> ModelServer, with the same class and options
    as the priced app's model deployment, unless `max_ongoing` overrides both.

    `access_log` True or False applies the builder's logging options to both deployments,
    as the priced app gets them; None leaves Serve's defaults (access log lines on)."""
    from ray import serve

    from serve_app.builder import deployment_logging_options, model_deployment_options
    from serve_app.models.deployment import ModelServer
    from serve_app.policy.schema import ModelSpec

    spec = ModelSpec.model_validate({**MODEL_SPEC, "id": PLAIN_MODEL_ID})
    model_options = model_deployment_options(spec)
    ingress_options: dict[str, Any] = {
        "num_replicas": 1,
        "max_ongoing_requests": 1024,  # as the priced ingress (AppArgs default)
        "ray_actor_options": {"num_cpus": 0},
    }
    if max_ongoing is not None:
        model_options["max_ongoing_requests"] = max_ongoing
        ingress_options["max_ongoing_requests"] = max_ongoing
    if access_log is not None:
        model_options.update(deployment_logging_options(access_log))
        ingress_options.update(deployment_logging_options(access_log))
    model = (
        serve.deployment(ModelServer)  # type: ignore[attr-defined]
        .options(**model_options)
        .bind(spec.model_dump(mode="json"), 0.0, 0.0, False)
    )
    return plain_ingress().options(**ingress_options).bind(model)


def priced_app(ingress_replicas: int = 1, access_log: bool | None = None) -> Any:
    from serve_app.builder import build_app

    return build_app(
        {
            "policy": POLICY,
            "time_scale": 0,
            "natural_output": False,
            "app_name": PRICED_APP,
            "ingress_replicas": ingress_replicas,
            "access_log": access_log,
        }
    )


# --------------------------------------------------------------------------- load generator


class Conn:
    """One HTTP/1.1 keep-alive connection on raw asyncio streams (Content-Length or
    chunked bodies): a load generator that costs little CPU per request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        lines = [f"POST {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"content-length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        got: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            got[name.strip().lower()] = value.strip()
        if "content-length" in got:
            data = await self._reader.readexactly(int(got["content-length"]))
        elif got.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            raise RuntimeError(f"response without a length: {got}")
        if got.get("connection", "").lower() == "close":
            await self.close()
        return status, got, data


class HttpxConn:
    """The same interface on httpx (heavier on the client's CPU)."""

    def __init__(self, host: str, port: int) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30)

    async def close(self) -> None:
        await self._client.aclose()

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        response = await self._client.post(path, content=body, headers=headers)
        return response.status_code, dict(response.headers), response.content


@dataclass(frozen=True)
class Target:
    """One app in one Serve mode through one entry, and how to check its answers."""

    app: str
    """priced or plain"""
    mode: str
    """fast or default"""
    entry: str
    """haproxy, proxy or direct"""
    port: int
    host: str = "127.0.0.1"

    @property
    def name(self) -> str:
        return f"{self.app} {self.mode} {self.entry}"

    @property
    def path(self) -> str:
        return (PRICED_PREFIX if self.app == "priced" else PLAIN_PREFIX) + CHAT_PATH

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.app == "priced":
            headers["authorization"] = f"Bearer {API_KEY}"
        return headers

    def check(self, status: int, headers: dict[str, str], body: bytes) -> str | None:
        """None if the answer is a served completion, else what is wrong with it."""
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        if self.app == "priced" and headers.get("x-rtcts-decision") != "allow":
            return f"decision {headers.get('x-rtcts-decision')!r}"
        answer = json.loads(body)
        if answer["usage"]["completion_tokens"] != MAX_TOKENS:
            return f"completion_tokens {answer['usage']['completion_tokens']}"
        return None


@dataclass
class Cell:
    """One measurement: one target at one concurrency for a fixed duration."""

    target: str
    concurrency: int
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_req: float
    server_cpu_net_ms_per_req: float
    """The same less the idle Ray node's CPU over the cell's duration (background work:
    load reports, live-state refreshes, controller loops, health checks)."""
    client_cpu_ms_per_req: float
    other_load_cores: float
    """CPU cores that processes outside this benchmark kept busy during the cell (the
    machine is shared): a noise indicator, not part of the result."""
    cpu_by_process_ms_per_req: dict[str, float] = field(default_factory=dict)
    first_error: str | None = None


# --------------------------------------------------------------------------- CPU of the Ray node

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_kind(pid: int) -> str | None:
    """Which part of the Ray node a process is, from its title (`ray::ProxyActor`,
    `ray::ServeReplica:<app>:<deployment>`, the method it runs cut off), None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    title = cmd.split(" ", 1)[0]
    if title.startswith("ray::"):
        title = title[len("ray::") :]
        head, dot, method = title.rpartition(".")
        if dot and method.isidentifier():
            title = head
        if title.startswith("ServeReplica:"):
            return title[len("ServeReplica:") :]
        return title
    if title.rsplit("/", 1)[-1] == "haproxy":
        return "haproxy"
    for part in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py"):
        if part in cmd:
            return part
    return "ray-other"


class NodeCpu:
    """CPU seconds of every process of the local Ray node (the driver's descendants: gcs,
    raylet, workers), by kind; the driver (the load generator) is measured apart."""

    def __init__(self) -> None:
        self._kinds: dict[int, str] = {}

    def sample(self) -> dict[str, float]:
        by_kind: dict[str, float] = {}
        for pid in descendants(os.getpid(), include_root=False):
            kind = self._kinds.get(pid)
            if kind is None:
                kind = _process_kind(pid)
                if kind is None:
                    continue
                if kind not in ("ray-other", "IDLE"):
                    self._kinds[pid] = kind  # a worker's title changes once it gets a job
            seconds = cpu_s(pid)
            if seconds is not None:
                by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        return by_kind

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {
            kind: max(0.0, after.get(kind, 0.0) - before.get(kind, 0.0))
            for kind in sorted(set(before) | set(after))
        }


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes, from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    steal = ticks[7] if len(ticks) > 7 else 0
    return (sum(ticks[:8]) - idle - steal) / CLK_TCK


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------- measuring


async def run_cell(
    target: Target,
    concurrency: int,
    duration_s: float,
    client: str,
    cpu: NodeCpu,
    idle_cpu_s_per_s: float = 0.0,
) -> Cell:
    """`concurrency` workers, each on its own connection, send requests back to back."""
    path, headers = target.path, target.headers()
    latencies: list[float] = []
    errors: list[str] = []
    conns: list[Conn | HttpxConn] = [
        (Conn if client == "raw" else HttpxConn)(target.host, target.port)
        for _ in range(concurrency)
    ]
    for conn in conns:  # connect (and check) before the clock starts
        status, got, body = await conn.post(path, REQUEST_BODY, headers)
        if (problem := target.check(status, got, body)) is not None:
            errors.append(problem)

    async def worker(conn: Conn | HttpxConn, deadline: float) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                status, got, body = await conn.post(path, REQUEST_BODY, headers)
            except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                errors.append(repr(exc))
                await conn.close()
                continue
            took = time.perf_counter() - began
            problem = target.check(status, got, body)
            if problem is None:
                latencies.append(took)
            else:
                errors.append(problem)

    cpu_before, client_before, busy_before = cpu.sample(), self_cpu_s(), machine_busy_s()
    started = time.perf_counter()
    await asyncio.gather(*(worker(conn, started + duration_s) for conn in conns))
    elapsed = time.perf_counter() - started
    by_kind = NodeCpu.delta(cpu_before, cpu.sample())
    client_s = self_cpu_s() - client_before
    others_s = machine_busy_s() - busy_before - sum(by_kind.values()) - client_s
    for conn in conns:
        await conn.close()

    done = max(1, len(latencies))
    latencies.sort()
    return Cell(
        target=target.name,
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(errors),
        elapsed_s=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(latencies, 50) * 1000, 3),
        p99_ms=round(percentile(latencies, 99) * 1000, 3),
        server_cpu_ms_per_req=round(sum(by_kind.values()) * 1000 / done, 3),
        server_cpu_net_ms_per_req=round(
            (sum(by_kind.values()) - idle_cpu_s_per_s * elapsed) * 1000 / done, 3
        ),
        client_cpu_ms_per_req=round(client_s * 1000 / done, 3),
        other_load_cores=round(max(0.0, others_s) / elapsed, 2),
        cpu_by_process_ms_per_req={
            k: round(v * 1000 / done, 3) for k, v in by_kind.items() if v > 0
        },
        first_error=errors[0] if errors else None,
    )


def median_cell(cells: list[Cell]) -> Cell:
    """Each metric's median over the repeats (requests and errors: totals)."""
    kinds = sorted({k for c in cells for k in c.cpu_by_process_ms_per_req})

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return Cell(
        target=cells[0].target,
        concurrency=cells[0].concurrency,
        requests=sum(c.requests for c in cells),
        errors=sum(c.errors for c in cells),
        elapsed_s=round(sum(c.elapsed_s for c in cells), 3),
        rps=round(statistics.median(c.rps for c in cells), 1),
        p50_ms=med([c.p50_ms for c in cells]),
        p99_ms=med([c.p99_ms for c in cells]),
        server_cpu_ms_per_req=med([c.server_cpu_ms_per_req for c in cells]),
        server_cpu_net_ms_per_req=med([c.server_cpu_net_ms_per_req for c in cells]),
        client_cpu_ms_per_req=med([c.client_cpu_ms_per_req for c in cells]),
        other_load_cores=med([c.other_load_cores for c in cells]),
        cpu_by_process_ms_per_req={
            k: med([c.cpu_by_process_ms_per_req.get(k, 0.0) for c in cells]) for k in kinds
        },
        first_error=next((c.first_error for c in cells if c.first_error), None),
    )


async def measure(
    targets: list[Target], args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    """Warm up, sample idle CPU, then interleaved rounds; medians per (target, c)."""
    cpu = NodeCpu()
    for target in targets:
        log(f"warm-up {target.name} ({args.warmup:g} s at c=8)")
        cell = await run_cell(target, 8, args.warmup, args.client, cpu)
        if cell.requests == 0:
            raise RuntimeError(f"{target.name}: no request served ({cell.first_error})")
    before = cpu.sample()
    await asyncio.sleep(args.idle)
    idle = NodeCpu.delta(before, cpu.sample())
    idle_s_per_s = sum(idle.values()) / args.idle
    log(f"idle Ray node: {idle_s_per_s * 1000:.0f} CPU ms per s")

    cells: dict[tuple[str, int], list[Cell]] = {}
    for repeat in range(args.repeats):
        for concurrency in args.concurrency:
            # Rotate which target goes first, so drift hits them all alike.
            shift = repeat % len(targets)
            for target in targets[shift:] + targets[:shift]:
                cell = await run_cell(
                    target, concurrency, args.duration, args.client, cpu, idle_s_per_s
                )
                cells.setdefault((target.name, concurrency), []).append(cell)
                log(
                    f"  [{repeat + 1}/{args.repeats}] {target.name:<20} c={concurrency:<3}"
                    f" {cell.rps:7.1f} req/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f}"
                    f" ms  cpu {cell.server_cpu_ms_per_req:5.2f} ms/req  errors {cell.errors}"
                    f"  other load {cell.other_load_cores:.2f} cores"
                )
    return {
        "idle_cpu_ms_per_s": round(idle_s_per_s * 1000, 1),
        "idle_cpu_by_process_ms_per_s": {
            k: round(v * 1000 / args.idle, 1) for k, v in idle.items() if v > 0
        },
        "cells": [asdict(median_cell(runs)) for runs in cells.values()],
        "runs": [asdict(c) for runs in cells.values() for c in runs],
    }


# --------------------------------------------------------------------------- phases


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(port: int, log: Callable[[str], None], timeout_s: float = 120) -> None:
    """Until the priced app's live state has a fresh load report."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = httpx.get(f"http://127.0.0.1:{port}{PRICED_PREFIX}/healthz", timeout=5)
            if health.status_code == 200 and health.json().get("load_age_s") is not None:
                log(f"priced app ready: {health.json()}")
                return
        time.sleep(0.2)
    raise RuntimeError("the priced app did not become ready")


def direct_ports() -> dict[str, int]:
    """Route prefix -> HTTP port of its ingress replica (Serve's direct ingress), from the
    target groups the controller publishes for a load balancer."""
    import ray

    controller = ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    ports: dict[str, int] = {}
    # In HAProxy mode the controller answers HAProxy's own port unless the caller says
    # it is the proxy manager (which is what this asks for: the replica ports).
    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    call = controller.get_target_groups.remote(from_proxy_manager=True) if haproxy else None
    groups: list[Any] = ray.get(call or controller.get_target_groups.remote())
    for group in groups:
        protocol = getattr(group.protocol, "value", group.protocol)
        replicas = [t for t in group.targets if t.name.startswith("SERVE_REPLICA")]
        if protocol == "HTTP" and replicas:
            ports[group.route_prefix] = replicas[0].port
    return ports


def with_serve(
    fast: bool,
    deploy: Callable[[int], list[Target]],
    args: argparse.Namespace,
    log: Callable[[str], None],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a local Ray (never on 6379: ray.init picks free ports) and Serve, deploy,
    measure, and always shut Ray down."""
    os.environ[FAST_ENV] = "1" if fast else "0"
    os.environ.update(env or {})
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, namespace="rtcts-bench")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        targets = deploy(port)
        result = _run_async(measure(targets, args, log))
        result["targets"] = [asdict(t) | {"name": t.name} for t in targets]
        return result
    finally:
        # Stops the whole local Ray this driver started, Serve included (serve.shutdown()
        # first would only add the ~30 s direct-ingress drain).
        ray.shutdown()


def _run_async(coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await coro

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def haproxy_env(log: Callable[[str], None]) -> dict[str, str] | None:
    """Serve's HAProxy mode as `rtcts run` sets it up (per-instance files and ports);
    None when no haproxy binary is found."""
    from serve_app.local.public_port import plan_public_port
    from serve_app.settings import Settings, SettingsError

    try:
        public = plan_public_port(Settings(haproxy="on"))
    except SettingsError as exc:
        log(f"no HAProxy entry: {exc}")
        return None
    log(f"HAProxy mode: {public.notice}")
    return public.env


def fast_phase(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Priced and pass-through apps side by side, Serve in throughput-optimized mode
    (and in HAProxy mode when the haproxy entry is measured)."""
    env = haproxy_env(log) if "haproxy" in args.entries else None

    def deploy(port: int) -> list[Target]:
        from ray import serve

        access_log = access_log_setting()
        log(
            "deploying bench-priced at /priced and bench-plain at /plain (fast mode, Serve"
            f" access log lines {'on' if access_log else 'off'} for both)"
        )
        serve.run(
            priced_app(args.priced_ingress_replicas, access_log),
            name=PRICED_APP,
            route_prefix=PRICED_PREFIX,
        )
        serve.run(plain_app(None, access_log), name=PLAIN_APP, route_prefix=PLAIN_PREFIX)
        wait_ready(port, log)
        targets = []
        if env is not None:
            targets += [
                Target("priced", "fast", "haproxy", port),
                Target("plain", "fast", "haproxy", port),
            ]
        if "proxy" in args.entries:
            # With HAProxy on the public port, Serve's proxy is its backup server.
            proxy = int(env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]) if env else port
            targets += [
                Target("priced", "fast", "proxy", proxy),
                Target("plain", "fast", "proxy", proxy),
            ]
        if "direct" in args.entries:
            ports = direct_ports()
            log(f"direct ingress ports: {ports} (Serve proxy: {port})")
            if PRICED_PREFIX in ports and PLAIN_PREFIX in ports:
                targets += [
                    Target("priced", "fast", "direct", ports[PRICED_PREFIX]),
                    Target("plain", "fast", "direct", ports[PLAIN_PREFIX]),
                ]
            else:
                log("no direct ingress ports published: measuring through the proxy only")
        return targets

    try:
        return with_serve(True, deploy, args, log, env)
    finally:
        if env is not None:
            state_dir = Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
            shutil.rmtree(state_dir, ignore_errors=True)


def default_phase(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The pass-through app alone, Serve in its default mode, max_ongoing_requests=64."""

    def deploy(port: int) -> list[Target]:
        from ray import serve

        log(
            "deploying bench-plain at /plain (default mode, max_ongoing_requests=64,"
            " Serve's default logging: access log lines on)"
        )
        serve.run(plain_app(DEFAULT_MODE_MAX_ONGOING), name=PLAIN_APP, route_prefix=PLAIN_PREFIX)
        return [Target("plain", "default", "proxy", port)]

    return with_serve(False, deploy, args, log)


def run_default_subprocess(args: argparse.Namespace) -> dict[str, Any]:
    return run_phase_subprocess(
        Path(__file__),
        [
            *("--phase", "default-plain", "--client", args.client),
            *("--duration", str(args.duration), "--repeats", str(args.repeats)),
            *("--warmup", str(args.warmup), "--idle", str(args.idle)),
            *("--concurrency", *(str(c) for c in args.concurrency)),
            *(["--quiet"] if args.quiet else []),
        ],
        {FAST_ENV: "0"},
    )


def run_phase_subprocess(
    script: Path, argv: Sequence[str], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `script argv --out FILE` with Serve's settings cleared from the environment
    (Serve reads them when its processes start; `env` sets some again) and return the
    JSON the phase wrote to FILE."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    child_env.update(env or {})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        command = [sys.executable, str(script.resolve()), *argv, "--out", str(out)]
        subprocess.run(command, env=child_env, check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


# --------------------------------------------------------------------------- report

Cells = dict[tuple[str, int], dict[str, Any]]


def verdicts(cells: Cells) -> list[dict[str, Any]]:
    """The three targets, for each entry measured in fast mode."""
    results = []
    concurrencies = sorted({c for _, c in cells})
    baseline = cells.get(("plain default proxy", TARGET_FAST_VS_DEFAULT_AT))
    for entry in ENTRIES:
        if not any(name == f"priced fast {entry}" for name, _ in cells):
            continue
        priced = {c: cells.get((f"priced fast {entry}", c)) for c in concurrencies}
        plain = {c: cells.get((f"plain fast {entry}", c)) for c in concurrencies}
        ratios = {
            c: p["rps"] / q["rps"]
            for c in concurrencies
            if (p := priced[c]) is not None and (q := plain[c]) is not None and q["rps"]
        }
        worst = min(ratios.items(), key=lambda kv: kv[1]) if ratios else None
        results.append(
            {
                "entry": entry,
                "target": f"priced >= {TARGET_THROUGHPUT_RATIO}x pass-through req/s, every c",
                "value": {str(c): round(r, 3) for c, r in ratios.items()},
                "pass": worst is not None and worst[1] >= TARGET_THROUGHPUT_RATIO,
                "summary": (
                    ", ".join(f"{r:.2f}x at c={c}" for c, r in ratios.items())
                    if ratios
                    else "not measured"
                ),
            }
        )
        p, q = priced.get(TARGET_ADDED_P50_AT), plain.get(TARGET_ADDED_P50_AT)
        added = p["p50_ms"] - q["p50_ms"] if p and q else None
        results.append(
            {
                "entry": entry,
                "target": f"added p50 <= {TARGET_ADDED_P50_MS:g} ms at c={TARGET_ADDED_P50_AT}",
                "value": None if added is None else round(added, 3),
                "pass": added is not None and added <= TARGET_ADDED_P50_MS,
                "summary": "not measured"
                if added is None or p is None or q is None
                else f"{added:+.2f} ms ({p['p50_ms']:.2f} vs {q['p50_ms']:.2f} ms)",
            }
        )
        fast = priced.get(TARGET_FAST_VS_DEFAULT_AT)
        speedup = fast["rps"] / baseline["rps"] if fast and baseline and baseline["rps"] else None
        results.append(
            {
                "entry": entry,
                "target": (
                    f"priced (fast) >= {TARGET_FAST_VS_DEFAULT:g}x pass-through (default"
                    f" mode, proxy) req/s at c={TARGET_FAST_VS_DEFAULT_AT}"
                ),
                "value": None if speedup is None else round(speedup, 3),
                "pass": speedup is not None and speedup >= TARGET_FAST_VS_DEFAULT,
                "summary": "not measured" if speedup is None else f"{speedup:.2f}x",
            }
        )
    return results


def target_names(cells: Cells) -> list[str]:
    order = [
        "priced fast haproxy",
        "plain fast haproxy",
        "priced fast proxy",
        "plain fast proxy",
        "priced fast direct",
        "plain fast direct",
        "plain default proxy",
    ]
    present = {name for name, _ in cells}
    return [n for n in order if n in present]


def table(cells: Cells) -> str:
    names = target_names(cells)
    lines = [
        "| metric | c | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for metric, label in (
        ("rps", "req/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("server_cpu_ms_per_req", "Ray CPU ms/req"),
        ("server_cpu_net_ms_per_req", "Ray CPU ms/req less idle"),
        ("client_cpu_ms_per_req", "client CPU ms/req"),
        ("other_load_cores", "other processes (cores)"),
    ):
        for c in sorted({c for _, c in cells}):
            decimals = 1 if metric == "rps" else 2
            row = [
                f"{cells[(n, c)][metric]:.{decimals}f}" if (n, c) in cells else "-" for n in names
            ]
            lines.append(f"| {label} | {c} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def breakdown(cells: Cells, concurrency: int) -> str:
    """Ray CPU ms per request by process at one concurrency, one column per target."""
    names = [n for n in target_names(cells) if (n, concurrency) in cells]
    by = {n: cells[(n, concurrency)]["cpu_by_process_ms_per_req"] for n in names}
    kinds = sorted({k for values in by.values() for k in values})
    lines = [
        f"| process (c={concurrency}) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind in kinds:
        values = [by[n].get(kind, 0.0) for n in names]
        if max(values) >= 0.02:
            lines.append(f"| {kind} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    totals = [cells[(n, concurrency)]["server_cpu_ms_per_req"] for n in names]
    lines.append("| **all** | " + " | ".join(f"**{v:.2f}**" for v in totals) + " |")
    return "\n".join(lines)


def git_state() -> str:
    """The commit benchmarked, and whether serve_app/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "serve_app"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit}{' + uncommitted serve_app changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    import ray

    return {
        "date": dt.date.today().isoformat(),
        "code": git_state(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray": ray.__version__,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "fast_mode_access_log": access_log_setting(),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is kept")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU sampling")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    parser.add_argument(
        "--entries", nargs="+", choices=ENTRIES, default=list(ENTRIES), help="fast-mode entries"
    )
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument(
        "--priced-ingress-replicas",
        type=int,
        default=1,
        help="ingress replicas of the priced app (behind HAProxy, which balances them; "
        "the direct entry reaches the first one only)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--save", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--phase",
        choices=("all", "fast", "default-plain"),
        default="all",
        help="all: the fast-mode apps, then the default-mode pass-through in a subprocess",
    )
    parser.add_argument("--out", type=Path, help="(default-plain) write the result here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    if args.phase == "default-plain":
        result = default_phase(args, log)
        if args.out:
            args.out.write_text(json.dumps(result))
        else:
            print(json.dumps(result, indent=2))
        return 0

    info = machine()
    started = time.monotonic()
    fast = fast_phase(args, log)
    default = run_default_subprocess(args) if args.phase == "all" else None
    cells: Cells = {(c["target"], c["concurrency"]): c for c in fast["cells"]}
    if default:
        cells.update({(c["target"], c["concurrency"]): c for c in default["cells"]})
    report = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_s": round(time.monotonic() - started, 1),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "idle_cpu_ms_per_s": {
            "fast mode, both apps": fast["idle_cpu_ms_per_s"],
            **({"default mode, pass-through": default["idle_cpu_ms_per_s"]} if default else {}),
        },
        "idle_cpu_by_process_ms_per_s": {
            "fast mode, both apps": fast["idle_cpu_by_process_ms_per_s"],
            **(
                {"default mode, pass-through": default["idle_cpu_by_process_ms_per_s"]}
                if default
                else {}
            ),
        },
        "cells": list(cells.values()),
        "verdicts": verdicts(cells),
        "runs": fast["runs"] + (default["runs"] if default else []),
    }
    if args.save:
        args.save.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"Ingress overhead, {info['date']}, {info['cpus']} CPUs, Python {info['python']},"
        f" Ray {info['ray']}, code {info['code']}; {args.duration:g} s cells x"
        f" {args.repeats} repeats (medians), client {args.client}, {report['wall_s']} s;"
        f" Serve access log lines in fast mode {'on' if info['fast_mode_access_log'] else 'off'}"
        " (RTCTS_ACCESS_LOG), in default mode on"
    )
    print(
        f"load average {info['loadavg']} at start, {report['loadavg_end']} at end;"
        f" idle Ray node CPU (ms per s): {report['idle_cpu_ms_per_s']}\n"
    )
    print(table(cells))
    for c in sorted({c for _, c in cells}):
        print(f"\nRay node CPU ms per request, by process, c={c} (medians):\n")
        print(breakdown(cells, c))
    errors = [c for c in cells.values() if c["errors"]]
    print(f"\nerrors: {sum(c['errors'] for c in errors)}")
    for cell in errors:
        print(f"  {cell['target']} c={cell['concurrency']}: {cell['first_error']}")
    print()
    for verdict in report["verdicts"]:
        print(
            f"{'PASS' if verdict['pass'] else 'FAIL'}  [{verdict['entry']}] {verdict['target']}:"
            f" {verdict['summary']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
