"""The wheel alone holds everything the code reads: installed in a fresh venv, from a
directory outside the repository, every module imports and the packaged policy validates.

The wheel is built from a copy of the sources (the shared working tree stays untouched)
and installed with --no-deps into a new venv. That venv sees this venv's third-party
packages through one `.pth` line naming its site-packages, but not this venv's editable
rtcts: a directory a `.pth` line adds is not scanned for `.pth` files of its own, so the
editable finder (`__editable__*rtcts*.pth`) never runs. The test asserts that the modules
it imported come from the new venv.

Fails on a wheel that leaves out a data file the code reads at import (the metering Lua
scripts before 4a115ba: `serve_app.metering.ledger` raised FileNotFoundError).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
"""The top-level packages the wheel ships (`serve_app`, `rtcts_dev`)."""
SOURCE_FILES = ["pyproject.toml", "README.md"]

CHECK = """
import importlib, json, pkgutil, sys
from pathlib import Path

found = {}
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    modules = [info.name for info in pkgutil.walk_packages(package.__path__, name + ".")]
    for module in modules:
        importlib.import_module(module)  # serve_app.metering.ledger reads its Lua here
    found[name] = {"file": package.__file__, "modules": modules}

from serve_app.admission import redis_store
from serve_app.metering import ledger
from serve_app.settings import Settings

lua = {"admit": redis_store.ADMIT_LUA, "settle": redis_store.SETTLE_LUA,
       "fold": ledger.FOLD_LUA, "close": ledger.CLOSE_LUA}
print(json.dumps({
    "packages": found,
    "lua_chars": {name: len(text) for name, text in lua.items()},
    "default_policy": str(Settings.from_env({}).policy_path.resolve()),
}))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _copy_sources(dest: Path) -> None:
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )


def _data_files(package: str) -> list[Path]:
    """Every file of `package` in the source tree that is not Python source."""
    root = ROOT / package
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    )


def test_the_installed_wheel_imports_everything_and_validates_its_policy(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    outside = tmp_path / "elsewhere"  # the working directory of everything run from the venv
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    for directory in (outside, src, dist):
        directory.mkdir()
    _copy_sources(src)

    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)], tmp_path, env)
    (wheel,) = dist.glob("rtcts-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], outside, env
    )

    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(python), "-c", purelib], outside, env).strip())
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "outer_site_packages.pth").write_text("\n".join(outer) + "\n", encoding="utf-8")

    report: dict[str, Any] = json.loads(_run([str(python), "-c", CHECK, *PACKAGES], outside, env))

    for package in PACKAGES:
        installed = Path(report["packages"][package]["file"]).parent
        assert installed == site / package, f"{package} imported from {installed}, not the wheel"
        assert report["packages"][package]["modules"], package
        for relative in _data_files(package):
            assert (installed / relative).read_bytes() == (
                ROOT / package / relative
            ).read_bytes(), f"{package}/{relative} is not in the wheel (pyproject package-data)"
    assert all(report["lua_chars"].values()), report["lua_chars"]

    policy = Path(report["default_policy"])  # no policies/ in `outside`: the packaged copy
    assert policy == site / "serve_app" / "policy" / "default.yaml"
    validated = _run([str(venv / "bin" / "rtcts"), "policy", "validate", str(policy)], outside, env)
    assert validated.startswith(f"{policy}: ok"), validated
    table = _run([str(venv / "bin" / "rtcts"), "price-table"], outside, env)
    assert "plan pro:" in table, table
