"""README's "Run on a cluster": the commands of its two tested blocks (each a ```bash
fence right after the `tested:` marker), read from the README itself and run on this
machine as a two-node Ray cluster.

1. The cluster and `rtcts run` joining it (`RAY_ADDRESS`), with a managed Redis
   (`REDIS_URL`) and a Stripe key (`STRIPE_API_KEY`), and the README's curl.
2. On the same cluster, Ray's CLI instead: `rtcts serve-config`, the README's YAML
   (`redis_url` in `args`, the Stripe key in `runtime_env`) added, `serve deploy`.

What the test changes, and only that (the README says so too): a free port for Ray's
6380 and for 8000 (`RTCTS_HTTP_PORT`), 127.0.0.1 for `<head-ip>`, a generated token, the
two-node test policy (absolute path) and its keys, a local password-protected Redis for
the Redis URL, generated `sk_test_` keys with the Stripe emulator as the Stripe server.
Each `ray start` also gets `--block`, its own temp dir and free ports for Ray's other
servers (`two_nodes.RayNode`: two nodes on one machine), `rtcts run` and the Serve config
their own data dir, `serve deploy` the dashboard's port. Nodes are stopped by process
group and by the mark in their processes' environment, never with `ray stop` (it stops
every Ray on the machine).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from serve_app.admission.keys import PREFIX as ADMISSION_PREFIX
from serve_app.builder import AppArgs
from serve_app.local.child import free_port
from serve_app.local.redis_server import EmbeddedRedis
from tests.integration.two_nodes import (
    KEYS,
    MARKER,
    POLICY,
    TENANTS,
    RayNode,
    body,
    kill_marked,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Run on a cluster"
TESTED = "<!-- tested: tests/integration/test_readme_cluster.py runs this block -->"
BIN = Path(sys.executable).parent
ADMIN_KEY = "2n-admin"
"""The two-node policy's admin key (tests/integration/two_nodes_policy.yaml)."""
STOP_S = 20.0
REDIS_URL_IN_README = "rediss://:<password>@<your-redis>:6379/0"
"""The managed Redis's URL as the README writes it (TLS, a password)."""


@dataclass
class Command:
    """One command line of a block: `VAR=value ... argv [> file]`, or `export VAR=value`."""

    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    stdout: str | None = None

    @property
    def text(self) -> str:
        words = [*(f"{k}={v}" for k, v in self.env.items()), *self.argv]
        return shlex.join(words) + ("" if self.stdout is None else f" > {self.stdout}")


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def readme_blocks() -> list[str]:
    """The fenced blocks that follow the marker, as written in the README."""
    blocks = re.findall(re.escape(TESTED) + r"\n```bash\n(.*?)\n```", section(), re.DOTALL)
    assert len(blocks) == 2, f"two ```bash blocks right after {TESTED!r} in {SECTION!r}"
    return blocks


def serve_config_yaml() -> dict[str, Any]:
    """The README's YAML to add to the Serve config's application."""
    blocks = re.findall(r"```yaml\n(.*?)\n```", section(), re.DOTALL)
    (block,) = [b for b in blocks if "redis_url:" in b]
    added: dict[str, Any] = yaml.safe_load(block)
    return added


def parse(block: str) -> list[Command]:
    """Command lines (backslash continuations joined, comments dropped), each split into
    its leading `VAR=value` assignments, its arguments and a `> file`."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        command = Command()
        if words[0] == "export":
            command.env = {n: v for n, _, v in (w.partition("=") for w in words[1:])}
        else:
            while re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                name, _, value = words.pop(0).partition("=")
                command.env[name] = value
            if len(words) > 2 and words[-2] == ">":
                command.stdout = words.pop()
                words.pop()
            command.argv = words
        commands.append(command)
    return commands


def substitute(block: str, values: dict[str, str]) -> str:
    """The README's placeholders and fixed ports replaced; none may be left."""
    for placeholder, value in values.items():
        if placeholder in block:
            block = block.replace(placeholder, value)
    leftover = re.findall(r"<[a-z.-]+>", block)
    assert not leftover, f"placeholders the test does not know: {leftover}"
    return block


@dataclass
class Plan:
    """The blocks' commands, by role."""

    exported: dict[str, str]
    head: Command
    worker: Command
    run: Command
    curl: Command
    serve_config: Command
    deploy: Command


