"""The wall around the pricing core: no Ray, Redis, HTTP, clock or I/O inside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PRICING = Path(__file__).resolve().parents[3] / "serve_app" / "pricing"
FORBIDDEN = {
    "ray", "redis", "fastapi", "starlette", "httpx", "aiohttp", "requests", "stripe",
    "time", "datetime", "asyncio", "os", "socket", "random", "subprocess", "threading",
    "serve_app.ingress", "serve_app.cluster", "serve_app.admission", "serve_app.metering",
    "serve_app.settings",
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PRICING.glob("*.py")), ids=lambda p: p.name)
def test_pricing_module_imports_nothing_impure(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_pricing_modules_do_not_open_files() -> None:
    for path in PRICING.glob("*.py"):
        assert "open(" not in path.read_text(encoding="utf-8"), path.name
