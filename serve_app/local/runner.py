"""`rtcts run`: local Ray (or `RAY_ADDRESS`), an embedded Redis (or `REDIS_URL`), the app
on http://127.0.0.1:8000, until Ctrl-C; then everything rtcts started is stopped.

Fast mode: Ray Serve's throughput-optimized mode (direct ingress, gRPC between handles,
user code on the replica's event loop) is switched on for a Ray that rtcts starts
itself; a cluster joined through `RAY_ADDRESS` keeps its own setting.

**Start-up** prints each part as it comes up and how long it took (`startup.py`), and
says "serving" once the app is ready (`GET /readyz`, asked through the public port:
`serve_app/ingress/readiness.py` has the rule), not when every model has finished
starting: a model that may scale to zero is not waited for. The simulated models' cold
starts are shortened by `cold_start_scale` (`--cold-start-scale`, 0.05 by default for
`rtcts run`); the pricing still sees the policy's cold start.

**Stop** (the rule in docs/decisions.md). Ctrl-C, SIGTERM or SIGHUP, at any moment:
  1. during start-up, the step under way is abandoned (`StopRequested`);
  2. Ray, with the app, at most `RAY_STOP_S` (`_stop_ray`; the ingress writes its
     meters to Redis every 10 ms, so a stop loses at most that much of them; requests
     still running are cut, not billed, their reservations left to expire);
  3. the emulator and Redis (after the app: meters flush into Redis), then every
     process still carrying this instance's mark (`instance.Started.stop_all`: HAProxy,
     a stuck actor), then the paths it made and its run file.
  A second Ctrl-C, or `stopping.STOP_LIMIT_S` (13 s) after the first, forces it: every
  marked process is killed at once and `rtcts run` exits 1 (`stopping.py`). If
  `rtcts run` itself is killed (SIGKILL too), the reaper (`reaper.py`, in a session of
  its own) does step 3; the embedded Redis and the emulator also get SIGTERM from the
  kernel when it dies (`PR_SET_PDEATHSIG`), Ray's own processes are tied to it by Ray.
  A new `rtcts run` cleans up what a dead one left in its data directory
  (`instance.RunFile.claim`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from serve_app.errors import LocalServiceError
from serve_app.local.instance import MARK_ENV, RunFile, Started, new_mark
from serve_app.local.public_port import plan_public_port
from serve_app.local.reaper import Reaper
from serve_app.local.redis_server import EmbeddedRedis, masked_url
from serve_app.local.startup import Progress, wait_ready
from serve_app.local.stopping import Stopper, StopRequested
from serve_app.policy import LoadedPolicy
from serve_app.policy.schema import BackendKind
from serve_app.settings import Settings, SettingsError

APP_NAME = "rtcts"
DEMO_KEYS = {"rtcts-demo-pro": "demo-pro", "rtcts-demo-basic": "demo-basic"}
"""Plain demo keys of policies/default.yaml; the first one is used in the printed curl."""
DEFAULT_COLD_START_SCALE = 0.05
"""`rtcts run`'s default: a simulated 60 s cold start takes 3 s (the pricing sees 60 s)."""
APP_STOP_S = 5.0
RAY_STOP_S = 6.0
SWEEP_GRACE_S = 2.0
FAILURE_CHECK_S = 2.0


@dataclass(frozen=True)
class Running:
    url: str
    redis_url: str
    redis_embedded: bool
    dashboard_url: str | None
    stripe_url: str | None
    stripe_emulated: bool
    public_port: str = ""
    """How the public port is served (HAProxy, or Serve's HTTP proxy and why)."""
    ready_after_s: float | None = None
    """Seconds from the start of `rtcts run` until the app was ready."""


