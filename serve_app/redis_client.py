"""The one place rtcts makes a Redis client: a single Redis or a Redis Cluster, by URL.

    redis://[:password@]host:port[/db]                  one Redis (rediss:// with TLS)
    redis+cluster://[:password@]host:port[,host:port]   a Redis Cluster (rediss+cluster://)

A cluster URL names one or more seed nodes (masters or replicas); the client discovers
the others and follows the cluster when slots move or a replica is promoted. Name
several (or a DNS name that answers with a live node): a client that starts while its
only seed is down cannot find the cluster, and an aggregator restarts at any moment. It
goes wherever a Redis URL goes (`REDIS_URL`, `build_app`'s `redis_url`, the
aggregator's configuration), so nothing else in rtcts needs to know which kind it talks to.

Why this works on a cluster: every key rtcts writes carries a hash tag, and every Lua
script and MULTI/EXEC touches keys of one tag only: a tenant's admission keys
`rtcts:adm:{<tenant>}:*` (`admission/keys.py`), a meter shard's stream and aggregator
state `rtcts:meters:{s<i>}`, `rtcts:agg:{s<i>}:*` (`metering/ledger.py`), the dashboard
counts `rtcts:dash:{<app>}:*` (`ingress/tally.py`). Plain pipelines (the stream writer's
one XADD per shard, the billing view's reads) may span slots: the cluster client splits
them per node. `tests/unit/test_redis_client.py` checks that each script and
MULTI/EXEC stays in one slot.

Connections: a single Redis gets a blocking pool when asked (`blocking=True`): under a
burst, callers wait for a free connection within their own time bound instead of
failing. A cluster client keeps `max_connections` per node and has no blocking pool;
it is given `CLUSTER_MAX_CONNECTIONS` per node, more than the ingress's concurrent
requests, so a burst is not refused for want of a connection.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL scheme -> the scheme of its nodes."""
CLUSTER_MAX_CONNECTIONS = 2048
"""Connections per cluster node and client (a cluster client cannot wait for one)."""


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL as the plain URL of its first seed node (credentials and options
    kept) and the (host, port) of the others. Raises ValueError for a URL that is not a
    cluster URL or names a seed without a port."""
    parts = urlsplit(url)
    plain = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if plain is None:
        raise ValueError("not a Redis Cluster URL (redis+cluster:// or rediss+cluster://)")
    credentials, at, hosts = parts.netloc.rpartition("@")
    seeds = [_host_port(item) for item in hosts.split(",")]
    first = urlunsplit(
        parts._replace(scheme=plain, netloc=f"{credentials}{at}{hosts.split(',')[0]}")
    )
    return first, seeds[1:]


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("each node of a Redis Cluster URL is host:port")
    return host.strip("[]"), int(port)


def redis_client(
    url: str,
    *,
    timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    max_connections: int | None = None,
    blocking: bool = False,
) -> Any:
    """An asyncio client of the Redis (or Redis Cluster) that `url` names.

    `timeout_s`: socket timeout of each call (None: redis-py's default);
    `connect_timeout_s`: of each connect (default: `timeout_s`); `max_connections` and
    `blocking`: a single Redis's pool (see the module docstring; a cluster client gets
    `CLUSTER_MAX_CONNECTIONS` per node whatever they say). Close it with `aclose()`.
    """
    connect_s = timeout_s if connect_timeout_s is None else connect_timeout_s
    timeouts: dict[str, Any] = {}
    if timeout_s is not None:
        timeouts["socket_timeout"] = timeout_s
    if connect_s is not None:
        timeouts["socket_connect_timeout"] = connect_s
    if is_cluster_url(url):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        first, others = cluster_seeds(url)
        client = RedisCluster.from_url(
            first,
            startup_nodes=[ClusterNode(host, port) for host, port in others] or None,
            max_connections=CLUSTER_MAX_CONNECTIONS,
            **timeouts,
        )
        client.commands_parser = _stream_keys_parser()
        return client
    import redis.asyncio as aioredis

    if blocking:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections or 50, timeout=None, **timeouts
        )
        return aioredis.Redis(connection_pool=pool)
    if max_connections is not None:
        timeouts["max_connections"] = max_connections
    return aioredis.Redis.from_url(url, **timeouts)


STREAM_READS = frozenset({"XREAD", "XREADGROUP"})
_READ_OPTIONS = {"COUNT": 1, "BLOCK": 1, "NOACK": 0, "GROUP": 2}
"""Options of XREAD/XREADGROUP before STREAMS, and how many values each takes."""


def stream_read_keys(args: tuple[Any, ...]) -> list[Any] | None:
    """The stream keys of an XREAD or XREADGROUP command (`args` from its name on), as
    the server finds them: the first half of what follows STREAMS. None for anything
    else, or a form not understood (the server is asked then)."""
    if not args or _word(args[0]) not in STREAM_READS:
        return None
    i = 1
    while i < len(args):
        word = _word(args[i])
        if word == "STREAMS":
            rest = args[i + 1 :]
            if not rest or len(rest) % 2:
                return None
            return list(rest[: len(rest) // 2])
        if word not in _READ_OPTIONS:
            return None
        i += 1 + _READ_OPTIONS[word]
    return None


def _word(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text.upper()


def _stream_keys_parser() -> Any:
    """The cluster client's command parser, finding XREAD/XREADGROUP keys itself.

    redis-py cannot read these commands' keys from their key specs (they follow a
    keyword), so it asks one fixed node (COMMAND GETKEYS) on every call; when that node
    dies, every stream read fails with a connection error that does not refresh the
    topology, for good: an aggregator would stop folding after a master failover. Found
    here, the keys route the read like any keyed command."""
    from redis._parsers.commands import AsyncCommandsParser

    class StreamKeysParser(AsyncCommandsParser):
        async def get_keys(self, *args: Any) -> Any:
            keys = stream_read_keys(args)
            return keys if keys is not None else await super().get_keys(*args)

    return StreamKeysParser()


__all__ = [
    "CLUSTER_SCHEMES",
    "cluster_seeds",
    "is_cluster_url",
    "redis_client",
    "stream_read_keys",
]
