"""Micro-benchmark: CPU per request of the HTTP clients the upstream backend could use.

rtcts's model replica posts every request to the upstream server
(`serve_app/models/upstream.py`). This measures, in one process on uvloop as in a Serve
replica, what one non-streamed chat request costs the caller's CPU with:

- `httpx`: `httpx.AsyncClient.post(json=...)` then `parse_completion` (the backend before
  issue #13);
- `httpx-bytes`: the same with the body encoded by `json.dumps` and sent as `content`;
- `aiohttp`: one `aiohttp.ClientSession` (keep-alive pool), the body as bytes;
- `raw`: the floor: the load generator's raw connection of `bench/ingress_overhead.py`
  (asyncio streams, no checks beyond the length), from a free list;
- `backend`: the whole `OpenAIUpstream.generate`, on its default network layer (aiohttp's,
  `serve_app/models/aiohttp_transport.py`); `backend-httpcore` the same on httpx's own
  (`httpx.AsyncHTTPTransport`, the default before issue #13).

against `bench/mock_openai.py` in a subprocess, `--concurrency` requests in flight,
`--requests` per cell, cells interleaved over `--repeats` rounds; medians. CPU is this
process's utime + stime over the cell (the mock's apart), divided by the requests.

    .venv/bin/python bench/upstream_clients.py
    .venv/bin/python bench/upstream_clients.py --requests 20000 --repeats 5 --concurrency 1 8

A benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from serve_app.models.backend import ChatMessage, GenerationRequest  # noqa: E402
from serve_app.models.openai_wire import (  # noqa: E402
    CHAT_PATH,
    parse_completion,
    request_body,
)

REQUEST = GenerationRequest(
    request_id="bench",
    messages=(ChatMessage(role="user", content="Say something short about GPUs."),),
    max_tokens=8,
)
Send = Callable[[], Awaitable[None]]


def cpu_s(pid: int | None = None) -> float:
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def make_clients(base_url: str, names: Sequence[str]) -> dict[str, tuple[Send, Any]]:
    """name -> (one request, the object to close)."""
    clients: dict[str, tuple[Send, Any]] = {}
    if "httpx" in names or "httpx-bytes" in names:
        import httpx

        client = httpx.AsyncClient(base_url=base_url, timeout=30)

        async def via_httpx() -> None:
            response = await client.post(CHAT_PATH, json=request_body(REQUEST, None, stream=False))
            parse_completion(response.content)

        async def via_httpx_bytes() -> None:
            body = json.dumps(request_body(REQUEST, None, stream=False)).encode()
            response = await client.post(
                CHAT_PATH, content=body, headers={"content-type": "application/json"}
            )
            parse_completion(response.content)

        clients["httpx"] = (via_httpx, client)
        if "httpx-bytes" in names:
            clients["httpx-bytes"] = (via_httpx_bytes, None)
    if "aiohttp" in names:
        import aiohttp

        session = aiohttp.ClientSession(base_url=base_url)

        async def via_aiohttp() -> None:
            body = json.dumps(request_body(REQUEST, None, stream=False)).encode()
            async with session.post(
                CHAT_PATH, data=body, headers={"content-type": "application/json"}
            ) as response:
                parse_completion(await response.read())

        clients["aiohttp"] = (via_aiohttp, session)
    if "raw" in names:
        sys.path.insert(0, str(BENCH))
        from ingress_overhead import Conn  # the load generator's raw keep-alive connection

        host, port = base_url.rsplit("//", 1)[1].split(":")
        idle: list[Conn] = []

        async def via_raw() -> None:
            conn = idle.pop() if idle else Conn(host, int(port))
            body = json.dumps(request_body(REQUEST, None, stream=False)).encode()
            _, _, data = await conn.post(CHAT_PATH, body, {"content-type": "application/json"})
            idle.append(conn)
            parse_completion(data)

        clients["raw"] = (via_raw, None)
    if "backend" in names or "backend-httpcore" in names:
        import httpx

        from serve_app.models.upstream import OpenAIUpstream

        backend = OpenAIUpstream(base_url, model="mock", metrics_poll_s=3600)
        await backend.start()
        # The same backend on httpx's own network layer (its default before issue #13).
        on_httpcore = OpenAIUpstream(
            base_url, model="mock", metrics_poll_s=3600, transport=httpx.AsyncHTTPTransport()
        )
        await on_httpcore.start()

        async def via_backend() -> None:
            await backend.generate(REQUEST)

        async def via_backend_httpcore() -> None:
            await on_httpcore.generate(REQUEST)

        clients["backend"] = (via_backend, backend)
        clients["backend-httpcore"] = (via_backend_httpcore, on_httpcore)
    return {name: found for name, found in clients.items() if name in names}


async def cell(send: Send, requests: int, concurrency: int) -> float:
    """Seconds of wall time for `requests` sends, `concurrency` at a time."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def run(args: argparse.Namespace, port: int, mock_pid: int) -> dict[str, Any]:
    clients = await make_clients(f"http://127.0.0.1:{port}", args.clients)
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for send, _ in clients.values():  # warm up every client (connections, imports)
        await cell(send, 500, 8)
    for repeat in range(args.repeats):
        order = list(clients)
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        for concurrency in args.concurrency:
            for name in order:
                send = clients[name][0]
                mine, theirs = cpu_s(), cpu_s(mock_pid)
                wall = await cell(send, args.requests, concurrency)
                mine, theirs = cpu_s() - mine, cpu_s(mock_pid) - theirs
                results.setdefault((name, concurrency), []).append(
                    (
                        mine * 1e6 / args.requests,
                        theirs * 1e6 / args.requests,
                        args.requests / wall,
                    )
                )
    for name, (_, closer) in clients.items():
        if closer is None:
            continue
        close = getattr(closer, "aclose", None) or closer.close
        await close()
        del name
    return {
        f"{name} c={c}": {
            "client_cpu_us_per_req": round(statistics.median(r[0] for r in runs), 1),
            "mock_cpu_us_per_req": round(statistics.median(r[1] for r in runs), 1),
            "req_per_s": round(statistics.median(r[2] for r in runs)),
            "client_cpu_us_runs": [round(r[0], 1) for r in runs],
        }
        for (name, c), runs in results.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["httpx", "aiohttp", "raw", "backend", "backend-httpcore"],
        help="of httpx, httpx-bytes, aiohttp, raw, backend, backend-httpcore",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    mock = subprocess.Popen(
        [sys.executable, str(BENCH / "mock_openai.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert mock.stdout is not None
        port = int(mock.stdout.readline().split()[1])
        try:
            import uvloop
        except ImportError:
            results = asyncio.run(run(args, port, mock.pid))
        else:
            results = uvloop.run(run(args, port, mock.pid))
    finally:
        mock.terminate()
        mock.wait(10)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"upstream clients, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
        f"{args.requests} requests per cell x {args.repeats} (medians), load average "
        f"{[round(x, 2) for x in os.getloadavg()]}\n"
    )
    print("| client | client CPU µs/req | mock CPU µs/req | req/s | runs (µs) |")
    print("|---|---:|---:|---:|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['client_cpu_us_per_req']:.1f} | {r['mock_cpu_us_per_req']:.1f} |"
            f" {r['req_per_s']:,} | {', '.join(f'{x:.0f}' for x in r['client_cpu_us_runs'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
