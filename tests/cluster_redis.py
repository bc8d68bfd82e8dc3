"""A real Redis Cluster on this machine for tests: three masters and three replicas.

`RedisClusterServers` starts six `redis-server --cluster-enabled yes` processes on free
ports (each with its cluster bus port, port + 10000, free too) in a temp directory,
joins them with `redis-cli --cluster create ... --cluster-replicas 1`, and waits until
every node says `cluster_state:ok` and every master has its replica in sync. Each
process is its own child, stopped by its PID (SIGTERM, then SIGKILL): never a broad
kill. The nodes share one password, carried by `url` (`redis+cluster://`, the scheme
rtcts reads as a cluster: `serve_app/redis_client.py`).

`failover(port)` promotes a master's replica (CLUSTER FAILOVER on the replica, as an
operator does for maintenance); `kill(port)` SIGKILLs a node (the cluster promotes its
replica after `NODE_TIMEOUT_MS`) and `restart(port)` brings it back, as a replica of the
new master.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
import redis.cluster

NODE_TIMEOUT_MS = 1000
"""`cluster-node-timeout`: how long a silent master lasts before its replica takes over."""
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """`count` ports whose cluster bus ports (+10000) are free too, below the usual
    ephemeral range (so a client socket is unlikely to take one meanwhile)."""
    rng = rng or random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 29990)
        if port in ports or port + 10000 in ports:
            continue
        if _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


class RedisClusterServers:
    """Six local Redis Cluster nodes (3 masters + 3 replicas), stopped by their PIDs."""

    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        self.directory = directory
        self.password = secrets.token_hex(16)
        self.ports = cluster_ports(2 * masters)
        self.masters = masters
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The URL rtcts takes for a cluster: every node a seed, so a client that starts
        while one is down still finds the cluster."""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+cluster://:{self.password}@{nodes}"

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (for CLUSTER and INFO commands)."""
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5)

    # -- life cycle ---------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self.wait_for(lambda p=port: self.node(p).ping(), f"node {port} answers")
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            options = ["--cluster-replicas", "1", "--cluster-yes"]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *nodes, *options],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT_S,
                env={**os.environ, "REDISCLI_AUTH": self.password},  # not on a command line
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, port: int) -> None:
        folder = self.directory / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        # The password goes in a config file (mode 600): a command line is public.
        conf = folder / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {NODE_TIMEOUT_MS}",
                    "appendonly yes",
                    'save ""',
                    f"dir {folder}",
                    f"requirepass {self.password}",
                    f"masterauth {self.password}",
                    "maxmemory-policy noeviction",
                    "loglevel warning",
                    f"logfile {folder / 'redis.log'}",
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        conf.chmod(0o600)
        self._processes[port] = subprocess.Popen(
            ["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_for(
        self,
        check: Callable[[], object],
        what: str = "condition",
        timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        """Poll `check` until it returns something truthy (Redis errors count as not yet)."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster: {what} not within {timeout_s} s (last: {last!r})")

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    # -- topology -----------------------------------------------------------------

    def roles(self) -> dict[int, str]:
        """port -> "master" or "slave", as each live node says of itself."""
        roles: dict[int, str] = {}
        for port, process in self._processes.items():
            if process.poll() is None:
                with contextlib.suppress(redis.RedisError, OSError):
                    roles[port] = str(self.node(port).info("replication")["role"])
        return roles

    def master_ports(self) -> list[int]:
        return sorted(p for p, role in self.roles().items() if role == "master")

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot now."""
        seed = self.master_ports()[0]
        client = redis.cluster.RedisCluster(
            host="127.0.0.1", port=seed, password=self.password, socket_timeout=5
        )
        try:
            return int(client.get_node_from_key(key).port)
        finally:
            client.close()

    def replica_of(self, master: int) -> int:
        """The port of the replica that follows `master`."""
        for port, role in self.roles().items():
            if (
                role == "slave"
                and int(self.node(port).info("replication")["master_port"]) == master
            ):
                return port
        raise LookupError(f"no replica follows {master}")

    def healthy(self) -> bool:
        """Every live node says ok, there are `masters` masters, each with a replica in
        sync (so a failover loses nothing acknowledged before it)."""
        roles = self.roles()
        if len(roles) != len(self.ports):
            return False
        for port in roles:
            if self.node(port).cluster("INFO").get("cluster_state") != "ok":
                return False
        masters = [p for p, r in roles.items() if r == "master"]
        if len(masters) != self.masters:
            return False
        for port in masters:
            info = self.node(port).info("replication")
            if int(info["connected_slaves"]) < 1 or info["slave0"]["state"] != "online":
                return False
        return True

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.wait_for(self.healthy, "every node ok, every master with a replica", timeout_s)

    def failover(self, master: int) -> int:
        """Promote `master`'s replica (CLUSTER FAILOVER on it: the master stops taking
        writes, the replica catches up, then takes over). Returns the new master's port."""
        replica = self.replica_of(master)
        self.node(replica).execute_command("CLUSTER FAILOVER")
        self.wait_for(
            lambda: self.node(replica).info("replication")["role"] == "master",
            f"replica {replica} promoted",
        )
        return replica

    def kill(self, port: int) -> None:
        """SIGKILL one node: its replica is promoted after the node timeout."""
        process = self._processes[port]
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again from its directory (it rejoins as a replica)."""
        self._spawn(port)
        self.wait_for(lambda: self.node(port).ping(), f"node {port} answers")