def serve_locally(
    settings: Settings,
    loaded: LoadedPolicy,
    *,
    time_scale: float,
    cold_start_scale: float = 1.0,
    stop: threading.Event | None = None,
    on_ready: Callable[[Running], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Start everything (printing progress through `say`), call `on_ready(Running)`, serve
    until `stop` is set or a signal comes, then stop everything (the module docstring)."""
    say = say or (lambda line: None)
    progress = Progress(say)
    stop = stop or threading.Event()
    started = Started(new_mark(), RunFile(settings.data_dir))

    def force(why: str) -> None:
        say(f"rtcts: forcing the stop ({why}): killing what is left")
        started.stop_all(grace_s=0.5)
        started.release()
        os._exit(1)

    stopper = Stopper(stop, force, say)
    stopper.install()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            try:
                _start_and_serve(
                    stack, settings, loaded, started, progress, stopper,
                    time_scale=time_scale, cold_start_scale=cold_start_scale,
                    on_ready=on_ready,
                )  # fmt: skip
            except StopRequested:
                pass
            except Exception:
                if not stop.is_set():
                    raise
                # A step that failed because it was interrupted: the stop goes on.
            finally:
                stopper.starting = False
                stopper.begin()
                stopping = time.monotonic()
        say(f"rtcts: stopped in {time.monotonic() - stopping:.1f} s")
    finally:
        os.environ.pop(MARK_ENV, None)


def _start_and_serve(
    stack: ExitStack,
    settings: Settings,
    loaded: LoadedPolicy,
    started: Started,
    progress: Progress,
    stopper: Stopper,
    *,
    time_scale: float,
    cold_start_scale: float,
    on_ready: Callable[[Running], None] | None,
) -> None:
    # Every process started from here on carries the mark (instance.py).
    os.environ[MARK_ENV] = started.mark
    leftovers = started.run_file.claim(started.mark)
    stack.callback(started.release)
    if leftovers is not None:
        progress.line(
            f"cleaned up after an rtcts run that died (pid {leftovers.pid}): "
            f"{leftovers.processes} processes stopped, {len(leftovers.paths)} paths removed"
        )
    if settings.ray_address is None:
        _require_free_port(settings.http_host, settings.http_port)
    reaper = Reaper(started.mark, settings.data_dir, dict(os.environ))
    started.spared.append(reaper.pid)
    stack.callback(reaper.close)
    stack.callback(started.stop_all, grace_s=SWEEP_GRACE_S)  # the last of what it started

    emulator_since = progress.now()
    emulator: Any = None
    stripe_base = settings.stripe_api_base
    emulated = settings.stripe_api_key is None and stripe_base is None
    if emulated:
        # A development tool (the `dev` extra), imported here only: the product never
        # imports a tool at module level. It runs as a child process, stopped by PID.
        try:
            from rtcts_dev.stripe_emulator.server import EmulatorProcess
        except ImportError as exc:
            raise SettingsError(
                f"STRIPE_API_KEY is unset and the local Stripe emulator cannot start "
                f"({exc}): install the dev extra (pip install 'rtcts[dev]') or set "
                "STRIPE_API_KEY"
            ) from None
        emulator = EmulatorProcess(
            state_path=settings.data_dir / "stripe-emulator.json",
            log_path=settings.data_dir / "stripe-emulator.log",
        )
        emulator.spawn(emulator.log_path)  # it imports while Redis and Ray start
        stack.callback(emulator.stop)
        stripe_base = emulator.url

    redis_url = settings.redis_url
    if redis_url is None:
        since = progress.now()
        redis = stack.enter_context(EmbeddedRedis(settings.data_dir / "redis"))
        redis_url = redis.url
        progress.done("Redis", since, "embedded, loopback only, password-protected")
        stopper.check()

    # Serve reads these when it is imported (ray/serve/_private/constants.py), in this
    # driver as in every process the Ray it starts spawns: set them before `import ray`,
    # or handles bound here keep actor calls instead of fast mode's gRPC.
    if settings.fast_mode and settings.ray_address is None:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    public = plan_public_port(settings)
    os.environ.update(public.env)  # Serve's HAProxy mode
    if public.state_dir is not None:
        started.add_path(public.state_dir)
        reaper.remove_later(public.state_dir)

    since = progress.now()
    import ray
    from ray import serve

    from serve_app.builder import build_app

    progress.done("code", since, "Ray, Serve and the app", verb="imported")
    if emulator is not None:
        emulator.wait_ready()
        progress.done("Stripe emulator", emulator_since, stripe_base or "")
        stopper.check()

    since = progress.now()
    if settings.ray_address is None:
        context = ray.init(
            namespace="rtcts",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
        )
    else:
        context = ray.init(address=settings.ray_address, namespace="rtcts")
    stack.callback(_stop_ray, settings.ray_address is None)
    stopper.install()  # ray.init replaced the SIGTERM handler
    dashboard = getattr(context, "dashboard_url", None)
    progress.done("Ray", since, f"dashboard http://{dashboard}" if dashboard else "")
    stopper.check()

    since = progress.now()
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    progress.done("Serve", since)
    stopper.check()

    since = progress.now()
    app = build_app(
        {
            "policy": loaded.policy.model_dump(mode="json"),
            "time_scale": time_scale,
            "cold_start_scale": cold_start_scale,
            "app_name": APP_NAME,
            "redis_url": redis_url,
            "data_dir": str(settings.data_dir),
            "stripe_api_base": stripe_base,
            "ingress_replicas": settings.ingress_replicas,
        }
    )
    serve.run_many(
        [serve.RunTarget(target=app, name=APP_NAME, route_prefix="/")],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    models = loaded.policy.models
    progress.line(f"app: deploying the ingress and {len(models)} models")
    url = f"http://{_client_host(settings.http_host)}:{settings.http_port}"
    wait_ready(
        url,
        progress,
        stop=stopper.event,
        failure=_failure_check(serve),
        notes=_cold_start_notes(loaded, time_scale, cold_start_scale),
    )
    stopper.check()
    stopper.starting = False
    running = Running(
        url=f"http://{settings.http_host}:{settings.http_port}",
        redis_url=redis_url,
        redis_embedded=settings.redis_url is None,
        dashboard_url=f"http://{dashboard}" if dashboard else None,
        stripe_url=stripe_base or "https://api.stripe.com",
        stripe_emulated=emulated,
        public_port=public.notice,
        ready_after_s=progress.elapsed(),
    )
    if on_ready is not None:
        on_ready(running)
    while not stopper.event.wait(0.5):
        pass


def _client_host(host: str) -> str:
    """Where a local client reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _require_free_port(host: str, port: int) -> None:
    """Fail at once, before starting anything, when the public port is taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise LocalServiceError(
                f"port {port} on {host} is in use by another program: stop it, or set "
                "RTCTS_HTTP_PORT (or --port)"
            ) from None


def _failure_check(serve: Any) -> Callable[[], str | None]:
    """Why the app can never be ready (Serve says DEPLOY_FAILED), asked every few seconds."""
    last = [0.0]

    def failure() -> str | None:
        now = time.monotonic()
        if now - last[0] < FAILURE_CHECK_S:
            return None
        last[0] = now
        try:
            status = serve.status().applications.get(APP_NAME)
        except Exception:  # the controller is busy or restarting: ask again later
            return None
        if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
            return str(status.message or "see the Ray dashboard")
        return None

    return failure


def _cold_start_notes(
    loaded: LoadedPolicy, time_scale: float, cold_start_scale: float
) -> dict[str, str]:
    """Per simulated model, how its cold start was shortened (for the start-up lines)."""
    scale = time_scale * cold_start_scale
    if scale == 1:
        return {}
    return {
        m.id: f" (cold start {m.cold_start_s:g} s, simulated in {m.cold_start_s * scale:.1f} s)"
        for m in loaded.policy.models
        if m.backend is BackendKind.SIMULATED
    }


def _bounded(what: Callable[[], object], limit_s: float) -> bool:
    """Run `what` in a thread for at most `limit_s`; True if it finished. A call still
    running is left behind (a daemon thread): the sweep stops what it was waiting on."""
    thread = threading.Thread(target=what, name="rtcts-stop-step", daemon=True)
    thread.start()
    thread.join(limit_s)
    return not thread.is_alive()


def _stop_ray(started_here: bool) -> None:
    """A Ray started here goes whole, replicas included (not through Serve's graceful
    shutdown: in fast mode the ingress drains for 30 s, twice the stop's budget). On a
    joined cluster only the app goes; the controller stops it in the background."""
    import ray
    from ray import serve

    if not started_here:
        _bounded(lambda: serve.delete(APP_NAME, _blocking=False), APP_STOP_S)
    _bounded(ray.shutdown, RAY_STOP_S)


def banner(running: Running, loaded: LoadedPolicy, time_scale: float) -> str:
    after = "" if running.ready_after_s is None else f" after {running.ready_after_s:.1f} s"
    lines = [
        f"rtcts is serving on {running.url}{after}  (policy {loaded.version}, {loaded.source})",
        f"  Redis:          {masked_url(running.redis_url)}"
        + ("  (embedded)" if running.redis_embedded else ""),
    ]
    if running.public_port:
        lines.append(f"  public port:    {running.public_port}")
    lines.append(
        f"  Stripe:         {running.stripe_url}"
        + (
            "  (local emulator; set STRIPE_API_KEY for Stripe test mode)"
            if running.stripe_emulated
            else ""
        )
    )
    if running.dashboard_url:
        lines.append(f"  Ray dashboard:  {running.dashboard_url}  (replicas and autoscaling)")
    if time_scale != 1:
        lines.append(f"  time scale:     {time_scale} (simulated models run that much faster)")
    tenants = {t.id: t.plan for t in loaded.policy.tenants}
    keys = [f"{key} (plan {tenants[t]})" for key, t in DEMO_KEYS.items() if t in tenants]
    if keys:
        lines.append(f"  demo API keys:  {', '.join(keys)}")
        key = next(iter(DEMO_KEYS))
        lines += [
            "  try:",
            f"    curl -s {running.url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\",
            "      -H 'Content-Type: application/json' \\",
            '      -d \'{"model": "auto", "messages": [{"role": "user", '
            '"content": "Hello!"}], "max_tokens": 32}\' -i',
            f"    curl -s {running.url}/v1/cluster -H 'Authorization: Bearer {key}'",
        ]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)
