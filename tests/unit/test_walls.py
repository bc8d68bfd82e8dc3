"""The walls between rtcts's packages, read from the source (every `import`, at any depth).

    pricing/            imports no Ray, Redis, HTTP, clock or I/O (test_purity.py)
    metering/           never imports the ingress
    HTTP frameworks     only serve_app/ingress/ imports starlette or fastapi
    the request path    the service and its values (service, call, settlement, views and
                        everything they import) reach no HTTP framework, even indirectly
    dev tools           the product never imports rtcts_dev (test_packaging.py)

Each wall is checked by `violations`; the negative tests feed it a module that breaks
the wall, so a checker that can no longer see a violation fails here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "serve_app"
HTTP = ("starlette", "fastapi")


def imports_of(source: str) -> set[str]:
    """Every module a source file imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(folder: Path) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p.read_text("utf-8")) for p in folder.rglob("*.py")}


def violations(imports: set[str], forbidden: Iterable[str]) -> set[str]:
    return {n for n in imports for f in forbidden if n == f or n.startswith(f + ".")}


def closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    """`start` and every serve_app module it imports, transitively, with their imports."""
    seen: set[str] = set()
    todo = [start]
    reached: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        reached |= graph[name]
        todo += [n for n in graph[name] if n.startswith("serve_app")]
    return reached


GRAPH = modules(PACKAGE)


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("serve_app.metering")))
def test_metering_never_imports_the_ingress(name: str) -> None:
    assert not violations(GRAPH[name], ["serve_app.ingress"]), name


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if not n.startswith("serve_app.ingress")))
def test_only_the_ingress_imports_an_http_framework(name: str) -> None:
    assert not violations(GRAPH[name], HTTP), name


@pytest.mark.parametrize(
    "name",
    [
        "serve_app.ingress.service",
        "serve_app.ingress.call",
        "serve_app.ingress.settlement",
        "serve_app.ingress.views",
        "serve_app.ingress.documents",
    ],
)
def test_the_request_path_reaches_no_http_framework(name: str) -> None:
    assert name in GRAPH
    assert not violations(closure(name, GRAPH), HTTP), name


def test_the_checker_sees_a_broken_wall() -> None:
    """What each wall test would report if a module broke it."""
    bad = imports_of("def f():\n    from starlette.responses import JSONResponse\n")
    assert violations(bad, HTTP) == {"starlette.responses", "starlette.responses.JSONResponse"}
    bad = imports_of("import serve_app.ingress.render as render\n")
    assert violations(bad, ["serve_app.ingress"])
    graph = {
        "serve_app.ingress.service": {"serve_app.ingress.render"},
        "serve_app.ingress.render": {"starlette.responses"},
    }
    assert violations(closure("serve_app.ingress.service", graph), HTTP)
