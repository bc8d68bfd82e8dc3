"""Benchmark: rtcts against LiteLLM's proxy, side by side in one run, on one mock upstream.

Issue #13's targets, on the default install (`rtcts run`: HAProxy on the public port):

1. at c=32, rtcts serves >= 5x LiteLLM's requests/s;
2. at c=8, rtcts's added p50 over the upstream alone is <= 1/5 of LiteLLM's;
3. streaming, c=8: rtcts's added time to first token is <= 1/3 of LiteLLM's.

What runs, all at once on this machine (each in its own process group, stopped by PID):

- **mock**: `bench/mock_openai.py`, an OpenAI-compatible server on raw asyncio with
  fixed answers (8 tokens), streams with a fixed TTFT (`--ttft-ms`, then a token every
  `--itl-ms`), and vLLM's load gauges on `/metrics`;
- **litellm**: LiteLLM's proxy (`litellm --num_workers 2`, no database, a master key,
  its defaults otherwise) from its own venv (`--litellm-venv`; `--install-litellm`
  creates it under the temp dir and pip-installs `litellm[proxy]` into it), its one
  model an `openai/` model on the mock;
- **rtcts**: `rtcts run` as `make run` starts it (local Ray, embedded Redis, the
  Stripe emulator, HAProxy on the public port when a haproxy binary is found), with
  `bench/vs_litellm_policy.yaml`: the default policy's three models as
  `openai_upstream` on the mock, the pro plan with its limits raised. Every request is
  priced, admitted in Redis, settled and metered (nothing sampled);
- with `--reference` (the default), two bare Ray Serve apps deployed into rtcts's Ray
  and served through the same HAProxy, no rtcts code in the request path: `ref2` (the
  ingress -> a model deployment -> aiohttp to the mock: rtcts's two hops), `ref2-grpc`
  (the same, the handle on Serve's gRPC path instead of its actor calls) and `ref1`
  (the ingress -> aiohttp to the mock: one hop), all on rtcts's HTTP layer
  (`IngressASGI`) with its logging options. Their replicas' CPU counts as `ref`.

Targets measured: `direct` (the mock), `litellm`, `rtcts` (the public port: HAProxy),
`rtcts-proxy` (Serve's HTTP proxy of the same instance, which HAProxy keeps as its
backup server: what a machine without a haproxy binary serves), `ref2`, `ref2-grpc`,
`ref1`.

Load: `wrk` (Debian's package; `apt-get install wrk`) with a Lua script posting the same
chat request (`max_tokens` 8, a Bearer key) on keep-alive connections, threads =
min(2, c); cells of `--duration` s interleaved over targets and concurrencies, the
order rotated each repeat; each figure is the median of the repeats. Streams: an
asyncio client on raw sockets (wrk cannot see the first token), c=`--stream-concurrency`,
timing the first event with non-empty content. Every answer is checked: non-2xx
answers, timeouts and socket errors are counted, and a target with any is flagged.

CPU per request: utime + stime from /proc of every process of each system (the
gateway's process tree; the mock; wrk) over the cell, divided by the requests; "less
idle" subtracts the system's own idle rate (measured before the cells). rtcts's is
split by process (ingress, models, HAProxy, Redis, Ray's own). "other load" is what
processes outside the benchmark kept busy (the machine is shared).

    .venv/bin/python bench/vs_litellm.py --install-litellm        # the first time, ~5 min
    .venv/bin/python bench/vs_litellm.py                          # 10 s cells x 2, ~8 min
    .venv/bin/python bench/vs_litellm.py --duration 5 --repeats 1 --targets direct rtcts
    .venv/bin/python bench/vs_litellm.py --profile /tmp/prof      # + py-spy of rtcts, c=32
    .venv/bin/python bench/vs_litellm.py --save run.json          # the JSON report too
    .venv/bin/python bench/vs_litellm.py --rtcts-root /tmp/wt     # rtcts from another checkout

Ray starts its workers (the Serve replicas, HAProxy under its manager) at nice 15
(`RAY_worker_niceness`); LiteLLM, the mock and wrk run at nice 0. On a machine where
anything else runs, that alone halves rtcts's share of the CPU, so by default the
benchmark runs every system under test at nice 0 (`--keep-nice` leaves Ray's 15).

A benchmark, not a test: it never runs in CI, always exits 0, prints PASS or FAIL per
target. Ray never gets port 6379 (rtcts run starts its own local Ray on free ports).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from procs import cpu_s, descendants  # noqa: E402  (bench/procs.py)
from stats import percentile  # noqa: E402  (bench/stats.py)

RTCTS_KEY = "rtcts-demo-pro"
"""The pro tenant's key in bench/vs_litellm_policy.yaml (sha256 stored there)."""
LITELLM_KEY = "sk-bench-master"
MODEL = "llama-3.1-8b"
MAX_TOKENS = 8
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something short about GPUs."}],
        "max_tokens": MAX_TOKENS,
    },
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {**json.loads(CHAT_BODY), "stream": True, "stream_options": {"include_usage": True}},
    separators=(",", ":"),
).encode()
REF_PREFIXES = {"ref2": "/ref2", "ref2-grpc": "/grpc2", "ref1": "/ref1"}
"""No prefix of another: HAProxy matches route prefixes as path beginnings."""
ALL_TARGETS = ("direct", "litellm", "rtcts", "rtcts-proxy", "ref2", "ref2-grpc", "ref1")
STREAM_TARGETS = ("direct", "litellm", "rtcts", "rtcts-proxy")

TARGET_RPS_RATIO = 5.0
TARGET_RPS_AT = 32
TARGET_P50_FRACTION = 1 / 5
TARGET_P50_AT = 8
TARGET_TTFT_FRACTION = 1 / 3

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


