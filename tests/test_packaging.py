"""Packaging (pyproject.toml's [tool.setuptools]): the built wheel holds exactly the tree's
packages, the shipped configs and the two command-line front ends, laid out as in the tree.

The code finds configs beside the installed packages (``agents.run_config.REPO_ROOT``,
``train.py``'s and ``evaluate.py``'s ``DEFAULT_CONFIG``), so the wheel must mirror the tree's
layout. ``.ci/wheel_smoke.sh`` installs the wheel into a fresh venv and runs it; this test is
the fast check that nothing is left out.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

NOT_SHIPPED = {"tests", "benchmarks"}
"""Top-level folders of the tree that stay out of the wheel."""

BUILD_OUTPUTS = (".*", "build", "dist", "*.egg-info", "__pycache__", "runs", "results")
"""Names (globs) never copied for the build: VCS and venv folders, build outputs, run output."""

CONSOLE_SCRIPTS = {"peergrid-train": "train:main", "peergrid-evaluate": "evaluate:main"}
SCRIPT_MODULES = ("train.py", "evaluate.py")


def _can_build_without_isolation() -> bool:
    """Whether this interpreter has the setuptools that pyproject's build-system requires."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 68


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel built from a copy of the tree (no stale ``build/`` files, and nothing
    written into the working tree)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"),
               str(source)]
    if _can_build_without_isolation():  # fast and offline; else pip fetches setuptools
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (path,) = (root / "dist").glob("peergrid-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _tree_packages() -> list[Path]:
    """Every folder holding an ``__init__.py`` under the shipped top-level folders."""
    packages = []
    for top in sorted(REPO.iterdir()):
        if not top.is_dir() or top.name in NOT_SHIPPED or any(
                top.match(pattern) for pattern in BUILD_OUTPUTS):
            continue
        for folder, subfolders, files in os.walk(top):
            subfolders[:] = [name for name in subfolders
                             if not any(Path(name).match(p) for p in BUILD_OUTPUTS)]
            if "__init__.py" in files:
                packages.append(Path(folder).relative_to(REPO))
    return packages


def _expected_files() -> set[str]:
    """Wheel paths of every module of the tree's packages, every config YAML and the scripts."""
    expected = set(SCRIPT_MODULES)
    for package in _tree_packages():
        expected |= {(package / name.name).as_posix() for name in (REPO / package).glob("*.py")}
    expected |= {path.relative_to(REPO).as_posix() for path in REPO.glob("configs/**/*.yaml")}
    return expected


def _payload(wheel: zipfile.ZipFile) -> set[str]:
    return {name for name in wheel.namelist()
            if not name.split("/")[0].endswith(".dist-info") and not name.endswith("/")}


def test_tree_has_the_packages_the_code_imports():
    packages = {package.as_posix() for package in _tree_packages()}
    assert {"envs", "envs/single", "agents"} <= packages


def test_wheel_holds_every_package_config_and_script(wheel: zipfile.ZipFile):
    missing = sorted(_expected_files() - _payload(wheel))
    assert not missing, f"missing from the wheel (pyproject.toml [tool.setuptools]): {missing}"


def test_wheel_holds_nothing_else(wheel: zipfile.ZipFile):
    extra = sorted(_payload(wheel) - _expected_files())
    assert not extra, f"in the wheel but not a package module, config or script: {extra}"


def test_wheel_declares_the_console_scripts(wheel: zipfile.ZipFile):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(name).decode())
    assert dict(entry_points["console_scripts"]) == CONSOLE_SCRIPTS
