"""The processes `rtcts run` starts, on real processes without Ray: a killed
`rtcts run` leaves nothing behind (the reaper), its direct children die with it
(`PR_SET_PDEATHSIG`) and sit outside its process group, and the embedded Redis asks
for a password that is on no command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from serve_app.local.instance import MARK_ENV, LinuxProcesses, marked
from serve_app.local.redis_server import EmbeddedRedis, masked_url

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _gone_within(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and check():  # type: ignore[operator]
        time.sleep(0.05)


PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    from serve_app.local.instance import MARK_ENV, RunFile
    from serve_app.local.reaper import Reaper

    mark, data_dir, state = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    os.environ[MARK_ENV] = mark
    RunFile(data_dir).claim(mark)
    reaper = Reaper(mark, data_dir, dict(os.environ))
    reaper.remove_later(state)
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    print(reaper.pid, child.pid, flush=True)
    time.sleep(120)
    """
)


def test_a_killed_parent_leaves_nothing_behind(tmp_path: Path) -> None:
    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    state = tmp_path / "rtcts-hap-state"
    state.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mark, str(tmp_path), str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    reaper_pid, child_pid = map(int, parent.stdout.readline().split())
    table = LinuxProcesses()
    assert marked(mark, table) == [child_pid]  # the reaper does not carry the mark
    assert os.getsid(child_pid) != os.getsid(parent.pid)  # out of reach of a group signal

    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _gone_within(lambda: marked(mark, table) or table.start_time(reaper_pid) is not None)
    assert marked(mark, table) == []
    assert table.start_time(reaper_pid) is None  # done, and gone
    assert not state.exists()
    assert not (tmp_path / "run.json").exists()
    assert MARK_ENV not in os.environ


CHILD_PARENT = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from serve_app.local.redis_server import EmbeddedRedis

    # Like `rtcts run`, the parent handles Ctrl-C itself (and would stop Redis in order);
    # a Python handler, unlike SIG_IGN, is not inherited by the exec'd server.
    signal.signal(signal.SIGINT, lambda *_: None)
    server = EmbeddedRedis(Path(sys.argv[1])).start()
    print(server.pid, flush=True)
    time.sleep(120)
    """
)


def test_the_embedded_redis_dies_with_a_killed_parent_and_ignores_its_group(
    tmp_path: Path,
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_PARENT, str(tmp_path / "redis")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    table = LinuxProcesses()
    assert os.getpgid(pid) != os.getpgid(parent.pid)  # a Ctrl-C reaches rtcts only
    os.killpg(parent.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    time.sleep(0.3)
    assert parent.poll() is None  # the parent handled it
    assert table.start_time(pid) is not None  # and the server never saw it
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _gone_within(lambda: table.start_time(pid) is not None)
    assert table.start_time(pid) is None


def test_the_embedded_redis_needs_its_password_which_no_command_line_shows(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        assert server.password in server.url
        assert server.password not in masked_url(server.url)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, protocol=2).set("budget", 1)
        assert redis.Redis.from_url(server.url).ping()
        args = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
        assert not [a for a in args if server.password in a]
        assert args[args.index("--bind") + 1] == "127.0.0.1"
    with EmbeddedRedis(tmp_path / "redis") as again:  # same directory: same password
        assert again.password == server.password
        assert redis.Redis.from_url(again.url).ping()
    assert (tmp_path / "redis" / "password").stat().st_mode & 0o777 == 0o600