def plan(blocks: list[str]) -> Plan:
    roles: dict[str, list[Command]] = {
        k: [] for k in ("head", "worker", "run", "curl", "serve_config", "deploy")
    }
    exported = {}
    for c in (c for block in blocks for c in parse(block)):
        if not c.argv:
            exported.update(c.env)
        elif c.argv[:2] == ["ray", "start"]:
            roles["head" if "--head" in c.argv else "worker"].append(c)
        elif c.argv[:2] == ["rtcts", "run"]:
            roles["run"].append(c)
        elif c.argv[:1] == ["curl"]:
            roles["curl"].append(c)
        elif c.argv[:2] == ["rtcts", "serve-config"]:
            roles["serve_config"].append(c)
        elif c.argv[:2] == ["serve", "deploy"]:
            roles["deploy"].append(c)
        else:
            raise AssertionError(f"a command this test does not run: {c.text}")
    assert all(len(v) == 1 for v in roles.values()), {k: len(v) for k, v in roles.items()}
    return Plan(exported, **{k: v[0] for k, v in roles.items()})


def test_the_blocks_are_what_the_readme_says() -> None:
    """Without starting anything: the shape of the commands the README's prose describes."""
    p = plan(readme_blocks())
    assert p.exported["RAY_AUTH_MODE"] == "token"
    for node in (p.head, p.worker):
        assert node.env == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
        assert "6379" not in node.text
    assert "--port=6380" in p.head.argv
    assert "--dashboard-host=127.0.0.1" in p.head.argv
    assert '--resources={"cpu_pool": 1}' in p.head.argv
    assert "--address=<head-ip>:6380" in p.worker.argv
    assert '--resources={"gpu_l4": 1}' in p.worker.argv
    assert p.run.env["RAY_ADDRESS"] == "<head-ip>:6380"
    assert p.run.env["REDIS_URL"] == REDIS_URL_IN_README
    assert p.run.env["STRIPE_API_KEY"] == "sk_test_..."
    assert p.serve_config.stdout == p.deploy.argv[2]
    # The policy the README points at pins exactly those resources.
    policy = yaml.safe_load(POLICY.read_text(encoding="utf-8"))
    pins = {k for m in policy["models"] for k in m.get("ray_resources", {})}
    assert pins == {"gpu_l4", "cpu_pool"}


def test_the_serve_config_yaml_is_what_serve_and_build_app_take() -> None:
    """The README's YAML added to serve_config.yaml's application: a Serve config Ray
    accepts, with `args` that `build_app` accepts."""
    from ray.serve.schema import ServeDeploySchema

    added = serve_config_yaml()
    assert set(added) == {"args", "runtime_env"}
    assert set(added["runtime_env"]["env_vars"]) == {"STRIPE_API_KEY"}
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    (app,) = config["applications"]
    assert set(app["args"]) == {"policy_path"}  # as shipped: no redis_url
    app["args"].update(added["args"])
    app["runtime_env"] = added["runtime_env"]
    ServeDeploySchema.model_validate(config)
    args = AppArgs.model_validate(app["args"])
    assert args.redis_url is not None
    assert args.redis_url.startswith("rediss://")


def test_every_file_the_section_names_exists() -> None:
    named = set(re.findall(r"`((?:tests|deploy|serve_app|policies)/[\w/.-]*\w)`", section()))
    named |= {"cluster.yaml", "serve_config.yaml"}
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, missing
    assert {"tests/unit/test_cluster_yaml.py", "tests/unit/test_kuberay.py"} <= named


