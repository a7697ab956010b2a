"""The layer rules of pyproject.toml's [tool.importlinter], checked on a regular install.

An editable install maps `edgetl.compiler` -> compiler/ (and so on) only through setuptools'
import hook, which static tools do not run: import-linter then finds 4 modules of the package.
So the package is installed (no dependencies, no index: nothing leaves the machine) into a
scratch folder, and `lint-imports` reads that. Takes a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the [test] extra")
pytest.importorskip("setuptools", reason="the scratch install builds the package with setuptools")

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("edgetl", "compiler", "runtime", "models", "benchmarks")
# The package-dir mapping of pyproject.toml: repository folder -> installed package.
INSTALLED_AS = {"edgetl": "edgetl", "compiler": "edgetl/compiler", "runtime": "edgetl/runtime",
                "models": "edgetl/models", "benchmarks": "edgetl/benchmarks"}


def _install(tmp: Path, edit=None) -> Path:
    """Copy the sources (without any stale build/ folder), optionally edit them, install them."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in SOURCE_FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if edit is not None:
        edit(src)
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return site


def _lint(site: Path, cwd: Path) -> subprocess.CompletedProcess:
    # Run from a folder without an `edgetl/` in it: lint-imports puts the working folder first
    # on the path, and the checkout's edgetl/ holds only the CLI.
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=cwd, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )


def test_regular_install_holds_every_module(tmp_path):
    site = _install(tmp_path)
    missing = [
        f"{folder}/{path.relative_to(ROOT / folder)}"
        for folder in SOURCE_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
        and not (site / INSTALLED_AS[folder] / path.relative_to(ROOT / folder)).is_file()
    ]
    assert missing == [], f"not installed by `pip install .` (add the sub-package to pyproject.toml): {missing}"


def test_layer_contracts_hold_and_catch_a_forbidden_import(tmp_path):
    (tmp_path / "good").mkdir()
    result = _lint(_install(tmp_path / "good"), tmp_path)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr

    def forbidden(src: Path) -> None:
        litert = src / "runtime" / "litert.py"
        litert.write_text(litert.read_text() + "\nimport edgetl.compiler  # forbidden: runtime -> compiler\n")

    (tmp_path / "bad").mkdir()
    result = _lint(_install(tmp_path / "bad", forbidden), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "edgetl.runtime.litert -> edgetl.compiler" in result.stdout, result.stdout


def test_no_stage_branches_on_a_target_name():
    """Target behaviour is fields of the target (compiler/spec/targets.py), so a new profile needs
    no edit elsewhere: nothing outside that file compares a target's or the --target name."""
    import re

    pattern = re.compile(r"""(target\.name|config\.target)\s*[!=]=|["'](android-cpu|android-gpu|edgetpu|raspberry-pi|jetson|x86-cpu)["']""")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("compiler", "edgetl", "runtime")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "targets.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line.split("#")[0])
    ]
    assert offenders == []
