"""What the wheel ships and what the product imports, checked from the source tree.

The installed wheel itself is tested in tests/integration/test_wheel.py; these are the
fast checks of the same promises: every data file is package data, the packaged default
policy is the one users edit, and serve_app never imports a development tool at import
time.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
import tomllib
from pathlib import Path

import pytest

from serve_app.local.runner import serve_locally
from serve_app.policy import load_policy_file
from serve_app.settings import (
    PACKAGED_POLICY_PATH,
    POLICY_PATH,
    Settings,
    SettingsError,
    default_policy_path,
)

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"
]
PACKAGES = [p.rstrip("*") for p in SETUPTOOLS["packages"]["find"]["include"]]
TOOLS = "rtcts_dev"
MAY_IMPORT_TOOLS = ("serve_app/cli.py", "serve_app/local/")
"""Where serve_app may import rtcts_dev, and only inside a function."""


def test_the_wheel_ships_serve_app_and_the_tools() -> None:
    assert PACKAGES == ["serve_app", "rtcts_dev"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_file_the_code_may_read_is_package_data(package: str) -> None:
    globs = SETUPTOOLS["package-data"].get(package, [])
    root = ROOT / package
    data = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, f"add to [tool.setuptools.package-data] {package}: {missing}"


def test_the_packaged_default_policy_is_the_one_users_edit() -> None:
    packaged = ROOT / "serve_app" / "policy" / "default.yaml"
    assert PACKAGED_POLICY_PATH.resolve() == packaged
    assert packaged.read_bytes() == (ROOT / POLICY_PATH).read_bytes(), (
        "serve_app/policy/default.yaml must equal policies/default.yaml: "
        "cp policies/default.yaml serve_app/policy/default.yaml"
    )


def test_the_default_policy_is_the_working_directorys_else_the_packaged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_policy_path() == PACKAGED_POLICY_PATH
    assert Settings.from_env({}).policy_path == PACKAGED_POLICY_PATH
    (tmp_path / "policies").mkdir()
    (tmp_path / POLICY_PATH).write_text("models: []\n", encoding="utf-8")
    assert Settings.from_env({}).policy_path == POLICY_PATH
    assert Settings.from_env({"RTCTS_POLICY_PATH": "p.yaml"}).policy_path == Path("p.yaml")


def _tool_imports(tree: ast.Module) -> list[tuple[int, bool]]:
    """(line, inside a function) of every import of rtcts_dev in `tree`."""
    found: list[tuple[int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(n == TOOLS or n.startswith(TOOLS + ".") for n in names):
            found.append((getattr(node, "lineno", 0), in_function))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def test_serve_app_imports_a_tool_only_lazily_from_the_cli_and_local() -> None:
    bad = []
    for path in sorted((ROOT / "serve_app").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for line, in_function in _tool_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not (relative.startswith(MAY_IMPORT_TOOLS) and in_function):
                bad.append(f"{relative}:{line}")
    assert not bad, f"serve_app imports {TOOLS} at module level or outside cli/local: {bad}"


def test_the_boundary_check_sees_module_level_imports() -> None:
    tree = ast.parse("import rtcts_dev.demo\ndef f():\n    from rtcts_dev import trace\n")
    assert _tool_imports(tree) == [(1, False), (3, True)]


def test_rtcts_run_without_the_dev_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rtcts_dev.stripe_emulator.server", None)  # not importable
    settings = Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path)
    loaded = load_policy_file(PACKAGED_POLICY_PATH)
    with pytest.raises(SettingsError, match=r"pip install 'rtcts\[dev\]'\) or set STRIPE_API_KEY"):
        serve_locally(settings, loaded, time_scale=1.0)
