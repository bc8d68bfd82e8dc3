"""Shared fixtures: a real Redis server for the tests that need one.

`REDIS_URL` (read through Settings) points the tests at an existing Redis; otherwise
an embedded redis-server is started for the session and stopped at its end, on loopback
with its generated password, which the yielded URL carries (as the one `rtcts run`
passes on: never print it unmasked, `masked_url`). Tests use unique tenant ids, so a
shared Redis needs no flushing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.local.redis_server import EmbeddedRedis
from serve_app.settings import Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = Settings.from_env().redis_url
    if configured:
        yield configured
        return
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    with server:
        yield server.url
