"""`rtcts run`: local Ray (or `RAY_ADDRESS`), an embedded Redis (or `REDIS_URL`), the app
on http://127.0.0.1:8000, until Ctrl-C; then everything rtcts started is stopped.

Fast mode: Ray Serve's throughput-optimized mode (direct ingress, gRPC between handles,
user code on the replica's event loop) is switched on for a Ray that rtcts starts
itself; a cluster joined through `RAY_ADDRESS` keeps its own setting.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from types import FrameType
from typing import Any

from serve_app.local.public_port import plan_public_port
from serve_app.local.redis_server import EmbeddedRedis
from serve_app.policy import LoadedPolicy
from serve_app.settings import Settings, SettingsError

APP_NAME = "rtcts"
DEMO_KEYS = {"rtcts-demo-pro": "demo-pro", "rtcts-demo-basic": "demo-basic"}
"""Plain demo keys of policies/default.yaml; the first one is used in the printed curl."""


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


def serve_locally(
    settings: Settings,
    loaded: LoadedPolicy,
    *,
    time_scale: float,
    stop: threading.Event | None = None,
    on_ready: Any = None,
) -> None:
    """Start everything, call `on_ready(Running)`, serve until `stop` or SIGINT/SIGTERM."""
    stop = stop or threading.Event()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            redis = stack.enter_context(EmbeddedRedis(settings.data_dir / "redis"))
            redis_url = redis.url
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
            stack.enter_context(emulator)
            stripe_base = emulator.url
        if settings.fast_mode and settings.ray_address is None:
            os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # read by the Ray it starts
        public = plan_public_port(settings)
        os.environ.update(public.env)  # read by the Ray it starts (Serve's HAProxy mode)
        if public.state_dir is not None:
            stack.callback(shutil.rmtree, public.state_dir, True)

        import ray
        from ray import serve

        from serve_app.builder import build_app

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
        serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
        serve.run(
            build_app(
                {
                    "policy": loaded.policy.model_dump(mode="json"),
                    "time_scale": time_scale,
                    "app_name": APP_NAME,
                    "redis_url": redis_url,
                    "data_dir": str(settings.data_dir),
                    "stripe_api_base": stripe_base,
                    "ingress_replicas": settings.ingress_replicas,
                }
            ),
            name=APP_NAME,
            route_prefix="/",
        )
        dashboard = getattr(context, "dashboard_url", None)
        running = Running(
            url=f"http://{settings.http_host}:{settings.http_port}",
            redis_url=redis_url,
            redis_embedded=settings.redis_url is None,
            dashboard_url=f"http://{dashboard}" if dashboard else None,
            stripe_url=stripe_base or "https://api.stripe.com",
            stripe_emulated=emulated,
            public_port=public.notice,
        )
        if on_ready is not None:
            on_ready(running)
        _wait(stop)


def _wait(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    while not stop.wait(0.5):
        pass


def _stop_ray(started_here: bool) -> None:
    import ray
    from ray import serve

    if started_here:
        ray.shutdown()  # takes Serve and every replica with it
    else:
        serve.delete(APP_NAME)
        ray.shutdown()


def banner(running: Running, loaded: LoadedPolicy, time_scale: float) -> str:
    lines = [
        f"rtcts is serving on {running.url}  (policy {loaded.version}, {loaded.source})",
        f"  Redis:          {running.redis_url}"
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
