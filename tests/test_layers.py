"""The import layers of pyproject.toml's [tool.importlinter] hold: every import runs down the stack.

cli > experiments > agent > adapt > meta > models | planning | envs | data > types | errors
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    """The ``lint-imports`` of the interpreter running the tests (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.is_file() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed: `pip install -e '.[dev]'` (import-linter is a dev dependency)")
    return found


def _run(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_lint_imports(), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    proc = _run(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The same contracts on a copy of the package in which a model imports the experiments layer.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "metadapt", tmp_path / "metadapt",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt", "*.xml", "*.md"))
    with open(tmp_path / "metadapt" / "models" / "mlp.py", "a") as f:
        f.write("\nfrom metadapt.experiments.reporting import report  # noqa: E402\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = _run(tmp_path, env)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "metadapt.models is not allowed to import metadapt.experiments" in proc.stdout
