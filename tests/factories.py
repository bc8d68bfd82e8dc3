"""Shared test values: one verified meter with every field filled in, and a socket that
accepts connections and never answers (a hung Redis)."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serve_app.metering.meter import Meter, new_meter_id

NOW_MS = 1_795_000_000_000

METER = Meter(
    meter_id="0190b7e0-0000-7000-8000-000000000000",
    request_id="chatcmpl-0",
    tenant_id="demo-pro",
    stripe_customer_id="cus_demo_pro",
    plan_id="pro",
    requested_model="auto",
    served_model="llama-3.1-8b",
    decision="allow",
    input_tokens=200,
    output_tokens=100,
    ttft_ms=120.5,
    total_ms=3400.25,
    sla_met=True,
    cost_micro=30,
    list_price_micro=124,
    credit_micro=0,
    billed_micro=124,
    billable=True,
    policy_version="2026-11-27.1",
    ended_at_ms=NOW_MS,
)


def make_meter(n: int = 0, **overrides: Any) -> Meter:
    """`METER` with a fresh time-ordered id (n ms after NOW_MS) and any field replaced."""
    fields: dict[str, Any] = {
        "meter_id": new_meter_id(NOW_MS + n),
        "request_id": f"chatcmpl-{n}",
        "ended_at_ms": NOW_MS + n,
        **overrides,
    }
    return dataclasses.replace(METER, **fields)


@contextmanager
def blackhole_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def http_scope(
    method: str, path: str, headers: list[tuple[bytes, bytes]], root_path: str = ""
) -> dict[str, Any]:
    """An ASGI HTTP scope, as a server gives it to the app (header names lowercase)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
