"""What serves the public port (http://127.0.0.1:8000) of a Ray that `rtcts run` starts.

- **HAProxy** (the fast path): Serve's `RAY_SERVE_ENABLE_HA_PROXY=1` runs an `haproxy`
  process on the public port that balances over the ingress replicas' own HTTP ports
  (fast mode's direct ingress). A request costs the node about a third of the CPU it
  costs through Serve's Python HTTP proxy (docs/benchmarks.md, "Ingress overhead").
- **Serve's HTTP proxy**: what Serve does without HAProxy, and the fallback when no
  `haproxy` binary is found (`apt-get install haproxy` gives one).

HAProxy mode's fixed defaults (`/tmp/haproxy-serve`, stats on 8404, Prometheus on 9101,
Serve's fallback proxy on 8500 and 9500) would clash between two local instances or test
runs, so each instance gets its own state directory and free ports. The public frontend
and the replicas' direct ports bind the configured host (127.0.0.1 by default); Serve's
template binds the stats page and the Prometheus endpoint on all interfaces, with no
setting to change it (read-only pages: backend names, replica addresses, counters).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.local.child import free_port
from serve_app.settings import Settings, SettingsError

INSTALL_HINT = "apt-get install haproxy"


@dataclass(frozen=True)
class PublicPort:
    """How the public port is served, and the environment the Ray started here needs."""

    haproxy: Path | None
    """The haproxy binary in use; None means Serve's HTTP proxy."""
    notice: str
    """One line for the banner."""
    env: dict[str, str] = field(default_factory=dict)
    state_dir: Path | None = None
    stats_port: int | None = None
    metrics_port: int | None = None


def plan_public_port(
    settings: Settings,
    *,
    which: Callable[[str], str | None] = shutil.which,
    port: Callable[[], int] = free_port,
    state_dir: Callable[[], str] = lambda: tempfile.mkdtemp(prefix="rtcts-hap-"),
) -> PublicPort:
    """Decide between HAProxy and Serve's proxy; for HAProxy, make its state directory
    (a short path: Unix socket paths are limited to 107 bytes) and pick its ports."""
    if settings.ray_address is not None:
        return PublicPort(None, "Serve's HTTP proxy of the Ray cluster joined (RAY_ADDRESS)")
    if settings.haproxy == "off" or not settings.fast_mode:
        why = "RTCTS_HAPROXY=off" if settings.haproxy == "off" else "RTCTS_FAST_MODE=0"
        return PublicPort(None, f"Serve's HTTP proxy ({why})")
    binary = _find(settings, which)
    if binary is None:
        if settings.haproxy == "on":
            raise SettingsError(
                "RTCTS_HAPROXY=on but no haproxy binary was found "
                f"({INSTALL_HINT}, or set RTCTS_HAPROXY_BINARY)"
            )
        return PublicPort(
            None,
            f"Serve's HTTP proxy (~3x the CPU per request): no haproxy found; "
            f"`{INSTALL_HINT}` gives the fast path (docs/decisions.md)",
        )
    directory = Path(state_dir())
    stats, metrics, fallback_http, fallback_grpc = port(), port(), port(), port()
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(binary),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        # Serve's own proxy stays up as HAProxy's backup server (8500 and 9500 fixed).
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
    }
    return PublicPort(
        binary,
        f"HAProxy ({binary}) over the ingress replicas' direct ports; its stats :{stats} "
        f"and metrics :{metrics} listen on all interfaces; files in {directory}",
        env,
        directory,
        stats,
        metrics,
    )


def _find(settings: Settings, which: Callable[[str], str | None]) -> Path | None:
    if settings.haproxy_binary is not None:
        found = which(str(settings.haproxy_binary))
        if found is None:
            raise SettingsError(
                f"RTCTS_HAPROXY_BINARY={settings.haproxy_binary} is not an executable"
            )
        return Path(found).resolve()
    found = which("haproxy")
    return None if found is None else Path(found).resolve()
