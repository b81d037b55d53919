"""The built wheel carries the whole package: every module and every shipped YAML recipe.

`make`'s editable install reads src/ directly, so a file that setuptools leaves out of the
wheel (package data not declared, a sub-package without __init__.py) only shows up for a user
who installs the wheel. This test builds the wheel from a copy of the working tree (so no
stale build/ folder and no build/ or egg-info left in the checkout) and compares its file list
with src/icdistill. `make wheel-check` goes further and runs `icdistill demo --quick` from the
installed wheel.
"""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "icdistill"
# What the build reads besides src/ (the ones that exist are copied).
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE", "setup.py", "setup.cfg", "MANIFEST.in")


def _package_files(pattern: str) -> set[str]:
    """Wheel-relative paths (``icdistill/...``) of the files under src/icdistill matching ``pattern``."""
    return {
        p.relative_to(PACKAGE.parent).as_posix()
        for p in PACKAGE.rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree, offline (no build isolation)."""
    assert importlib.util.find_spec("setuptools") is not None, (
        "building the wheel offline needs setuptools in this environment (make install adds it)")
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    tree.mkdir()
    for name in BUILD_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    dist = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-input", "-w", str(dist), str(tree)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = sorted(dist.glob("icdistill-*.whl"))
    assert len(wheels) == 1, f"expected one icdistill wheel in {dist}, got {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_wheel_holds_every_shipped_config(wheel_names):
    configs = _package_files("*.yaml") | _package_files("*.yml")
    assert any(name.startswith("icdistill/configs/demo/") for name in configs), configs
    missing = sorted(configs - wheel_names)
    assert not missing, f"{len(missing)} of {len(configs)} YAML files are not in the wheel: {missing}"


def test_wheel_holds_every_module(wheel_names):
    modules = _package_files("*.py")
    missing = sorted(modules - wheel_names)
    assert not missing, (
        f"modules not in the wheel (excluded from packages.find?): {missing}")


def test_wheel_declares_console_script(wheel, wheel_names):
    entry_points = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    assert len(entry_points) == 1, wheel_names
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points[0]).decode()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser.has_option("console_scripts", "icdistill"), text