class Child:
    """A process this benchmark started, in its own session (process group = its pid);
    `stop` signals it, waits, then kills its group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, signum: int = signal.SIGTERM, wait_s: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) still running after {wait_s:g} s: SIGKILL")
        # Whatever is left in its group (its own children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def rtcts_kind(pid: int, root: int) -> str:
    """Which part of rtcts a process is, from its title (Ray sets `ray::<actor>`)."""
    if pid == root:
        return "rtcts run"
    cmd = command_line(pid)
    title = cmd.split(" ", 1)[0]
    if title.startswith("ray::"):
        title = title[len("ray::") :]
        head, dot, method = title.rpartition(".")  # a method being run: `Actor.method`
        if dot and method.isidentifier():
            title = head
        if title.startswith("ServeReplica:"):
            app, _, deployment = title[len("ServeReplica:") :].partition(":")
            return f"{app}:{deployment}" if app != "rtcts" else deployment
        return title
    name = title.rsplit("/", 1)[-1]
    if name == "haproxy":
        return "haproxy"
    if name == "redis-server":
        return "redis"
    for part in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py"):
        if part in cmd:
            return part
    if "stripe_emulator" in cmd:
        return "stripe emulator"
    return "other"


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    steal = ticks[7] if len(ticks) > 7 else 0
    return (sum(ticks[:8]) - idle - steal) / CLK_TCK


class CpuMeter:
    """CPU seconds of each system under test, by part: {system: {part: seconds}}. The
    reference apps' replicas run in rtcts's Ray but count as a system of their own, `ref`."""

    def __init__(self, roots: dict[str, int]) -> None:
        self._roots = roots
        self._kinds: dict[int, str] = {}

    def sample(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for system, root in self._roots.items():
            out.setdefault(system, {})
            for pid in descendants(root):
                seconds = cpu_s(pid)
                if seconds is None:
                    continue
                kind, into = system, system
                if system == "rtcts":
                    kind = self._kinds.get(pid) or rtcts_kind(pid, root)
                    if kind not in ("other", "IDLE"):
                        self._kinds[pid] = kind
                    if kind.startswith("bench-"):
                        into = "ref"
                parts = out.setdefault(into, {})
                parts[kind] = parts.get(kind, 0.0) + seconds
        return out

    @staticmethod
    def delta(
        before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        return {
            system: {
                part: max(0.0, after[system].get(part, 0.0) - before.get(system, {}).get(part, 0.0))
                for part in after[system]
            }
            for system in after
        }


def renice_tree(root: int, niceness: int) -> int:
    """Set every process under `root` to `niceness`; how many were changed."""
    changed = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if os.getpriority(os.PRIO_PROCESS, pid) != niceness:
                os.setpriority(os.PRIO_PROCESS, pid, niceness)
                changed += 1
    return changed


# --------------------------------------------------------------------------- starting things


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> int:
    import httpx

    try:
        return httpx.get(url, headers=headers, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return 0


def wait_for(what: str, ready: Callable[[], bool], child: Child | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if child is not None and not child.alive():
            raise RuntimeError(f"{what} exited:\n{child.tail()}")
        time.sleep(0.5)
    raise RuntimeError(
        f"{what} not ready after {timeout_s:g} s" + (f":\n{child.tail()}" if child else "")
    )


def start_mock(args: argparse.Namespace, work: Path, children: list[Child]) -> tuple[Child, int]:
    port = free_port()
    child = Child(
        "mock",
        [
            sys.executable,
            str(BENCH / "mock_openai.py"),
            *("--port", str(port), "--tokens", str(MAX_TOKENS)),
            *("--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms)),
        ],
        work / "mock.log",
    )
    children.append(child)  # stopped whatever happens next
    wait_for("mock", lambda: http_get(f"http://127.0.0.1:{port}/health") == 200, child, 30)
    return child, port


def litellm_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def install_litellm(venv: Path, spec: str) -> None:
    """A venv of its own for LiteLLM (its pins must not touch rtcts's)."""
    if not litellm_python(venv).exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log(f"pip install {spec!r} into {venv} (a few minutes)")
    subprocess.run([str(litellm_python(venv)), "-m", "pip", "install", "--quiet", spec], check=True)


def litellm_version(venv: Path) -> str:
    found = subprocess.run(
        [
            str(litellm_python(venv)),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() or "unknown"


def start_litellm(
    args: argparse.Namespace, work: Path, mock_port: int, children: list[Child]
) -> tuple[Child, int]:
    """Start LiteLLM's proxy (not waiting for it: `wait_litellm`)."""
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: sk-mock\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    port = free_port()
    env = {
        **os.environ,
        # Offline machine: no tokenizer download (it blocks requests for ~20 s, then falls
        # back to tiktoken anyway) and the bundled cost map instead of fetching it.
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    env.pop("DATABASE_URL", None)
    child = Child(
        "litellm",
        [
            str(args.litellm_venv / "bin" / "litellm"),
            *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
            *("--num_workers", str(args.litellm_workers)),
            # uvicorn kills a worker that does not answer its health check within 5 s;
            # LiteLLM's imports take longer than that on a busy 2-core machine.
            *("--timeout_worker_healthcheck", "300"),
        ],
        work / "litellm.log",
        env,
        cwd=work,
    )
    children.append(child)
    return child, port


def wait_litellm(child: Child, port: int) -> None:
    wait_for(
        "litellm",
        lambda: http_get(f"http://127.0.0.1:{port}/health/liveliness") == 200,
        child,
        600,
    )


def start_rtcts(
    args: argparse.Namespace, work: Path, mock_port: int, children: list[Child]
) -> tuple[Child, int]:
    policy = work / "policy.yaml"
    text = (BENCH / "vs_litellm_policy.yaml").read_text()
    policy.write_text(
        re.sub(r"upstream_url: \S+", f"upstream_url: http://127.0.0.1:{mock_port}/v1", text)
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RTCTS_"))}
    env.update(
        {
            "RTCTS_POLICY_PATH": str(policy),
            "RTCTS_HTTP_PORT": str(port),
            "RTCTS_DATA_DIR": str(work / "rtcts-data"),
        }
    )
    for key in ("REDIS_URL", "STRIPE_API_KEY", "STRIPE_API_BASE"):
        env.pop(key, None)
    cwd = ROOT
    if args.rtcts_root is not None:  # another checkout (a worktree of an older commit)
        cwd = args.rtcts_root.resolve()
        env["PYTHONPATH"] = str(cwd)  # rtcts run and, through its working directory, Ray's workers
    rtcts = Path(sys.executable).with_name("rtcts")
    child = Child("rtcts", [str(rtcts), "run"], work / "rtcts.log", env, cwd=cwd)
    children.append(child)
    wait_for("rtcts", lambda: http_get(f"http://127.0.0.1:{port}/readyz") == 200, child, 300)
    return child, port


def ray_env(root: int, name: str) -> str | None:
    """An environment variable as the Ray processes under `root` got it (rtcts run sets
    Serve's variables in its own environment just before it starts Ray)."""
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:
            continue
        for entry in entries:
            key, _, value = entry.partition(b"=")
            if key.decode(errors="replace") == name:
                return value.decode(errors="replace")
    return None


def gcs_address(root: int) -> str | None:
    """The GCS address of the Ray under `root`, as its raylet was given it."""
    for pid in descendants(root):
        found = re.search(r"--gcs-address=(\S+)", command_line(pid))
        if found:
            return found.group(1)
    return None


# --------------------------------------------------------------------------- reference apps


def reference_apps(mock_url: str) -> dict[str, Any]:
    """`ref2`: ingress -> model deployment -> aiohttp to the mock; `ref1`: ingress ->
    aiohttp to the mock. rtcts's HTTP layer (`IngressASGI`) and logging options, no rtcts
    logic. Built in a function so that Ray pickles the classes by value."""
    import aiohttp
    from fastapi import FastAPI
    from ray import serve
    from starlette.responses import Response

    from serve_app.builder import deployment_logging_options
    from serve_app.ingress.app import MAX_BODY_BYTES
    from serve_app.ingress.asgi import IngressASGI, read_body

    logging_options = deployment_logging_options(False)
    chat_path = CHAT_PATH

    headers = {"content-type": "application/json"}

    class Upstream:
        """The model deployment of ref2: one aiohttp session (keep-alive pool) to the mock."""

        def __init__(self) -> None:
            self._session: aiohttp.ClientSession | None = None

        async def generate(self, body: bytes) -> bytes:
            self._session = self._session or aiohttp.ClientSession(mock_url)
            async with self._session.post(chat_path, data=body, headers=headers) as response:
                return await response.read()

    class TwoHops:
        def __init__(self, model: Any, by_reference: bool = True) -> None:
            # by_reference: Serve's actor-call path (what a handle made in a process that
            # imported Serve outside fast mode uses); False: its gRPC path.
            self._model = model.options(method_name="generate", _by_reference=by_reference)

        def __serve_build_asgi_app__(self) -> IngressASGI:
            return IngressASGI(FastAPI(docs_url=None), {("POST", chat_path): self.chat})

        async def chat(self, scope: Any, receive: Any) -> Response:
            body = await read_body(scope, receive, MAX_BODY_BYTES)
            answer: bytes = await self._model.remote(body)
            return Response(answer, media_type="application/json")

    class OneHop:
        def __init__(self) -> None:
            self._session: aiohttp.ClientSession | None = None

        def __serve_build_asgi_app__(self) -> IngressASGI:
            return IngressASGI(FastAPI(docs_url=None), {("POST", chat_path): self.chat})

        async def chat(self, scope: Any, receive: Any) -> Response:
            body = await read_body(scope, receive, MAX_BODY_BYTES)
            self._session = self._session or aiohttp.ClientSession(mock_url)
            async with self._session.post(chat_path, data=body, headers=headers) as response:
                answer = await response.read()
            return Response(answer, media_type="application/json")

    options = {"max_ongoing_requests": 1024, "ray_actor_options": {"num_cpus": 0}}
    model = (
        serve.deployment(Upstream)  # type: ignore[attr-defined]
        .options(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0}, **logging_options)
        .bind()
    )
    two = serve.deployment(serve.ingress()(TwoHops)).options(  # type: ignore[attr-defined]
        **options, **logging_options
    )
    one = serve.deployment(serve.ingress()(OneHop)).options(  # type: ignore[attr-defined]
        **options, **logging_options
    )
    return {
        "ref2": two.bind(model),
        "ref2-grpc": two.bind(model, by_reference=False),
        "ref1": one.bind(),
    }


def deploy_references(address: str, mock_url: str) -> None:
    """(In a subprocess) join rtcts's Ray and deploy the reference apps; Serve keeps them
    after this driver leaves."""
    import ray
    from ray import serve

    ray.init(address=address, namespace="rtcts-bench", log_to_driver=False)
    for name, app in reference_apps(mock_url).items():
        serve.run(app, name=f"bench-{name}", route_prefix=REF_PREFIXES[name])
    ray.shutdown()


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    prefix: str = ""
    key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}{CHAT_PATH}"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        return headers


@dataclass
class Cell:
    target: str
    kind: str
    """chat (wrk) or stream (the asyncio client)"""
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    cpu_ms_per_req: dict[str, float] = field(default_factory=dict)
    """By system: rtcts, litellm, mock, wrk (the client)."""
    cpu_net_ms_per_req: float = 0.0
    """The target's own system, less that system's idle CPU over the cell."""
    rtcts_parts_ms_per_req: dict[str, float] = field(default_factory=dict)
    other_load_cores: float = 0.0
    first_error: str | None = None


def check_answer(target: Target) -> None:
    """One request, its answer checked: 200, the completion's 8 tokens; from rtcts, a
    served pricing decision. (wrk counts non-2xx answers; this checks the body once.)"""
    import httpx

    response = httpx.post(target.url, content=CHAT_BODY, headers=target.headers(), timeout=300)
    problem = None
    if response.status_code != 200:
        problem = f"status {response.status_code}: {response.text[:300]}"
    elif response.json().get("usage", {}).get("completion_tokens") != MAX_TOKENS:
        problem = f"unexpected answer: {response.text[:300]}"
    elif target.key == RTCTS_KEY and response.headers.get("x-rtcts-decision") is None:
        problem = "no x-rtcts-decision header"
    if problem is not None:
        raise RuntimeError(f"{target.name} ({target.url}): {problem}")
    decision = response.headers.get("x-rtcts-decision")
    log(f"{target.name}: answers" + (f" (decision {decision})" if decision else ""))


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"status":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"timeout":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_script(target: Target, work: Path) -> Path:
    path = work / f"wrk-{target.name}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {target.key}"' if target.key else ""
    path.write_text(WRK_SCRIPT.format(body=CHAT_BODY, auth=auth))
    return path


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class Runner:
    """Runs cells against the targets and accounts the CPU of every system."""

    def __init__(
        self,
        targets: dict[str, Target],
        meter: CpuMeter,
        work: Path,
        owner: dict[str, tuple[str, ...]],
    ) -> None:
        self.targets = targets
        self.meter = meter
        self.work = work
        self.owner = owner
        """target -> the systems serving it (direct: mock; rtcts-proxy: rtcts; ref2: rtcts's
        Ray and the reference apps)"""
        self.idle_s_per_s: dict[str, float] = {}

    def measure_idle(self, seconds: float) -> dict[str, dict[str, float]]:
        before, busy = self.meter.sample(), machine_busy_s()
        time.sleep(seconds)
        delta = CpuMeter.delta(before, self.meter.sample())
        others = machine_busy_s() - busy - sum(sum(p.values()) for p in delta.values())
        self.idle_s_per_s = {s: sum(p.values()) / seconds for s, p in delta.items()}
        log(
            "idle CPU (ms per s): "
            + ", ".join(f"{s} {v * 1000:.0f}" for s, v in self.idle_s_per_s.items())
            + f"; other processes {max(0.0, others) / seconds:.2f} cores"
        )
        return {s: {k: v / seconds * 1000 for k, v in p.items()} for s, p in delta.items()}

    def _account(
        self,
        cell: Cell,
        before: dict[str, dict[str, float]],
        busy_before: float,
        client_s: float,
        elapsed: float,
    ) -> None:
        delta = CpuMeter.delta(before, self.meter.sample())
        done = max(1, cell.requests)
        per_system = {s: sum(p.values()) for s, p in delta.items()}
        cell.cpu_ms_per_req = {s: round(v * 1000 / done, 3) for s, v in per_system.items()}
        cell.cpu_ms_per_req["client"] = round(client_s * 1000 / done, 3)
        own = sum(
            per_system.get(system, 0.0) - self.idle_s_per_s.get(system, 0.0) * elapsed
            for system in self.owner[cell.target]
        )
        cell.cpu_net_ms_per_req = round(own * 1000 / done, 3)
        node = {**delta.get("rtcts", {}), **delta.get("ref", {})}
        cell.rtcts_parts_ms_per_req = {
            k: round(v * 1000 / done, 3) for k, v in node.items() if v > 0
        }
        others = machine_busy_s() - busy_before - sum(per_system.values()) - client_s
        cell.other_load_cores = round(max(0.0, others) / elapsed, 2)

    def chat_cell(self, name: str, concurrency: int, duration_s: float) -> Cell:
        target = self.targets[name]
        script = wrk_script(target, self.work)
        threads = min(2, concurrency)
        command = [
            "wrk",
            *("-t", str(threads), "-c", str(concurrency), "-d", f"{duration_s:g}s"),
            *("--timeout", "30s", "-s", str(script), target.url),
        ]
        before, busy, client = self.meter.sample(), machine_busy_s(), children_cpu_s()
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        client_s = children_cpu_s() - client
        found = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
        result = json.loads(found.group(1))
        errors = sum(result[k] for k in ("status", "connect", "read", "write", "timeout"))
        seconds = result["duration_us"] / 1e6
        ok = max(0, result["requests"] - result["status"])
        cell = Cell(
            target=name,
            kind="chat",
            concurrency=concurrency,
            requests=result["requests"],
            errors=errors,
            rps=round(ok / seconds, 1),
            p50_ms=result["p50_us"] / 1000,
            p90_ms=result["p90_us"] / 1000,
            p99_ms=result["p99_us"] / 1000,
            first_error=(
                None
                if not errors
                else ", ".join(
                    f"{k} {result[k]}"
                    for k in ("status", "connect", "read", "write", "timeout")
                    if result[k]
                )
            ),
        )
        self._account(cell, before, busy, client_s, elapsed)
        return cell

    def stream_cell(self, name: str, concurrency: int, duration_s: float) -> Cell:
        target = self.targets[name]
        before, busy, client = self.meter.sample(), machine_busy_s(), self_cpu_s()
        started = time.perf_counter()
        ttfts, totals, errors = asyncio.run(stream_load(target, concurrency, duration_s))
        elapsed = time.perf_counter() - started
        client_s = self_cpu_s() - client
        cell = Cell(
            target=name,
            kind="stream",
            concurrency=concurrency,
            requests=len(totals),
            errors=len(errors),
            rps=round(len(totals) / elapsed, 1),
            p50_ms=round(percentile(totals, 50) * 1000, 3),
            p90_ms=round(percentile(totals, 90) * 1000, 3),
            p99_ms=round(percentile(totals, 99) * 1000, 3),
            ttft_p50_ms=round(percentile(ttfts, 50) * 1000, 3),
            ttft_p99_ms=round(percentile(ttfts, 99) * 1000, 3),
            first_error=errors[0] if errors else None,
        )
        self._account(cell, before, busy, client_s, elapsed)
        return cell


FIRST_CONTENT = re.compile(rb'"content":\s*"[^"]')


async def stream_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target
) -> tuple[float, float]:
    """One streamed request on a keep-alive connection: (ttft, total) seconds. TTFT is
    the first event with non-empty content (rtcts sends an empty role chunk first)."""
    head = [f"POST {target.prefix}{CHAT_PATH} HTTP/1.1", f"host: 127.0.0.1:{target.port}"]
    head += [f"{k}: {v}" for k, v in target.headers().items()]
    head.append(f"content-length: {len(STREAM_BODY)}")
    began = time.perf_counter()
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + STREAM_BODY)
    status_and_headers = await reader.readuntil(b"\r\n\r\n")
    status = int(status_and_headers.split(b" ", 2)[1])
    lower = status_and_headers.lower()
    ttft: float | None = None
    body = b""
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            if ttft is None and FIRST_CONTENT.search(chunk):
                ttft = time.perf_counter() - began
            body += chunk[:-2]
    else:
        found = re.search(rb"content-length:\s*(\d+)", lower)
        body = await reader.readexactly(int(found.group(1)) if found else 0)
    total = time.perf_counter() - began
    if status != 200:
        raise RuntimeError(f"status {status}: {body[:200]!r}")
    if b"data: [DONE]" not in body:
        raise RuntimeError(f"stream without [DONE]: {body[-200:]!r}")
    if ttft is None:
        raise RuntimeError("stream without content")
    return ttft, total


async def stream_load(
    target: Target, concurrency: int, duration_s: float
) -> tuple[list[float], list[float], list[str]]:
    ttfts: list[float] = []
    totals: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while time.perf_counter() < deadline:
                try:
                    ttft, total = await stream_once(reader, writer, target)
                except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                    errors.append(repr(exc))
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                    continue
                ttfts.append(ttft)
                totals.append(total)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, totals, errors


def median_cell(cells: list[Cell]) -> Cell:
    def med(values: Iterator[float]) -> float:
        return round(statistics.median(values), 3)

    first = cells[0]
    systems = sorted({s for c in cells for s in c.cpu_ms_per_req})
    parts = sorted({s for c in cells for s in c.rtcts_parts_ms_per_req})
    return Cell(
        target=first.target,
        kind=first.kind,
        concurrency=first.concurrency,
        requests=sum(c.requests for c in cells),
        errors=sum(c.errors for c in cells),
        rps=round(statistics.median(c.rps for c in cells), 1),
        p50_ms=med(c.p50_ms for c in cells),
        p90_ms=med(c.p90_ms for c in cells),
        p99_ms=med(c.p99_ms for c in cells),
        ttft_p50_ms=None if first.ttft_p50_ms is None else med(c.ttft_p50_ms or 0.0 for c in cells),
        ttft_p99_ms=None if first.ttft_p99_ms is None else med(c.ttft_p99_ms or 0.0 for c in cells),
        cpu_ms_per_req={s: med(c.cpu_ms_per_req.get(s, 0.0) for c in cells) for s in systems},
        cpu_net_ms_per_req=med(c.cpu_net_ms_per_req for c in cells),
        rtcts_parts_ms_per_req={
            p: med(c.rtcts_parts_ms_per_req.get(p, 0.0) for c in cells) for p in parts
        },
        other_load_cores=med(c.other_load_cores for c in cells),
        first_error=next((c.first_error for c in cells if c.first_error), None),
    )


# --------------------------------------------------------------------------- profiling


def profile_rtcts(
    runner: Runner, rtcts_root: int, seconds: float, out_dir: Path, concurrency: int
) -> dict[str, Any]:
    """py-spy (raw collapsed stacks, --nonblocking) of rtcts's ingress and model replicas
    during one extra chat cell on the public port; the top frames by own samples."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    for pid in descendants(rtcts_root):
        kind = rtcts_kind(pid, rtcts_root)
        if kind in ("Ingress", MODEL):
            path = out_dir / f"{kind}.txt"
            procs.append(
                (
                    kind,
                    subprocess.Popen(
                        [
                            py_spy,
                            "record",
                            "--nonblocking",
                            "--format",
                            "raw",
                            "-r",
                            "200",
                            "-d",
                            str(int(seconds)),
                            "-p",
                            str(pid),
                            "-o",
                            str(path),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                    path,
                )
            )
    time.sleep(0.5)
    cell = runner.chat_cell("rtcts", concurrency, seconds - 1)
    summary: dict[str, Any] = {"cell": asdict(cell)}
    for kind, proc, path in procs:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        summary[kind] = top_frames(path)
    return summary


def top_frames(path: Path, limit: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares of the frames in a raw py-spy profile."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:limit]
        return [(name, round(100 * n / max(1, total), 1)) for name, n in ranked]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive)}


# --------------------------------------------------------------------------- report


def verdicts(cells: dict[tuple[str, str, int], Cell]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rt, ll = (
        cells.get(("chat", "rtcts", TARGET_RPS_AT)),
        cells.get(("chat", "litellm", TARGET_RPS_AT)),
    )
    ratio = rt.rps / ll.rps if rt and ll and ll.rps else None
    out.append(
        {
            "target": f"rtcts >= {TARGET_RPS_RATIO:g}x LiteLLM req/s at c={TARGET_RPS_AT}",
            "value": None if ratio is None else round(ratio, 2),
            "pass": ratio is not None and ratio >= TARGET_RPS_RATIO,
            "summary": "not measured"
            if ratio is None or rt is None or ll is None
            else f"{ratio:.2f}x ({rt.rps:.0f} vs {ll.rps:.0f} req/s)",
        }
    )
    direct = cells.get(("chat", "direct", TARGET_P50_AT))
    rt, ll = (
        cells.get(("chat", "rtcts", TARGET_P50_AT)),
        cells.get(("chat", "litellm", TARGET_P50_AT)),
    )
    if direct and rt and ll:
        added_rt, added_ll = rt.p50_ms - direct.p50_ms, ll.p50_ms - direct.p50_ms
        fraction = added_rt / added_ll if added_ll > 0 else None
        out.append(
            {
                "target": f"rtcts added p50 <= {TARGET_P50_FRACTION:.2f} of LiteLLM's"
                f" at c={TARGET_P50_AT}",
                "value": None if fraction is None else round(fraction, 3),
                "pass": fraction is not None and fraction <= TARGET_P50_FRACTION,
                "summary": f"+{added_rt:.2f} ms vs +{added_ll:.2f} ms"
                + ("" if fraction is None else f" ({fraction:.2f} of it)"),
            }
        )
    direct = cells.get(("stream", "direct", TARGET_P50_AT))
    rt, ll = (
        cells.get(("stream", "rtcts", TARGET_P50_AT)),
        cells.get(("stream", "litellm", TARGET_P50_AT)),
    )
    if direct and rt and ll and direct.ttft_p50_ms is not None:
        added_rt = (rt.ttft_p50_ms or 0.0) - direct.ttft_p50_ms
        added_ll = (ll.ttft_p50_ms or 0.0) - direct.ttft_p50_ms
        fraction = added_rt / added_ll if added_ll > 0 else None
        out.append(
            {
                "target": f"rtcts added TTFT p50 <= {TARGET_TTFT_FRACTION:.2f} of LiteLLM's,"
                f" streaming c={TARGET_P50_AT}",
                "value": None if fraction is None else round(fraction, 3),
                "pass": fraction is not None and fraction <= TARGET_TTFT_FRACTION,
                "summary": f"+{added_rt:.2f} ms vs +{added_ll:.2f} ms"
                + ("" if fraction is None else f" ({fraction:.2f} of it)"),
            }
        )
    return out


def own_cpu(cell: Cell, owner: dict[str, tuple[str, ...]]) -> float:
    """CPU per request of the target's systems plus the mock's (the gateway's processes
    and the upstream they call; the mock alone for direct)."""
    systems = {*owner[cell.target], "mock"}
    return sum(cell.cpu_ms_per_req.get(system, 0.0) for system in systems)


def all_cpu(cell: Cell) -> float:
    """CPU per request of every process of the benchmark (all systems, idle ones too, and
    the load generator)."""
    return sum(cell.cpu_ms_per_req.values())


def table(cells: dict[tuple[str, str, int], Cell], owner: dict[str, tuple[str, ...]]) -> str:
    names = [n for n in ALL_TARGETS if any(k[1] == n for k in cells)]
    concurrencies = sorted({k[2] for k in cells if k[0] == "chat"})
    lines = [
        "| metric | c | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]

    def row(label: str, c: int, value: Callable[[Cell], str], kind: str = "chat") -> None:
        values = [value(cells[(kind, n, c)]) if (kind, n, c) in cells else "-" for n in names]
        lines.append(f"| {label} | {c} | " + " | ".join(values) + " |")

    for c in concurrencies:
        row("req/s", c, lambda x: f"{x.rps:,.0f}")
    for c in concurrencies:
        row("p50 ms", c, lambda x: f"{x.p50_ms:.2f}")
    for c in concurrencies:
        row("p99 ms", c, lambda x: f"{x.p99_ms:.2f}")
    for c in concurrencies:
        direct = cells.get(("chat", "direct", c))
        row(
            "added p50 ms",
            c,
            lambda x, d=direct: "-" if d is None else f"{x.p50_ms - d.p50_ms:+.2f}",  # type: ignore[misc]
        )
    for c in concurrencies:
        row("CPU ms/req (system + mock)", c, lambda x: f"{own_cpu(x, owner):.2f}")
    for c in concurrencies:
        row("CPU ms/req less idle (system)", c, lambda x: f"{x.cpu_net_ms_per_req:.2f}")
    for c in concurrencies:
        row("CPU ms/req, every process", c, lambda x: f"{all_cpu(x):.2f}")
    for c in concurrencies:
        row("client CPU ms/req", c, lambda x: f"{x.cpu_ms_per_req.get('client', 0.0):.3f}")
    for c in concurrencies:
        row("other load (cores)", c, lambda x: f"{x.other_load_cores:.2f}")
    stream_cs = sorted({k[2] for k in cells if k[0] == "stream"})
    for c in stream_cs:
        direct = cells.get(("stream", "direct", c))
        row("stream req/s", c, lambda x: f"{x.rps:,.0f}", "stream")
        row("stream TTFT p50 ms", c, lambda x: f"{x.ttft_p50_ms or 0:.2f}", "stream")
        row("stream TTFT p99 ms", c, lambda x: f"{x.ttft_p99_ms or 0:.2f}", "stream")
        row(
            "stream TTFT added p50 ms",
            c,
            lambda x, d=direct: (
                "-"  # type: ignore[misc]
                if d is None or d.ttft_p50_ms is None
                else f"{(x.ttft_p50_ms or 0) - d.ttft_p50_ms:+.2f}"
            ),
            "stream",
        )
        row("stream total p50 ms", c, lambda x: f"{x.p50_ms:.2f}", "stream")
        row("stream CPU ms/req (system + mock)", c, lambda x: f"{own_cpu(x, owner):.2f}", "stream")
    return "\n".join(lines)


def rtcts_split(cells: dict[tuple[str, str, int], Cell]) -> str:
    """rtcts's CPU per request by process, for each rtcts target and concurrency."""
    keys = [k for k in cells if k[1] in ("rtcts", "rtcts-proxy", *REF_PREFIXES)]
    if not keys:
        return ""
    parts = sorted({p for k in keys for p in cells[k].rtcts_parts_ms_per_req})
    heads = [f"{k[1]} {k[0]} c={k[2]}" for k in keys]
    lines = ["| process | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(keys)]
    for part in parts:
        values = [cells[k].rtcts_parts_ms_per_req.get(part, 0.0) for k in keys]
        if max(values) >= 0.02:
            lines.append(f"| {part} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    totals = [sum(cells[k].cpu_ms_per_req.get(s, 0.0) for s in ("rtcts", "ref")) for k in keys]
    lines.append("| **the whole Ray node** | " + " | ".join(f"**{v:.2f}**" for v in totals) + " |")
    return "\n".join(lines)


def git_state(root: Path) -> str:
    """The commit of rtcts's checkout, and whether its request path had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "serve_app/models", "serve_app/ingress"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return commit + (" + uncommitted serve_app/models or ingress changes" if dirty else "")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; medians are kept")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--stream-concurrency", type=int, nargs="*", default=[8])
    parser.add_argument("--targets", nargs="+", choices=ALL_TARGETS, default=list(ALL_TARGETS))
    parser.add_argument("--no-reference", action="store_true", help="no reference apps")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per target, c=8")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU sampling")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="the mock's streamed TTFT")
    parser.add_argument("--itl-ms", type=float, default=2.0, help="the mock's time per token")
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rtcts-bench-litellm-venv",
        help="LiteLLM's own venv (default: %(default)s)",
    )
    parser.add_argument("--install-litellm", action="store_true", help="create it / pip install")
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument(
        "--rtcts-root",
        type=Path,
        help="run rtcts from this checkout (e.g. `git worktree add /tmp/wt <commit>`)",
    )
    parser.add_argument(
        "--keep-nice", action="store_true", help="leave Ray's workers at nice 15 (Ray's default)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy rtcts's replicas at c=32 into DIR")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--save", type=Path, help="also write the JSON report here")
    parser.add_argument("--deploy-reference", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@dataclass
class Systems:
    """What runs: the targets, each system's root process, which system serves a target."""

    targets: dict[str, Target] = field(default_factory=dict)
    roots: dict[str, int] = field(default_factory=dict)
    owner: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rtcts: Child | None = None


def start_systems(
    args: argparse.Namespace,
    wanted: list[str],
    work: Path,
    children: list[Child],
    info: dict[str, Any],
) -> Systems:
    """The mock, then LiteLLM and rtcts starting side by side, then the reference apps."""
    systems = Systems()
    mock, mock_port = start_mock(args, work, children)
    mock_url = f"http://127.0.0.1:{mock_port}"
    systems.targets["direct"] = Target("direct", mock_port)
    systems.roots["mock"] = mock.pid
    systems.owner["direct"] = ("mock",)
    litellm: tuple[Child, int] | None = None
    if "litellm" in wanted:
        info["litellm"] = litellm_version(args.litellm_venv)
        log(f"starting LiteLLM {info['litellm']} ({args.litellm_workers} workers) ...")
        litellm = start_litellm(args, work, mock_port, children)
    if any(t.startswith(("rtcts", "ref")) for t in wanted):
        log("starting rtcts run (local Ray, Redis, Stripe emulator, HAProxy) ...")
        rtcts, port = start_rtcts(args, work, mock_port, children)
        systems.rtcts = rtcts
        systems.roots["rtcts"] = rtcts.pid
        systems.targets["rtcts"] = Target("rtcts", port, key=RTCTS_KEY)
        systems.owner.update({"rtcts": ("rtcts",), "rtcts-proxy": ("rtcts",)})
        systems.owner.update(dict.fromkeys(REF_PREFIXES, ("rtcts", "ref")))
        info["rtcts_public_port"] = next(
            (
                line.split(":", 1)[1].strip()
                for line in rtcts.tail(10_000).splitlines()
                if "public port:" in line
            ),
            "?",
        )
        fallback = ray_env(rtcts.pid, "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")
        if fallback is not None:
            systems.targets["rtcts-proxy"] = Target("rtcts-proxy", int(fallback), key=RTCTS_KEY)
        elif "rtcts-proxy" in wanted:
            log("no HAProxy on the public port: the public port is Serve's proxy already")
        if any(t in REF_PREFIXES for t in wanted):
            address = gcs_address(rtcts.pid)
            if address is None:
                raise RuntimeError("rtcts's Ray GCS not found")
            log(f"deploying the reference apps into rtcts's Ray ({address})")
            subprocess.run(
                [sys.executable, __file__, "--deploy-reference", address, mock_url],
                check=True,
                timeout=300,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"},
            )
            for name, prefix in REF_PREFIXES.items():
                systems.targets[name] = Target(name, port, prefix=prefix)
        if not args.keep_nice:
            changed = renice_tree(rtcts.pid, 0)
            log(f"rtcts: {changed} processes (Ray's workers, HAProxy) from nice 15 to 0")
    if litellm is not None:
        wait_litellm(*litellm)
        systems.roots["litellm"] = litellm[0].pid
        systems.targets["litellm"] = Target("litellm", litellm[1], key=LITELLM_KEY)
        systems.owner["litellm"] = ("litellm",)
    info["nice"] = "Ray's workers at 15 (--keep-nice)" if args.keep_nice else "all at nice 0"
    return systems


Runs = dict[tuple[str, str, int], list[Cell]]


def run_cells(runner: Runner, args: argparse.Namespace, order: list[str]) -> Runs:
    """Chat cells over every target and concurrency, then stream cells, per repeat; the
    order of the targets rotates each repeat so that drift hits them all alike."""
    runs: Runs = {}
    streamed = [t for t in order if t in STREAM_TARGETS]
    for repeat in range(args.repeats):
        for concurrency in args.concurrency:
            shift = repeat % len(order)
            for name in order[shift:] + order[:shift]:
                cell = runner.chat_cell(name, concurrency, args.duration)
                runs.setdefault(("chat", name, concurrency), []).append(cell)
                log(
                    f"[{repeat + 1}/{args.repeats}] {name:<12} c={concurrency:<3}"
                    f" {cell.rps:9.1f} req/s  p50 {cell.p50_ms:8.2f} ms  p99 {cell.p99_ms:8.2f}"
                    f" ms  cpu {own_cpu(cell, runner.owner):6.2f} ms/req  errors {cell.errors}"
                    f"  other {cell.other_load_cores:.2f} cores"
                )
        for concurrency in args.stream_concurrency if streamed else []:
            shift = repeat % len(streamed)
            for name in streamed[shift:] + streamed[:shift]:
                cell = runner.stream_cell(name, concurrency, args.duration)
                runs.setdefault(("stream", name, concurrency), []).append(cell)
                log(
                    f"[{repeat + 1}/{args.repeats}] {name:<12} stream c={concurrency:<3}"
                    f" {cell.rps:7.1f} req/s  TTFT p50 {cell.ttft_p50_ms:7.2f} ms"
                    f"  total p50 {cell.p50_ms:7.2f} ms  errors {cell.errors}"
                    f"  other {cell.other_load_cores:.2f} cores"
                )
    return runs


def print_report(report: dict[str, Any], cells: dict[tuple[str, str, int], Cell]) -> None:
    info, args, owner = report["machine"], report["args"], report["owner"]
    print(
        f"rtcts vs LiteLLM, {info['date']}, {info['cpus']} CPUs, code {info['code']},"
        f" LiteLLM {info.get('litellm', '-')}, {info['wrk']}; {args['duration']:g} s cells x"
        f" {args['repeats']} (medians); {info['nice']}; load average {info['loadavg_start']}"
        f" -> {info['loadavg_end']}; {info['wall_s']} s"
    )
    print(f"rtcts public port: {info.get('rtcts_public_port', '-')}")
    idle = report["idle_cpu_ms_per_s"]
    print("idle CPU, ms per s: " + "; ".join(f"{s} {sum(p.values()):.0f}" for s, p in idle.items()))
    parts = sorted(idle.get("rtcts", {}).items(), key=lambda kv: -kv[1])
    print("  rtcts idle by process: " + ", ".join(f"{k} {v:.0f}" for k, v in parts if v >= 1))
    print()
    print(table(cells, owner))
    split = rtcts_split(cells)
    if split:
        print("\nrtcts's Ray node (reference apps included), CPU ms per request by process:\n")
        print(split)
    errors = [c for c in cells.values() if c.errors]
    print(f"\nerrors: {sum(c.errors for c in errors)}")
    for cell in errors:
        print(f"  {cell.target} {cell.kind} c={cell.concurrency}: {cell.first_error}")
    profile = report["profile"]
    for kind in ("Ingress", MODEL) if profile else ():
        if kind in profile:
            print(f"\npy-spy {kind}: {profile[kind]['samples']} samples; top self %:")
            for name, pct in profile[kind]["self_pct"][:15]:
                print(f"  {pct:5.1f}  {name}")
    print()
    for verdict in report["verdicts"]:
        print(f"{'PASS' if verdict['pass'] else 'FAIL'}  {verdict['target']}: {verdict['summary']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.deploy_reference:
        deploy_references(*args.deploy_reference)
        return 0
    if shutil.which("wrk") is None:
        print("vs_litellm: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 0
    wanted = list(args.targets)
    if args.no_reference:
        wanted = [t for t in wanted if t not in REF_PREFIXES]
    if args.install_litellm:
        install_litellm(args.litellm_venv, args.litellm_spec)
    if "litellm" in wanted and not (args.litellm_venv / "bin" / "litellm").exists():
        log(f"no LiteLLM in {args.litellm_venv} (--install-litellm): measuring without it")
        wanted.remove("litellm")

    work = Path(tempfile.mkdtemp(prefix="rtcts-vs-litellm-"))
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": git_state(args.rtcts_root or ROOT),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
    }
    children: list[Child] = []
    started_at = time.monotonic()
    profile = None
    try:
        systems = start_systems(args, wanted, work, children, info)
        order = [t for t in wanted if t in systems.targets]
        runner = Runner(systems.targets, CpuMeter(systems.roots), work, systems.owner)
        for name in order:
            check_answer(systems.targets[name])
            log(f"warm-up {name} ({args.warmup:g} s at c=8)")
            runner.chat_cell(name, 8, args.warmup)
        idle = runner.measure_idle(args.idle)
        runs = run_cells(runner, args, order)
        if args.profile is not None and systems.rtcts is not None:
            log(f"profiling rtcts at c=32 into {args.profile}")
            profile = profile_rtcts(runner, systems.rtcts.pid, args.duration, args.profile, 32)
    finally:
        for child in reversed(children):
            log(f"stopping {child.name} (pid {child.pid})")
            child.stop(signal.SIGINT if child.name == "rtcts" else signal.SIGTERM, 30)
        if args.keep_logs:
            log(f"logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    cells = {key: median_cell(found) for key, found in runs.items()}
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = round(time.monotonic() - started_at, 1)
    report: dict[str, Any] = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "owner": {k: list(v) for k, v in systems.owner.items()},
        "idle_cpu_ms_per_s": idle,
        "cells": [asdict(c) for c in cells.values()],
        "verdicts": verdicts(cells),
        "runs": [asdict(c) for found in runs.values() for c in found],
        "profile": profile,
    }
    if args.save:
        args.save.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
