"""The HAProxy edge: what rtcts changes in the config Serve renders (checked on the
template of the installed Serve, and by the bundled haproxy's own config check), and
the wrapper that Serve runs as its haproxy."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.local.haproxy_edge import (
    ERROR_STATUSES,
    MARK,
    SERVICE,
    EdgeError,
    EdgePages,
    EdgeRules,
    config_path,
    harden,
    http_response,
    too_large_lua,
    write_edge,
)
from serve_app.local.public_port import bundled_haproxy

PAGES = EdgePages(
    max_body_bytes=4 * 1024 * 1024,
    too_large=b'{"error":{"message":"too large","code":"payload_too_large"}}',
    errors={s: json.dumps({"error": {"status": s}}).encode() for s in ERROR_STATUSES},
)


def serve_config(directory: Path, *, stats: int = 18404, metrics: int = 19101) -> Path:
    """The config Serve's HAProxy mode writes for one app backend (one replica and
    Serve's fallback proxy), rendered by the installed Serve."""
    from ray.serve._private.haproxy import (
        BackendConfig,
        HAProxyApi,
        HAProxyConfig,
        ServerConfig,
    )
    from ray.serve.config import HTTPOptions

    node = directory / ("n" * 8)
    config = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=18000),
        socket_path=str(node / "admin.sock"),
        server_state_base=str(node),
        server_state_file=str(node / "server-state"),
        metrics_socket_path=str(node / "metrics.sock"),
        stats_port=stats,
        metrics_port=metrics,
        is_head=True,
    )
    api = HAProxyApi(config, config_file_path=str(node / "haproxy.cfg"))
    api.backend_configs = {
        "rtcts": BackendConfig(
            name="rtcts",
            path_prefix="/",
            app_name="rtcts",
            servers=[ServerConfig(name="SERVE_REPLICA_1", host="127.0.0.1", port=30000)],
            fallback_server=ServerConfig(name="fallback", host="127.0.0.1", port=18500),
        )
    }
    api._generate_config_file_internal()
    return node / "haproxy.cfg"


@pytest.fixture
def edge(tmp_path: Path) -> tuple[Path, EdgeRules]:
    wrapper = write_edge(tmp_path, Path("/opt/haproxy"), PAGES)
    return wrapper, EdgeRules.load((tmp_path / "edge.json").read_text())


def test_serve_config_unhardened_is_what_the_issue_found(tmp_path: Path) -> None:
    text = serve_config(tmp_path).read_text()
    assert "mode 666" in text
    assert re.search(r"^\s+bind \*?:18404$", text, re.MULTILINE)
    assert re.search(r"^\s+bind \*?:19101$", text, re.MULTILINE)
    assert "Internal Server Error" in (tmp_path / "nnnnnnnn" / "500.http").read_text()


def test_harden_makes_the_edge_private_and_answer_like_the_app(
    tmp_path: Path, edge: tuple[Path, EdgeRules]
) -> None:
    _, rules = edge
    text = harden(serve_config(tmp_path).read_text(), rules)
    lines = [line.strip() for line in text.splitlines()]
    # Private: the admin socket is its owner's, stats and metrics on loopback only.
    socket_line = next(line for line in lines if line.startswith("stats socket "))
    assert " mode 600 " in socket_line
    assert "666" not in socket_line
    binds = [line for line in lines if line.startswith("bind ")]
    assert sorted(binds) == ["bind 127.0.0.1:18000", "bind 127.0.0.1:18404", "bind 127.0.0.1:19101"]
    # HAProxy's own errors are the app's JSON, with their own status.
    errorfiles = [line for line in lines if line.startswith("errorfile ")]
    assert errorfiles == [f'errorfile {s} "{rules.errorfiles[s]}"' for s in ERROR_STATUSES]
    assert str(tmp_path / "nnnnnnnn" / "500.http") not in text  # Serve's text/plain 500
    # An oversized declared body is answered by the Lua service, before anything else.
    assert f'lua-load-per-thread "{rules.lua}"' in lines
    frontend = lines.index("frontend http_frontend")
    assert lines[frontend + 1] == "bind 127.0.0.1:18000"
    assert lines[frontend + 2] == (
        f"http-request use-service lua.{SERVICE} "
        f"if {{ req.hdr_val(content-length) gt {PAGES.max_body_bytes} }}"
    )
    assert text.startswith(MARK)


