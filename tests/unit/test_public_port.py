"""Which process serves the public port of a local `rtcts run`: HAProxy or Serve's proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.local.public_port import plan_public_port
from serve_app.settings import Settings, SettingsError


def test_haproxy_found_gives_per_instance_paths_and_ports(tmp_path: Path) -> None:
    binary = tmp_path / "haproxy"
    public = plan_public_port(
        Settings.from_env({}),
        which={"haproxy": str(binary)}.get,
        port=iter([18404, 19101, 18500, 19500]).__next__,
        state_dir=lambda: str(tmp_path / "hap"),
    )
    assert public.haproxy == binary
    assert public.env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert public.env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(binary)
    assert public.env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert public.env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "19101"
    assert public.env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "18500"
    assert public.env["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"] == "19500"
    paths = [v for k, v in public.env.items() if "PATH" in k or "FILE" in k or "BASE" in k]
    assert [p for p in paths if p != str(binary)]
    assert all(p.startswith(str(tmp_path)) for p in paths)
    assert not any("/tmp/haproxy-serve" in v for v in public.env.values())
    assert "all interfaces" in public.notice


def test_no_haproxy_falls_back_to_serve_proxy_with_the_install_hint(tmp_path: Path) -> None:
    public = plan_public_port(Settings.from_env({}), which={}.get)
    assert public.haproxy is None
    assert public.env == {}
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
def test_switched_off_or_joined_cluster_keeps_serve_proxy(env: dict[str, str], why: str) -> None:
    public = plan_public_port(Settings.from_env(env), which={"haproxy": "/usr/sbin/haproxy"}.get)
    assert public.haproxy is None
    assert public.env == {}
    assert why in public.notice


def test_on_without_binary_is_an_error() -> None:
    with pytest.raises(SettingsError, match="apt-get install haproxy"):
        plan_public_port(Settings.from_env({"RTCTS_HAPROXY": "on"}), which={}.get)


def test_explicit_binary(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "haproxy"
    settings = Settings.from_env({"RTCTS_HAPROXY_BINARY": str(binary)})
    with pytest.raises(SettingsError, match="not an executable"):
        plan_public_port(settings, which={}.get)
    public = plan_public_port(
        settings,
        which={str(binary): str(binary)}.get,
        port=iter([1, 2, 3, 4]).__next__,
        state_dir=lambda: str(tmp_path / "hap"),
    )
    assert public.env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(binary)


def test_invalid_mode_is_refused() -> None:
    with pytest.raises(SettingsError, match="haproxy"):
        Settings.from_env({"RTCTS_HAPROXY": "maybe"})


def test_default_state_dir_is_short_and_fresh() -> None:
    public = plan_public_port(Settings.from_env({}), which={"haproxy": "/usr/sbin/haproxy"}.get)
    assert public.state_dir is not None
    try:
        # Serve adds a 56-character node id directory and "admin.sock.<pid>.<n>...".
        assert len(str(public.state_dir / ("n" * 56) / "admin.sock")) < 100
        assert public.stats_port != public.metrics_port
    finally:
        public.state_dir.rmdir()
