"""The two ways to run rtcts, as a user would: `rtcts run` (what `make run` calls) and
`serve run serve_config.yaml`. Each starts its own local Ray in a child process, is
asked to stop with SIGINT, and must exit cleanly."""

from __future__ import annotations

import os
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


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "mid", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_rtcts_run_serves_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RTCTS_HTTP_PORT": str(port),
        "RTCTS_POLICY_PATH": str(POLICY),
        "RTCTS_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("REDIS_URL", None)
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "run.log"
    with running([str(BIN / "rtcts"), "run"], env, log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: "Ctrl-C stops everything" in log.read_text(), timeout_s=180)
        text = log.read_text()
        assert f"rtcts is serving on {url}" in text
        assert "(embedded)" in text
        response = wait_until(lambda: (r := _chat(url, "it-premium")).status_code == 200 and r)
        assert response.headers["x-rtcts-model"] == "mid"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
    assert "rtcts: stopped" in log.read_text()
    assert (tmp_path / "data" / "redis").is_dir()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


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