def test_harden_is_idempotent(tmp_path: Path, edge: tuple[Path, EdgeRules]) -> None:
    once = harden(serve_config(tmp_path).read_text(), edge[1])
    assert harden(once, edge[1]) == once


@pytest.mark.parametrize(
    ("anchor", "name"),
    [
        ("mode 666", "admin socket mode"),
        ("listen stats", "stats bind"),
        ("frontend prometheus", "Prometheus bind"),
        ("frontend http_frontend", "HTTP frontend"),
        ("errorfile 503", "502/503/504 errorfiles"),
    ],
)
def test_a_moved_anchor_is_refused_by_name(
    tmp_path: Path, edge: tuple[Path, EdgeRules], anchor: str, name: str
) -> None:
    text = serve_config(tmp_path).read_text().replace(anchor, "something else")
    with pytest.raises(EdgeError, match=name):
        harden(text, edge[1])


def test_bundled_haproxy_accepts_the_hardened_config(tmp_path: Path) -> None:
    """The real binary's config check (`-c`) parses the hardened config, the Lua service
    and every errorfile."""
    haproxy = bundled_haproxy()
    assert haproxy is not None
    write_edge(tmp_path, haproxy, PAGES)
    rules = EdgeRules.load((tmp_path / "edge.json").read_text())
    config = serve_config(tmp_path)
    config.write_text(harden(config.read_text(), rules))
    check = subprocess.run(
        [str(haproxy), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


def test_write_edge_files(tmp_path: Path) -> None:
    wrapper = write_edge(tmp_path, Path("/opt/haproxy"), PAGES)
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o700
    rules = EdgeRules.load((tmp_path / "edge.json").read_text())
    assert rules == EdgeRules(
        Path("/opt/haproxy"),
        PAGES.max_body_bytes,
        tmp_path / "too_large.lua",
        {s: tmp_path / "errors" / f"{s}.http" for s in ERROR_STATUSES},
    )
    page = rules.errorfiles[503].read_bytes()
    head, body = page.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"content-type: application/json" in head
    assert f"content-length: {len(body)}".encode() in head
    assert body == PAGES.errors[503]
    assert PAGES.too_large.decode() in rules.lua.read_text()
    with pytest.raises(ValueError, match="no error body"):
        write_edge(tmp_path, Path("/opt/haproxy"), EdgePages(1, b"{}", {}))


def test_http_response_and_lua_quoting() -> None:
    assert http_response(504, b"{}").startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    with pytest.raises(ValueError, match="long string"):
        too_large_lua(b'{"x":"]==]"}')


def test_config_path() -> None:
    assert config_path(["-db", "-f", "/x/haproxy.cfg", "-dR", "-sf", "12"]) == Path(
        "/x/haproxy.cfg"
    )
    assert config_path(["-v"]) is None


def _fake_haproxy(tmp_path: Path) -> Path:
    """Stands in for haproxy: prints its PID, its arguments and the config's first line."""
    fake = tmp_path / "fake-haproxy"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "args = sys.argv[1:]\n"
        "print(os.getpid())\n"
        "print(' '.join(args))\n"
        "print(open(args[args.index('-f') + 1]).readline(), end='')\n"
    )
    fake.chmod(0o755)
    return fake


def test_wrapper_hardens_in_place_then_runs_haproxy_in_the_same_process(
    tmp_path: Path,
) -> None:
    """Serve follows the PID it started and finds its workers by the config path in their
    command line: both survive the wrapper."""
    wrapper = write_edge(tmp_path, _fake_haproxy(tmp_path), PAGES)
    config = serve_config(tmp_path / "serve")
    args = ["-db", "-f", str(config), "-dR", "-sf", "123"]
    process = subprocess.Popen(
        [str(wrapper), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    pid, argv, first_line = out.splitlines()
    assert int(pid) == process.pid
    assert argv == " ".join(args)
    assert first_line + "\n" == MARK
    assert "mode 600" in config.read_text()


def test_wrapper_refuses_to_run_haproxy_on_a_config_it_cannot_harden(tmp_path: Path) -> None:
    wrapper = write_edge(tmp_path, _fake_haproxy(tmp_path), PAGES)
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n    maxconn 10\n")
    run = subprocess.run(
        [str(wrapper), "-db", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert "cannot harden Serve's HAProxy config" in run.stderr
    assert run.stdout == ""  # haproxy never ran
    assert config.read_text() == "global\n    maxconn 10\n"