@dataclass
class Cluster:
    root: Path
    plan: Plan
    base_env: dict[str, str]
    http_port: int
    dashboard_port: int
    redis_url: str
    stripe: Any
    run: subprocess.Popen[bytes]
    run_log: Path
    run_key: str
    head: RayNode
    worker: RayNode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _clean_environment() -> dict[str, str]:
    """This process's environment without any Ray, rtcts, Redis or Stripe setting: the
    blocks' commands bring their own."""
    prefixes = ("RAY_", "RTCTS_", "REDIS_", "STRIPE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _app_gone(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code != 200
    except httpx.HTTPError:
        return True


def _stripe_keys(stripe: Any) -> list[str | None]:
    return [r.get("api_key") for r in stripe.state.requests()]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The first block run: the head, the worker, `rtcts run` serving on them."""
    from rtcts_dev.stripe_emulator import EmulatorServer

    root = Path(tempfile.mkdtemp(prefix="rrc", dir="/tmp"))  # short: Ray's socket paths
    run_mark = secrets.token_hex(8)
    gcs_port, http_port, dashboard_port = free_port(), free_port(), free_port()
    run_key = f"sk_test_rc{secrets.token_hex(12)}"
    token = secrets.token_hex(32)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        stack.callback(kill_marked, MARKER, run_mark)  # the last: whatever is left
        redis_server = stack.enter_context(EmbeddedRedis(root / "redis"))
        stripe = stack.enter_context(EmulatorServer())
        blocks = [
            substitute(
                block,
                {
                    "<cluster-token>": token,
                    "=6380": f"={gcs_port}",
                    ":6380": f":{gcs_port}",
                    ":8000": f":{http_port}",
                    "<head-ip>": "127.0.0.1",
                    "<your-policy.yaml>": str(POLICY),
                    "<api-key>": KEYS["flex"],
                    "sk_test_...": run_key,
                    REDIS_URL_IN_README: redis_server.url,
                },
            )
            for block in readme_blocks()
        ]
        p = plan(blocks)
        assert p.run.env["REDIS_URL"] == redis_server.url
        assert p.run.env["STRIPE_API_KEY"] == run_key

        base = {**_clean_environment(), **p.exported, MARKER: run_mark}
        head = RayNode(
            "h",
            [
                *p.head.argv[2:],
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-port={dashboard_port}",
            ],
            {**base, **p.head.env},
            root,
        )
        worker = RayNode("w", p.worker.argv[2:], {**base, **p.worker.env}, root)
        stack.callback(head.kill)
        stack.callback(worker.kill)
        head.up()
        worker.up()

        run_log = root / "rtcts-run.log"
        with run_log.open("wb") as out:
            run = subprocess.Popen(
                [str(BIN / "rtcts"), *p.run.argv[1:]],
                cwd=ROOT,
                env={
                    **base,
                    **p.run.env,
                    "RTCTS_HTTP_PORT": str(http_port),
                    "RTCTS_DATA_DIR": str(root / "data"),
                    "STRIPE_API_BASE": stripe.url,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.callback(_stop, run)

        def serving() -> bool:
            if run.poll() is not None:
                raise AssertionError(f"rtcts run exited: {run_log.read_text()[-4000:]}")
            return b"rtcts is serving on" in run_log.read_bytes()

        wait_for(serving, "rtcts run serving on the cluster", 180)
        yield Cluster(
            root,
            p,
            base,
            http_port,
            dashboard_port,
            redis_server.url,
            stripe,
            run,
            run_log,
            run_key,
            head,
            worker,
        )


def _curl_headers(argv: list[str]) -> dict[str, str]:
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    head, _, _ = answer.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), answer.stdout[:2000]
    lines = [line.split(": ", 1) for line in head.splitlines()[1:] if ": " in line]
    return {name.lower(): value for name, value in lines}


def _admitted_in(redis_url: str) -> list[bytes]:
    """The admission keys of the flex tenant in that Redis."""
    with redis.Redis.from_url(redis_url) as client:
        keys: list[bytes] = client.keys(f"{ADMISSION_PREFIX}:{{{TENANTS['flex']}}}:*")
        return keys


def _reconcile(url: str) -> None:
    answer = httpx.post(
        f"{url}/v1/admin/reconcile", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.integration
@pytest.mark.multinode
def test_rtcts_run_joins_the_cluster_and_prices_requests(cluster: Cluster) -> None:
    from rtcts_dev.stripe_emulator.app import mask_key

    log = cluster.run_log.read_text(encoding="utf-8")
    assert "Serve's HTTP proxy of the Ray cluster joined" in log, log
    assert "(embedded)" not in log, log  # REDIS_URL's Redis, not one of its own
    assert "local emulator" not in log, log  # STRIPE_API_KEY given

    # The README's curl, as written there (host, port and key substituted).
    headers = _curl_headers([shutil.which("curl") or "curl", *cluster.plan.curl.argv[1:]])
    assert float(headers["x-rtcts-price-usd"]) > 0, headers
    assert headers["x-rtcts-model"] in {"gpu", "backup"}, headers

    # The model pinned to gpu_l4 runs where that resource is: on the worker node.
    pinned = httpx.post(
        f"{cluster.url}/v1/chat/completions",
        json=body("gpu"),
        headers={"Authorization": f"Bearer {KEYS['premium']}"},
        timeout=120,
    )
    assert pinned.status_code == 200, pinned.text
    assert pinned.headers["x-rtcts-model"] == "gpu"

    # Admission counted the request in the Redis of REDIS_URL.
    usage = httpx.get(
        f"{cluster.url}/v1/usage", headers={"Authorization": f"Bearer {KEYS['flex']}"}, timeout=10
    ).json()
    assert usage["window"]["requests"] >= 1, usage
    assert _admitted_in(cluster.redis_url)

    # The app calls Stripe with the key rtcts run was given (the nodes never had it).
    _reconcile(cluster.url)
    assert set(_stripe_keys(cluster.stripe)) == {mask_key(cluster.run_key)}

    # Ctrl-C takes the app off the cluster; Ray stays up.
    cluster.run.send_signal(signal.SIGINT)
    assert cluster.run.wait(timeout=STOP_S) == 0, cluster.run_log.read_text()[-4000:]
    assert "rtcts: stopped" in cluster.run_log.read_text(encoding="utf-8")
    wait_for(lambda: _app_gone(cluster.url), "the app taken off the cluster", 30)
    for node in (cluster.head, cluster.worker):
        assert node.process is not None
        assert node.process.poll() is None, node.name


@pytest.mark.integration
@pytest.mark.multinode
def test_a_serve_config_with_redis_and_stripe_deploys_on_the_cluster(cluster: Cluster) -> None:
    from rtcts_dev.stripe_emulator.app import mask_key

    if cluster.run.poll() is None:  # the test before failed before its Ctrl-C
        cluster.run.send_signal(signal.SIGINT)
        cluster.run.wait(timeout=STOP_S)
    wait_for(lambda: _app_gone(cluster.url), "rtcts run's app off the cluster", 30)
    p = cluster.plan
    env = {**cluster.base_env, **p.serve_config.env, "RTCTS_HTTP_PORT": str(cluster.http_port)}
    config_path = cluster.root / (p.serve_config.stdout or "")
    made = subprocess.run(
        [str(BIN / "rtcts"), *p.serve_config.argv[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config = yaml.safe_load(made.stdout)

    # The README's YAML, added to the application as the README says.
    added = serve_config_yaml()
    (app,) = config["applications"]
    assert added["args"]["policy_path"] == "<your-policy.yaml>"
    assert app["args"]["policy_path"] == str(POLICY)  # as rtcts serve-config wrote it
    assert added["args"]["redis_url"] == REDIS_URL_IN_README
    assert added["runtime_env"]["env_vars"]["STRIPE_API_KEY"] == "sk_test_..."
    config_key = f"sk_test_sc{secrets.token_hex(12)}"
    app["args"].update(
        redis_url=cluster.redis_url,
        stripe_api_base=cluster.stripe.url,  # test only: the emulator
        data_dir=str(cluster.root / "serve-data"),  # test only: not the replicas' cwd
        window_s=1,  # test only: meters reach Stripe within seconds
        grace_s=1,
    )
    app["runtime_env"] = {"env_vars": {"STRIPE_API_KEY": config_key}}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    subprocess.run(
        [str(BIN / "serve"), *p.deploy.argv[1:2], str(config_path)],
        cwd=cluster.root,
        env={
            **cluster.base_env,
            **p.deploy.env,
            "RAY_DASHBOARD_ADDRESS": f"http://127.0.0.1:{cluster.dashboard_port}",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    def answered() -> httpx.Response | None:
        answer = httpx.post(
            f"{cluster.url}/v1/chat/completions",
            json=body("auto"),
            headers={"Authorization": f"Bearer {KEYS['flex']}"},
            timeout=30,
        )
        return answer if answer.status_code == 200 else None

    answer = wait_for(answered, "the Serve config's app answering", 150)
    assert float(answer.headers["x-rtcts-price-usd"]) > 0, answer.headers
    assert _admitted_in(cluster.redis_url)
    before = len(_stripe_keys(cluster.stripe))
    _reconcile(cluster.url)
    wait_for(
        lambda: any(
            r["operation"] == "POST /v1/billing/meter_events"
            for r in cluster.stripe.state.requests()[before:]
        ),
        "the meter sent to Stripe",
        60,
    )
    # The ingress (reconcile) and the aggregator (meters) used the runtime_env's key.
    assert set(_stripe_keys(cluster.stripe)[before:]) == {mask_key(config_key)}
