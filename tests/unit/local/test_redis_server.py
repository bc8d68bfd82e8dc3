"""The embedded Redis's password: kept per data directory (owner-only), in the URL that
rtcts passes on, on standard input rather than the command line, never in what is
printed (`masked_url`). No Redis process here (tests/integration/test_local_processes.py
starts one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.local.redis_server import EmbeddedRedis, masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6390/0", "redis://***@127.0.0.1:6390/0"),
        ("redis://user:pw@redis.internal:6379", "redis://***@redis.internal:6379"),
        ("rediss://:p%40ss@[::1]:6380/2", "rediss://***@[::1]:6380/2"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ],
)
def test_masked_url_hides_credentials(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_the_password_is_made_once_per_directory_and_kept_private(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis", port=6390)
    again = EmbeddedRedis(tmp_path / "redis", port=6391)
    other = EmbeddedRedis(tmp_path / "other", port=6392)
    assert first.password == again.password != other.password
    assert len(first.password) >= 32
    assert first.url == f"redis://:{first.password}@127.0.0.1:6390/0"
    assert ((tmp_path / "redis" / "password").stat().st_mode & 0o777) == 0o600


def test_the_password_goes_on_standard_input_not_the_command_line(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", port=6390)
    command = server.command()
    assert not [arg for arg in command if server.password in arg]
    assert command[1] == "-"  # redis-server reads the rest of its configuration there
    assert command[command.index("--bind") + 1] == "127.0.0.1"
    assert f"requirepass {server.password}\n" in server.stdin_text()
