"""The public API: what the README's Python examples import is exported, and no export shadows a subpackage."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import metadapt

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_subpackages_are_modules_not_shadowed_by_exports():
    for name in ("adapt", "meta", "models", "planning", "envs", "data", "experiments"):
        module = importlib.import_module(f"metadapt.{name}")
        assert isinstance(module, types.ModuleType)
        assert getattr(metadapt, name) is module, name


def test_every_readme_import_is_in_all():
    names = set()
    for block in _python_blocks():
        for group in re.findall(r"from metadapt import ([^\n]+)", block):
            names |= {n.strip() for n in group.split(",")}
    assert names, "the README's examples import from metadapt"
    assert names <= set(metadapt.__all__), names - set(metadapt.__all__)
    assert all(hasattr(metadapt, n) for n in metadapt.__all__)


def test_the_readme_maml_example_runs():
    block = next(b for b in _python_blocks() if "MAML(" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    errors = scope["errors"]
    assert sorted(errors) == [0, 1, 10] and float(errors[10].mean()) < float(errors[0].mean())
    assert set(scope["fast"]) == set(scope["model"].param_shapes())
